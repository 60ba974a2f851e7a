"""VECTOR engine: REQUANT, ADD, MAXPOOL, AVGPOOL and MASK over scratchpad lines.

Structure (one instruction executing at a time, the next one checked meanwhile)::

    instr -> nxt register: CHECK (8 cycles: footprint, SPAD_RANGE), overlapping the running one
          -> ins register: RUN -> done
                 read issue --cmd--> scratchpad --rsp--> response FIFO (per port, fall-through)
                 consume (pop operands, pool window, mask select) -> E0 register
                 -> RequantUnit (9 stages) -> write FIFO -> act_wr

* Every read port has a response FIFO of ``rd_depth`` lines and a credit counter (issued and
  not yet consumed); a read is only issued when its response is sure to fit, so responses are
  always accepted when valid, whatever the port latency.
* The consumer pops operands only while the lines already in the pipeline plus the write FIFO
  leave room (``wr_depth`` credits), so the arithmetic pipeline never stalls; back-pressure of
  the write port just fills the write FIFO.
* Output lines are written in order, each after every input line it depends on has been read
  (they are computed from the responses), so in-place REQUANT/ADD/MASK work. The next
  instruction starts only after the last write was accepted (its reads see this one's writes).
* Steady state: one line per cycle for REQUANT/ADD/MASK and one input line per cycle for the
  pools, given enough response credits for the port latency.

Timing (FPGA): late signals -- the write port's ready, the FIFOs' r_rdy, the pops -- reach few
and narrow registers, and wide registers load from registers:

* Start: ``go`` (it depends on the last write's ready) loads only the state, ``issue`` and
  ``start_q``. The read-issue state (pointers, counts, loop bounds) is preloaded from nxt once
  the running instruction has issued all its reads (a registered decision, ``pre_go``) and
  ``issue`` releases it; everything else (op flags, consumer, unit configuration, write side)
  is loaded in ``start_q`` from nxt, which still holds the instruction then. Reads start in
  the cycle after go, as they did when go loaded everything.
* Pops are one LUT of registers: the FIFOs' r_rdy and flags registered from the next values
  of the op, the write credit, the pool window end, the REQUANT parameter stage and the mask
  unit's need_bitmap. The E0 operand registers and the REQUANT parameter registers load
  without a clock enable from the pops (their valid bit / the parameter stage says when the
  value counts).
* Pools: the window accumulation runs one stage behind the pops, from a register of the popped
  line, and a window's result goes to a register before E0 (two more cycles per
  MAXPOOL/AVGPOOL instruction); the accumulator restarts from the window operation's identity
  (-128 / 0) instead of selecting the first line and the max compares 8 bits, unsigned.
* Check: the footprint multiplies are free-running pipelined multipliers (DSP registers) on
  nxt's held fields and check registers; nxt's op flags are registered.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import Out

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.isa import MaskMode, VectorOp, instruction_layout

from .engine_port import engine_control_members
from .mask_unit import MaskUnit
from .multiplier import Multiplier
from .requant_unit import RequantUnit
from .spad_port import ReadPortSignature, WritePortSignature, acc_line, act_line

__all__ = ["VectorEngine", "vector_engine_verilog"]


class VectorEngine(wiring.Component):
    """The VECTOR engine (see module docstring and ``docs/isa.md``, VECTOR).

    Parameters
    ----------
    cfg : HwConfig
        Hardware configuration (``cols``, scratchpad depths).
    rd_depth : int
        Response FIFO depth (outstanding reads) per read port; >= 2. One line per cycle needs
        more than the port's read latency plus 2.
    wr_depth : int
        Output credits (write FIFO depth); >= 2. One line per cycle needs more than
        ``RequantUnit.LATENCY + 3``.

    Ports
    -----
    instr : In(stream.Signature(instruction_layout()))
        VECTOR instructions (decoded-legal, past their semaphore wait). One instruction is taken
        ahead of the running one and checked meanwhile; it starts in the cycle the running one's
        last write is accepted.
    done : Out(1)
        One-cycle pulse per completed instruction, in order (the cycle after its last write).
        A SPAD_RANGE fault is reported at the earliest the cycle after the previous ``done``.
    busy : Out(1)
        An accepted instruction has not completed (low again once an error stopped the engine).
    error : Out(ErrorCode)
        ``SPAD_RANGE`` (sticky) when an instruction's footprint leaves a scratchpad; the
        instruction is not executed (no read, no write) and no further instruction is accepted.
    acc_rd : Out(ReadPortSignature(cfg.acc_addr_bits, acc_line(cols)))
        REQUANT parameter lines (bias, mult, shift at ``param``..``param+2``), then its inputs.
    act_rd_a : Out(ReadPortSignature(cfg.act_addr_bits, act_line(cols)))
        ADD operand a; MASK data; pool inputs.
    act_rd_b : Out(ReadPortSignature(cfg.act_addr_bits, act_line(cols)))
        ADD operand b; MASK LOADED bitmap lines.
    act_wr : Out(WritePortSignature(cfg.act_addr_bits, act_line(cols)))
        Output lines.
    busy_cycles : Out(32)
        Cycles with ``busy`` high (wraps).
    stall_cycles : Out(32)
        Cycles while executing in which no input line was consumed and no output line was
        written (waiting for read responses, write-port back-pressure or pipeline drain).
    """

    def __init__(self, cfg: HwConfig, *, rd_depth: int = 8, wr_depth: int = 16):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a HwConfig, not {cfg!r}")
        for name, v in (("rd_depth", rd_depth), ("wr_depth", wr_depth)):
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 256:
                raise ValueError(f"{name} must be an int in 2..256, not {v!r}")
        self.cfg, self.rd_depth, self.wr_depth = cfg, rd_depth, wr_depth
        cols = cfg.cols
        super().__init__({
            **engine_control_members(),
            "acc_rd": Out(ReadPortSignature(cfg.acc_addr_bits, acc_line(cols))),
            "act_rd_a": Out(ReadPortSignature(cfg.act_addr_bits, act_line(cols))),
            "act_rd_b": Out(ReadPortSignature(cfg.act_addr_bits, act_line(cols))),
            "act_wr": Out(WritePortSignature(cfg.act_addr_bits, act_line(cols))),
            "busy_cycles": Out(32),
            "stall_cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, cols = self.cfg, self.cfg.cols
        comb, sync = m.d.comb, m.d.sync
        W = 32   # width of footprint arithmetic (no overflow for any field values)

        def decoded(word):
            """Views and op flags of an instruction register; the flags are registers, valid from
            the second cycle after ``word`` was loaded (nxt: from check stage 0 on, where nothing
            reads them), so no op decode sits in front of the start and preload selects."""
            b = word.body
            vop = b.requant.vop
            f = dict(rq=b.requant, va=b.vadd, pl=b.maxpool, mk=b.mask)
            for k, op in (("is_rq", VectorOp.REQUANT), ("is_add", VectorOp.ADD), ("is_max", VectorOp.MAXPOOL),
                          ("is_avg", VectorOp.AVGPOOL), ("is_mask", VectorOp.MASK)):
                f[k] = Signal(name=f"{word.as_value().name}_{k}")
                m.d.sync += f[k].eq(vop == op)
            f["is_pool"] = f["is_max"] | f["is_avg"]
            f["loaded"] = Signal(name=f"{word.as_value().name}_loaded")
            m.d.sync += f["loaded"].eq((vop == VectorOp.MASK) & (b.mask.mode == MaskMode.LOADED))
            return f

        # ins: the running instruction; nxt: the next one, checked while ins runs.
        ins = Signal(instruction_layout())
        nxt = Signal(instruction_layout())
        mk = ins.body.mask      # ins holds the running instruction's MASK fields for the mask unit
        nx = decoded(nxt)
        nmk = nx["mk"]

        # ---- submodules -------------------------------------------------------------------
        m.submodules.unit = unit = RequantUnit(cols)
        m.submodules.maskgen = mgen = MaskUnit(cols)
        # Every FIFO's output is a register (``SyncFIFOBuffered``): ``r_rdy`` and ``r_data`` come
        # from flip-flops, not from a level compare and a LUT-RAM read, which chained into the
        # pops and the unit's input registers (operand FIFOs) and into the write counters
        # (write FIFO) -- the block's FPGA critical paths. Each is one entry deeper than its
        # credits: the buffered FIFO refuses a write while its inner FIFO is full, even in the
        # cycle that entry moves to the output register. Costs a cycle per instruction.
        m.submodules.fifo_a = fa = fifo.SyncFIFOBuffered(width=8 * cols, depth=self.rd_depth + 1)
        m.submodules.fifo_b = fb = fifo.SyncFIFOBuffered(width=8 * cols, depth=self.rd_depth + 1)
        m.submodules.fifo_c = fc = fifo.SyncFIFOBuffered(width=32 * cols, depth=self.rd_depth + 1)
        m.submodules.fifo_w = fw = fifo.SyncFIFOBuffered(width=8 * cols, depth=self.wr_depth + 1)

        for f, port in ((fa, self.act_rd_a), (fb, self.act_rd_b), (fc, self.acc_rd)):
            comb += [f.w_data.eq(port.rsp.payload.as_value()), f.w_en.eq(port.rsp.valid)]

        # ---- check-stage registers -----------------------------------------------------------
        # (widths: the largest value the ISA field widths allow)
        rq_span = Signal(20)    # (rows-1)*dst_stride
        ph = Signal(12)         # (out_h-1)*stride_h + kh-1
        pw = Signal(12)         # (out_w-1)*stride_w + kw-1
        ohw = Signal(16)        # out_h*out_w
        sh_rs = Signal(17)      # stride_h*row_stride
        sw_lpp = Signal(9)      # stride_w*lpp
        win_m1 = Signal(8)      # kh*kw - 1
        win_run = Signal(8)     # the same, for the running instruction
        mn = Signal(18)         # MASK rows*row_lines
        npool = Signal(22)      # out_h*out_w*lpp

        running = Signal()
        go = Signal()           # nxt becomes the running instruction (late: the last write's ready)
        start_q = Signal()      # the cycle after go: initialise the RUN state from nxt (still there)
        sync += start_q.eq(go)
        # Read-issue state: loaded ahead from nxt ("preload", once the running instruction has
        # issued all its reads), released by the single register ``issue`` at go.
        issue = Signal()        # the read-issue state is the running instruction's: may issue
        pre = Signal()          # the read-issue state holds nxt's
        pre_go = Signal()       # registered preload decision (the wide clock enable)
        fail = Signal()
        last_write = Signal()

        # ---- read issue: acc port (REQUANT) ---------------------------------------------------
        acc_ptr = Signal(cfg.acc_addr_bits)
        acc_cnt = Signal(13)
        acc_left = Signal(13)
        acc_out = Signal(range(self.rd_depth + 1))
        acc_issue = Signal()
        acc_src = Signal(14)
        comb += [self.acc_rd.cmd.valid.eq(issue & (acc_left != 0) & (acc_out < self.rd_depth)),
                 self.acc_rd.cmd.payload.eq(acc_ptr),
                 acc_issue.eq(self.acc_rd.cmd.valid & self.acc_rd.cmd.ready)]
        with m.If(acc_issue):
            sync += [acc_left.eq(acc_left - 1), acc_cnt.eq(acc_cnt + 1),
                     acc_ptr.eq(Mux(acc_cnt == 2, acc_src, acc_ptr + 1))]

        # ---- read issue: act port b (ADD operand b, MASK bitmap) --------------------------------
        b_ptr = Signal(cfg.act_addr_bits)
        b_left = Signal(16)     # ADD lines (12 bits) or MASK bitmap lines (15 bits)
        b_out = Signal(range(self.rd_depth + 1))
        b_issue = Signal()
        comb += [self.act_rd_b.cmd.valid.eq(issue & (b_left != 0) & (b_out < self.rd_depth)),
                 self.act_rd_b.cmd.payload.eq(b_ptr),
                 b_issue.eq(self.act_rd_b.cmd.valid & self.act_rd_b.cmd.ready)]
        with m.If(b_issue):
            sync += [b_left.eq(b_left - 1), b_ptr.eq(b_ptr + 1)]

        # ---- read issue: act port a (5 nested loops; linear ops use the dx loop only) ------------
        # addr = src + (oy*sh + dy)*row_stride + (ox*sw + dx)*lpp + l, loops oy/ox/l/dy/dx.
        AW = 24
        a_more = Signal()
        a_out = Signal(range(self.rd_depth + 1))
        a_issue = Signal()
        # Each loop counts down what is left of it (``*_r``) and keeps "at its last value" as a
        # register (``*_e``, next value from a compare of the count with 1, or the reload flag
        # ``*_z``), so an issue selects the next address from registered flags and the adders'
        # outputs, with no equality compare of the counters in front of the selects.
        dx_r, dx_m1 = Signal(18), Signal(18)   # linear ops: up to 1023*255 lines
        dy_r, dy_m1 = Signal(4), Signal(4)
        l_r, l_m1 = Signal(6), Signal(6)
        ox_r, ox_m1 = Signal(8), Signal(8)
        oy_r, oy_m1 = Signal(8), Signal(8)
        dx_e, dy_e, l_e, ox_e, oy_e = (Signal(name=f"{k}_e") for k in ("dx", "dy", "l", "ox", "oy"))
        dx_z, dy_z, l_z, ox_z, oy_z = (Signal(name=f"{k}_z") for k in ("dx", "dy", "l", "ox", "oy"))
        dx_step, dy_step = Signal(AW), Signal(AW)
        ox_step, oy_step = Signal(AW), Signal(AW)
        p_oy, p_pix, p_win, p_row, a_addr = (Signal(AW, name=n) for n in
                                             ("p_oy", "p_pix", "p_win", "p_row", "a_addr"))

        def init_a(src, dx_last, dx_one, dx_stp, *, dy_m1_=0, dy_one=1, dy_step_=0, l_m1_=0, l_one=1,
                   ox_m1_=0, ox_one=1, ox_step_=0, oy_m1_=0, oy_one=1, oy_step_=0):
            m.d.sync += [p_oy.eq(src), p_pix.eq(src), p_win.eq(src), p_row.eq(src), a_addr.eq(src),
                         dx_step.eq(dx_stp), dy_step.eq(dy_step_), ox_step.eq(ox_step_),
                         oy_step.eq(oy_step_)]
            for r, m1, e, z, last, one in ((dx_r, dx_m1, dx_e, dx_z, dx_last, dx_one),
                                           (dy_r, dy_m1, dy_e, dy_z, dy_m1_, dy_one),
                                           (l_r, l_m1, l_e, l_z, l_m1_, l_one),
                                           (ox_r, ox_m1, ox_e, ox_z, ox_m1_, ox_one),
                                           (oy_r, oy_m1, oy_e, oy_z, oy_m1_, oy_one)):
                m.d.sync += [r.eq(last), m1.eq(last), e.eq(one), z.eq(one)]

        comb += [self.act_rd_a.cmd.valid.eq(issue & a_more & (a_out < self.rd_depth)),
                 self.act_rd_a.cmd.payload.eq(a_addr),
                 a_issue.eq(self.act_rd_a.cmd.valid & self.act_rd_a.cmd.ready)]
        # The walker's next state is formed from registers only (``walk_nx``, as if this cycle issued),
        # and the issue only enables the registers: timing: with the issue at the top of the loop
        # selects, valid -> issue -> five select levels -> address registers was 13.1 ns estimated
        # in the whole design (VECTOR -> the ACT read slice -> VECTOR).
        walk = (dx_r, dx_e, dy_r, dy_e, l_r, l_e, ox_r, ox_e, oy_r, oy_e, p_oy, p_pix, p_win, p_row, a_addr, a_more)
        # (kept as nets of their own, so synthesis leaves the issue as the last select instead of
        # folding it into the loop selects: 15.6 ns estimated otherwise, issue -> the ACT read
        # slice's push -> the selects -> p_win)
        walk_nx = {id(r): Signal.like(r, name=f"{r.name}_nx", attrs={"keep": 1}) for r in walk}

        def X(r):
            return walk_nx[id(r)]
        comb += [X(r).eq(r) for r in walk]
        with m.If(~dx_e):
            comb += [X(dx_r).eq(dx_r - 1), X(dx_e).eq(dx_r == 1), X(a_addr).eq(a_addr + dx_step)]
        with m.Else():
            comb += [X(dx_r).eq(dx_m1), X(dx_e).eq(dx_z)]
            with m.If(~dy_e):
                comb += [X(dy_r).eq(dy_r - 1), X(dy_e).eq(dy_r == 1), X(p_row).eq(p_row + dy_step),
                         X(a_addr).eq(p_row + dy_step)]
            with m.Else():
                comb += [X(dy_r).eq(dy_m1), X(dy_e).eq(dy_z)]
                with m.If(~l_e):
                    comb += [X(l_r).eq(l_r - 1), X(l_e).eq(l_r == 1), X(p_win).eq(p_win + 1),
                             X(p_row).eq(p_win + 1), X(a_addr).eq(p_win + 1)]
                with m.Else():
                    comb += [X(l_r).eq(l_m1), X(l_e).eq(l_z)]
                    with m.If(~ox_e):
                        n_pix = p_pix + ox_step
                        comb += [X(ox_r).eq(ox_r - 1), X(ox_e).eq(ox_r == 1), X(p_pix).eq(n_pix),
                                 X(p_win).eq(n_pix), X(p_row).eq(n_pix), X(a_addr).eq(n_pix)]
                    with m.Else():
                        comb += [X(ox_r).eq(ox_m1), X(ox_e).eq(ox_z)]
                        with m.If(~oy_e):
                            n_oy = p_oy + oy_step
                            comb += [X(oy_r).eq(oy_r - 1), X(oy_e).eq(oy_r == 1), X(p_oy).eq(n_oy),
                                     X(p_pix).eq(n_oy), X(p_win).eq(n_oy), X(p_row).eq(n_oy), X(a_addr).eq(n_oy)]
                        with m.Else():
                            comb += X(a_more).eq(0)
        with m.If(a_issue):
            sync += [r.eq(X(r)) for r in walk]

        # ---- consumer -------------------------------------------------------------------------
        # Every pop decision reads registers only: the FIFOs' registered r_rdy and the flags
        # ``a_free`` / ``a_withb`` (port a may pop alone / together with port b) and ``c_ok``
        # (port c may pop), which fold the op, the write credit, the pool window end, the
        # REQUANT parameter count and the mask unit's need_bitmap together and are registered
        # from the next values of those. A pop is one LUT deep; it used to combine the state, an
        # op decode, the level compares and the credit compare before fanning out to the FIFOs'
        # and the unit's clock enables.
        inflight = Signal(range(self.wr_depth + 1))
        credit = Signal(init=1)          # inflight < wr_depth
        wr_ok = Signal()
        f_rq, f_add, f_mask, f_pool, f_max, f_lin = (Signal(name=f"f_{k}") for k in
                                                    ("rq", "add", "mask", "pool", "max", "lin"))
        pstage = Signal(3)               # one-hot: REQUANT parameter line k (bias, mult, shift) due
        pdone = Signal()                 # all three taken
        wleft = Signal(8)                # pool: lines of the window after the current one
        w_last = Signal()                # wleft == 0
        win_one = Signal()               # the window is one line (win_run == 0)
        a_free, a_withb, c_ok = Signal(), Signal(), Signal()   # port a may pop alone / with port b
        pool_acc = [Signal(signed(16), name=f"pool_acc_{c}") for c in range(cols)]

        pop_a, pop_b, pop_c, emit = Signal(), Signal(), Signal(), Signal()
        comb += [pop_c.eq(fc.r_rdy & c_ok),
                 pop_a.eq(fa.r_rdy & (a_free | (a_withb & fb.r_rdy))),
                 pop_b.eq(fa.r_rdy & a_withb & fb.r_rdy),
                 emit.eq((pop_c & pdone) | (pop_a & (f_lin | w_last))),
                 fa.r_en.eq(pop_a), fb.r_en.eq(pop_b), fc.r_en.eq(pop_c)]

        # Next values of the flags behind the pop flags (start_q loads the new instruction's).
        flags_n = {}
        for k, reg, val in (("rq", f_rq, nx["is_rq"]), ("add", f_add, nx["is_add"]),
                            ("mask", f_mask, nx["is_mask"]), ("pool", f_pool, nx["is_pool"]),
                            ("max", f_max, nx["is_max"]), ("lin", f_lin, nx["is_add"] | nx["is_mask"])):
            flags_n[k] = Signal(name=f"f_{k}_n")
            comb += flags_n[k].eq(Mux(start_q, val, reg))
            sync += reg.eq(flags_n[k])
        credit_n, pdone_n, w_last_n, a_ok_n, need_b_n = Signal(), Signal(), Signal(), Signal(), Signal()
        # inflight + emit - wr_ok < wr_depth, from compares of the registered count only
        comb += [credit_n.eq(Mux(emit & ~wr_ok, inflight < self.wr_depth - 1, Mux(wr_ok & ~emit, 1, credit))),
                 pdone_n.eq(~start_q & (pdone | (pop_c & pstage[2])))]
        with m.If(start_q):
            comb += w_last_n.eq(win_m1 == 0)
        with m.Elif(pop_a):
            comb += w_last_n.eq(Mux(w_last, win_one, wleft == 1))
        with m.Else():
            comb += w_last_n.eq(w_last)
        sync += [credit.eq(credit_n), pdone.eq(pdone_n), w_last.eq(w_last_n),
                 inflight.eq(inflight + emit - wr_ok),
                 c_ok.eq(flags_n["rq"] & (~pdone_n | credit_n))]
        # port a pops only with port b for ADD and for a MASK line that needs a bitmap line
        comb += [a_ok_n.eq((flags_n["pool"] & (~w_last_n | credit_n)) | (flags_n["lin"] & credit_n)),
                 need_b_n.eq(flags_n["add"] | mgen.need_bitmap_next)]
        sync += [a_free.eq(a_ok_n & ~need_b_n), a_withb.eq(a_ok_n & need_b_n)]

        # REQUANT parameters (bias, mult, shift) and the unit's per-instruction configuration.
        acc_words = [fc.r_data[32 * c:32 * (c + 1)] for c in range(cols)]
        a_elems = [fa.r_data[8 * c:8 * (c + 1)].as_signed() for c in range(cols)]
        b_elems = [fb.r_data[8 * c:8 * (c + 1)].as_signed() for c in range(cols)]
        # A parameter register follows the FIFO output while its line is due (no clock enable from
        # the pop): it holds the line's value from the cycle the line is popped, when the stage
        # moves on. The unit is empty meanwhile (no line is emitted before the parameters).
        with m.If(start_q):
            sync += pstage.eq(Mux(nx["is_rq"], 1, 0))
        with m.Elif(pop_c):
            sync += pstage.eq(pstage << 1)
        for c in range(cols):
            with m.If(pstage[0]):
                sync += unit.bias[c].eq(acc_words[c].as_signed())
            with m.If(pstage[1]):
                sync += unit.mult[c].eq(acc_words[c][0:31])
            with m.If(pstage[2]):
                sync += unit.shift[c].eq(acc_words[c][0:6])

        # Pool window accumulation, one stage behind the pop: the popped line and its window-end
        # flag are registered (pd, pv, plast) and the accumulator and E0 are computed from those
        # registers. A compare chain behind the FIFO's output register, then the selects into
        # the accumulator and E0, was the block's critical path; the stage costs one cycle per
        # pool instruction (the write credit is still taken at the pop). The accumulator
        # restarts from the identity of the window operation (-128 for max: the inputs are int8;
        # 0 for the sum) when a window's last line is added, so the first line needs no select;
        # the max compares 8 bits (a max of int8 values stays int8).
        with m.If(pop_a):
            sync += wleft.eq(Mux(w_last, win_run, wleft - 1))
        pd = [Signal(signed(8), name=f"pool_d_{c}") for c in range(cols)]
        pv, plast = Signal(), Signal()
        sync += [pv.eq(pop_a & f_pool), plast.eq(w_last)] + [pd[c].eq(a_elems[c]) for c in range(cols)]
        # The window's result goes to a register (pres, valid with pres_v) and from there to E0:
        # the compare / add chain feeds only these registers (one more cycle per pool instruction).
        pres = [Signal(signed(16), name=f"pool_res_{c}") for c in range(cols)]
        pres_v = Signal()
        sync += pres_v.eq(pv & plast)
        for c in range(cols):
            d = pd[c]
            acc8 = pool_acc[c][:8].as_signed()
            gt = Signal(name=f"pool_gt_{c}")
            psum = Signal(signed(16), name=f"pool_sum_{c}")
            # signed compare as unsigned of the sign-flipped values: the result is the carry out
            comb += [gt.eq((d.as_unsigned() ^ 0x80) > (acc8.as_unsigned() ^ 0x80)), psum.eq(pool_acc[c] + d)]
            pmax = Mux(gt, d, acc8)
            with m.If(pv):
                sync += [pool_acc[c].eq(Mux(f_max, Mux(plast, -128, pmax), Mux(plast, 0, psum))),
                         pres[c].eq(Mux(f_max, pmax, psum))]

        # MASK. The mask generator restarts two cycles after go (start_q2), from the then loaded
        # running instruction: the first data line is read in the cycle after go and reaches the
        # FIFO's output register three cycles later at the earliest, and the start logic stays
        # off the mask -> E0 path. Its mode is CAUSAL for the other ops (no bitmap line due).
        start_q2 = Signal()
        sync += start_q2.eq(start_q)
        mk_mode = Signal(2)
        comb += [mgen.mode.eq(mk_mode), mgen.param.eq(mk.param), mgen.row_lines.eq(mk.row_lines),
                 mgen.bitmap.eq(fb.r_data), mgen.start.eq(start_q2), mgen.step.eq(f_mask & pop_a)]

        # E0: operand register feeding the unit, loaded every cycle (the unit takes it only with
        # e0_valid): no clock enable from the late pop decision on its 48*cols flip-flops.
        e0_valid = Signal()
        sync += e0_valid.eq((pop_c & pdone) | (pop_a & f_lin) | pres_v)
        for c in range(cols):
            sync += [unit.i_x[c].eq(Mux(f_rq, acc_words[c].as_signed(),
                                        Mux(f_mask, Mux(mgen.mask[c], mk.alt, a_elems[c]), pres[c]))),
                     unit.i_a[c].eq(a_elems[c]), unit.i_b[c].eq(b_elems[c])]
        comb += unit.i_valid.eq(e0_valid)

        # Unit output -> write FIFO (always has room: credits).
        comb += [fw.w_data.eq(unit.o_y.as_value()), fw.w_en.eq(unit.o_valid)]

        # ---- write side ---------------------------------------------------------------------
        wr_addr = Signal(AW)
        wr_step = Signal(8)
        wr_left = Signal(22)    # writes still to do (this one included; at most out_h*out_w*lpp)
        wr_last = Signal()      # registered wr_left == 1: keeps ready -> last_write -> go short
        comb += [self.act_wr.cmd.valid.eq(fw.r_rdy),
                 self.act_wr.cmd.payload.addr.eq(wr_addr),
                 self.act_wr.cmd.payload.data.eq(fw.r_data),
                 fw.r_en.eq(self.act_wr.cmd.ready),
                 wr_ok.eq(self.act_wr.cmd.valid & self.act_wr.cmd.ready)]
        with m.If(wr_ok):
            sync += [wr_addr.eq(wr_addr + wr_step), wr_left.eq(wr_left - 1), wr_last.eq(wr_left == 2)]
        comb += last_write.eq(wr_ok & wr_last)

        # ---- credits --------------------------------------------------------------------------
        sync += [a_out.eq(a_out + a_issue - pop_a),
                 b_out.eq(b_out + b_issue - pop_b),
                 acc_out.eq(acc_out + acc_issue - pop_c)]

        # ---- instruction intake and start-time checks (on nxt, overlapping the running one) --
        sync += self.done.eq(0)
        IDLE, RUN, ERR = range(3)
        state = Signal(range(3))
        nxt_valid = Signal()
        chk = Signal(4)          # check stage of nxt: 0..7 computing, 8: result in nxt_fail
        nxt_fail = Signal()
        launch = Signal()        # chk == 8 and legal: nxt may start (a register in front of go)
        # Footprint terms (one add each, registered); the footprint is out of range iff a term
        # is: max(a, b) >= depth <=> a >= depth or b >= depth. t1 is always ACT; t2/t3 are ACC
        # for REQUANT, ACT otherwise.
        t1, t2, t3 = (Signal(W, name=f"fp_t{k}") for k in (1, 2, 3))
        t1_r, t2_r, t3_r = (Signal(W, name=f"fp_t{k}_r") for k in (1, 2, 3))
        nrq, nva, npl = nx["rq"], nx["va"], nx["pl"]
        # Footprint in eight registered steps, one two-operand add per term and step. The
        # multiplies are free-running pipelined multipliers (operand and product registers: on
        # the FPGA those of a DSP block, not a DSP between fabric registers, which was the block's
        # critical path) on registers that hold still while nxt is checked: their products are
        # valid two cycles after their operands.
        #   0: field - 1 terms (level-1 products of nxt's fields valid from 2)
        #   2: "+ k - 1" sums, "- 1" of products (level-2 products valid from 5; out_h*out_w*lpp from 4)
        #   4: npool - 1, src + lpp - 1   5: ph*row_stride + pw*lpp
        #   6: the three footprint ends t1..t3   7: their range compare (nxt_fail)
        def product(name, a, b):
            mul = Multiplier(a.shape(), b.shape())
            m.submodules[f"chk_{name}"] = mul
            m.d.comb += [mul.a.eq(a), mul.b.eq(b)]
            return mul.p

        ohm1, owm1, rqm1_c = Signal(8), Signal(8), Signal(12)   # operands: the fields' widths
        comb += [ohm1.eq(npl.out_h - 1), owm1.eq(npl.out_w - 1), rqm1_c.eq(nrq.rows - 1)]
        khm1, kwm1, lppm1 = Signal(4), Signal(4), Signal(6)
        rqm1, lnm1 = Signal(12), Signal(12)
        ph_p, pw_p = Signal(11), Signal(11)
        win = Signal(8)
        mn_m1 = Signal(18)
        npool_m1 = Signal(22)
        pa, pb = Signal(26), Signal(18)
        src_l = Signal(15)      # pool src + lpp - 1
        pin_ab = Signal(27)     # pa + pb
        comb += [ohw.eq(product("ohw", npl.out_h, npl.out_w)),
                 sh_rs.eq(product("sh_rs", npl.stride_h, npl.row_stride)),
                 sw_lpp.eq(product("sw_lpp", npl.stride_w, npl.lpp)),
                 win.eq(product("win", npl.kh, npl.kw)),
                 mn.eq(product("mn", nmk.rows, nmk.row_lines)),
                 ph_p.eq(product("ph", ohm1, npl.stride_h)),
                 pw_p.eq(product("pw", owm1, npl.stride_w)),
                 rq_span.eq(product("rq_span", rqm1_c, nrq.dst_stride)),
                 npool.eq(product("npool", ohw, npl.lpp)),
                 pa.eq(product("pa", ph, npl.row_stride)),
                 pb.eq(product("pb", pw, npl.lpp))]
        # ready is a register of its own, equal to ~nxt_valid & (state != ERR): cleared when an
        # instruction is taken into nxt, set when nxt starts (an illegal nxt leaves it clear: ERR).
        # Timing: it ran from the state decode into the sequencer's issue logic.
        ready_r = Signal(init=1)
        comb += self.instr.ready.eq(ready_r)
        with m.If(self.instr.valid & self.instr.ready):
            sync += [nxt.eq(self.instr.payload), nxt_valid.eq(1), chk.eq(0), ready_r.eq(0)]
        with m.Elif(nxt_valid & (chk == 0)):
            sync += [chk.eq(1), khm1.eq(npl.kh - 1), kwm1.eq(npl.kw - 1),
                     lppm1.eq(npl.lpp - 1), rqm1.eq(nrq.rows - 1), lnm1.eq(nva.lines - 1)]
        with m.Elif(nxt_valid & (chk == 1)):
            sync += chk.eq(2)
        with m.Elif(nxt_valid & (chk == 2)):
            sync += [chk.eq(3), ph.eq(ph_p + khm1), pw.eq(pw_p + kwm1), mn_m1.eq(mn - 1),
                     win_m1.eq(win - 1)]
        with m.Elif(nxt_valid & (chk == 3)):
            sync += chk.eq(4)
        with m.Elif(nxt_valid & (chk == 4)):
            sync += [chk.eq(5), npool_m1.eq(npool - 1), src_l.eq(npl.src + lppm1)]
        with m.Elif(nxt_valid & (chk == 5)):
            sync += [chk.eq(6), pin_ab.eq(pa + pb)]
        with m.Elif(nxt_valid & (chk == 6)):
            sync += [chk.eq(7), t1_r.eq(t1), t2_r.eq(t2), t3_r.eq(t3)]
        with m.Elif(nxt_valid & (chk == 7)):
            sync += [chk.eq(8), nxt_fail.eq(fail), launch.eq(~fail)]

        with m.If(nx["is_rq"]):
            comb += [t1.eq(nrq.dst + rq_span), t2.eq(nrq.src + rqm1), t3.eq(nrq.param + 2)]
        with m.Elif(nx["is_add"]):
            comb += [t1.eq(nva.src_a + lnm1), t2.eq(nva.src_b + lnm1), t3.eq(nva.dst + lnm1)]
        with m.Elif(nx["is_pool"]):
            comb += [t1.eq(src_l + pin_ab), t2.eq(npl.dst + npool_m1), t3.eq(0)]
        with m.Else():
            comb += [t1.eq(nmk.src + mn_m1), t2.eq(nmk.dst + mn_m1),
                     t3.eq(Mux(nx["loaded"], nmk.mask_addr + (mn_m1 >> 3), 0))]
        d23 = Mux(nx["is_rq"], cfg.acc_depth, cfg.act_depth)
        comb += fail.eq((t1_r >= cfg.act_depth) | (t2_r >= d23) | (t3_r >= d23))

        # nxt starts when checked, legal and preloaded, as soon as the running instruction's last
        # write is accepted (its reads then see every write of the previous one). An illegal nxt
        # faults only from IDLE, i.e. after the previous instruction's done pulse. ``go`` depends
        # on the write port's ready, so it drives only a few registers: the state, ``issue``
        # (releases the preloaded read-issue state: reads start in the cycle after go) and
        # ``start_q``, which initialises everything else in the next cycle from nxt (still held:
        # a new instruction is taken at the earliest in that cycle). Nothing of the running
        # instruction is left then but its last write, accepted at go.
        checked = nxt_valid & (chk == 8)
        go_ok = Signal()
        comb += go_ok.eq(launch & pre)
        bad = Signal()
        comb += [go.eq(go_ok & ((state == IDLE) | ((state == RUN) & last_write))),
                 bad.eq(checked & nxt_fail & (state == IDLE)),
                 running.eq(state == RUN)]
        with m.If(go):
            sync += [nxt_valid.eq(0), launch.eq(0), state.eq(RUN), issue.eq(1), pre.eq(0), ready_r.eq(1)]
        with m.Elif(bad):
            sync += [nxt_valid.eq(0), pre.eq(0), state.eq(ERR), self.error.eq(ErrorCode.SPAD_RANGE)]
        with m.Elif((state == RUN) & last_write):
            sync += state.eq(IDLE)
        with m.If((state == RUN) & last_write):
            sync += self.done.eq(1)
        busy = Signal()
        comb += [busy.eq((state == RUN) | nxt_valid), self.busy.eq(busy)]

        is_rq, is_add, is_avg, is_max, is_mask, loaded = (nx[k] for k in ("is_rq", "is_add", "is_avg", "is_max",
                                                                          "is_mask", "loaded"))
        rq, va, pl, mk = nrq, nva, npl, nmk

        # ---- preload of the read-issue state (from nxt) ----------------------------------------
        # Once nxt's check-stage products are ready (chk >= 4) and the running instruction has
        # issued all its reads (or none runs), the read pointers, counts and loop bounds are
        # loaded from nxt, one cycle after a registered decision (pre_go drives the clock
        # enables). ``issue`` stays low until go: the reads wait for the running instruction's
        # last write as before, and start in the cycle after go, as before.
        rd_fin = Signal()
        comb += rd_fin.eq((acc_left == 0) & (b_left == 0) & ~a_more)
        sync += pre_go.eq(nxt_valid & (chk >= 4) & ~pre & ~pre_go & (~issue | rd_fin))
        with m.If(pre_go & nxt_valid):
            sync += [pre.eq(1), issue.eq(0),
                     acc_ptr.eq(rq.param), acc_src.eq(rq.src), acc_cnt.eq(0),
                     acc_left.eq(Mux(is_rq, rq.rows + 3, 0)),
                     a_more.eq(~is_rq), b_left.eq(0)]
            with m.If(is_rq):
                pass
            with m.Elif(is_add):
                sync += [b_left.eq(va.lines), b_ptr.eq(va.src_b)]
                init_a(va.src_a, va.lines - 1, va.lines == 1, 1)
            with m.Elif(is_mask):
                sync += [b_left.eq(Mux(loaded, (mn + 7) >> 3, 0)), b_ptr.eq(mk.mask_addr)]
                init_a(mk.src, mn - 1, mn == 1, 1)
            with m.Else():
                init_a(pl.src, pl.kw - 1, pl.kw == 1, pl.lpp, dy_m1_=pl.kh - 1, dy_one=pl.kh == 1,
                       dy_step_=pl.row_stride, l_m1_=pl.lpp - 1, l_one=pl.lpp == 1, ox_m1_=pl.out_w - 1,
                       ox_one=pl.out_w == 1, ox_step_=sw_lpp, oy_m1_=pl.out_h - 1, oy_one=pl.out_h == 1,
                       oy_step_=sh_rs)

        # ---- initialisation at the start of RUN (start_q, from nxt) ------------------------------
        # (the op flags, pdone and w_last are loaded above, from their next values)
        with m.If(start_q):
            sync += [ins.eq(nxt), win_run.eq(win_m1), win_one.eq(win_m1 == 0), wleft.eq(win_m1),
                     mk_mode.eq(Mux(is_mask, mk.mode.as_value(), MaskMode.CAUSAL))]
            for c in range(cols):
                sync += pool_acc[c].eq(Mux(is_max, -128, 0))
            # Unit defaults (REQUANT overwrites bias/mult/shift from its parameter lines).
            for c in range(cols):
                sync += [unit.bias[c].eq(0),
                         unit.mult[c].eq(Mux(is_avg, pl.mult, 1)),
                         unit.shift[c].eq(Mux(is_avg, pl.shift, Mux(is_add, va.shift, 0)))]
            sync += [unit.use_add.eq(is_add), unit.mult_a.eq(va.mult_a), unit.mult_b.eq(va.mult_b),
                     unit.zp.eq(Mux(is_rq, rq.zp, 0)),
                     unit.lo.eq(Mux(is_rq, rq.lo, Mux(is_add & va.relu, 0, -128))),
                     unit.hi.eq(Mux(is_rq, rq.hi, 127))]
            with m.If(is_rq):
                sync += [wr_addr.eq(rq.dst), wr_step.eq(rq.dst_stride), wr_left.eq(rq.rows),
                         wr_last.eq(rq.rows == 1)]
            with m.Elif(is_add):
                sync += [wr_addr.eq(va.dst), wr_step.eq(1), wr_left.eq(va.lines), wr_last.eq(va.lines == 1)]
            with m.Elif(is_mask):
                sync += [wr_addr.eq(mk.dst), wr_step.eq(1), wr_left.eq(mn), wr_last.eq(mn == 1)]
            with m.Else():
                sync += [wr_addr.eq(pl.dst), wr_step.eq(1), wr_left.eq(npool), wr_last.eq(npool == 1)]

        # ---- counters ---------------------------------------------------------------------------
        stall = Signal()
        comb += stall.eq(running & ~(pop_a | pop_b | pop_c) & ~wr_ok)
        with m.If(busy):
            sync += self.busy_cycles.eq(self.busy_cycles + 1)
        with m.If(stall):
            sync += self.stall_cycles.eq(self.stall_cycles + 1)
        return m


def vector_engine_verilog(cfg: HwConfig, name: str, **kwargs) -> str:
    """Verilog of ``VectorEngine(cfg, **kwargs)`` with top module ``name``."""
    from sparrow.sim.cocotb_run import verilog_of
    return verilog_of(VectorEngine(cfg, **kwargs), name)
