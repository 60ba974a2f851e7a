"""Zero-skipping matrix engine (the MATMUL engine): ``rows`` lanes of ``cols`` int8 MACs.

Microarchitecture
-----------------
* **Row dispenser** (shared): after the start-time footprint check, walks the MATMUL's output
  rows ``m = mo*m_inner + mi`` in order and hands the next unstarted row (its first activation
  line and its accumulator line) to one requesting lane per cycle (fixed priority). A lane asks
  for a row as soon as it has *issued* all activation reads of its previous row, so rows are
  taken dynamically: a lane stuck on a dense row does not hold up the others.
* **Lane** (:class:`MatrixLane`, ``rows`` of them), one output row at a time:

  1. *Fetch*: streams the row's ``ceil(k/cols)`` activation lines through the lane's private
     ``act_rd`` port, keeping at most ``line_depth`` lines issued-or-buffered (credit counter),
     so responses can always be absorbed. A tag FIFO carries each line's weight base address
     and "last line of the row" flag to the response.
  2. *Mask*: on arrival a line's element mask is computed: elements within ``k`` (last line) and,
     with ``zero_skip``, non-zero. An all-zero line that is not the last of its row is dropped
     right there (costs no cycle at all); the others enter the line FIFO.
  3. *Select*: a current-line register holds the remaining mask; every cycle the lowest set bit
     is picked (``rem & -rem``), its activation is muxed out and the weight line
     ``w_addr + j`` is read from the lane's private ``wgt_rd`` port; the next line is loaded from
     the FIFO in the same cycle the last bit is consumed (no bubble between lines or rows). A
     row whose remaining lines are all zero costs one cycle (a multiply by zero).
  4. *MAC*: weight response + activation (from an op FIFO written at issue) are registered,
     multiplied into ``cols`` registered 16-bit products, and accumulated into the lane's int32
     accumulator row (cleared by the row's first op). Latency after the weight response: 3
     cycles. The row's last op hands the finished accumulator row to the lane's output buffer
     (:class:`LaneOutput`, ``out_depth`` entries, reserved when the last op is issued so it
     never overflows). The buffer sits with the writer and takes the row from the lane's
     registers; it behaves like a FIFO written in the cycle of the last product.

* **Writer** (shared): a round-robin arbiter takes one finished row per cycle from the lanes'
  output buffers (grant registered a cycle ahead) through a register (``hold``) into a pending
  FIFO; with ``accumulate`` it reads the old accumulator line
  through ``acc_rd`` at the same time (credits guarantee every response has room), adds it on
  the response, and writes through ``acc_wr``. The instruction is done when its last row is
  accepted by ``acc_wr``; instructions execute one at a time (the next one is accepted after
  the done pulse), so accumulate read-modify-writes never race a previous instruction's writes.
  If the port passes writes through a register slice (``acc_wr_pending``), an instruction's
  first accumulator read also waits until the previous instruction's last write has landed.

``zero_skip=False`` builds the dense baseline: same ports and results, but every element
within ``k`` costs a cycle.
"""

from __future__ import annotations

import operator
from functools import reduce

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode

from .engine_port import engine_control_members
from .multiplier import Multiplier
from .spad_port import ReadPortSignature, WritePortSignature, acc_line, act_line

__all__ = ["LaneOutput", "MatrixEngine", "MatrixLane", "connect_lane_output", "result_layout"]

COUNTER_BITS = 32


def result_layout(cfg: HwConfig) -> data.StructLayout:
    """A finished output row: accumulator line address and its ``cols`` int32 values."""
    return data.StructLayout({"addr": unsigned(cfg.acc_addr_bits), "data": acc_line(cfg.cols)})


def _popcount(bits, n):
    return sum((bits[i] for i in range(n)), Const(0, range(n + 1)))


def _at_most_one(bits):
    """``bits`` has at most one bit set (clearing its lowest set bit leaves zero)."""
    n = len(bits)
    return (bits & (bits - 1))[:n] == 0


