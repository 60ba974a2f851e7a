"""Instruction fetch: reads the program from external memory in bursts, emits 128-bit words."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sparrow import isa
from sparrow.config import HwConfig

from .membus import MemBusSignature

__all__ = ["FetchUnit", "INDEX_BITS", "fetched_layout"]

#: Width of instruction indices throughout the sequencer (programs up to 16 M instructions).
INDEX_BITS = 24


def fetched_layout():
    return data.StructLayout({"word": unsigned(isa.WORD_BITS), "index": unsigned(INDEX_BITS)})


class FetchUnit(wiring.Component):
    """Prefetching instruction reader.

    ``start`` latches ``base`` (byte address; must be a multiple of ``max(16, mem_bytes)``, low
    bits are ignored) and ``length`` (instructions) and streams the program out in order with
    each word's index. Reads are bursts of up to ``cfg.max_burst`` beats that never cross a
    4 KiB boundary, issued only when the beat buffer has room for the whole burst, so read data
    is never back-pressured. ``stop`` abandons the rest of the program (HALT seen, or an
    error): outstanding beats are drained and dropped.

    Ports
    -----
    bus : Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes))
        Read-only use of the memory interface.
    start, stop : In(1)
        Pulses.
    base, length : In(32)
        Sampled on ``start``.
    out : Out(stream.Signature(fetched_layout()))
        ``word`` and ``index`` of each instruction, in order.
    busy : Out(1)
        Requests outstanding or instructions left to deliver.
    error : Out(1)
        Sticky: a read returned ``err``; ``error_index`` is the instruction it belonged to.
    error_index : Out(INDEX_BITS)
    fetch_pc : Out(INDEX_BITS)
        Index of the next instruction to deliver.
    """

    def __init__(self, cfg: HwConfig, *, buffer_beats: int | None = None):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg must be a HwConfig, not {cfg!r}")
        self.cfg = cfg
        wb = isa.WORD_BYTES
        self.beats_per_word = max(1, wb // cfg.mem_bytes)
        self.words_per_beat = max(1, cfg.mem_bytes // wb)
        default = max(cfg.max_burst, 2 * self.beats_per_word)
        self.buffer_beats = buffer_beats or default
        if self.buffer_beats < max(self.beats_per_word, 1):
            raise ValueError(f"buffer_beats must hold at least one instruction ({self.beats_per_word} beats)")
        super().__init__({
            "bus": Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes)),
            "start": In(1), "stop": In(1),
            "base": In(32), "length": In(32),
            "out": Out(stream.Signature(fetched_layout())),
            "busy": Out(1),
            "error": Out(1),
            "error_index": Out(INDEX_BITS),
            "fetch_pc": Out(INDEX_BITS),
        })
        # the beat buffer, made here so that the formal check (sim/formal_streams.py) can see
        # that a beat is never written into a full buffer
        self._beats = fifo.SyncFIFOBuffered(width=8 * cfg.mem_bytes, depth=self.buffer_beats)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        mb = cfg.mem_bytes
        bpw, wpb = self.beats_per_word, self.words_per_beat
        depth = self.buffer_beats
        align_bits = max(4, (mb - 1).bit_length())
        beat_shift = (mb - 1).bit_length()
        aw = cfg.dram_addr_bits

        m.submodules.beats = beats = self._beats

        addr = Signal(aw)
        beats_left = Signal(32)       # beats still to request
        inflight = Signal(range(depth + 1))  # requested, not yet received
        words_left = Signal(32)       # instructions still to deliver
        index = Signal(INDEX_BITS)
        stopping = Signal()

        # -- requests -------------------------------------------------------------------------
        to_boundary = Signal(range(4096 // mb + 1))
        m.d.comb += to_boundary.eq((4096 - (addr & 4095)) >> beat_shift)
        burst = Signal(range(cfg.max_burst + 1))
        # room in the beat buffer for more requests: depth - beats.level - inflight, kept as a
        # register and updated by what moves (timing: the buffer's level and the in-flight count
        # ran through a subtraction and a compare into the request, and from there into the
        # clock enables of the address and beat counters). A received beat moves from in flight
        # to the buffer (no change) unless it is dropped while stopping or after an error.
        room = Signal(range(depth + 1), init=depth)
        cand = Signal(range(cfg.max_burst + 1))
        m.d.comb += cand.eq(Mux(beats_left > cfg.max_burst, cfg.max_burst, beats_left))
        m.d.comb += burst.eq(Mux(to_boundary < cand, to_boundary, cand))
        # The burst size is registered: ``burst_r`` is ``burst`` of the previous cycle, and
        # ``fresh`` says addr / beats_left did not change since (no request, start or stop), so
        # a request waits one cycle after each change. Computed and used in one cycle, the
        # 32-bit compare, the boundary minimum and the subtract formed a 43-level loop through
        # ``beats_left`` (the fetch block's FPGA critical path).
        # Whether the buffer has room for the burst is registered too (``room_ok``: room >= burst_r,
        # compared with the next room and the current burst_r), so a request waits a second cycle
        # after a change (``fresh2``: burst_r did not change in the cycle before either, so the
        # compared burst_r is the one requested). Timing: the compare's carry chain ran into the
        # request, the arbiter's slice and back into the address and beat counters' enables
        # (12.8 ns estimated in the whole design). One cycle more per burst of up to max_burst beats.
        burst_r = Signal(range(cfg.max_burst + 1))
        fresh = Signal()
        fresh2 = Signal()
        room_ok = Signal()
        burst_nz = Signal()           # burst_r != 0, registered with it (the burst is the minimum of
        #                               beats_left, max_burst and the beats to the 4 KiB boundary,
        #                               which is never 0: it is zero exactly when beats_left is)
        bus = self.bus
        can_req = Signal()
        m.d.comb += [
            can_req.eq(fresh2 & burst_nz & ~stopping & ~self.error & room_ok),
            bus.cmd.valid.eq(can_req),
            bus.cmd.payload.addr.eq(addr),
            bus.cmd.payload.write.eq(0),
            bus.cmd.payload.len.eq(burst_r - 1),
            bus.wdata.valid.eq(0),
            bus.wresp.ready.eq(1),
            bus.rdata.ready.eq(1),
        ]
        req_fire = bus.cmd.valid & bus.cmd.ready
        rx_fire = bus.rdata.valid
        fresh_next = ~req_fire & ~self.start & ~self.stop
        m.d.sync += [burst_r.eq(burst), burst_nz.eq(beats_left != 0), fresh.eq(fresh_next),
                     fresh2.eq(fresh_next & fresh)]
        with m.If(req_fire):
            m.d.sync += [addr.eq(addr + (burst_r << beat_shift)), beats_left.eq(beats_left - burst_r)]
        m.d.sync += inflight.eq(inflight + (req_fire * burst_r) - rx_fire)

        m.d.comb += [beats.w_data.eq(bus.rdata.payload.data), beats.w_en.eq(rx_fire & ~stopping & ~self.error)]
        dropped = rx_fire & (stopping | self.error)
        popped = beats.r_en & beats.r_rdy
        # The room after this cycle's pop and dropped beat (0, 1 or 2 more) is formed for each
        # outcome from registers, and the two late inputs select last (timing: the pop follows
        # the out handshake with the fetch slice, the drop the read beat; through an adder and
        # a compare they were the whole small design's critical path, 12.3 ns, and the fetch
        # block's, 9.5 ns). ``room_ok`` leaves the request out: it is read only when ``fresh2``
        # holds, so when no request was made in the cycle it was formed in.
        freed = Signal(2)
        m.d.comb += freed.eq(popped + dropped)
        taken = Mux(req_fire, burst_r, 0)
        room_if = [Signal(range(depth + 1), name=f"room_if{k}") for k in range(3)]
        ok_if = [Signal(name=f"room_ok_if{k}") for k in range(3)]
        for k in range(3):
            m.d.comb += [room_if[k].eq(room + k - taken), ok_if[k].eq(self._room_ok(room + k, burst_r))]
        with m.Switch(freed):
            for k in range(3):
                with m.Case(k):
                    m.d.sync += [room.eq(room_if[k]), room_ok.eq(ok_if[k])]
        with m.If(rx_fire & bus.rdata.payload.err & ~stopping):
            m.d.sync += [self.error.eq(1), self.error_index.eq(index)]

        # words_left != 0 and words_left == 1 are registers, set with words_left (timing: the
        # 32-bit compares ran into out.valid, and from there into the buffer's read and the
        # sequencer's dispatch)
        wl_nz, wl_one = Signal(), Signal()

        # -- gearbox: beats -> 128-bit words ---------------------------------------------------
        out = self.out
        m.d.comb += [out.payload.index.eq(index), self.fetch_pc.eq(index)]
        deliver = Signal()
        m.d.comb += deliver.eq(out.valid & out.ready)
        if bpw > 1:
            shreg = Signal(isa.WORD_BITS)
            have = Signal(range(bpw + 1))
            m.d.comb += [out.payload.word.eq(shreg), out.valid.eq((have == bpw) & ~stopping & wl_nz),
                         beats.r_en.eq((have < bpw) | deliver)]
            with m.If(beats.r_rdy & beats.r_en):
                m.d.sync += shreg.eq((shreg >> (8 * mb)) | (beats.r_data << (isa.WORD_BITS - 8 * mb)))
                with m.If(deliver):
                    m.d.sync += have.eq(1)
                with m.Else():
                    m.d.sync += have.eq(have + 1)
            with m.Elif(deliver):
                m.d.sync += have.eq(0)
        else:
            sel = Signal(range(max(2, wpb)))
            words = [beats.r_data[i * isa.WORD_BITS:(i + 1) * isa.WORD_BITS] for i in range(wpb)]
            with m.Switch(sel):
                for i, w in enumerate(words):
                    with m.Case(i):
                        m.d.comb += out.payload.word.eq(w)
            m.d.comb += out.valid.eq(beats.r_rdy & ~stopping & wl_nz)
            last_in_beat = (sel == wpb - 1) | wl_one
            with m.If(deliver):
                m.d.sync += sel.eq(sel + 1)
                with m.If(last_in_beat):
                    m.d.sync += sel.eq(0)
            m.d.comb += beats.r_en.eq((deliver & last_in_beat) | stopping)

        with m.If(deliver):
            m.d.sync += [index.eq(index + 1), words_left.eq(words_left - 1),
                         wl_nz.eq(~wl_one), wl_one.eq(words_left == 2)]

        # -- control ------------------------------------------------------------------------------
        with m.If(self.stop):
            m.d.sync += [stopping.eq(1), beats_left.eq(0)]
        with m.If(stopping):
            m.d.comb += beats.r_en.eq(1)
            if bpw > 1:
                m.d.sync += have.eq(0)
            with m.If((inflight == 0) & ~beats.r_rdy):
                m.d.sync += [stopping.eq(0), words_left.eq(0), wl_nz.eq(0), wl_one.eq(0)]
        with m.If(self.start):
            total_beats = ((self.length << 4) + (mb - 1)) >> beat_shift
            m.d.sync += [
                addr.eq((self.base >> align_bits) << align_bits),
                beats_left.eq(total_beats),
                words_left.eq(self.length),
                wl_nz.eq(self.length != 0),
                wl_one.eq(self.length == 1),
                index.eq(0),
                self.error.eq(0),
                stopping.eq(0),
            ]
            if bpw > 1:
                m.d.sync += have.eq(0)
            else:
                m.d.sync += sel.eq(0)
        m.d.comb += self.busy.eq(wl_nz | (inflight != 0) | stopping)
        return m

    def _room_ok(self, room, burst):
        """A burst of ``burst`` beats may be requested with ``room`` free entries (a method, so
        the formal check's mutant can break it)."""
        return room >= burst
