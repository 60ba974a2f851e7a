"""Formal stream-protocol properties of the instruction path (fetch output, per-engine queues).

The ``lib.stream`` rules checked on an *output* stream: once ``valid`` is high it stays high
until the transfer (``valid & ready``), and ``payload`` does not change while ``valid`` and not
``ready``. The *input* streams and buses are constrained by the same rules (``Assume``), every
other input is free (``AnySeq``). Exemptions are stated per check: the run ending (``start``/
``stop``/``abort`` pulses, a sticky error) abandons a stream on purpose.

``fetch.out_stream``
    :class:`~sparrow.hdl.fetch.FetchUnit` (``small``-like config, 8-byte bus): ``out`` and
    ``bus.cmd`` follow the rules; read beats arrive only for requested beats, with any data.
``sequencer.engine_streams``
    :class:`~sparrow.hdl.sequencer.Sequencer`: each engine's ``instr`` stream (the head of its
    per-engine instruction queue, released by its semaphore wait) follows the rules while the
    run goes on (``running``, no error), whatever the semaphores and the debugger do; any
    fetched words.
``credit_slice.order``
    :class:`~sparrow.hdl.credit_slice.CreditSlice`: every item accepted on ``i`` leaves on ``o``
    exactly once and in order, ``o`` follows the rules, and the sender's count never lets more
    items in than the receiving end holds; proven by k-induction with invariants over the
    slice's state (count = items inside + a pass not yet reported; the ring's pointers, flag and
    entries agree with it).
"""

from __future__ import annotations

from amaranth.hdl import Array, Assert, Assume, Const, Cover, Mux, Signal
from amaranth.hdl._ast import AnyConst, AnySeq

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.hdl.credit_slice import CreditSlice
from sparrow.hdl.fetch import FetchUnit
from sparrow.hdl.sequencer import N_ENGINES, Sequencer

from .formal import FormalCheck, FormalWrapper, register

CFG = HwConfig(rows=2, cols=4, act_depth=16, wgt_depth=16, acc_depth=16, act_banks=1, acc_banks=1,
               mem_bytes=8, max_burst=4, n_semaphores=4, sem_bits=3, queue_depth=2, delay_slots=2,
               dram_bytes=1 << 12, name="formal-streams")


def assume_stream_in(m, valid, ready, payload, name):
    """Constrain a free input stream to the rules (valid held until ready, payload stable)."""
    pv, pr = Signal(name=f"{name}_pv"), Signal(name=f"{name}_pr")
    pp = Signal(len(payload), name=f"{name}_pp")
    m.d.sync += [pv.eq(valid), pr.eq(ready), pp.eq(payload)]
    with m.If(pv & ~pr):
        m.d.comb += [Assume(valid), Assume(payload == pp)]


def assert_stream_out(m, valid, ready, payload, name, exempt=None, now_ok=None):
    """Assert the rules on an output stream.

    ``exempt`` (sampled in the previous cycle) and ``~now_ok`` (this cycle) release the rules:
    the stream is abandoned on purpose (start/stop/abort, error).
    """
    exempt = Const(0, 1) if exempt is None else exempt
    now_ok = Const(1, 1) if now_ok is None else now_ok
    pv, pr, pe = Signal(name=f"{name}_pv"), Signal(name=f"{name}_pr"), Signal(name=f"{name}_pe")
    pp = Signal(len(payload), name=f"{name}_pp")
    m.d.sync += [pv.eq(valid), pr.eq(ready), pp.eq(payload), pe.eq(exempt)]
    with m.If(pv & ~pr & ~pe & now_ok):
        m.d.comb += [Assert(valid, "valid dropped before ready: " + name),
                     Assert(payload == pp, "payload changed while valid and not ready: " + name)]
    return pv, pr


# -- fetch ---------------------------------------------------------------------------------------
FETCH_MUTANTS = {
    "stall_glitch": "out.payload.word bit 0 flips in the second cycle of a stall",
    "cmd_retract": "bus.cmd.valid is withdrawn for a cycle when a free input says so",
    "room_one_too_many": "a burst is requested when the beat buffer has one entry too few",
}


class _FetchRoomOneTooMany(FetchUnit):
    def _room_ok(self, room, burst):
        return room + 1 >= burst