def _lines_bits(cfg):
    # ceil(k/cols) for k < 2**12
    return (((1 << 12) - 1 + cfg.cols - 1) // cfg.cols).bit_length()


def _reject(obj, message):
    obj._MustUse__silence = True     # a rejected component is not an "unused elaboratable"
    raise ValueError(message)


def _check_depth(obj, name, value, lo=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        _reject(obj, f"{name} must be an int >= {lo}, not {value!r}")


class MatrixLane(wiring.Component):
    """One lane: a row of ``cfg.cols`` int8 MACs working on one output row at a time.

    Ports
    -----
    act_rd : Out(ReadPortSignature(act_addr_bits, act_line(cols)))
        Private activation read port.
    wgt_rd : Out(ReadPortSignature(wgt_addr_bits, act_line(cols)))
        Private weight read port.
    row_req : Out(1)
        The lane can take a new row this cycle.
    row_grant : In(1)
        A row is given to the lane (only while ``row_req``); ``row_a``/``row_acc`` hold it.
    row_a : In(act_addr_bits)
        First activation line of the granted row.
    row_acc : In(acc_addr_bits)
        Accumulator line of the granted row.
    n_lines, last_mask, w_addr : In
        Instruction constants (stable while rows are in flight): ``ceil(k/cols)``, the mask of
        elements of the last line that are within ``k``, and the first weight line.
    fin_v : Out(1)
        A finished row is presented in this cycle only (a register): its last product was
        accumulated in the previous cycle. The row's output buffer (:class:`LaneOutput`, on the
        writer's side) must take it now.
    fin_addr : Out(acc_addr_bits)
        The finished row's accumulator line (a register).
    fin_data : Out(acc_line(cols))
        The finished row (the lane's accumulator register).
    fin_next : Out(1)
        ``fin_v`` of the next cycle (from registers only).
    room, room_fired : In(1)
        The output buffer has room for one more row's reservation; ``room`` counts the rows
        reserved up to two cycles ago, ``room_fired`` one more (the lane uses it when it reserved a
        row in the previous cycle). Both are :class:`LaneOutput` registers.
    nz_inc, z_inc : Out(range(cols + 1))
        Registered per-cycle counts of non-zero / zero activation elements (within ``k``) of the
        line that arrived in the previous cycle.
    op_fire : Out(1)
        An op (``cols`` MACs) was issued this cycle.
    row_fired : Out(1)
        The last op of a row (which reserves a place in the output buffer) was issued in the
        previous cycle (a register).

    Parameters
    ----------
    cfg : HwConfig
    zero_skip : bool
        Skip zero activations (otherwise every element within ``k`` costs a cycle).
    line_depth : int
        Activation lines issued or buffered per lane (covers the read latency).
    op_depth : int
        Weight reads in flight per lane.
    out_depth : int
        Finished rows buffered per lane while waiting for the write port.
    row_depth : int
        Rows in flight per lane (fetching, computing, in the MAC pipeline).
    """

    def __init__(self, cfg: HwConfig, *, zero_skip=True, line_depth=4, op_depth=4, out_depth=2,
                 row_depth=4):
        if not isinstance(cfg, HwConfig):
            _reject(self, f"cfg must be a HwConfig, not {cfg!r}")
        for n, v in (("line_depth", line_depth), ("op_depth", op_depth), ("out_depth", out_depth),
                     ("row_depth", row_depth)):
            _check_depth(self, n, v, 2 if n != "out_depth" else 1)
        self.cfg, self.zero_skip = cfg, bool(zero_skip)
        self.line_depth, self.op_depth = line_depth, op_depth
        self.out_depth, self.row_depth = out_depth, row_depth
        cols = cfg.cols
        super().__init__({
            "act_rd": Out(ReadPortSignature(cfg.act_addr_bits, act_line(cols))),
            "wgt_rd": Out(ReadPortSignature(cfg.wgt_addr_bits, act_line(cols))),
            "row_req": Out(1),
            "row_grant": In(1),
            "row_a": In(cfg.act_addr_bits),
            "row_acc": In(cfg.acc_addr_bits),
            "n_lines": In(_lines_bits(cfg)),
            "last_mask": In(cols),
            "w_addr": In(cfg.wgt_addr_bits),
            "fin_v": Out(1),
            "fin_addr": Out(cfg.acc_addr_bits),
            "fin_data": Out(acc_line(cols)),
            "fin_next": Out(1),
            "room": In(1),
            "room_fired": In(1),
            "nz_inc": Out(range(cols + 1)),
            "z_inc": Out(range(cols + 1)),
            "op_fire": Out(1),
            "row_fired": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, cols = self.cfg, self.cfg.cols
        wbits = cfg.wgt_addr_bits

        tag_lay = data.StructLayout({"last": 1, "wbase": unsigned(wbits)})
        # one: the mask has at most one bit set (the line's last operand is its first)
        line_lay = data.StructLayout({"data": act_line(cols), "mask": unsigned(cols), "last": 1,
                                      "one": 1, "wbase": unsigned(wbits)})
        op_lay = data.StructLayout({"a": signed(8), "first": 1, "last": 1})

        m.submodules.tagq = tagq = SyncFIFO(width=tag_lay.size, depth=self.line_depth)
        m.submodules.lineq = lineq = SyncFIFO(width=line_lay.size, depth=self.line_depth)
        m.submodules.opq = opq = SyncFIFO(width=op_lay.size, depth=self.op_depth)
        m.submodules.rowq = rowq = SyncFIFO(width=cfg.acc_addr_bits, depth=self.row_depth)

        # -- fetch ------------------------------------------------------------------------
        f_active = Signal()
        f_addr = Signal(cfg.act_addr_bits)
        f_left = Signal(_lines_bits(cfg))
        f_wbase = Signal(wbits)
        outst = Signal(range(self.line_depth + 1))   # lines issued and not yet consumed/dropped

        m.d.comb += self.row_req.eq(~f_active & rowq.w_rdy)
        with m.If(self.row_grant & self.row_req):
            m.d.sync += [f_active.eq(1), f_addr.eq(self.row_a), f_left.eq(self.n_lines),
                         f_wbase.eq(self.w_addr)]
        m.d.comb += [rowq.w_en.eq(self.row_grant & self.row_req), rowq.w_data.eq(self.row_acc)]

        issue = Signal()
        m.d.comb += [
            self.act_rd.cmd.valid.eq(f_active & (outst < self.line_depth)),
            self.act_rd.cmd.payload.eq(f_addr),
            issue.eq(self.act_rd.cmd.valid & self.act_rd.cmd.ready),
        ]
        tag_in = Signal(tag_lay)
        m.d.comb += [tag_in.last.eq(f_left == 1), tag_in.wbase.eq(f_wbase),
                     tagq.w_data.eq(tag_in.as_value()), tagq.w_en.eq(issue)]
        with m.If(issue):
            m.d.sync += [f_addr.eq(f_addr + 1), f_wbase.eq(f_wbase + cols), f_left.eq(f_left - 1)]
            with m.If(f_left == 1):
                m.d.sync += f_active.eq(0)

        # -- arrival: mask, drop all-zero lines ------------------------------------------------
        rsp = self.act_rd.rsp
        tag = tag_lay(tagq.r_data)
        nz = Signal(cols)
        valid = Signal(cols)
        mask = Signal(cols)
        keep = Signal()
        m.d.comb += [
            nz.eq(Cat(*[rsp.payload[e] != 0 for e in range(cols)])),
            valid.eq(Mux(tag.last, self.last_mask, (1 << cols) - 1)),
            mask.eq(nz & valid if self.zero_skip else valid),
            keep.eq((mask != 0) | tag.last),
            tagq.r_en.eq(rsp.valid),
        ]
        line_in = Signal(line_lay)
        m.d.comb += [line_in.data.eq(rsp.payload), line_in.mask.eq(mask), line_in.last.eq(tag.last),
                     line_in.one.eq(_at_most_one(mask)), line_in.wbase.eq(tag.wbase),
                     lineq.w_data.eq(line_in.as_value()), lineq.w_en.eq(rsp.valid & keep)]
        m.d.sync += [self.nz_inc.eq(Mux(rsp.valid, _popcount(nz & valid, cols), 0)),
                     self.z_inc.eq(Mux(rsp.valid, _popcount(~nz & valid, cols), 0))]
        drop = Signal()
        m.d.comb += drop.eq(rsp.valid & ~keep)

        # -- select: one non-zero element per cycle ---------------------------------------------
        cur_valid = Signal()
        cur_rem = Signal(cols)
        cur_data = Signal(act_line(cols))
        cur_last = Signal()
        cur_wbase = Signal(wbits)
        row_started = Signal()

        low = Signal(cols)
        rest = Signal(cols)
        j = Signal(range(cols))
        a_sel = Signal(signed(8))
        op_last = Signal()
        # one_left: rest == 0 (cur_rem has at most one bit), a register set with cur_rem (timing:
        # the decrement's carry chain and the zero test ran into the issue, the line queue's pop
        # and its level, 15.3 ns estimated on the default preset)
        one_left = Signal()
        m.d.comb += [
            low.eq(cur_rem & (~cur_rem + 1)),
            rest.eq(cur_rem & (cur_rem - 1)),
            op_last.eq(cur_last & one_left),
        ]
        for e in range(cols):
            with m.If(low[e]):
                m.d.comb += j.eq(e)
        a_or = Const(0, 8)
        for e in range(cols):
            a_or = a_or | (cur_data.as_value()[8 * e:8 * e + 8] & low[e].replicate(8))
        m.d.comb += a_sel.eq(a_or)

        can = Signal()
        fire = Signal()
        m.d.comb += [
            can.eq(cur_valid & opq.w_rdy & (~op_last | Mux(self.row_fired, self.room_fired, self.room))),
            self.wgt_rd.cmd.valid.eq(can),
            self.wgt_rd.cmd.payload.eq(cur_wbase + j),
            fire.eq(can & self.wgt_rd.cmd.ready),
            self.op_fire.eq(fire),
        ]
        op_in = Signal(op_lay)
        m.d.comb += [op_in.a.eq(a_sel), op_in.first.eq(~row_started), op_in.last.eq(op_last),
                     opq.w_data.eq(op_in.as_value()), opq.w_en.eq(fire)]
        m.d.sync += self.row_fired.eq(fire & op_last)
        with m.If(fire):
            m.d.sync += [row_started.eq(~op_last), cur_rem.eq(rest), one_left.eq(_at_most_one(rest))]

        load = Signal()
        head = line_lay(lineq.r_data)
        m.d.comb += [load.eq(~cur_valid | (fire & one_left)), lineq.r_en.eq(load)]
        with m.If(load):
            m.d.sync += [cur_valid.eq(lineq.r_rdy), cur_rem.eq(head.mask), one_left.eq(head.one),
                         cur_data.eq(head.data),
                         cur_last.eq(head.last), cur_wbase.eq(head.wbase)]
        pop_line = Signal()
        m.d.comb += pop_line.eq(load & lineq.r_rdy)
        m.d.sync += outst.eq(outst + issue - drop - pop_line)

        # -- MAC pipeline -------------------------------------------------------------------------
        wr = self.wgt_rd.rsp
        op = op_lay(opq.r_data)
        m.d.comb += opq.r_en.eq(wr.valid)
        # operands registered (cycle p), product registered (cycle q): both registers are the
        # Multiplier's, so an FPGA flow can keep them inside its DSP blocks
        p_v, p_first, p_last = Signal(), Signal(), Signal()
        m.d.sync += [p_v.eq(wr.valid), p_first.eq(op.first), p_last.eq(op.last)]
        q_v, q_first, q_last = Signal(), Signal(), Signal()
        m.d.sync += [q_v.eq(p_v), q_first.eq(p_first), q_last.eq(p_last)]
        prod = []
        for c in range(cols):
            mul = Multiplier(signed(8), signed(8))
            m.submodules[f"mul{c}"] = mul
            m.d.comb += [mul.a.eq(op.a), mul.b.eq(wr.payload[c])]
            prod.append(mul.p)
        acc = Signal(acc_line(cols))
        acc_next = Signal(acc_line(cols))
        for c in range(cols):
            m.d.comb += acc_next[c].eq(Mux(q_first, 0, acc[c]) + prod[c])
        with m.If(q_v):
            m.d.sync += acc.eq(acc_next)
        # The finished row leaves from registers: ``acc`` holds it in the cycle after its last
        # product (the next row's first product lands a cycle later), the address is latched
        # here. The output buffer sits with the writer (:class:`LaneOutput`), so that the writer's
        # late "row taken" decision does not travel to every lane.
        m.d.comb += [rowq.r_en.eq(q_v & q_last), self.fin_next.eq(q_v & q_last), self.fin_data.eq(acc)]
        m.d.sync += self.fin_v.eq(q_v & q_last)
        with m.If(q_v & q_last):
            m.d.sync += self.fin_addr.eq(rowq.r_data)
        return m


class LaneOutput(wiring.Component):
    """A lane's output buffer, placed with the writer: finished rows waiting for the write port.

    Holds up to ``depth`` rows: the row the lane presents (``fin_v``, taken straight from the
    lane's registers when nothing older is stored) and the rows stored here. Seen from the writer
    it behaves exactly like a ``SyncFIFO(depth)`` written with the lane's finished row in the
    cycle of its last product. It also keeps the lane's reservation count (rows whose last op was
    issued and that have not been taken) and hands the lane registered "room" flags, so the
    writer's late ``res.ready`` stays here, next to the writer.

    Storage is ``depth`` slots written in turn, every presented row into the next slot whether
    or not it is taken in the same cycle (there is always a free one), so the slots' write
    enables come from the lane's registers; taking a row only moves the read pointer. The
    writer's late ``res.ready`` thus drives a few flip-flops here instead of every data bit.
    The slots are a memory with an asynchronous read (distributed RAM on an FPGA), so the
    select of the oldest slot is the RAM's own read and the writer's lane select sees two
    sources per lane, not ``depth + 1`` (area: the flip-flop slots and their read multiplexers
    were a tenth of the default preset's LUTs).

    Ports
    -----
    fin_v, fin_addr, fin_data, fin_next, row_fired : In
        From the lane (see :class:`MatrixLane`).
    room, room_fired : Out(1)
        To the lane (registers).
    res : Out(stream.Signature(result_layout(cfg)))
        Finished rows in order; ``valid`` and ``payload`` are a little logic over registers.
    res_keep, res_pop : Out(1)
        ``res.valid`` of the next cycle if no row / the current row is taken in this cycle; from
        registers only (for the writer's one-cycle-ahead round robin).

    Parameters
    ----------
    cfg : HwConfig
    depth : int >= 1
    """

    def __init__(self, cfg: HwConfig, depth: int):
        _check_depth(self, "depth", depth, 1)
        self.cfg, self.depth = cfg, depth
        super().__init__({
            "fin_v": In(1),
            "fin_addr": In(cfg.acc_addr_bits),
            "fin_data": In(acc_line(cfg.cols)),
            "fin_next": In(1),
            "row_fired": In(1),
            "room": Out(1, init=1),
            "room_fired": Out(1, init=int(depth > 1)),
            "res": Out(stream.Signature(result_layout(cfg))),
            "res_keep": Out(1),
            "res_pop": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        lay = result_layout(self.cfg)
        fin = Signal(lay)
        m.d.comb += [fin.addr.eq(self.fin_addr), fin.data.eq(self.fin_data)]
        n = Signal(range(d + 1))            # rows stored (the presented one not counted)
        take = Signal()

        def step(ptr):
            return Mux(ptr == d - 1, 0, ptr + 1)

        m.submodules.slots = slots = Memory(shape=lay, depth=d, init=[])
        wr = slots.write_port()
        rd = slots.read_port(domain="comb")
        m.d.comb += [wr.data.eq(fin), wr.en.eq(self.fin_v)]
        head = rd.data
        if d > 1:
            rp = Signal(range(d))           # oldest stored row
            wp = Signal(range(d))           # next free slot (rp + n)
            m.d.comb += [wr.addr.eq(wp), rd.addr.eq(rp)]
            with m.If(self.fin_v):
                m.d.sync += wp.eq(step(wp))
            with m.If(take):
                m.d.sync += rp.eq(step(rp))
        stored = Signal()
        m.d.comb += [
            stored.eq(n != 0),
            self.res.valid.eq(stored | self.fin_v),
            self.res.payload.eq(Mux(stored, head, fin)),
            take.eq(self.res.valid & self.res.ready),
            self.res_keep.eq(stored | self.fin_v | self.fin_next),
            self.res_pop.eq((n + self.fin_v >= 2) | self.fin_next),
        ]
        m.d.sync += n.eq(n + self.fin_v - take)
        # Reservations: ``resv`` (rows reserved, not yet taken) is ``w + row_fired``; the lane
        # compares it against the depth with ``row_fired`` as the select between the two flags.
        w = Signal(range(d + 1))
        w_next = Signal(range(d + 2))
        m.d.comb += w_next.eq(w + self.row_fired - take)
        # (the flags for both outcomes of the writer's late take, which selects last: timing, the
        # take ran through the adder and the compares, 13.3 ns estimated on the whole design)
        w_kept = Signal(range(d + 2))
        m.d.comb += w_kept.eq(w + self.row_fired)
        m.d.sync += [w.eq(w_next),
                     self.room.eq(Mux(take, w_kept <= d, w_kept < d)),
                     self.room_fired.eq(Mux(take, w_kept < d, w_kept + 1 < d))]
        return m


def connect_lane_output(m, lane: MatrixLane, out: LaneOutput):
    """Wire a lane to its output buffer (combinational connections in ``m``)."""
    m.d.comb += [out.fin_v.eq(lane.fin_v), out.fin_addr.eq(lane.fin_addr), out.fin_data.eq(lane.fin_data),
                 out.fin_next.eq(lane.fin_next), out.row_fired.eq(lane.row_fired),
                 lane.room.eq(out.room), lane.room_fired.eq(out.room_fired)]


class _State(enum.Enum, shape=3):
    IDLE = 0
    CHECK1 = 1
    CHECK2 = 2
    CHECK3 = 3
    CHECK4 = 4
    RUN = 5
    HALTED = 6


class MatrixEngine(wiring.Component):
    """The MATMUL engine: ``cfg.rows`` zero-skipping lanes sharing a row dispenser and a writer.

    Ports (Verilog names in brackets; ``N`` is the lane index ``0 .. rows-1``)
    -----------------------------------------------------------------------------
    instr : In(stream.Signature(instruction_layout()))  [``instr__valid/ready/payload``]
        MATMUL instructions (already decoded-legal). Accepted only while idle.
    done : Out(1)  [``done``]
        One-cycle pulse when an instruction's last accumulator line was accepted by ``acc_wr``.
    busy : Out(1)  [``busy``]
        An accepted instruction has not completed (stays high after an error).
    error : Out(ErrorCode)  [``error``]
        ``SPAD_RANGE`` (sticky) when a MATMUL's footprint leaves a scratchpad; nothing of it is
        executed and no further instruction is accepted.
    act_rd : Out(ReadPortSignature(act_addr_bits, act_line(cols))).array(rows)
        [``act_rd__N__cmd__valid/ready/payload``, ``act_rd__N__rsp__valid/payload``] per lane.
    wgt_rd : Out(ReadPortSignature(wgt_addr_bits, act_line(cols))).array(rows)
        [``wgt_rd__N__cmd__*``, ``wgt_rd__N__rsp__*``] per lane (private weight replica).
    acc_rd : Out(ReadPortSignature(acc_addr_bits, acc_line(cols)))  [``acc_rd__cmd__*``, ``acc_rd__rsp__*``]
        Old accumulator lines for ``accumulate=1``.
    acc_wr : Out(WritePortSignature(acc_addr_bits, acc_line(cols)))  [``acc_wr__cmd__valid/ready/payload``]
    acc_wr_pending : In(1)  [``acc_wr_pending``]
        A write accepted by ``acc_wr`` has not reached memory yet (a sliced write port; tie to 0
        otherwise): an instruction's first accumulator read waits while it is high.
    busy_cycles, stall_cycles, macs, macs_skipped : Out(32)
        Free-running counters: cycles with ``busy``; cycles in which rows remain to be computed
        but no lane issued an op; ``cols`` per non-zero activation element within ``k``;
        ``cols`` per zero activation element within ``k``.

    Parameters
    ----------
    cfg : HwConfig
    zero_skip : bool
        ``True``: zero activations cost no cycle. ``False``: dense baseline (same results).
    line_depth, op_depth, out_depth, row_depth : int
        Per-lane buffer depths (see :class:`MatrixLane`).
    write_depth : int
        Depth of the writer's pending and write FIFOs (accumulate reads in flight).
    """

    def __init__(self, cfg: HwConfig, *, zero_skip=True, line_depth=4, op_depth=4, out_depth=2,
                 row_depth=4, write_depth=4):
        if not isinstance(cfg, HwConfig):
            _reject(self, f"cfg must be a HwConfig, not {cfg!r}")
        _check_depth(self, "write_depth", write_depth, 2)
        self.cfg, self.zero_skip = cfg, bool(zero_skip)
        self.write_depth = write_depth
        self._lane_args = dict(zero_skip=zero_skip, line_depth=line_depth, op_depth=op_depth,
                               out_depth=out_depth, row_depth=row_depth)
        for n, v in (("line_depth", line_depth), ("op_depth", op_depth), ("row_depth", row_depth)):
            _check_depth(self, n, v, 2)
        _check_depth(self, "out_depth", out_depth, 1)
        cols = cfg.cols
        super().__init__({
            **engine_control_members(),
            "act_rd": Out(ReadPortSignature(cfg.act_addr_bits, act_line(cols))).array(cfg.rows),
            "wgt_rd": Out(ReadPortSignature(cfg.wgt_addr_bits, act_line(cols))).array(cfg.rows),
            "acc_rd": Out(ReadPortSignature(cfg.acc_addr_bits, acc_line(cols))),
            "acc_wr": Out(WritePortSignature(cfg.acc_addr_bits, acc_line(cols))),
            "acc_wr_pending": In(1),
            "busy_cycles": Out(COUNTER_BITS),
            "stall_cycles": Out(COUNTER_BITS),
            "macs": Out(COUNTER_BITS),
            "macs_skipped": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, cols, rows = self.cfg, self.cfg.cols, self.cfg.rows
        lshift = (cols - 1).bit_length()
        lanes = []
        for i in range(rows):
            lane = MatrixLane(cfg, **self._lane_args)
            m.submodules[f"lane{i}"] = lane
            wiring.connect(m, wiring.flipped(self.act_rd[i]), lane.act_rd)
            wiring.connect(m, wiring.flipped(self.wgt_rd[i]), lane.wgt_rd)
            lanes.append(lane)
        outs = []
        for i, lane in enumerate(lanes):
            out = LaneOutput(cfg, self._lane_args["out_depth"])
            m.submodules[f"out{i}"] = out
            connect_lane_output(m, lane, out)
            outs.append(out)

        state = Signal(_State)
        err = Signal(ErrorCode)
        m.d.comb += [self.error.eq(err), self.busy.eq(state != _State.IDLE)]

        # -- instruction latch and start-time footprint check -----------------------------------
        ins = Signal(self.instr.payload.body.matmul.shape())
        # ready is a register of its own, equal to (state == IDLE) & (err == NONE): cleared when an
        # instruction is accepted, set when it completes (an error leaves the state HALTED, never
        # IDLE). Timing: decoded from the 3-bit state and the error code it ran through two LUT
        # levels into the sequencer's issue and in-flight logic (14.7 ns estimated in the whole design).
        ready_r = Signal(init=1)
        m.d.comb += self.instr.ready.eq(ready_r)
        mi_last = Signal(8)        # m_inner - 1
        accept = Signal()
        new = self.instr.payload.body.matmul
        new_mi_last = (new.m_inner - 1)[:8]
        m.d.comb += accept.eq(self.instr.valid & self.instr.ready)
        with m.If(accept):
            m.d.sync += [ins.eq(new), mi_last.eq(new_mi_last), state.eq(_State.CHECK1), ready_r.eq(0)]
        # The footprint's three products: operands registered with the instruction, products
        # registered in CHECK1 (Multiplier registers, so an FPGA flow can keep them in its DSPs).
        muls = {}
        for name, a, b in (("p_outer", (new.m_outer - 1)[:8], new.a_outer_stride),   # 8 x 14 bits
                           ("p_inner", new_mi_last, new.a_stride),                   # 8 x 8 bits
                           ("n_rows", new.m_outer, new.m_inner)):                    # 8 x 8 bits
            mul = muls[name] = Multiplier(unsigned(len(a)), unsigned(len(b)))
            m.submodules[f"mul_{name}"] = mul
            m.d.comb += [mul.a.eq(a), mul.b.eq(b), mul.en_in.eq(accept), mul.en_out.eq(state == _State.CHECK1)]

        # Footprint check in four registered steps (one multiply or one add per term and cycle,
        # so no multiply-add chain sits in front of a compare):
        #   CHECK1  products, n_lines, last_mask, last weight line
        #   CHECK2  a_addr + (m_outer-1)*a_outer_stride, (m_inner-1)*a_stride + n_lines - 1,
        #           last accumulator line, weight range flag
        #   CHECK3  last activation line, accumulator range flag
        #   CHECK4  SPAD_RANGE or start (compares against power-of-two depths are high-bit ORs)
        n_lines = Signal(_lines_bits(cfg))
        last_mask = Signal(cols)
        p_outer = muls["p_outer"].p     # valid from CHECK2 on
        p_inner = muls["p_inner"].p
        n_rows = muls["n_rows"].p
        act_s1 = Signal(23)
        act_s2 = Signal(17)
        act_max = Signal(24)
        wgt_max = Signal(15)
        acc_max = Signal(18)
        wgt_bad = Signal()
        acc_bad = Signal()
        kl = Signal(range(cols))
        m.d.comb += kl.eq((ins.k - 1)[:lshift] if lshift else 0)

        # row dispenser state
        d_left = Signal(17)
        d_a = Signal(16)
        d_outer = Signal(16)
        d_mi = Signal(8)
        d_acc = Signal(16)
        unfired = Signal(17)       # rows whose last op has not been issued (counted a cycle late)
        nb = rows.bit_length()     # n_fired < 2**nb
        unfired_hi = Signal()      # unfired >= 2**nb
        written = Signal(17)

        with m.If(state == _State.CHECK1):
            m.d.sync += [
                n_lines.eq((ins.k + cols - 1) >> lshift),
                last_mask.eq(Cat(Const(1, 1), *[Const(e, range(cols)) <= kl for e in range(1, cols)])),
                wgt_max.eq(ins.w_addr + (ins.k - 1)[:12]),
                state.eq(_State.CHECK2),
            ]
        with m.If(state == _State.CHECK2):
            m.d.sync += [act_s1.eq(ins.a_addr + p_outer), act_s2.eq(p_inner + (n_lines - 1)[:len(n_lines)]),
                         acc_max.eq(ins.acc_addr + (n_rows - 1)[:len(n_rows)]), wgt_bad.eq(wgt_max >= cfg.wgt_depth),
                         state.eq(_State.CHECK3)]
        with m.If(state == _State.CHECK3):
            m.d.sync += [act_max.eq(act_s1 + act_s2), acc_bad.eq(acc_max >= cfg.acc_depth),
                         state.eq(_State.CHECK4)]
        with m.If(state == _State.CHECK4):
            with m.If((act_max >= cfg.act_depth) | wgt_bad | acc_bad):
                m.d.sync += [err.eq(ErrorCode.SPAD_RANGE), state.eq(_State.HALTED)]
            with m.Else():
                m.d.sync += [d_left.eq(n_rows), d_a.eq(ins.a_addr), d_outer.eq(ins.a_addr), d_mi.eq(0),
                             d_acc.eq(ins.acc_addr), unfired.eq(n_rows),
                             unfired_hi.eq((n_rows >> nb) != 0), written.eq(0),
                             state.eq(_State.RUN)]

        # -- row dispenser (fixed priority among requesting lanes) -------------------------------
        have_row = Signal()
        m.d.comb += have_row.eq((state == _State.RUN) & (d_left != 0))
        taken = Const(0, 1)
        for lane in lanes:
            m.d.comb += [lane.row_a.eq(d_a), lane.row_acc.eq(d_acc), lane.n_lines.eq(n_lines),
                         lane.last_mask.eq(last_mask), lane.w_addr.eq(ins.w_addr),
                         lane.row_grant.eq(have_row & lane.row_req & ~taken)]
            taken = taken | lane.row_req
        with m.If(have_row & taken):
            m.d.sync += [d_left.eq(d_left - 1), d_acc.eq(d_acc + 1)]
            with m.If(d_mi == mi_last):
                m.d.sync += [d_mi.eq(0), d_outer.eq(d_outer + ins.a_outer_stride),
                             d_a.eq(d_outer + ins.a_outer_stride)]
            with m.Else():
                m.d.sync += [d_mi.eq(d_mi + 1), d_a.eq(d_a + ins.a_stride)]

        # -- writer: round-robin over lane output buffers, optional read-modify-write ------------
        res_lay = result_layout(cfg)
        wd = self.write_depth
        m.submodules.pendq = pendq = SyncFIFO(width=res_lay.size, depth=wd)
        m.submodules.wq = wq = SyncFIFO(width=res_lay.size, depth=wd)
        # Round robin over the lanes' finished rows: the lowest requesting lane after the last
        # granted one, else the lowest requesting lane. The decision is a one-hot register
        # (``gnt``) computed a cycle ahead from the lanes' next-cycle ``res.valid`` (``res_keep`` /
        # ``res_pop``, registers only) for both outcomes of this cycle's ``grab``, the late
        # signal choosing between the two: the data mux into ``hold`` then starts at flip-flops
        # (the select computed from the lanes' FIFO levels was the block's FPGA critical path).
        def round_robin(req, last):
            above = Cat(Const(0, 1), *[last[:i] != 0 for i in range(1, rows)])
            hi = Signal(rows)
            pick = Signal(rows)
            m.d.comb += [hi.eq(req & above), pick.eq(Mux(hi != 0, hi, req))]
            return pick & (~pick + 1)           # lowest set bit

        gnt = Signal(rows)                       # one-hot: the lane granted if ``grab``, else 0
        last_g = Signal(rows, init=1)            # one-hot: the lane granted last
        keep = Cat(*[out.res_keep for out in outs])
        after = Cat(*[Mux(gnt[i], out.res_pop, out.res_keep) for i, out in enumerate(outs)])
        # (kept as nets of their own, so that synthesis leaves ``grab`` as the last select instead
        # of folding it into the round robin's LUTs: timing, grab follows the accumulator
        # port's ready)
        gnt_stay = Signal(rows, attrs={"keep": 1})
        gnt_move = Signal(rows, attrs={"keep": 1})
        m.d.comb += [gnt_stay.eq(round_robin(keep, last_g)), gnt_move.eq(round_robin(after, gnt))]
        sel_any = Signal()
        m.d.comb += sel_any.eq(gnt != 0)
        sel_data = Signal(res_lay)
        m.d.comb += sel_data.eq(reduce(operator.or_,
            [out.res.payload.as_value() & gnt[i].replicate(res_lay.size) for i, out in enumerate(outs)]))

        # The granted lane's result goes through a register (``hold``) before the pending FIFO
        # and the accumulator read: the data mux then ends at a flip-flop instead of chaining
        # into the FIFO's write port. ``hold`` refills in the cycle it empties, so one row per
        # cycle still retires.
        hold = Signal(res_lay)
        hold_v = Signal()
        take = Signal()         # hold -> pendq (and the accumulator read)
        grab = Signal()         # granted lane -> hold
        accum = ins.accumulate
        # Rows in pendq and wq together, kept in a register of its own with the "room for one
        # more" flag registered next to it (instead of adding the two FIFO levels in front of
        # ``take``): a row moving from pendq to wq leaves the sum unchanged.
        inflight = Signal(range(wd + 1))
        inflight_next = Signal(range(wd + 2))
        credit_ok = Signal(init=1)
        m.d.comb += inflight_next.eq(inflight + (pendq.w_en & pendq.w_rdy) - (wq.r_en & wq.r_rdy))
        # An instruction's first accumulator read waits for the previous instruction's writes to
        # land (``acc_wr_pending``, a register in the scratchpad). Until that read no write of
        # this instruction can be pending, so the pending flag only falls meanwhile and may be
        # folded into the registered credit flag (no input is added to the read's handshake).
        fresh = Signal()                  # no accumulator read issued yet by this instruction
        fresh_next = Signal()
        m.d.comb += fresh_next.eq(accept | (fresh & ~(self.acc_rd.cmd.valid & self.acc_rd.cmd.ready)))
        m.d.sync += [inflight.eq(inflight_next), fresh.eq(fresh_next),
                     credit_ok.eq((inflight_next < wd) & ~(fresh_next & self.acc_wr_pending))]
        # pendq's "not full" likewise from a registered copy of its level
        pend_n = Signal(range(wd + 1))
        pend_n_next = Signal(range(wd + 2))
        pend_room = Signal(init=1)
        m.d.comb += pend_n_next.eq(pend_n + (pendq.w_en & pendq.w_rdy) - (pendq.r_en & pendq.r_rdy))
        m.d.sync += [pend_n.eq(pend_n_next), pend_room.eq(pend_n_next != wd)]
        m.d.comb += [
            self.acc_rd.cmd.valid.eq(accum & hold_v & credit_ok),
            self.acc_rd.cmd.payload.eq(hold.addr),
            take.eq(hold_v & Mux(accum, credit_ok & self.acc_rd.cmd.ready, pend_room)),
            pendq.w_en.eq(take),
            pendq.w_data.eq(hold.as_value()),
            grab.eq(sel_any & (~hold_v | take)),
        ]
        for i, out in enumerate(outs):
            m.d.comb += out.res.ready.eq(grab & gnt[i])
        m.d.sync += gnt.eq(Mux(grab, gnt_move, gnt_stay))
        with m.If(grab):
            m.d.sync += [last_g.eq(gnt), hold.eq(sel_data), hold_v.eq(1)]
        with m.Elif(take):
            m.d.sync += hold_v.eq(0)

        pend = res_lay(pendq.r_data)
        old = acc_line(cols)(self.acc_rd.rsp.payload)
        wq_in = Signal(res_lay)
        m.d.comb += wq_in.addr.eq(pend.addr)
        with m.If(accum):
            for c in range(cols):
                m.d.comb += wq_in.data[c].eq(pend.data[c] + old[c])
            m.d.comb += [pendq.r_en.eq(self.acc_rd.rsp.valid), wq.w_en.eq(self.acc_rd.rsp.valid)]
        with m.Else():
            m.d.comb += [wq_in.data.eq(pend.data), pendq.r_en.eq(wq.w_rdy), wq.w_en.eq(pendq.r_rdy)]
        m.d.comb += wq.w_data.eq(wq_in.as_value())

        m.d.comb += [self.acc_wr.cmd.valid.eq(wq.r_rdy), self.acc_wr.cmd.payload.eq(wq.r_data),
                     wq.r_en.eq(self.acc_wr.cmd.ready)]
        wfire = Signal()
        m.d.comb += wfire.eq(self.acc_wr.cmd.valid & self.acc_wr.cmd.ready)
        with m.If(wfire):
            m.d.sync += written.eq(written + 1)
            with m.If((state == _State.RUN) & (written + 1 == n_rows)):
                m.d.comb += self.done.eq(1)
                m.d.sync += [state.eq(_State.IDLE), ready_r.eq(1)]

        # -- counters -------------------------------------------------------------------------
        s_nz = Signal(range(rows * cols + 1))
        s_z = Signal(range(rows * cols + 1))
        m.d.sync += [s_nz.eq(sum((lane.nz_inc for lane in lanes), Const(0, 1))),
                     s_z.eq(sum((lane.z_inc for lane in lanes), Const(0, 1)))]
        m.d.sync += [self.macs.eq(self.macs + (s_nz << lshift)),
                     self.macs_skipped.eq(self.macs_skipped + (s_z << lshift))]
        # Rows fired are counted a cycle late (each lane's registered ``row_fired``), so the
        # lanes' select logic does not chain into the adder (that was the block's FPGA critical
        # path); the stall count adds the cycle-late rows back and so counts the same cycles.
        # "Rows remain" is ``unfired != n_fired``: the high part of ``unfired`` is a registered
        # flag, so only a few bits are compared with the (late) sum in front of the counter's
        # enable (the 17-bit add-and-compare there was the block's FPGA critical path).
        n_fired = Signal(range(rows + 1))
        m.d.comb += n_fired.eq(sum((lane.row_fired for lane in lanes), Const(0, 1)))
        any_op = Signal()
        m.d.comb += any_op.eq(Cat(*[lane.op_fire for lane in lanes]) != 0)
        # unfired_hi of the next cycle without waiting for the subtraction: the high part
        # drops by the borrow out of the low bits (``unfired >= n_fired`` always)
        hi_part = unfired >> nb
        borrow = Signal()
        m.d.comb += borrow.eq(unfired[:nb] < n_fired)
        with m.If(state == _State.RUN):
            m.d.sync += [unfired.eq(unfired - n_fired),
                         unfired_hi.eq((hi_part >= 2) | ((hi_part == 1) & ~borrow))]
        with m.If(self.busy):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
        with m.If((state == _State.RUN) & (unfired_hi | (unfired[:nb] != n_fired)) & ~any_op):
            m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        return m


def verilog_text(component, name: str) -> str:
    """Verilog of ``component`` with top module ``name`` (see ``sparrow.sim.cocotb_run.verilog_of``)."""
    from sparrow.sim.cocotb_run import verilog_of
    return verilog_of(component, name)
