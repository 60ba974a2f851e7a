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
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import Out

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.isa import MaskMode, VectorOp, instruction_layout

from .engine_port import engine_control_members
from .mask_unit import MaskUnit
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
            """Views and op flags of an instruction register."""
            b = word.body
            vop = b.requant.vop
            f = dict(rq=b.requant, va=b.vadd, pl=b.maxpool, mk=b.mask)
            for k, op in (("is_rq", VectorOp.REQUANT), ("is_add", VectorOp.ADD), ("is_max", VectorOp.MAXPOOL),
                          ("is_avg", VectorOp.AVGPOOL), ("is_mask", VectorOp.MASK)):
                f[k] = Signal(name=f"{word.as_value().name}_{k}")
                m.d.comb += f[k].eq(vop == op)
            f["is_pool"] = f["is_max"] | f["is_avg"]
            f["loaded"] = Signal(name=f"{word.as_value().name}_loaded")
            m.d.comb += f["loaded"].eq(f["is_mask"] & (b.mask.mode == MaskMode.LOADED))
            return f

        # ins: the running instruction; nxt: the next one, checked while ins runs.
        ins = Signal(instruction_layout())
        nxt = Signal(instruction_layout())
        cur = decoded(ins)
        rq, mk = cur["rq"], cur["mk"]
        is_rq, is_add, is_max, is_mask, is_pool = (cur[k] for k in ("is_rq", "is_add", "is_max", "is_mask",
                                                                   "is_pool"))
        nx = decoded(nxt)

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
        pin = Signal(27)        # pool input span
        npool = Signal(22)      # out_h*out_w*lpp

        running = Signal()
        start = Signal()        # nxt becomes the running instruction: initialise RUN state
        fail = Signal()
        last_write = Signal()

        # ---- read issue: acc port (REQUANT) ---------------------------------------------------
        acc_ptr = Signal(cfg.acc_addr_bits)
        acc_cnt = Signal(13)
        acc_left = Signal(13)
        acc_out = Signal(range(self.rd_depth + 1))
        acc_issue = Signal()
        comb += [self.acc_rd.cmd.valid.eq(running & (acc_left != 0) & (acc_out < self.rd_depth)),
                 self.acc_rd.cmd.payload.eq(acc_ptr),
                 acc_issue.eq(self.acc_rd.cmd.valid & self.acc_rd.cmd.ready)]
        with m.If(acc_issue):
            sync += [acc_left.eq(acc_left - 1), acc_cnt.eq(acc_cnt + 1),
                     acc_ptr.eq(Mux(acc_cnt == 2, rq.src, acc_ptr + 1))]

        # ---- read issue: act port b (ADD operand b, MASK bitmap) --------------------------------
        b_ptr = Signal(cfg.act_addr_bits)
        b_left = Signal(W)
        b_out = Signal(range(self.rd_depth + 1))
        b_issue = Signal()
        comb += [self.act_rd_b.cmd.valid.eq(running & (b_left != 0) & (b_out < self.rd_depth)),
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
        dx, dx_m1 = Signal(18), Signal(18)   # linear ops: up to 1023*255 lines
        dy, dy_m1 = Signal(4), Signal(4)
        li, l_m1 = Signal(6), Signal(6)
        ox, ox_m1 = Signal(8), Signal(8)
        oy, oy_m1 = Signal(8), Signal(8)
        dx_step, dy_step = Signal(AW), Signal(AW)
        ox_step, oy_step = Signal(AW), Signal(AW)
        p_oy, p_pix, p_win, p_row, a_addr = (Signal(AW, name=n) for n in
                                             ("p_oy", "p_pix", "p_win", "p_row", "a_addr"))

        def init_a(src, dx_last, dx_stp, *, dy_m1_=0, dy_step_=0, l_m1_=0, ox_m1_=0, ox_step_=0,
                   oy_m1_=0, oy_step_=0):
            m.d.sync += [p_oy.eq(src), p_pix.eq(src), p_win.eq(src), p_row.eq(src), a_addr.eq(src),
                     dx_m1.eq(dx_last), dx_step.eq(dx_stp), dy_m1.eq(dy_m1_), dy_step.eq(dy_step_),
                     l_m1.eq(l_m1_), ox_m1.eq(ox_m1_), ox_step.eq(ox_step_), oy_m1.eq(oy_m1_),
                     oy_step.eq(oy_step_)]

        comb += [self.act_rd_a.cmd.valid.eq(running & a_more & (a_out < self.rd_depth)),
                 self.act_rd_a.cmd.payload.eq(a_addr),
                 a_issue.eq(self.act_rd_a.cmd.valid & self.act_rd_a.cmd.ready)]
        with m.If(a_issue):
            with m.If(dx != dx_m1):
                sync += [dx.eq(dx + 1), a_addr.eq(a_addr + dx_step)]
            with m.Else():
                sync += dx.eq(0)
                with m.If(dy != dy_m1):
                    sync += [dy.eq(dy + 1), p_row.eq(p_row + dy_step), a_addr.eq(p_row + dy_step)]
                with m.Else():
                    sync += dy.eq(0)
                    with m.If(li != l_m1):
                        sync += [li.eq(li + 1), p_win.eq(p_win + 1), p_row.eq(p_win + 1),
                                 a_addr.eq(p_win + 1)]
                    with m.Else():
                        sync += li.eq(0)
                        with m.If(ox != ox_m1):
                            n_pix = p_pix + ox_step
                            sync += [ox.eq(ox + 1), p_pix.eq(n_pix), p_win.eq(n_pix), p_row.eq(n_pix),
                                     a_addr.eq(n_pix)]
                        with m.Else():
                            sync += ox.eq(0)
                            with m.If(oy != oy_m1):
                                n_oy = p_oy + oy_step
                                sync += [oy.eq(oy + 1), p_oy.eq(n_oy), p_pix.eq(n_oy), p_win.eq(n_oy),
                                         p_row.eq(n_oy), a_addr.eq(n_oy)]
                            with m.Else():
                                sync += a_more.eq(0)

        # ---- consumer -------------------------------------------------------------------------
        inflight = Signal(range(self.wr_depth + 1))
        credit = Signal()
        comb += credit.eq(inflight < self.wr_depth)
        pcnt = Signal(2)                 # REQUANT parameter lines received (0..3)
        wcnt = Signal(8)                 # pool: position in the window
        w_last = Signal()                # registered wcnt == win_run: the pop and emit decisions
        w_first = Signal()               # and the window start read flags, not 8-bit compares
        pool_acc = [Signal(signed(16), name=f"pool_acc_{c}") for c in range(cols)]
        bm_reg = Signal(8 * cols)

        pop_a, pop_b, pop_c, emit = Signal(), Signal(), Signal(), Signal()
        comb += [fa.r_en.eq(pop_a), fb.r_en.eq(pop_b), fc.r_en.eq(pop_c)]

        with m.If(running):
            with m.If(is_rq):
                with m.If(pcnt != 3):
                    comb += pop_c.eq(fc.r_rdy)
                with m.Else():
                    comb += [pop_c.eq(fc.r_rdy & credit), emit.eq(pop_c)]
            with m.Elif(is_add):
                comb += [pop_a.eq(fa.r_rdy & fb.r_rdy & credit), pop_b.eq(pop_a), emit.eq(pop_a)]
            with m.Elif(is_mask):
                comb += [pop_a.eq(fa.r_rdy & (~mgen.need_bitmap | fb.r_rdy) & credit),
                         pop_b.eq(pop_a & mgen.need_bitmap), emit.eq(pop_a)]
            with m.Elif(is_pool):
                comb += [pop_a.eq(fa.r_rdy & (~w_last | credit)), emit.eq(pop_a & w_last)]

        # REQUANT parameters (bias, mult, shift) and the unit's per-instruction configuration.
        acc_words = [fc.r_data[32 * c:32 * (c + 1)] for c in range(cols)]
        a_elems = [fa.r_data[8 * c:8 * (c + 1)].as_signed() for c in range(cols)]
        b_elems = [fb.r_data[8 * c:8 * (c + 1)].as_signed() for c in range(cols)]
        with m.If(pop_c & (pcnt != 3)):
            sync += pcnt.eq(pcnt + 1)
            for c in range(cols):
                with m.If(pcnt == 0):
                    sync += unit.bias[c].eq(acc_words[c].as_signed())
                with m.Elif(pcnt == 1):
                    sync += unit.mult[c].eq(acc_words[c][0:31])
                with m.Else():
                    sync += unit.shift[c].eq(acc_words[c][0:6])

        # Pool window accumulation.
        with m.If(is_pool & pop_a):
            with m.If(w_last):
                sync += [wcnt.eq(0), w_last.eq(win_run == 0), w_first.eq(1)]
            with m.Else():
                sync += [wcnt.eq(wcnt + 1), w_last.eq(wcnt + 1 == win_run), w_first.eq(0)]
        pool_val = []
        for c in range(cols):
            d = a_elems[c]
            comb_v = Signal(signed(16), name=f"pool_v_{c}")
            with m.If(w_first):
                comb += comb_v.eq(d)
            with m.Elif(is_max):
                comb += comb_v.eq(Mux(d > pool_acc[c], d, pool_acc[c]))
            with m.Else():
                comb += comb_v.eq(pool_acc[c] + d)
            pool_val.append(comb_v)
            with m.If(is_pool & pop_a):
                sync += pool_acc[c].eq(comb_v)

        # MASK: bitmap of the current group of 8 lines.
        bitmap = Mux(mgen.need_bitmap, fb.r_data, bm_reg)
        nmk = nx["mk"]
        # The mask generator restarts one cycle after the start, from the (then loaded) running
        # instruction: no data line can be consumed before that (reads are issued from the first
        # RUN cycle), and the start logic stays off the mask -> E0 path.
        start_d = Signal()
        sync += start_d.eq(start)
        comb += [mgen.mode.eq(mk.mode), mgen.param.eq(mk.param), mgen.row_lines.eq(mk.row_lines),
                 mgen.bitmap.eq(bitmap), mgen.start.eq(start_d), mgen.step.eq(is_mask & pop_a)]
        with m.If(pop_b & is_mask):
            sync += bm_reg.eq(fb.r_data)

        # E0: operand register feeding the unit.
        e0_valid = Signal()
        sync += e0_valid.eq(emit)
        with m.If(emit):
            for c in range(cols):
                with m.If(is_rq):
                    sync += unit.i_x[c].eq(acc_words[c].as_signed())
                with m.Elif(is_mask):
                    sync += unit.i_x[c].eq(Mux(mgen.mask[c], mk.alt, a_elems[c]))
                with m.Else():
                    sync += unit.i_x[c].eq(pool_val[c])
                sync += [unit.i_a[c].eq(a_elems[c]), unit.i_b[c].eq(b_elems[c])]
        comb += unit.i_valid.eq(e0_valid)

        # Unit output -> write FIFO (always has room: credits).
        comb += [fw.w_data.eq(unit.o_y.as_value()), fw.w_en.eq(unit.o_valid)]

        # ---- write side ---------------------------------------------------------------------
        wr_addr = Signal(AW)
        wr_step = Signal(8)
        wr_left = Signal(W)     # writes still to do (this one included)
        wr_last = Signal()      # registered wr_left == 1: keeps ready -> last_write -> start short
        wr_ok = Signal()
        comb += [self.act_wr.cmd.valid.eq(fw.r_rdy),
                 self.act_wr.cmd.payload.addr.eq(wr_addr),
                 self.act_wr.cmd.payload.data.eq(fw.r_data),
                 fw.r_en.eq(self.act_wr.cmd.ready),
                 wr_ok.eq(self.act_wr.cmd.valid & self.act_wr.cmd.ready)]
        with m.If(wr_ok):
            sync += [wr_addr.eq(wr_addr + wr_step), wr_left.eq(wr_left - 1), wr_last.eq(wr_left == 2)]
        comb += last_write.eq(wr_ok & wr_last)

        # ---- credits --------------------------------------------------------------------------
        sync += [inflight.eq(inflight + emit - wr_ok),
                 a_out.eq(a_out + a_issue - pop_a),
                 b_out.eq(b_out + b_issue - pop_b),
                 acc_out.eq(acc_out + acc_issue - pop_c)]

        # ---- instruction intake and start-time checks (on nxt, overlapping the running one) --
        sync += self.done.eq(0)
        IDLE, RUN, ERR = range(3)
        state = Signal(range(3))
        nxt_valid = Signal()
        chk = Signal(4)          # check stage of nxt: 0..7 computing, 8: result in nxt_fail
        nxt_fail = Signal()
        # Footprint terms (one add each, registered); the footprint is out of range iff a term
        # is: max(a, b) >= depth <=> a >= depth or b >= depth. t1 is always ACT; t2/t3 are ACC
        # for REQUANT, ACT otherwise.
        t1, t2, t3 = (Signal(W, name=f"fp_t{k}") for k in (1, 2, 3))
        t1_r, t2_r, t3_r = (Signal(W, name=f"fp_t{k}_r") for k in (1, 2, 3))
        nrq, nva, npl = nx["rq"], nx["va"], nx["pl"]
        comb += self.instr.ready.eq(~nxt_valid & (state != ERR))
        with m.If(self.instr.valid & self.instr.ready):
            sync += [nxt.eq(self.instr.payload), nxt_valid.eq(1), chk.eq(0)]
        # Footprint in eight registered steps, each one multiply or one two-operand add per term
        # (no multiplier feeds an adder or a compare in the same cycle):
        #   0: field - 1 terms; the products of raw fields   1: products of the "- 1" terms
        #   2: "+ k - 1" sums   3: ph*row_stride, pw*lpp   4, 5: pool input span
        #   6: the three footprint ends t1..t3   7: their range compare (nxt_fail)
        ohm1, owm1 = Signal(8), Signal(8)
        khm1, kwm1, lppm1 = Signal(4), Signal(4), Signal(6)
        rqm1, lnm1 = Signal(12), Signal(12)
        ph_p, pw_p = Signal(11), Signal(11)
        win = Signal(8)
        mn_m1 = Signal(18)
        npool_m1 = Signal(22)
        pa, pb = Signal(26), Signal(18)
        pin_a = Signal(27)
        with m.Elif(nxt_valid & (chk == 0)):
            sync += [
                chk.eq(1),
                ohm1.eq(npl.out_h - 1), owm1.eq(npl.out_w - 1), khm1.eq(npl.kh - 1), kwm1.eq(npl.kw - 1),
                lppm1.eq(npl.lpp - 1), rqm1.eq(nrq.rows - 1), lnm1.eq(nva.lines - 1),
                ohw.eq(npl.out_h * npl.out_w),
                sh_rs.eq(npl.stride_h * npl.row_stride),
                sw_lpp.eq(npl.stride_w * npl.lpp),
                win.eq(npl.kh * npl.kw),
                mn.eq(nmk.rows * nmk.row_lines),
            ]
        with m.Elif(nxt_valid & (chk == 1)):
            sync += [chk.eq(2), ph_p.eq(ohm1 * npl.stride_h), pw_p.eq(owm1 * npl.stride_w),
                     rq_span.eq(rqm1 * nrq.dst_stride), npool.eq(ohw * npl.lpp), win_m1.eq(win - 1)]
        with m.Elif(nxt_valid & (chk == 2)):
            sync += [chk.eq(3), ph.eq(ph_p + khm1), pw.eq(pw_p + kwm1), mn_m1.eq(mn - 1),
                     npool_m1.eq(npool - 1)]
        with m.Elif(nxt_valid & (chk == 3)):
            sync += [chk.eq(4), pa.eq(ph * npl.row_stride), pb.eq(pw * npl.lpp)]
        with m.Elif(nxt_valid & (chk == 4)):
            sync += [chk.eq(5), pin_a.eq(pa + lppm1)]
        with m.Elif(nxt_valid & (chk == 5)):
            sync += [chk.eq(6), pin.eq(pin_a + pb)]
        with m.Elif(nxt_valid & (chk == 6)):
            sync += [chk.eq(7), t1_r.eq(t1), t2_r.eq(t2), t3_r.eq(t3)]
        with m.Elif(nxt_valid & (chk == 7)):
            sync += [chk.eq(8), nxt_fail.eq(fail)]

        with m.If(nx["is_rq"]):
            comb += [t1.eq(nrq.dst + rq_span), t2.eq(nrq.src + rqm1), t3.eq(nrq.param + 2)]
        with m.Elif(nx["is_add"]):
            comb += [t1.eq(nva.src_a + lnm1), t2.eq(nva.src_b + lnm1), t3.eq(nva.dst + lnm1)]
        with m.Elif(nx["is_pool"]):
            comb += [t1.eq(npl.src + pin), t2.eq(npl.dst + npool_m1), t3.eq(0)]
        with m.Else():
            comb += [t1.eq(nmk.src + mn_m1), t2.eq(nmk.dst + mn_m1),
                     t3.eq(Mux(nx["loaded"], nmk.mask_addr + (mn_m1 >> 3), 0))]
        d23 = Mux(nx["is_rq"], cfg.acc_depth, cfg.act_depth)
        comb += fail.eq((t1_r >= cfg.act_depth) | (t2_r >= d23) | (t3_r >= d23))

        # nxt starts when checked and legal, as soon as the running instruction's last write is
        # accepted (its reads then see every write of the previous one). An illegal nxt faults
        # only from IDLE, i.e. after the previous instruction's done pulse.
        checked = nxt_valid & (chk == 8)
        n_fail = nxt_fail
        go = Signal()
        bad = Signal()
        comb += [go.eq(checked & ~n_fail & ((state == IDLE) | ((state == RUN) & last_write))),
                 bad.eq(checked & n_fail & (state == IDLE)),
                 start.eq(go),
                 running.eq(state == RUN)]
        with m.If(go):
            sync += [ins.eq(nxt), nxt_valid.eq(0), state.eq(RUN)]
        with m.Elif(bad):
            sync += [nxt_valid.eq(0), state.eq(ERR), self.error.eq(ErrorCode.SPAD_RANGE)]
        with m.Elif((state == RUN) & last_write):
            sync += state.eq(IDLE)
        with m.If((state == RUN) & last_write):
            sync += self.done.eq(1)
        busy = Signal()
        comb += [busy.eq((state == RUN) | nxt_valid), self.busy.eq(busy)]

        # ---- initialisation at the start of RUN (from nxt) ---------------------------------------
        is_rq, is_add, is_avg, is_mask, loaded = (nx[k] for k in ("is_rq", "is_add", "is_avg", "is_mask",
                                                                  "loaded"))
        rq, va, pl, mk = nrq, nva, npl, nmk
        with m.If(start):
            sync += win_run.eq(win_m1)
            sync += [acc_ptr.eq(rq.param), acc_cnt.eq(0), acc_left.eq(Mux(is_rq, rq.rows + 3, 0)),
                     pcnt.eq(0), wcnt.eq(0), w_last.eq(win_m1 == 0), w_first.eq(1),
                     dx.eq(0), dy.eq(0), li.eq(0), ox.eq(0), oy.eq(0), a_more.eq(~is_rq)]
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
                         wr_last.eq(rq.rows == 1), b_left.eq(0)]
            with m.Elif(is_add):
                sync += [wr_addr.eq(va.dst), wr_step.eq(1), wr_left.eq(va.lines), wr_last.eq(va.lines == 1),
                         b_left.eq(va.lines), b_ptr.eq(va.src_b)]
                init_a(va.src_a, va.lines - 1, 1)
            with m.Elif(is_mask):
                sync += [wr_addr.eq(mk.dst), wr_step.eq(1), wr_left.eq(mn), wr_last.eq(mn == 1),
                         b_left.eq(Mux(loaded, (mn + 7) >> 3, 0)), b_ptr.eq(mk.mask_addr)]
                init_a(mk.src, mn - 1, 1)
            with m.Else():
                sync += [wr_addr.eq(pl.dst), wr_step.eq(1), wr_left.eq(npool), wr_last.eq(npool == 1),
                         b_left.eq(0)]
                init_a(pl.src, pl.kw - 1, pl.lpp, dy_m1_=pl.kh - 1, dy_step_=pl.row_stride,
                       l_m1_=pl.lpp - 1, ox_m1_=pl.out_w - 1, ox_step_=sw_lpp,
                       oy_m1_=pl.out_h - 1, oy_step_=sh_rs)

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