class FetchStreams(FormalWrapper):
    def __init__(self, mutant=None, cfg=CFG, covers=False):
        super().__init__(mutant)
        self.cfg, self.covers = cfg, covers

    def build(self, m):
        cfg, mut = self.cfg, self.mutant
        m.submodules.dut = dut = (_FetchRoomOneTooMany if mut == "room_one_too_many" else FetchUnit)(cfg)
        start, stop = AnySeq(1), AnySeq(1)
        m.d.comb += [dut.start.eq(start), dut.stop.eq(stop), dut.base.eq(AnySeq(32)),
                     dut.length.eq(AnySeq(6))]      # programs up to 63 instructions
        bus = dut.bus
        cmd_ready, out_ready = AnySeq(1), AnySeq(1)
        m.d.comb += [bus.cmd.ready.eq(cmd_ready), dut.out.ready.eq(out_ready)]
        # memory: beats only for requested, not yet returned beats; any data; err allowed
        outstanding = Signal(10)
        rvalid = AnySeq(1)
        m.d.comb += [bus.rdata.valid.eq(rvalid), bus.rdata.payload.eq(AnySeq(bus.rdata.payload.shape().size)),
                     bus.wresp.valid.eq(0), bus.wdata.ready.eq(AnySeq(1))]
        m.d.comb += Assume(~rvalid | (outstanding != 0))
        cmd_fire = bus.cmd.valid & bus.cmd.ready
        m.d.sync += outstanding.eq(outstanding + Mux(cmd_fire, bus.cmd.payload.len + 1, 0) - rvalid)

        # presented streams (mutants inject here)
        ovalid, oword = Signal(), Signal(128)
        cvalid = Signal()
        stalls = Signal(2)
        m.d.sync += stalls.eq(Mux(dut.out.valid & ~dut.out.ready, Mux(stalls == 3, 3, stalls + 1), 0))
        m.d.comb += [ovalid.eq(dut.out.valid), oword.eq(dut.out.payload.word), cvalid.eq(bus.cmd.valid)]
        if mut == "stall_glitch":
            m.d.comb += oword.eq(dut.out.payload.word ^ (stalls == 1))
        if mut == "cmd_retract":
            m.d.comb += cvalid.eq(bus.cmd.valid & ~AnySeq(1))
        payload = Signal(128 + 24)
        m.d.comb += payload.eq(oword | (dut.out.payload.index << 128))
        exempt = start | stop
        # the room kept for requests never lets a beat reach a full buffer (any memory timing)
        m.d.comb += Assert(~(dut._beats.w_en & ~dut._beats.w_rdy), "fetch: beat written into a full buffer")
        assert_stream_out(m, ovalid, out_ready, payload, "fetch.out", exempt)
        assert_stream_out(m, cvalid, cmd_ready, bus.cmd.payload.as_value(), "fetch.bus.cmd", exempt,
                          now_ok=~dut.error)
        if self.covers:
            m.d.comb += [Cover(dut.out.valid & ~dut.out.ready & (dut.out.payload.index == 1)),
                         Cover(bus.cmd.valid & ~bus.cmd.ready & (bus.cmd.payload.len == 1))]


register(FormalCheck(
    "fetch.out_stream", lambda mutant: FetchStreams(mutant), "bmc", 14,
    ci_depth=7, description=
    "FetchUnit: out (word, index) and bus.cmd keep valid and payload until accepted (any memory data, "
    "any back-pressure; start/stop exempt; bus.cmd also on a read error); no beat is written into a "
    "full beat buffer", mutants=FETCH_MUTANTS, mutant_depth=14))
register(FormalCheck(
    "fetch.out_stream_cover", lambda mutant: FetchStreams(mutant, covers=True), "cover", 11,
    "reachability: a stalled instruction (index 1) and a stalled 2-beat read burst"))


# -- sequencer -----------------------------------------------------------------------------------
SEQ_MUTANTS = {
    "payload_glitch": "engine 1's instr payload bit 0 flips in a cycle it was stalled in the previous one",
    "valid_retract": "engine 2's instr.valid is withdrawn for a cycle when a free input says so",
}


class SequencerStreams(FormalWrapper):
    """The rules on every engine's ``instr`` stream, exempt only when the run ends (start/abort,
    an error): neither the semaphores nor the debugger may withdraw an offered instruction."""

    def __init__(self, mutant=None, cfg=CFG, covers=False):
        super().__init__(mutant)
        self.cfg, self.covers = cfg, covers

    def build(self, m):
        cfg, mut = self.cfg, self.mutant
        m.submodules.dut = dut = Sequencer(cfg)
        fv, fp = AnySeq(1), AnySeq(dut.fetched.payload.shape().size)
        m.d.comb += [dut.fetched.valid.eq(fv), dut.fetched.payload.eq(fp)]
        assume_stream_in(m, fv, dut.fetched.ready, fp, "fetched")
        start, abort = AnySeq(1), AnySeq(1)
        m.d.comb += [dut.start.eq(start), dut.abort.eq(abort), dut.fetch_busy.eq(AnySeq(1)),
                     dut.fetch_error.eq(AnySeq(1)), dut.fetch_error_index.eq(AnySeq(24)),
                     dut.delays.eq(AnyConst(dut.delays.shape().size)), dut.watchdog.eq(AnySeq(3)),
                     # the debugger does anything
                     dut.bp_enable.eq(AnySeq(N_ENGINES)), dut.bp_halt_all.eq(AnySeq(1)),
                     dut.bp_index.eq(AnySeq(dut.bp_index.shape().size)),
                     dut.resume.eq(AnySeq(N_ENGINES)), dut.step.eq(AnySeq(N_ENGINES))]
        for e in range(N_ENGINES):
            eng = dut.engines[e]
            m.d.comb += [eng.done.eq(AnySeq(1)), eng.busy.eq(AnySeq(1)),
                         eng.error.eq(Mux(AnySeq(1), ErrorCode.DRAM_RANGE, ErrorCode.NONE))]
        now_ok = dut.running & (dut.error == ErrorCode.NONE)
        exempt = start | abort
        for e in range(N_ENGINES):
            eng = dut.engines[e]
            ready = AnySeq(1)
            m.d.comb += eng.instr.ready.eq(ready)
            valid = Signal(name=f"valid{e}")
            payload = Signal(eng.instr.payload.shape().size, name=f"payload{e}")
            m.d.comb += [valid.eq(eng.instr.valid), payload.eq(eng.instr.payload.as_value())]
            if mut == "payload_glitch" and e == 1:
                pstall = Signal()
                m.d.sync += pstall.eq(eng.instr.valid & ~ready)
                m.d.comb += payload.eq(eng.instr.payload.as_value() ^ pstall)
            if mut == "valid_retract" and e == 2:
                m.d.comb += valid.eq(eng.instr.valid & ~AnySeq(1))
            assert_stream_out(m, valid, ready, payload, f"engine{e}.instr", exempt, now_ok)
            if self.covers:
                m.d.comb += Cover(eng.instr.valid & ~ready & now_ok & (e == 1))


