"""STORE DMA engine: scratchpad -> external memory, with zero-mask compression.

Semantics are exactly ``docs/isa.md`` (STORE). A chain of decoupled stages, one line per cycle:

* **line reader** — issues scratchpad reads (row ``y`` line ``x`` at ``spad_addr + y*S + x``)
  with credits so that every response fits the line FIFO (responses cannot be back-pressured);
* **item former** — turns each line into a byte *item*: uncompressed, its first ``LB`` bytes;
  compressed, its mask and non-zero bytes (:class:`~sparrow.hdl.zero_codec.ZeroCompact`). A
  compressed row's payload is one segment at ``slot + 2``; when its last line is packed, ``N``
  is known and ``(slot, N)`` is queued for the burst former (``N`` as two terms, added where
  the entry is read), which writes the two count bytes (a 1-2 beat burst with strobes) between
  two bursts. So only ``2 + N`` bytes are written, the row is read once, and a row costs no
  extra cycle on the item path;
* **item buffer** — holds the formed item, so the compaction and the packer's shifter are in
  different cycles; two items deep (a skid buffer), so the packer's acceptance does not reach
  the line FIFO or the item former;
* :class:`BytePacker` — packs the items of a *segment* (one contiguous byte range) into aligned
  beats with byte strobes (partial first/last beats at any alignment); its beats leave through
  a skid buffer, so the burst former's decisions do not reach the packer's shifter;
* **burst former** — cuts beats into bursts (at most ``max_burst`` beats, never crossing 4 KiB,
  ending at a segment's end), inserts the count writes between bursts, and queues a command
  once all of its burst's beats are queued, so its write data is always available when the
  command is accepted (the data may also go out before the command);
* write responses are counted; ``done`` pulses when the last one has arrived.

Timing and latency: the count FIFO to the burst former has a registered output, and the item
and beat registers add two cycles between a line's read and its beat; the start-time checks
take four cycles (two fewer than before), so a STORE takes as many cycles as before. One line
per cycle as before. Late handshakes reach narrow registers only: the item former's ready is
the item buffer's skid bit (the wide item data sits in two entries read through a pointer, so
the packer's acceptance reaches a few control bits and the pointer, not wide clock enables);
the burst former's cut (max burst, 4 KiB page end, count straddle) reads bits registered ahead
(``bc_zero``/``bc_max`` with ``bcount``, ``page_last`` in the packer's beat, page and straddle
bits stored in the count FIFO entry), and the packer's ready and the count FIFO's read are
written out per source, so they are a few LUTs from registers; registers read only in some
states (the skid copies, ``bstart``) are loaded whenever free, not on the late handshake.
``halted`` is a register. The start-time checks compare the last span with the room left
below each limit (computed in the steps before), so no adder feeds a compare and no adder
follows a multiplier in one cycle.

Start-time checks (in this order): the compressed slot-size rule (``ILLEGAL_FIELD``),
``SPAD_RANGE``, ``DRAM_RANGE`` (uncompressed last byte; compressed worst case). A write response
with ``err`` gives ``DRAM_RANGE``. Errors are sticky; the engine then stops reading, issuing and
writing (bursts already started on either channel are completed, the remaining beats with no byte
enabled, so the bus is never left with a command without data or data without a command) and
accepts no instruction.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.isa import Spad

from .engine_port import engine_control_members
from .membus import MemBusSignature
from .spad_port import ReadPortSignature, acc_line, act_line
from .zero_codec import ZeroCompact, mask_bytes, shl_bits, shl_bytes, take_bytes

__all__ = ["BytePacker", "StoreEngine"]

ADDR_W = 32
PAGE = 4096  # bursts never cross a page


def _clog2(n):
    return (n - 1).bit_length()


def _add_pow2(x, p):
    """``x + 2**p`` (one bit wider), as a bitwise increment of the bits from ``p`` up: LUTs, no
    carry chain, so it can follow an adder in the same cycle."""
    hi = x[p:]
    bits = [~hi[0]] + [hi[i] ^ hi[:i].all() for i in range(1, len(hi))] + [hi.all()]
    return Cat(x[:p], *bits)


def _sub_pow2(x, p):
    """``x - 2**p`` for ``x >= 2**p``, as a bitwise decrement of the bits from ``p`` up."""
    hi = x[p:]
    return Cat(x[:p], ~hi[0], *[hi[i] ^ ~hi[:i].any() for i in range(1, len(hi))])


def _ge_pow2(x, p):
    """``x >= 2**p`` from the bits of ``x`` (no carry chain)."""
    return x[p:].any()


def _gt_pow2(x, p):
    """``x > 2**p`` from the bits of ``x`` (no carry chain)."""
    return x[p + 1 :].any() | (x[p] & x[:p].any()) if p else x[1:].any()


def item_layout(item_bytes: int, addr_width: int) -> data.StructLayout:
    return data.StructLayout(
        {"data": 8 * item_bytes, "n": range(item_bytes + 1), "start": 1, "end": 1, "addr": addr_width}
    )


def beat_layout(mem_bytes: int, addr_width: int) -> data.StructLayout:
    return data.StructLayout(
        {"data": 8 * mem_bytes, "strb": mem_bytes, "addr": addr_width, "seg_last": 1, "page_last": 1}
    )


def page_end(addr, lmb, beats_after=0):
    """The beat ``beats_after`` beats after the aligned ``addr`` (beats of ``2**lmb`` bytes) is
    the last of its page."""
    if (1 << lmb) >= PAGE:
        return Const(1, 1)
    lpg = _clog2(PAGE)
    return addr[lmb:lpg] == (1 << (lpg - lmb)) - 1 - beats_after


class BytePacker(wiring.Component):
    """Pack byte items into aligned beats with strobes.

    A *segment* is a contiguous byte range starting at ``addr`` of its first item (``start``) and
    ending with the item marked ``end``. Items carry ``n >= 1`` bytes (the low bytes of
    ``data``, the bytes at and above ``n`` zero, so they can be shifted into place without a
    mask in front of the shifter); every segment's first item has ``start`` set. Beats are
    ``mem_bytes`` wide at aligned addresses; bytes outside the segment have their strobe clear.
    One item and one beat per cycle in steady state.

    Timing: beats leave through a two-register skid buffer (``beat`` is driven from registers and
    ``beat.ready`` only steers them; the skid copy follows the formed beat while free, so
    ``beat.ready`` reaches no wide clock enable), so whether a beat is formed this cycle depends
    on registers only. An item is shifted straight into the coordinates after that beat is
    removed (its position is a mux of registers: ``cnt`` or ``cnt - mem_bytes``, or ``addr``'s
    low bits for a segment's first item) while the held bytes move by the beat in parallel; the
    data register is merged by its valid bits, so acceptance reaches only the valid bits and the
    counts. They come from flags registered with ``cnt`` (``cnt != 0``, ``cnt >= mem_bytes``,
    ``cnt > mem_bytes``, ``cnt - mem_bytes`` and the room left with and without a beat formed),
    so each is a LUT or two from registers plus one compare of the item's ``n``; the next values
    take one carry chain each (the rooms are updated from the rooms, not from the next ``cnt``;
    flags and ``+- mem_bytes`` are bit functions, ``mem_bytes`` being a power of two). The next
    beat's address is two registers (running, or a new segment's start) selected by a registered
    bit, so acceptance does not reach a wide clock enable.

    Parameters
    ----------
    mem_bytes : int
        Beat width (power of two).
    item_bytes : int
        Largest item.
    addr_width : int
        Width of ``addr``.

    Ports
    -----
    item : In(stream {data, n, start, end, addr})
        Bytes of ``data`` at and above ``n`` must be zero.
    beat : Out(stream {data, strb, addr, seg_last})
        ``seg_last`` marks the last beat of a segment.
    idle : Out(1)
        No bytes held, no segment open and no beat waiting in the output buffer.
    """

    def __init__(self, mem_bytes: int, item_bytes: int, addr_width: int = ADDR_W):
        if not isinstance(mem_bytes, int) or mem_bytes < 1 or mem_bytes & (mem_bytes - 1):
            raise ValueError(f"mem_bytes must be a power of two, not {mem_bytes!r}")
        if not isinstance(item_bytes, int) or item_bytes < 1:
            raise ValueError(f"item_bytes must be a positive int, not {item_bytes!r}")
        if not isinstance(addr_width, int) or addr_width < 1:
            raise ValueError(f"addr_width must be a positive int, not {addr_width!r}")
        self.mem_bytes, self.item_bytes, self.addr_width = mem_bytes, item_bytes, addr_width
        super().__init__(
            {
                "item": In(stream.Signature(item_layout(item_bytes, addr_width))),
                "beat": Out(stream.Signature(beat_layout(mem_bytes, addr_width))),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        mb, ib = self.mem_bytes, self.item_bytes
        cap = mb + ib
        lmb = _clog2(mb)
        buf = Signal(8 * cap)
        vb = Signal(cap)
        cnt = Signal(range(cap + 1))
        ending = Signal()
        # comparisons of cnt, registered with it (computed from its next value), so the accept
        # and beat decisions are a LUT or two from registers
        cnt_nz = Signal()  # cnt != 0
        cnt_ge = Signal()  # cnt >= mb
        cnt_gt = Signal()  # cnt > mb
        room_k = Signal(range(cap + 1), init=cap)  # cap - cnt: room without a beat formed
        room_f = Signal(range(cap + mb + 1), init=cap + mb)  # cap + mb - cnt: room with one
        # the next beat's address: the running address ``ba`` or, after a segment's first item
        # was taken, that item's aligned address ``sa``; both are registered every cycle and
        # ``use_sa`` (the late take) selects, so acceptance does not reach a wide clock enable
        baddr = Signal(self.addr_width)
        ba = Signal(self.addr_width)
        sa = Signal(self.addr_width)
        use_sa = Signal()
        m.d.comb += baddr.eq(Mux(use_sa, sa, ba))

        # -- output skid buffer: beat from register r, overflow in register s ------------------
        blay = beat_layout(mb, self.addr_width)
        r_v, s_v = Signal(), Signal()
        r_d, s_d = Signal(blay), Signal(blay)
        bt = self.beat
        m.d.comb += [bt.valid.eq(r_v), bt.payload.eq(r_d)]
        form = Signal()  # a beat is formed from the buffer this cycle
        new_beat = Signal(blay)
        has = Signal()
        seg_last = Signal()
        m.d.comb += [
            has.eq(cnt_ge | (ending & cnt_nz)),
            seg_last.eq(ending & ~cnt_gt),
            form.eq(has & ~s_v),
            # bytes without their strobe are zeroed here: the buffer holds stale bytes where its
            # valid bit is clear (see the merge below)
            new_beat.data.eq(Cat(*[Mux(vb[j], buf[8 * j : 8 * j + 8], 0) for j in range(mb)])),
            new_beat.strb.eq(vb[:mb]),
            new_beat.addr.eq(baddr),
            new_beat.seg_last.eq(seg_last),
            # from the baddr register, so the burst former's cut reads a register bit
            new_beat.page_last.eq(page_end(baddr, lmb)),
            self.idle.eq(~cnt_nz & ~ending & ~r_v & ~s_v),
        ]
        with m.If(~r_v | bt.ready):
            with m.If(s_v):
                m.d.sync += [r_d.eq(s_d), s_v.eq(0)]
            with m.Elif(form):
                m.d.sync += [r_d.eq(new_beat), r_v.eq(1)]
            with m.Else():
                m.d.sync += r_v.eq(0)
        with m.Elif(form):
            m.d.sync += s_v.eq(1)
        # s_d is only read while s_v is set: it follows the formed beat while s_v is clear, so
        # the late ``beat.ready`` does not reach its clock enable
        with m.If(~s_v):
            m.d.sync += s_d.eq(new_beat)

        # -- items --------------------------------------------------------------------------------
        it = self.item.payload
        lo = it.addr[:lmb] if lmb else Const(0, 1)
        cnt_f = Signal(range(cap + 1))  # cnt after a formed beat (registered with cnt)
        # acceptance with and without a beat formed this cycle (from registers and the item);
        # a segment's first item needs the buffer empty, the others room after the held bytes
        rdy_keep = Signal()
        rdy_form = Signal()
        m.d.comb += [
            # with a beat formed: cnt_f == 0 is cnt <= mb, cnt_f + n <= cap is n <= cap + mb - cnt
            rdy_keep.eq(~ending & Mux(it.start, ~cnt_nz, it.n <= room_k)),
            rdy_form.eq(~(ending & cnt_gt) & Mux(it.start, ~cnt_gt, cnt_ge & (it.n <= room_f))),
            self.item.ready.eq(Mux(form, rdy_form, rdy_keep)),
        ]
        take = Signal()
        m.d.comb += take.eq(self.item.valid & self.item.ready)
        # Position of the item in the buffer after this cycle's formed beat (if any) is removed:
        # a taken first item lands at lo (with a beat formed it is the previous segment's last,
        # which leaves nothing behind), the others at cnt1 (cnt, less mb with a beat formed; a
        # taken item never reaches into the formed beat). So the item is shifted straight into
        # the next cycle's coordinates, by a mux of registers, and the held bytes move by the
        # early ``form`` in parallel with the shifter.
        cnt1 = Signal(range(cap + 1))
        m.d.comb += cnt1.eq(Mux(form, cnt_f, cnt))
        shp = Signal(range(cap + 1))
        m.d.comb += shp.eq(Mux(it.start, lo, cnt1))
        sh_d = Signal(8 * cap)
        sh_v = Signal(cap)
        # the item's bytes at and above n are zero (see the item port), so the data is shifted
        # as it is; its byte mask (a thermometer code of n) goes through the same kind of mux
        # shifter, with no subtraction in front
        m.d.comb += [
            sh_d.eq(shl_bytes(it.data, shp, cap)),
            sh_v.eq(shl_bits(Cat(*[i < it.n for i in range(ib)]), shp, cap)),
        ]
        # Merge: a byte whose valid bit is clear takes the shifted item's byte whether or not
        # the item is taken (it stays invalid if not), so the data path needs no handshake: the
        # late ``take`` (a compare of the item's n) only reaches the valid bits and the counts,
        # not the wide data register. Invalid bytes may hold stale data; beats zero them.
        wide = cap + mb
        vb_w = Cat(vb, Const(0, wide - cap))
        buf_w = Cat(buf, Const(0, 8 * (wide - cap)))
        vb1 = Signal(cap)  # valid bits held after the formed beat
        buf1 = Signal(8 * cap)
        m.d.comb += [
            vb1.eq(Mux(form, vb_w[mb:], vb)),
            buf1.eq(Mux(form, buf_w[8 * mb :], buf)),
        ]
        ending1 = ending & ~(form & seg_last)
        baddr1 = Mux(form, baddr + mb, baddr)
        m.d.sync += [ba.eq(baddr1), sa.eq(it.addr & ~(mb - 1)), use_sa.eq(take & it.start)]
        m.d.sync += [
            buf.eq(Cat(*[Mux(vb1[j], buf1[8 * j : 8 * j + 8], sh_d[8 * j : 8 * j + 8]) for j in range(cap)])),
            vb.eq(vb1 | Mux(take, sh_v, 0)),
        ]
        m.d.sync += ending.eq(Mux(take, it.end, ending1))
        # The next cnt and its flags, computed for both outcomes from registers and the item;
        # ``take`` only selects between them. One carry chain per value: the rooms are not
        # computed from the next cnt but from the rooms (a mux of registers, minus n), the
        # flags and ``+ mb`` are bit functions (mb is a power of two), not compares or adders.
        cnt_t = Signal(range(cap + 1))  # item taken
        room1 = Signal(range(cap + 1))  # cap - cnt1
        room_kt = Signal(range(cap + 1))  # cap - cnt_t
        cap_lo = Signal(range(cap + 1))  # cap - lo, a table (lo < mb)
        m.d.comb += [
            cnt_t.eq(shp + it.n),
            room1.eq(Mux(form, Mux(cnt_ge, room_f, cap), room_k)),
            cap_lo.eq(Array([Const(cap - i, len(cap_lo)) for i in range(mb)])[lo]),
            room_kt.eq(Mux(it.start, cap_lo, room1) - it.n),
        ]

        def cnt_regs(v, room):
            ge = _ge_pow2(v, lmb)
            return [v, v.any(), ge, _gt_pow2(v, lmb), room, _add_pow2(room, lmb), Mux(ge, _sub_pow2(v, lmb), 0)]

        for reg, if_take, if_keep in zip((cnt, cnt_nz, cnt_ge, cnt_gt, room_k, room_f, cnt_f),
                                         cnt_regs(cnt_t, room_kt), cnt_regs(cnt1, room1)):
            m.d.sync += reg.eq(Mux(take, if_take, if_keep))
        return m


class StoreEngine(wiring.Component):
    """The STORE engine (see module docstring).

    Parameters
    ----------
    cfg : HwConfig

    Ports
    -----
    instr, done, busy, error
        Engine control (``hdl/engine_port.py``); only STORE instructions arrive.
    bus : Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes))
        Membus master (writes only; ``rdata`` is accepted and ignored).
    act_rd, wgt_rd, acc_rd : Out(ReadPortSignature)
        Scratchpad read ports.
    bytes, bytes_raw : Out(32)
        Bus bytes per the spec (uncompressed ``LB`` per line; compressed ``2 + N`` per row) and
        the uncompressed equivalent, accumulated as items are packed (in the cycle after).
    busy_cycles : Out(32)
    stall_cycles : Out(32)
        Busy cycles in which nothing moved (no scratchpad read, command, data beat or response).
    """

    #: Line FIFO depth (scratchpad read credits).
    LINE_FIFO = 8

    def __init__(self, cfg):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
        self.cfg = cfg
        c = cfg.cols
        super().__init__(
            {
                **engine_control_members(),
                "bus": Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes)),
                "act_rd": Out(ReadPortSignature(cfg.act_addr_bits, act_line(c))),
                "wgt_rd": Out(ReadPortSignature(cfg.wgt_addr_bits, act_line(c))),
                "acc_rd": Out(ReadPortSignature(cfg.acc_addr_bits, acc_line(c))),
                "bytes": Out(32),
                "bytes_raw": Out(32),
                "busy_cycles": Out(32),
                "stall_cycles": Out(32),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C, MB = cfg.cols, cfg.mem_bytes
        MBK = mask_bytes(C)
        ACCW = 4 * C
        IB = max(ACCW, MBK + C)
        DRAM = cfg.dram_bytes
        DEPTH = self.LINE_FIFO
        LMB = _clog2(MB)

        ins = self.instr.payload.body.store

        spad = Signal(Spad)
        spad_addr = Signal(14)
        dram_addr = Signal(ADDR_W)
        rows = Signal(10)
        rl = Signal(10)
        stride = Signal(16)
        lb = Signal(range(ACCW + 1))
        sstride = Signal(10)
        comp = Signal()

        err = Signal(ErrorCode)
        halted = Signal()  # err != NONE, a register set with err (errors are sticky)
        set_err = Signal(ErrorCode)
        m.d.comb += self.error.eq(err)
        init = Signal()
        run = Signal()

        # ---- line reader ----------------------------------------------------------------------
        m.submodules.lf = lf = fifo.SyncFIFOBuffered(width=8 * ACCW, depth=DEPTH)
        rr_act = Signal()
        rr_y = Signal(10)
        rr_x = Signal(10)
        rr_base = Signal(15)
        credits = Signal(range(DEPTH + 1))  # lines issued and not yet taken from the FIFO
        rcmd_valid = Signal()
        rcmd_ready = Signal()
        m.d.comb += rcmd_valid.eq(run & rr_act & (credits < DEPTH) & ~halted)
        rd_fire = Signal()
        m.d.comb += rd_fire.eq(rcmd_valid & rcmd_ready)
        for name, sp in (("act_rd", Spad.ACT), ("wgt_rd", Spad.WGT), ("acc_rd", Spad.ACC)):
            port = getattr(self, name)
            sel = spad == sp
            m.d.comb += [port.cmd.valid.eq(rcmd_valid & sel), port.cmd.payload.eq(rr_base + rr_x)]
            with m.If(sel):
                m.d.comb += [
                    rcmd_ready.eq(port.cmd.ready),
                    lf.w_en.eq(port.rsp.valid),
                    lf.w_data.eq(port.rsp.payload.as_value()),
                ]
        # rr_x == rl - 1 and rr_y == rows - 1 are registers, set with rr_x / rr_y (timing: the
        # compares' carry chains sat between the read handshake and the reader's enables, 12.8 ns
        # estimated on the whole small design)
        rr_xl, rr_yl = Signal(), Signal()
        with m.If(init):
            m.d.sync += [rr_act.eq(1), rr_y.eq(0), rr_x.eq(0), rr_base.eq(spad_addr),
                         rr_xl.eq(rl == 1), rr_yl.eq(rows == 1)]
        with m.Elif(rd_fire):
            with m.If(rr_xl):
                m.d.sync += [rr_x.eq(0), rr_y.eq(rr_y + 1), rr_base.eq(rr_base + sstride),
                             rr_xl.eq(rl == 1), rr_yl.eq(rr_y + 2 == rows)]
                with m.If(rr_yl):
                    m.d.sync += rr_act.eq(0)
            with m.Else():
                m.d.sync += [rr_x.eq(rr_x + 1), rr_xl.eq(rr_x + 2 == rl)]
        lf_pop = Signal()
        m.d.comb += lf.r_en.eq(lf_pop)
        m.d.sync += credits.eq(credits + rd_fire - (lf_pop & lf.r_rdy))

        # ---- item former ----------------------------------------------------------------------
        m.submodules.compact = compact = ZeroCompact(C)
        m.submodules.packer = packer = BytePacker(MB, IB, ADDR_W)
        m.d.comb += compact.line.eq(lf.r_data[: 8 * C])
        # counts of finished compressed rows, written by the burst former between bursts
        # an entry holds the row's count as two terms (the lines before its last, and the last
        # line's n), added where the entry is read: so the compaction's popcount feeds a FIFO
        # write and a register, not a 16-bit adder
        # with the burst former's tests of the count's address, made here from the if_base
        # register (pe0/pe1: its first/second beat ends a page; straddle: the count crosses a beat)
        nf_layout = data.StructLayout({"addr": ADDR_W, "base": 16, "last": range(MBK + C + 1),
                                       "pe0": 1, "pe1": 1, "straddle": 1})
        m.submodules.nf = nf = fifo.SyncFIFOBuffered(width=nf_layout.size, depth=4)
        nf_in = data.View(nf_layout, nf.w_data)
        nf_out = data.View(nf_layout, nf.r_data)
        if_act = Signal()
        if_y = Signal(10)
        if_x = Signal(10)
        if_base = Signal(ADDR_W)
        nsum = Signal(16)  # sum of n over the row's fired lines before the last one
        nlast = Signal(range(MBK + C + 1))  # n of the row's last fired line
        row_base = Signal(16)  # sum of n over the row's fired lines (0 at its first line)
        m.d.comb += row_base.eq(Mux(if_x == 0, 0, nsum + nlast))
        # Item buffer between the item former (ZeroCompact, masking) and the packer's shifter:
        # two items, so the item former's ready is ``~sk_valid``, a register, and the packer's
        # acceptance (a compare of the item's n) reaches neither the line FIFO's read nor the
        # item former's state. The head item's control fields are a skid buffer (ir_c, then
        # sk_c); its data and address sit in one of two entries (written at wp while a slot is
        # free, read at rp), so acceptance reaches a few control bits and the pointer rp, not
        # the clock enables of the wide data.
        it = stream.Signature(item_layout(IB, ADDR_W)).create()
        # the address's low bits (the packer's shift of a segment's first item) are kept with
        # the control fields, so they do not pass the entry mux
        ictl = data.StructLayout({"n": range(IB + 1), "start": 1, "end": 1, "lo": max(LMB, 1)})
        idat = data.StructLayout({"data": 8 * IB, "addr": ADDR_W})
        ir_valid = Signal()
        sk_valid = Signal()
        ir_c = Signal(ictl)
        sk_c = Signal(ictl)
        i_ctl = Signal(ictl)
        m.d.comb += [i_ctl.n.eq(it.payload.n), i_ctl.start.eq(it.payload.start), i_ctl.end.eq(it.payload.end),
                     i_ctl.lo.eq(it.payload.addr[:LMB] if LMB else 0)]
        ents = [Signal(idat, name=f"ient{k}") for k in range(2)]
        wp = Signal()
        rp = Signal()
        m.d.comb += [
            packer.item.valid.eq(ir_valid & ~halted),
            packer.item.payload.data.eq(Mux(rp, ents[1].data, ents[0].data)),
            packer.item.payload.addr.eq(Cat(ir_c.lo[:LMB], Mux(rp, ents[1].addr, ents[0].addr)[LMB:])),
            packer.item.payload.n.eq(ir_c.n),
            packer.item.payload.start.eq(ir_c.start),
            packer.item.payload.end.eq(ir_c.end),
        ]
        m.d.comb += it.ready.eq(~sk_valid)
        item_fire = Signal()
        m.d.comb += item_fire.eq(it.valid & it.ready)
        p_take = Signal()
        m.d.comb += p_take.eq(packer.item.valid & packer.item.ready)
        with m.If(~ir_valid | p_take):
            with m.If(sk_valid):
                m.d.sync += [ir_c.eq(sk_c), sk_valid.eq(0)]
            with m.Else():
                m.d.sync += [ir_c.eq(i_ctl), ir_valid.eq(it.valid)]
        with m.Elif(item_fire):
            m.d.sync += sk_valid.eq(1)
        # sk_c and the entry at wp are only read once written: they follow the item former's
        # output while a slot is free (sk_valid clear)
        with m.If(~sk_valid):
            m.d.sync += sk_c.eq(i_ctl)
            for k in range(2):
                with m.If(wp == k):
                    m.d.sync += [ents[k].data.eq(it.payload.data), ents[k].addr.eq(it.payload.addr)]
        with m.If(item_fire):
            m.d.sync += wp.eq(~wp)
        with m.If(p_take):
            m.d.sync += rp.eq(~rp)
        add_bytes = Signal(range(IB + 3))
        add_raw = Signal(range(ACCW + 1))
        row_end = Signal()  # if_x == rl - 1, registered (set with if_x)
        crow_end = Signal()  # comp & row_end, registered with row_end
        with m.If(if_act):
            m.d.comb += [
                it.valid.eq(lf.r_rdy & ~halted & (nf.w_rdy | ~crow_end)),
                # zero at and above n, as the packer requires (ZeroCompact zero-fills)
                it.payload.data.eq(Mux(comp, compact.data, take_bytes(lf.r_data, lb, ACCW))),
                it.payload.n.eq(Mux(comp, compact.n, lb)),
                it.payload.start.eq(if_x == 0),
                it.payload.end.eq(row_end),
                it.payload.addr.eq(Mux(comp, if_base + 2, if_base)),
                lf_pop.eq(item_fire),
                nf_in.addr.eq(if_base),
                nf_in.pe0.eq(page_end(if_base, LMB)),
                nf_in.pe1.eq(page_end(if_base, LMB, 1)),
                nf_in.straddle.eq((if_base[:LMB] if LMB else Const(0, 1)) == MB - 1),
                nf_in.base.eq(row_base),
                nf_in.last.eq(compact.n),
                nf.w_en.eq(item_fire & crow_end),
            ]
        with m.If(item_fire):
            # counted a cycle later (registered), so the item handshake does not reach the adders
            m.d.sync += [add_bytes.eq(it.payload.n + Mux(comp & row_end, 2, 0)), add_raw.eq(Mux(comp, C, lb))]
        with m.Else():
            m.d.sync += [add_bytes.eq(0), add_raw.eq(0)]
        with m.If(init):
            m.d.sync += [if_act.eq(1), if_y.eq(0), if_x.eq(0), if_base.eq(dram_addr), row_end.eq(rl == 1),
                         crow_end.eq(comp & (rl == 1))]
        with m.Elif(item_fire):
            m.d.sync += [nsum.eq(row_base), nlast.eq(compact.n)]
            with m.If(row_end):
                m.d.sync += [if_x.eq(0), if_y.eq(if_y + 1), if_base.eq(if_base + stride), row_end.eq(rl == 1),
                             crow_end.eq(comp & (rl == 1))]
                with m.If(if_y == rows - 1):
                    m.d.sync += if_act.eq(0)
            with m.Else():
                m.d.sync += [if_x.eq(if_x + 1), row_end.eq(if_x + 2 == rl), crow_end.eq(comp & (if_x + 2 == rl))]

        # ---- burst former ---------------------------------------------------------------------
        bf_layout = data.StructLayout({"data": 8 * MB, "strb": MB, "last": 1})
        cf_layout = data.StructLayout({"addr": ADDR_W, "len": 8})
        m.submodules.bf = bf = fifo.SyncFIFOBuffered(width=bf_layout.size, depth=2 * cfg.max_burst)
        m.submodules.cf = cf = fifo.SyncFIFOBuffered(width=cf_layout.size, depth=4)
        bcount = Signal(8)
        # bcount == 0 and bcount == max_burst - 1, registered with bcount
        bc_zero = Signal(init=1)
        bc_max = Signal(init=int(cfg.max_burst == 1))
        bstart = Signal(ADDR_W)
        # beat source: the packer, or (between bursts) a count write of 1-2 beats
        cb_active = Signal()
        cb_idx = Signal()
        cmode = Signal()
        m.d.comb += cmode.eq(cb_active | (nf.r_rdy & bc_zero))
        c_off = nf_out.addr[:LMB] if LMB else Const(0, 1)
        c_n = Signal(16)  # the row's count N
        m.d.comb += c_n.eq(nf_out.base + nf_out.last)
        c_straddle = Signal()
        m.d.comb += c_straddle.eq(nf_out.straddle)
        c_addr = Signal(ADDR_W)
        c_data = Signal(8 * MB)
        c_strb = Signal(MB)
        c_seg_last = Signal()
        with m.If(cb_idx == 0):
            m.d.comb += [
                c_addr.eq(nf_out.addr & ~(MB - 1)),
                c_data.eq(c_n << (c_off * 8)),
                c_strb.eq(Const(3, 2) << c_off),
                c_seg_last.eq(~c_straddle),
            ]
        with m.Else():
            m.d.comb += [
                c_addr.eq((nf_out.addr & ~(MB - 1)) + MB),
                c_data.eq(c_n[8:]),
                c_strb.eq(1),
                c_seg_last.eq(1),
            ]
        b_addr = Signal(ADDR_W)
        b_data = Signal(8 * MB)
        b_strb = Signal(MB)
        b_seg_last = Signal()
        b_valid = Signal()
        pb = packer.beat.payload
        # after an error a burst being formed is closed with one beat without enabled bytes, so
        # that data already sent for it gets its command (see the membus section)
        closing = Signal()
        m.d.comb += closing.eq(halted & ~bc_zero)
        with m.If(closing):
            m.d.comb += [
                b_addr.eq(bstart + (bcount << LMB)),
                b_data.eq(0),
                b_strb.eq(0),
                b_seg_last.eq(1),
                b_valid.eq(1),
            ]
        with m.Else():
            m.d.comb += [
                b_addr.eq(Mux(cmode, c_addr, pb.addr)),
                b_data.eq(Mux(cmode, c_data, pb.data)),
                b_strb.eq(Mux(cmode, c_strb, pb.strb)),
                b_seg_last.eq(Mux(cmode, c_seg_last, pb.seg_last)),
                b_valid.eq(Mux(cmode, 1, packer.beat.valid)),
            ]
        # A burst ends at max_burst beats, at a 4 KiB boundary or at a segment's end. The boundary
        # test is made per source on the beat number within the page (bits LMB..11, beats are
        # aligned), not on b_addr, and as register bits computed ahead (the packer's beat
        # register, the count FIFO entry, bc_max), so no address adder, compare or source mux
        # lies between the beat registers and b_ready (which steers the packer's output
        # buffer); a closing beat is always last.
        c_last = Signal()
        p_last = Signal()
        m.d.comb += [
            c_last.eq(Mux(cb_idx == 0, nf_out.pe0, nf_out.pe1) | c_seg_last),
            p_last.eq(pb.page_last | pb.seg_last),
        ]
        last = Signal()
        m.d.comb += last.eq(bc_max | closing | Mux(cmode, c_last, p_last))
        b_ready = Signal()
        m.d.comb += b_ready.eq(bf.w_rdy & (cf.w_rdy | ~last) & (~halted | closing))
        # = b_ready & ~cmode & ~halted, written out with ``last`` reduced for a packer beat (no
        # closing, no count write), so it is a few LUTs from registers
        m.d.comb += packer.beat.ready.eq(~cmode & ~halted & bf.w_rdy & (cf.w_rdy | ~(bc_max | p_last)))
        beat_fire = Signal()
        m.d.comb += beat_fire.eq(b_valid & b_ready)
        bf_in = data.View(bf_layout, bf.w_data)
        cf_in = data.View(cf_layout, cf.w_data)
        m.d.comb += [
            bf.w_en.eq(beat_fire),
            bf_in.data.eq(b_data),
            bf_in.strb.eq(b_strb),
            bf_in.last.eq(last),
            cf.w_en.eq(beat_fire & last),
            cf_in.addr.eq(Mux(bc_zero, b_addr, bstart)),
            cf_in.len.eq(bcount),
        ]
        with m.If(beat_fire):
            with m.If(last):
                m.d.sync += [bcount.eq(0), bc_zero.eq(1), bc_max.eq(cfg.max_burst == 1)]
            with m.Else():
                m.d.sync += [bcount.eq(bcount + 1), bc_zero.eq(0), bc_max.eq(bcount == cfg.max_burst - 2)]
        # bstart is only read while bcount != 0: it follows the beat address while bcount == 0,
        # so the late beat handshake does not reach its clock enable
        with m.If(bc_zero):
            m.d.sync += bstart.eq(b_addr)
        # a count beat goes out: beat_fire & cmode & ~closing, written out with ``last``
        # reduced for a count beat (no closing, no packer beat), so the count FIFO's read is a
        # few LUTs from registers
        c_fire = Signal()
        m.d.comb += c_fire.eq(cmode & ~halted & bf.w_rdy & (cf.w_rdy | ~(bc_max | c_last)))
        with m.If(c_fire):
            with m.If(c_seg_last):
                m.d.sync += [cb_active.eq(0), cb_idx.eq(0)]
            with m.Else():
                m.d.sync += [cb_active.eq(1), cb_idx.eq(1)]
        # c_last includes c_seg_last
        m.d.comb += nf.r_en.eq(cmode & ~halted & bf.w_rdy & cf.w_rdy & c_seg_last)

        # ---- membus ---------------------------------------------------------------------------
        bus = self.bus
        debt = Signal(signed(12))  # beats of accepted commands not yet sent (may be < 0)
        bf_out = data.View(bf_layout, bf.r_data)
        cf_out = data.View(cf_layout, cf.r_data)
        m.d.comb += [
            # after an error, a command is still issued if some of its data already went out
            bus.cmd.valid.eq(cf.r_rdy & (~halted | (debt < 0))),
            bus.cmd.payload.addr.eq(cf_out.addr),
            bus.cmd.payload.len.eq(cf_out.len),
            bus.cmd.payload.write.eq(1),
            cf.r_en.eq(bus.cmd.ready & (~halted | (debt < 0))),
            # after an error, only the data of already accepted commands goes out, with no
            # byte enabled, so that the bus is never left waiting for write data
            bus.wdata.valid.eq(bf.r_rdy & (~halted | (debt > 0))),
            bus.wdata.payload.data.eq(bf_out.data),
            bus.wdata.payload.strb.eq(Mux(halted, 0, bf_out.strb)),
            bus.wdata.payload.last.eq(bf_out.last),
            bf.r_en.eq(bus.wdata.ready & (~halted | (debt > 0))),
            bus.wresp.ready.eq(1),
            bus.rdata.ready.eq(1),
        ]
        cmd_fire = Signal()
        wd_fire = Signal()
        wr_fire = Signal()
        m.d.comb += [
            cmd_fire.eq(bus.cmd.valid & bus.cmd.ready),
            wd_fire.eq(bus.wdata.valid & bus.wdata.ready),
            wr_fire.eq(bus.wresp.valid),
        ]
        outw = Signal(16)
        m.d.sync += [
            outw.eq(outw + cmd_fire - wr_fire),
            debt.eq(debt + Mux(cmd_fire, bus.cmd.payload.len + 1, 0) - wd_fire),
        ]
        with m.If(wr_fire & bus.wresp.payload.err & ~halted):
            m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)

        # ---- control --------------------------------------------------------------------------
        line_size = Mux(ins.spad == Spad.ACC, ACCW, C)
        depth = Signal(15)
        m.d.comb += depth.eq(
            Mux(spad == Spad.ACT, cfg.act_depth, Mux(spad == Spad.WGT, cfg.wgt_depth, cfg.acc_depth))
        )
        # Start-time checks in four steps (ck = 0..3), one add, subtract, multiply or compare
        # per term and cycle, registered; the registered results decide at ck 3. The ends are
        # not formed: the room left below each limit is, and the last span is compared with it
        # (spad_addr + rl + sspan > depth is sspan > depth - spad_addr - rl; the same for DRAM).
        ck = Signal(3)
        rows_m1 = Signal(10)
        rlb = Signal(15)
        # rl * (mask bytes + cols): the compressed slot's worst case less its 2 count bytes,
        # which are taken off the other side of the compares (no adder after the product)
        worst = Signal(20)
        stride_m2 = Signal(signed(17))  # stride - 2
        spad_rem0 = Signal(signed(16))  # depth - spad_addr
        spad_rem = Signal(signed(17))  # depth - spad_addr - rl
        sspan = Signal(20)
        span = Signal(26)
        dram_rem0 = Signal(signed(ADDR_W + 2))  # DRAM - dram_addr (- 2 if compressed)
        dram_rem = Signal(signed(ADDR_W + 3))   # DRAM - dram_addr - the bytes of row 0 (or slot)
        slot_bad = Signal()
        spad_bad = Signal()
        dram_bad = Signal()
        with m.If(ck == 0):
            m.d.sync += [rows_m1.eq(rows - 1), rlb.eq(rl * lb), worst.eq(rl * (MBK + C)),
                         stride_m2.eq(stride - 2), spad_rem0.eq(depth - spad_addr),
                         dram_rem0.eq(Mux(comp, DRAM - 2, DRAM) - dram_addr)]
        with m.If(ck == 1):
            m.d.sync += [sspan.eq(rows_m1 * sstride), span.eq(rows_m1 * stride), spad_rem.eq(spad_rem0 - rl),
                         dram_rem.eq(dram_rem0 - Mux(comp, worst, rlb)), slot_bad.eq(comp & (stride_m2 < worst))]
        with m.If(ck == 2):
            m.d.sync += [spad_bad.eq(sspan > spad_rem), dram_bad.eq(span > dram_rem)]
        all_idle = Signal()
        m.d.comb += all_idle.eq(
            ~if_act
            & ~rr_act
            & ~ir_valid
            & ~sk_valid
            & packer.idle
            & (nf.level == 0)
            & ~cb_active
            & (bf.level == 0)
            & (cf.level == 0)
            & (outw == 0)
        )

        # ready is a register of its own, equal to "in IDLE and not halted" (errors are set in CHECK
        # and RUN and leave the FSM in HALT): cleared when an instruction is taken, set when one
        # completes. Timing: decoded from the FSM state it ran into the sequencer's issue logic.
        ready_r = Signal(init=1)
        m.d.comb += self.instr.ready.eq(ready_r)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.instr.valid & ready_r):
                    m.d.sync += ready_r.eq(0)
                    m.d.sync += [
                        spad.eq(ins.spad),
                        spad_addr.eq(ins.spad_addr),
                        dram_addr.eq(ins.dram_addr),
                        rows.eq(ins.rows),
                        rl.eq(ins.row_lines),
                        stride.eq(ins.dram_stride),
                        lb.eq(Mux(ins.line_bytes == 0, line_size, ins.line_bytes)),
                        sstride.eq(Mux(ins.spad_stride == 0, ins.row_lines, ins.spad_stride)),
                        comp.eq(ins.compressed),
                    ]
                    m.d.sync += ck.eq(0)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(ck != 3):
                    m.d.sync += ck.eq(ck + 1)
                with m.Elif(slot_bad):
                    m.d.sync += [err.eq(ErrorCode.ILLEGAL_FIELD), halted.eq(1)]
                    m.next = "HALT"
                with m.Elif(spad_bad):
                    m.d.sync += [err.eq(ErrorCode.SPAD_RANGE), halted.eq(1)]
                    m.next = "HALT"
                with m.Elif(dram_bad):
                    m.d.sync += [err.eq(ErrorCode.DRAM_RANGE), halted.eq(1)]
                    m.next = "HALT"
                with m.Else():
                    m.d.comb += init.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), run.eq(1)]
                with m.If(set_err != ErrorCode.NONE):
                    m.d.sync += [err.eq(set_err), halted.eq(1)]
                    m.next = "HALT"
                with m.Elif(all_idle):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += ready_r.eq(1)
                    m.next = "IDLE"
            with m.State("HALT"):
                m.d.comb += self.busy.eq(1)

        m.d.sync += [self.bytes.eq(self.bytes + add_bytes), self.bytes_raw.eq(self.bytes_raw + add_raw)]
        with m.If(self.busy & ~halted):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
            with m.If(~(rd_fire | cmd_fire | wd_fire | wr_fire)):
                m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        return m
