"""Formal properties of the zero-skip scheduler: :class:`sparrow.hdl.matrix_engine.MatrixLane`.

Small configuration: ``cols = 2`` MACs per lane, ``k`` in ``1..4`` (one or two activation lines,
so the last-line mask and the dropping of all-zero non-last lines are exercised), two output
rows granted back to back (rows overlap in the lane's pipeline), free activation and weight
memory contents (``AnyConst``; the rows and weights are placed in the first ``MEM_LINES`` lines
to keep the solver's memory muxes small), scratchpad responses after any latency >= 1 (in
order), free ``cmd.ready`` / ``res.ready`` back-pressure.

An *op* is observable on the lane's ports: a weight-line read ``wgt_rd.cmd`` accepted at
address ``w_addr + j`` is the ``cols`` products of activation element ``j``; ``row_fired`` marks,
a cycle later, a row's last op. The results leave through the lane's ``LaneOutput``. Asserted:

* activation reads stay inside the lines of the row being fetched;
* every op's element index is ``< k`` and no element of a row is performed twice;
* when a row's last op is issued, every non-zero element ``j < k`` of that row has been
  performed (exactly once, by the previous point);
* ``zero_skip``: an op on a zero activation happens only as the row's last op (a row whose
  remaining lines are all zero costs one multiply by zero, as documented) — at most once;
* results leave ``res`` in grant order with the granted accumulator address and (check
  ``matrix.results``, slow) ``data[0] == sum_{j<k} A[j] * W[j][0]`` (int32) — the products used
  are the right ones (column 0 only: the columns are one generated loop, and the reference
  multipliers dominate the solver time).
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cat, Const, Cover, Mux, Signal, signed
from amaranth.hdl._ast import AnyConst, AnySeq
from amaranth.lib.fifo import SyncFIFO

from sparrow.config import HwConfig
from sparrow.hdl.matrix_engine import LaneOutput, MatrixLane, connect_lane_output

from .formal import FormalCheck, FormalWrapper, register

CFG = HwConfig(rows=2, cols=2, act_depth=16, wgt_depth=16, acc_depth=16, act_banks=1, acc_banks=1,
               n_semaphores=4, name="formal-matrix")
K_MAX = 4
N_ROWS = 2
#: Lines of the modelled scratchpads (addresses are constrained below this: smaller muxes)
MEM_LINES = 4

RESULT_MUTANTS = {
    "swapped_weights": "the weight scratchpad returns line addr^1 (the scheduling is right, the products wrong)",
}
MUTANTS = {
    "dense": "the lane is built with zero_skip=False (performs zero products)",
    "lost_op": "the lane sees a weight read accepted in a cycle the scratchpad did not accept it",
    "double_op": "the scratchpad accepts a weight read the lane does not see accepted (re-issued)",
    "ignore_k": "the lane is given an all-ones last-line mask (elements beyond k performed)",
}


class _ReadMem:
    """In-order read port model: responses after >= 1 cycle, whenever a free input allows."""

    def __init__(self, m, name, port, contents, line_bits, depth=8, cmd_ready=None):
        fifo = SyncFIFO(width=len(port.cmd.payload), depth=depth)
        idx_bits = (contents.shape().width // line_bits - 1).bit_length()
        m.submodules[name] = fifo
        self.ready = AnySeq(1) if cmd_ready is None else cmd_ready
        m.d.comb += [port.cmd.ready.eq(self.ready & fifo.w_rdy),
                     fifo.w_en.eq(port.cmd.valid & port.cmd.ready), fifo.w_data.eq(port.cmd.payload)]
        go = AnySeq(1)
        m.d.comb += [port.rsp.valid.eq(fifo.r_rdy & go), fifo.r_en.eq(port.rsp.valid),
                     port.rsp.payload.eq(contents.word_select(fifo.r_data[:idx_bits], line_bits))]


class LaneProps(FormalWrapper):
    def __init__(self, mutant=None, cfg=CFG, zero_skip=True, check_data=True, covers=False):
        super().__init__(mutant)
        self.cfg, self.zero_skip, self.check_data, self.covers = cfg, zero_skip, check_data, covers

    def build(self, m):
        cfg, mut, cols = self.cfg, self.mutant, self.cfg.cols
        zs = self.zero_skip and mut != "dense"
        m.submodules.lane = lane = MatrixLane(cfg, zero_skip=zs)
        # the lane's results leave through its output buffer, as in the engine
        m.submodules.out = out = LaneOutput(cfg, lane.out_depth)
        connect_lane_output(m, lane, out)
        lb = 8 * cols
        act_mem = AnyConst(lb * MEM_LINES)
        wgt_mem = AnyConst(lb * MEM_LINES)

        # -- instruction constants -------------------------------------------------------------
        k = AnyConst(3)
        w_addr = AnyConst(cfg.wgt_addr_bits)
        m.d.comb += [Assume((k >= 1) & (k <= K_MAX)), Assume(w_addr + k <= MEM_LINES)]
        n_lines = Signal(2)
        m.d.comb += n_lines.eq((k + cols - 1) // cols)
        in_last = Signal(range(cols + 1))                 # elements of the last line within k
        m.d.comb += in_last.eq(k - (n_lines - 1) * cols)
        last_mask = Signal(cols)
        m.d.comb += last_mask.eq(Cat(*[Const(e, 3) < in_last for e in range(cols)]))
        m.d.comb += [lane.n_lines.eq(n_lines), lane.w_addr.eq(w_addr),
                     lane.last_mask.eq(Const((1 << cols) - 1, cols) if mut == "ignore_k" else last_mask)]

        # -- two rows, granted whenever the lane asks and a free input allows ------------------------
        row_a = [AnyConst(cfg.act_addr_bits) for _ in range(N_ROWS)]
        for a in row_a:
            m.d.comb += Assume(a + n_lines <= MEM_LINES)
        granted = Signal(range(N_ROWS + 1))
        can_grant = AnySeq(1) & (granted < N_ROWS)
        grant = Signal()
        m.d.comb += [grant.eq(lane.row_req & can_grant), lane.row_grant.eq(grant),
                     lane.row_a.eq(Mux(granted == 0, row_a[0], row_a[1])), lane.row_acc.eq(granted + 5)]
        with m.If(grant):
            m.d.sync += granted.eq(granted + 1)

        # activation elements of each row (j < K_MAX), zero beyond k
        def act(r, j):
            line = act_mem.word_select((row_a[r] + (j // cols))[:2], lb)
            return Mux(j < k, line[8 * (j % cols): 8 * (j % cols) + 8], 0)

        A = [[Signal(signed(8), name=f"a{r}_{j}") for j in range(K_MAX)] for r in range(N_ROWS)]
        for r in range(N_ROWS):
            for j in range(K_MAX):
                m.d.comb += A[r][j].eq(act(r, j))

        # -- memories ---------------------------------------------------------------------------------
        _ReadMem(m, "actmem", lane.act_rd, act_mem, lb)
        # activation reads stay inside the row being fetched (the latest granted one)
        cur_a = Mux(granted == 1, row_a[0], row_a[1])
        with m.If(lane.act_rd.cmd.valid):
            m.d.comb += [Assert(granted != 0, "activation read before any row was granted"),
                         Assert((lane.act_rd.cmd.payload >= cur_a) & (lane.act_rd.cmd.payload < cur_a + n_lines),
                                "activation read outside the row's lines")]
        wready = AnySeq(1)
        lane_wready = Signal()
        glitch = AnySeq(1)
        m.d.comb += lane_wready.eq(wready)
        if mut == "lost_op":
            m.d.comb += lane_wready.eq(wready | glitch)
        if mut == "double_op":
            m.d.comb += lane_wready.eq(wready & ~glitch)
        wfifo = SyncFIFO(width=cfg.wgt_addr_bits, depth=8)
        m.submodules.wgtmem = wfifo
        mem_fire = Signal()
        m.d.comb += [mem_fire.eq(lane.wgt_rd.cmd.valid & wready & wfifo.w_rdy),
                     lane.wgt_rd.cmd.ready.eq(lane_wready & wfifo.w_rdy),
                     wfifo.w_en.eq(mem_fire), wfifo.w_data.eq(lane.wgt_rd.cmd.payload)]
        go = AnySeq(1)
        m.d.comb += [lane.wgt_rd.rsp.valid.eq(wfifo.r_rdy & go), wfifo.r_en.eq(lane.wgt_rd.rsp.valid),
                     lane.wgt_rd.rsp.payload.eq(wgt_mem.word_select(
                         wfifo.r_data[:2] ^ (1 if mut == "swapped_weights" else 0), lb))]

        # -- op accounting (scratchpad's view of accepted weight reads) -------------------------------
        # The lane reports a row's last op a cycle late (`row_fired`): the row being issued is
        # `r_cnt` plus that late report, and the checks tied to a row's end run a cycle late.
        r_cnt = Signal(range(N_ROWS + 1))
        r_iss = Signal(range(N_ROWS + 2))
        m.d.comb += r_iss.eq(r_cnt + lane.row_fired)
        zero_prev = Signal()            # last cycle's op was a zero product
        fire_prev = Signal()
        r_prev = Signal(range(N_ROWS + 2))
        m.d.sync += [zero_prev.eq(0), fire_prev.eq(mem_fire), r_prev.eq(r_iss)]
        j_op = Signal(cfg.wgt_addr_bits)
        m.d.comb += j_op.eq(lane.wgt_rd.cmd.payload - w_addr)
        done = [Signal(K_MAX, name=f"performed{r}") for r in range(N_ROWS)]
        zero_ops = [Signal(2, name=f"zero_ops{r}") for r in range(N_ROWS)]
        with m.If(mem_fire):
            m.d.comb += [Assert(r_iss < N_ROWS, "op issued for a row that was never granted"),
                         Assert(j_op < k, "op on an element beyond k")]
            for r in range(N_ROWS):
                with m.If(r_iss == r):
                    for j in range(K_MAX):
                        with m.If(j_op == j):
                            m.d.comb += Assert(~done[r][j], "element performed twice")
                            m.d.sync += done[r][j].eq(1)
                            if self.zero_skip:      # the property asked of a zero-skipping lane
                                with m.If(A[r][j] == 0):
                                    m.d.comb += Assert(zero_ops[r] == 0, "two zero products in one row")
                                    m.d.sync += [zero_ops[r].eq(zero_ops[r] + 1), zero_prev.eq(1)]
        m.d.comb += Assert(~zero_prev | lane.row_fired, "zero product performed (not the row's last op)")
        with m.If(lane.row_fired):
            m.d.sync += r_cnt.eq(r_cnt + 1)
            for r in range(N_ROWS):
                with m.If(r_prev == r):
                    for j in range(K_MAX):
                        with m.If(A[r][j] != 0):
                            m.d.comb += Assert(done[r][j], "non-zero product never performed")
        m.d.comb += Assert(~lane.row_fired | fire_prev, "row_fired without an accepted op")

        # -- results -----------------------------------------------------------------------------------
        res_ready = AnySeq(1)
        m.d.comb += out.res.ready.eq(res_ready)
        r_out = Signal(range(N_ROWS + 1))
        res_fire = out.res.valid & res_ready
        with m.If(res_fire):
            m.d.sync += r_out.eq(r_out + 1)
            m.d.comb += [Assert(r_out < granted, "result for a row never granted"),
                         Assert(out.res.payload.addr == r_out + 5, "results out of grant order")]
            if self.check_data:
                for r in range(N_ROWS):
                    with m.If(r_out == r):
                        for c in range(1):     # columns are one generated loop: column 0 stands for all
                            ref = sum((A[r][j] * wgt_mem.word_select((w_addr + j)[:2], lb)[8 * c: 8 * c + 8].as_signed()
                                       for j in range(K_MAX)), Const(0, signed(32)))
                            m.d.comb += Assert(out.res.payload.data[c] == ref[:32].as_signed(),
                                               f"result column {c} is not sum A[j]*W[j][c]")
        if self.covers:
            nz_rows = [Cat(*[A[r][j] != 0 for j in range(K_MAX)]) for r in range(N_ROWS)]
            m.d.comb += [Cover(res_fire & (r_out == 1) & (k == 4) & (nz_rows[0] == 0b1001) & (nz_rows[1] == 0b0110)),
                         Cover(res_fire & (r_out == 0) & (k == 3) & (nz_rows[0] == 0)),
                         Cover(mem_fire & (r_iss == 1) & (r_out == 0)),   # row 1 issuing before row 0's result left
                         ]


register(FormalCheck(
    "matrix.zero_skip_once", lambda mutant: LaneProps(mutant, check_data=False), "bmc", 10,
    ci_depth=8, description=
    "MatrixLane (cols=2, k<=4, 2 rows, any latency/back-pressure): every non-zero product performed exactly "
    "once, none beyond k, zero products only as a zero row's single closing op; results in grant order",
    mutants=MUTANTS, mutant_depth=8))
register(FormalCheck(
    "matrix.results", lambda mutant: LaneProps(mutant, check_data=True), "bmc", 11,
    "MatrixLane: each finished row's column 0 equals sum_j A[j]*W[j][0] (int32) for free memory contents "
    "(slow: the reference multipliers dominate the solver time)",
    mutants=RESULT_MUTANTS, mutant_depth=11, slow=True))
register(FormalCheck(
    "matrix.cover", lambda mutant: LaneProps(None, check_data=False, covers=True), "cover", 16,
    "reachability: two sparse rows finished back to back; an all-zero row; rows overlapping"))