register(FormalCheck(
    "sequencer.engine_streams", lambda mutant: SequencerStreams(mutant), "bmc", 10,
    ci_depth=8, description=
    "Sequencer: each engine's instr stream (queue head released by its semaphore wait) keeps valid and "
    "payload until the engine takes it, while the run goes on (no start/abort/error), whatever the "
    "semaphores (other engines' consuming waits) and the debugger (breakpoints, halt-all, resume, "
    "step) do",
    mutants=SEQ_MUTANTS, mutant_depth=7))


# -- credit slice --------------------------------------------------------------------------------
class _RoomOneTooMany(CreditSlice):
    def _has_room(self, count_next):
        return count_next <= self.depth


class _HeadFromInputFirst(CreditSlice):
    def _head_source(self, any_spare, oldest_spare, incoming):
        return incoming


CREDIT_MUTANTS = {
    "room_one_too_many": "the sender counts one more entry than the receiver has",
    "head_from_input": "the head is refilled from the input even when spare entries wait",
}


class CreditSliceOrder(FormalWrapper):
    """Every item accepted on ``i`` leaves on ``o`` once, in order: the input carries the count
    of items accepted so far, and the head must carry the count of items passed on so far;
    ``o`` follows the stream rules; at most ``depth`` items are inside."""

    WIDTH = 4

    def build(self, m):
        cls = {None: CreditSlice, "room_one_too_many": _RoomOneTooMany,
               "head_from_input": _HeadFromInputFirst}[self.mutant]
        m.submodules.dut = dut = cls(self.WIDTH)
        sent, got = Signal(self.WIDTH), Signal(self.WIDTH)
        valid, o_ready = AnySeq(1), AnySeq(1)
        m.d.comb += [dut.i.valid.eq(valid), dut.i.payload.eq(sent), dut.o.ready.eq(o_ready)]
        assume_stream_in(m, valid, dut.i.ready, sent, "credit_i")
        m.d.sync += [sent.eq(sent + (valid & dut.i.ready)), got.eq(got + (dut.o.valid & o_ready))]
        with m.If(dut.o.valid):
            m.d.comb += Assert(dut.o.payload == got, "an item lost, repeated or out of order")
        inside = Signal(self.WIDTH)
        m.d.comb += [inside.eq(sent - got), Assert(inside <= dut.depth, "more items inside than entries")]
        assert_stream_out(m, dut.o.valid, o_ready, dut.o.payload, "credit.o")
        # the invariants that make the properties inductive: the sender's count is the items
        # inside plus a pass not yet reported, room is its compare, the ring's pointers and
        # flag agree with its count, and the spare entries hold the next items in order
        d, ns = dut.depth, dut.depth - 1
        m.d.comb += [
            Assert(dut._count == inside + dut._passed, "count != items inside + pending pass"),
            Assert(dut._room == (dut._count < d), "room != (count < depth)"),
            Assert(dut.o.valid + dut._n_spare == inside, "head + spares != items inside"),
            Assert(dut._n_spare <= ns),
            Assert(dut._any_spare == (dut._n_spare != 0)),
            Assert(dut.o.valid | ~dut._any_spare, "spare entries behind an empty head"),
            Assert(dut._wp == (dut._rp + dut._n_spare) % ns, "ring pointers disagree with its count"),
        ]
        for j in range(ns):
            with m.If(j < dut._n_spare):
                m.d.comb += Assert(Array(dut._spare)[(dut._rp + j) % ns] == (got + 1 + j)[:self.WIDTH],
                                   f"spare entry {j} out of order")


register(FormalCheck(
    "credit_slice.order", lambda mutant: CreditSliceOrder(mutant), "prove", 2,
    description=
    "CreditSlice (3 entries): every accepted item leaves once and in order, o keeps valid and payload "
    "until taken, at most 3 items inside, under any input and any back-pressure (with the invariants "
    "over its state that make this inductive)",
    mutants=CREDIT_MUTANTS, mutant_depth=6))
