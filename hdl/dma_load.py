"""LOAD DMA engine: external memory -> scratchpad, with padding and zero-mask decompression.

Semantics are exactly ``docs/isa.md`` (LOAD). The engine is three decoupled walkers over the
same instruction, so the bus is kept busy while lines are written:

* **command walker** — issues read bursts (aligned beats, at most ``max_burst`` beats, never
  crossing 4 KiB; as many as the bus accepts, without waiting for data) for each row's byte
  range. Uncompressed row ``y`` is the contiguous range ``[dram_addr + y*dram_stride,
  + row_lines*LB)``. A compressed row ``y`` is read as ``C_y`` (the 1-2 beats holding its count)
  and ``P_y`` (the rest of ``[slot, slot + 2 + N)``), in the order ``C0 C1 P0 C2 P1 ...``: the
  count of the next row is fetched one row ahead, so its payload read can be issued as soon as
  the current one is, with no round trip per row. Every byte range is checked before it is read
  (count bytes inside memory, then ``N <= capacity`` and ``2 + N`` bytes inside memory); the
  walker stops at the first failing row.
* **unpacker** — takes read beats in order and pushes their useful bytes (offset, count) into
  the :class:`ByteWindow` realigner. Count beats are parked in a small stash (the look-ahead
  row's count arrives before the current row's payload) and the counts are extracted as they
  arrive; a row's stashed count beats enter the window just before its payload.
* **writer** — walks the padded region in row-major order writing one line per cycle: zero
  lines for padding, ``LB`` bytes popped from the window (zero-extended) for uncompressed data,
  and for compressed rows the mask and non-zero bytes of each line
  (:class:`~sparrow.hdl.zero_codec.ZeroExpand`; the count is popped with the first line, the
  bytes of the count beat beyond the group with the last), checking the format on the way: a
  corrupt group raises ``CORRUPT_DATA`` before the line at which the fault is found is written
  (trailing bytes: after the row's last line).

Start-time checks: ``SPAD_RANGE`` then ``DRAM_RANGE`` (uncompressed; compressed rows are checked
per row: count bytes, then count <= capacity, then the ``2 + N`` bytes). A read beat with
``err`` gives ``DRAM_RANGE``. Errors are sticky; the engine then stops writing, accepts no
instruction and drains read data.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.isa import Spad

from .engine_port import engine_control_members
from .membus import MemBusSignature
from .spad_port import WritePortSignature, acc_line, act_line
from .zero_codec import ZeroExpand, mask_bytes, shl_bytes, take_bytes

__all__ = ["ByteWindow", "LoadEngine"]

#: Width of internal DRAM address arithmetic (28-bit field + strides without wrap-around).
ADDR_W = 32


def push_layout(in_bytes: int) -> data.StructLayout:
    return data.StructLayout({"data": 8 * in_bytes, "off": range(in_bytes), "n": range(in_bytes + 1)})


class ByteWindow(wiring.Component):
    """Byte realigner: bytes pushed from aligned beats, a window of the oldest bytes, variable pops.

    Parameters
    ----------
    in_bytes : int
        Bytes per pushed beat (the memory port width).
    win_bytes : int
        Bytes visible in ``window`` (the largest pop).

    Ports
    -----
    push : In(stream {data, off, n})
        Append bytes ``[off, off+n)`` of ``data``. ``ready`` when the bytes fit after this
        cycle's pop (capacity ``win_bytes + in_bytes``).
    pop : In(range(win_bytes + 1))
        Bytes removed from the front this cycle (must be <= ``level``).
    window : Out(8*win_bytes)
        The oldest ``win_bytes`` bytes (byte 0 oldest); bytes at and above ``level`` are zero.
    level : Out(range(cap + 1))
        Bytes held.
    clear : In(1)
        Empty the window (takes precedence).
    """

    def __init__(self, in_bytes: int, win_bytes: int):
        if not isinstance(in_bytes, int) or in_bytes < 1:
            raise ValueError(f"in_bytes must be a positive int, not {in_bytes!r}")
        if not isinstance(win_bytes, int) or win_bytes < 1:
            raise ValueError(f"win_bytes must be a positive int, not {win_bytes!r}")
        self.in_bytes, self.win_bytes = in_bytes, win_bytes
        self.cap = in_bytes + win_bytes
        super().__init__(
            {
                "push": In(stream.Signature(push_layout(in_bytes))),
                "pop": In(range(win_bytes + 1)),
                "window": Out(8 * win_bytes),
                "level": Out(range(self.cap + 1)),
                "clear": In(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        ib, cap = self.in_bytes, self.cap
        buf = Signal(8 * cap)
        cnt = Signal(range(cap + 1))
        buf_a = Signal(8 * cap)
        cnt_a = Signal(range(cap + 1))
        m.d.comb += [
            self.window.eq(buf[: 8 * self.win_bytes]),
            self.level.eq(cnt),
            buf_a.eq(buf >> (self.pop * 8)),
            cnt_a.eq(cnt - self.pop),
            self.push.ready.eq(cnt_a <= cap - ib),
        ]
        p = self.push.payload
        new = take_bytes(p.data >> (p.off * 8), p.n, ib)
        with m.If(self.clear):
            m.d.sync += [buf.eq(0), cnt.eq(0)]
        with m.Elif(self.push.valid & self.push.ready):
            m.d.sync += [buf.eq(buf_a | shl_bytes(new, cnt_a, cap)), cnt.eq(cnt_a + p.n)]
        with m.Else():
            m.d.sync += [buf.eq(buf_a), cnt.eq(cnt_a)]
        return m


def _clog2(n):
    return (n - 1).bit_length()


class LoadEngine(wiring.Component):
    """The LOAD engine (see module docstring).

    Parameters
    ----------
    cfg : HwConfig

    Ports
    -----
    instr, done, busy, error
        Engine control (``hdl/engine_port.py``); only LOAD instructions arrive.
    bus : Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes))
        Membus master (reads only; ``wdata`` idle, ``wresp`` ignored).
    act_wr, wgt_wr, acc_wr : Out(WritePortSignature)
        Scratchpad write ports (lines of ``act_line(cols)``, ``act_line(cols)``, ``acc_line(cols)``).
    bytes, bytes_raw : Out(32)
        Bus bytes per the spec (uncompressed ``LB`` per line; compressed ``2 + N`` per row) and
        the uncompressed equivalent (``rows*row_lines*LB``), accumulated as lines land.
    busy_cycles : Out(32)
        Cycles with an instruction in progress.
    stall_cycles : Out(32)
        Busy cycles in which nothing moved (no command, read beat or line write accepted).
    """

    def __init__(self, cfg):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
        self.cfg = cfg
        c = cfg.cols
        super().__init__(
            {
                **engine_control_members(),
                "bus": Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes)),
                "act_wr": Out(WritePortSignature(cfg.act_addr_bits, act_line(c))),
                "wgt_wr": Out(WritePortSignature(cfg.wgt_addr_bits, act_line(c))),
                "acc_wr": Out(WritePortSignature(cfg.acc_addr_bits, acc_line(c))),
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
        LMB = _clog2(MB)
        MBK = mask_bytes(C)
        ACCW = 4 * C
        WIN = max(ACCW, 2 + MBK + C + MB)  # largest pop: count + line + excess of the count beat
        DRAM = cfg.dram_bytes
        AMASK = ~(MB - 1)

        ins = self.instr.payload.body.load

        # ---- latched instruction --------------------------------------------------------------
        spad = Signal(Spad)
        spad_addr = Signal(14)
        dram_addr = Signal(ADDR_W)
        rows = Signal(10)
        rl = Signal(10)
        stride = Signal(16)
        lb = Signal(range(ACCW + 1))
        pt, pb, pl, pr = (Signal(4, name=n) for n in ("pt", "pb", "pl", "pr"))
        comp = Signal()
        # derived at CHECK
        row_bytes = Signal(20)
        cap = Signal(18)
        prow_t = Signal(11)  # padded rows
        pcol_t = Signal(11)  # padded lines per row
        pt_rows = Signal(11)
        pl_rl = Signal(11)

        err = Signal(ErrorCode)
        m.d.comb += self.error.eq(err)
        halted = Signal()
        m.d.comb += halted.eq(err != ErrorCode.NONE)

        # ---- submodules -----------------------------------------------------------------------
        m.submodules.win = win = ByteWindow(MB, WIN)
        m.submodules.expand = expand = ZeroExpand(C)

        # ---- command walker -------------------------------------------------------------------
        # Compressed rows are fetched with one row of look-ahead on the counts: the order of
        # reads is C0 C1 P0 C2 P1 C3 ... (Cy: beats holding row y's count, Py: the rest of its
        # 2 + N bytes), so the count of the next row is known before its payload is needed.
        CW_IDLE, CW_ROW, CW_RANGE, CW_WAITN, CW_STOP, CW_FIRST, CW_AHEAD = range(7)
        RET_NEXT, RET_AHEAD, RET_WAITN = range(3)
        cw_st = Signal(range(7))
        cw_ret = Signal(range(3))
        cw_y = Signal(10)
        cw_base = Signal(ADDR_W)
        cw_cur = Signal(ADDR_W)
        cw_last = Signal(ADDR_W)
        # counts: unpacker -> walker (wq) and unpacker -> its own drain step (uq)
        nq_layout = data.StructLayout({"n": 16, "ok": 1})
        m.submodules.wq = wq = fifo.SyncFIFO(width=nq_layout.size, depth=4)
        m.submodules.uq = uq = fifo.SyncFIFO(width=nq_layout.size, depth=4)
        wq_out = data.View(nq_layout, wq.r_data)
        uq_out = data.View(nq_layout, uq.r_data)

        beats_m1 = Signal(ADDR_W)
        to4k_m1 = Signal(12)
        blen = Signal(8)
        m.d.comb += [
            beats_m1.eq((cw_last - cw_cur) >> LMB),
            to4k_m1.eq((4095 - cw_cur[:12]) >> LMB),
        ]
        lim = Signal(ADDR_W)
        m.d.comb += lim.eq(Mux(beats_m1 < cfg.max_burst - 1, beats_m1, cfg.max_burst - 1))
        m.d.comb += blen.eq(Mux(to4k_m1 < lim, to4k_m1, lim))
        reach_last = Signal()
        m.d.comb += reach_last.eq(blen == beats_m1)

        cmd = self.bus.cmd
        m.d.comb += [
            cmd.payload.addr.eq(cw_cur),
            cmd.payload.write.eq(0),
            cmd.payload.len.eq(blen),
            cmd.valid.eq((cw_st == CW_RANGE) & ~halted),
        ]
        cmd_fire = Signal()
        m.d.comb += cmd_fire.eq(cmd.valid & cmd.ready)

        cw_ahead = Signal(ADDR_W)
        cw_cend = Signal(ADDR_W)
        cw_hi = Signal(ADDR_W)
        m.d.comb += [
            cw_ahead.eq(cw_base + stride),
            cw_cend.eq(((cw_base + 1) & AMASK) + MB),
            cw_hi.eq(cw_base + 2 + wq_out.n),
        ]

        def cw_range(lo, hi, ret):
            return [cw_cur.eq(lo & AMASK), cw_last.eq((hi - 1) & AMASK), cw_ret.eq(ret), cw_st.eq(CW_RANGE)]

        cw_next = [cw_y.eq(cw_y + 1), cw_base.eq(cw_base + stride), cw_st.eq(CW_ROW)]

        cw_init = Signal()  # pulsed by the control FSM to start the walkers

        with m.If(cw_init):
            m.d.sync += [cw_st.eq(Mux(comp, CW_FIRST, CW_ROW)), cw_y.eq(0), cw_base.eq(dram_addr)]
        with m.Elif(cw_st == CW_ROW):
            with m.If(cw_y == rows):
                m.d.sync += cw_st.eq(CW_IDLE)
            with m.Elif(~comp):
                m.d.sync += cw_range(cw_base, cw_base + row_bytes, RET_NEXT)
            with m.Elif(cw_base + 2 > DRAM):
                m.d.sync += cw_st.eq(CW_STOP)
            with m.Else():
                m.d.sync += cw_st.eq(CW_AHEAD)
        with m.Elif(cw_st == CW_FIRST):
            with m.If(cw_base + 2 > DRAM):
                m.d.sync += cw_st.eq(CW_STOP)
            with m.Else():
                m.d.sync += cw_range(cw_base, cw_base + 2, RET_AHEAD)
        with m.Elif(cw_st == CW_AHEAD):
            with m.If((cw_y + 1 < rows) & (cw_ahead + 2 <= DRAM)):
                m.d.sync += cw_range(cw_ahead, cw_ahead + 2, RET_WAITN)
            with m.Else():
                m.d.sync += cw_st.eq(CW_WAITN)
        with m.Elif(cw_st == CW_RANGE):
            with m.If(cmd_fire):
                m.d.sync += cw_cur.eq(cw_cur + ((blen + 1) << LMB))
                with m.If(reach_last):
                    with m.Switch(cw_ret):
                        with m.Case(RET_NEXT):
                            m.d.sync += cw_next
                        with m.Case(RET_AHEAD):
                            m.d.sync += cw_st.eq(CW_AHEAD)
                        with m.Case(RET_WAITN):
                            m.d.sync += cw_st.eq(CW_WAITN)
        with m.Elif(cw_st == CW_WAITN):
            m.d.comb += wq.r_en.eq(1)
            with m.If(wq.r_rdy):
                with m.If(~wq_out.ok):
                    m.d.sync += cw_st.eq(CW_STOP)
                with m.Elif(cw_hi > cw_cend):
                    m.d.sync += cw_range(cw_cend, cw_hi, RET_NEXT)
                with m.Else():
                    m.d.sync += cw_next

        # ---- unpacker -------------------------------------------------------------------------
        UP_IDLE, UP_ROW, UP_DATA, UP_RECV, UP_STOP, UP_FIRST, UP_AHEAD, UP_DRAIN = range(8)
        up_st = Signal(range(8))
        up_ret_drain = Signal()  # after RECV: DRAIN (else AHEAD)
        up_y = Signal(10)
        up_base = Signal(ADDR_W)
        up_off = Signal(range(MB))
        up_rem = Signal(20)
        rc_base = Signal(ADDR_W)  # slot whose count is being received
        rc_second = Signal()  # waiting for the count's high byte in the next beat
        rc_nlow = Signal(8)
        dr_left = Signal(2)  # stashed count beats of row up_y still to drain

        stash_layout = data.StructLayout({"data": 8 * MB, "off": range(MB)})
        m.submodules.stash = stash = fifo.SyncFIFO(width=stash_layout.size, depth=4)
        st_in = data.View(stash_layout, stash.w_data)
        st_out = data.View(stash_layout, stash.r_data)

        rd = self.bus.rdata
        beat_n = Signal(range(MB + 1))
        m.d.comb += beat_n.eq(Mux(up_rem < MB - up_off, up_rem, MB - up_off))
        with m.If(up_st == UP_DRAIN):
            m.d.comb += [
                win.push.payload.data.eq(st_out.data),
                win.push.payload.off.eq(st_out.off),
                win.push.payload.n.eq(MB - st_out.off),
                win.push.valid.eq(stash.r_rdy & ~halted),
                stash.r_en.eq(win.push.ready & ~halted),
            ]
        with m.Else():
            m.d.comb += [
                win.push.payload.data.eq(rd.payload.data),
                win.push.payload.off.eq(up_off),
                win.push.payload.n.eq(beat_n),
                win.push.valid.eq(rd.valid & (up_st == UP_DATA) & ~halted),
            ]
        rc_off = Signal(range(MB))
        m.d.comb += rc_off.eq(Mux(rc_second, 0, rc_base[:LMB] if LMB else 0))
        m.d.comb += [
            st_in.data.eq(rd.payload.data),
            st_in.off.eq(rc_off),
            stash.w_en.eq(rd.valid & (up_st == UP_RECV) & ~halted),
        ]
        m.d.comb += rd.ready.eq(
            Mux(up_st == UP_DATA, win.push.ready, Mux(up_st == UP_RECV, stash.w_rdy, 0)) | halted
        )
        rd_fire = Signal()
        m.d.comb += rd_fire.eq(rd.valid & rd.ready)
        push_fire = Signal()
        m.d.comb += push_fire.eq(win.push.valid & win.push.ready)

        # count extraction while receiving count beats
        b0 = rd.payload.data.word_select(rc_off, 8)
        b1 = rd.payload.data.word_select(rc_off + 1, 8)
        cnt_done = Signal()
        cnt_val = Signal(16)
        with m.If(rc_second):
            m.d.comb += [cnt_done.eq(1), cnt_val.eq(Cat(rc_nlow, rd.payload.data[:8]))]
        with m.Elif(rc_off + 2 <= MB):
            m.d.comb += [cnt_done.eq(1), cnt_val.eq(Cat(b0, b1))]
        rc_ok = Signal()
        m.d.comb += rc_ok.eq((cnt_val <= cap) & (rc_base + 2 + cnt_val <= DRAM))
        for q in (wq, uq):
            qin = data.View(nq_layout, q.w_data)
            m.d.comb += [
                qin.n.eq(cnt_val),
                qin.ok.eq(rc_ok),
                q.w_en.eq((up_st == UP_RECV) & rd_fire & ~halted & cnt_done),
            ]

        up_ahead = Signal(ADDR_W)
        up_ahead2 = Signal(ADDR_W)
        up_cend = Signal(ADDR_W)
        up_hi = Signal(ADDR_W)
        m.d.comb += [
            up_ahead.eq(up_base + stride),
            up_ahead2.eq(up_base + (stride << 1)),
            up_cend.eq(((up_base + 1) & AMASK) + MB),
            up_hi.eq(up_base + 2 + uq_out.n),
        ]

        def drain_beats(base):
            return Mux((base[:LMB] if LMB else 0) + 2 <= MB, 1, 2)

        def up_next_row():
            """Move to row y+1 without a bubble (its look-ahead count read decided here)."""
            with m.If(up_y + 1 == rows):
                m.d.sync += up_st.eq(UP_IDLE)
            with m.Elif(~comp):
                m.d.sync += [
                    up_y.eq(up_y + 1),
                    up_base.eq(up_ahead),
                    up_off.eq(up_ahead[:LMB] if LMB else 0),
                    up_rem.eq(row_bytes),
                    up_st.eq(UP_DATA),
                ]
            with m.Elif(up_ahead + 2 > DRAM):
                m.d.sync += up_st.eq(UP_STOP)
            with m.Else():
                m.d.sync += [up_y.eq(up_y + 1), up_base.eq(up_ahead), dr_left.eq(drain_beats(up_ahead))]
                with m.If((up_y + 2 < rows) & (up_ahead2 + 2 <= DRAM)):
                    m.d.sync += [
                        rc_base.eq(up_ahead2),
                        rc_second.eq(0),
                        up_ret_drain.eq(1),
                        up_st.eq(UP_RECV),
                    ]
                with m.Else():
                    m.d.sync += up_st.eq(UP_DRAIN)

        with m.If(cw_init):
            m.d.sync += [up_st.eq(Mux(comp, UP_FIRST, UP_ROW)), up_y.eq(0), up_base.eq(dram_addr)]
        with m.Elif(up_st == UP_ROW):
            m.d.sync += [up_off.eq(up_base[:LMB] if LMB else 0), up_rem.eq(row_bytes), up_st.eq(UP_DATA)]
        with m.Elif(up_st == UP_FIRST):
            with m.If(up_base + 2 > DRAM):
                m.d.sync += up_st.eq(UP_STOP)
            with m.Else():
                m.d.sync += [rc_base.eq(up_base), rc_second.eq(0), up_ret_drain.eq(0), up_st.eq(UP_RECV)]
        with m.Elif(up_st == UP_AHEAD):
            m.d.sync += dr_left.eq(drain_beats(up_base))
            with m.If((up_y + 1 < rows) & (up_ahead + 2 <= DRAM)):
                m.d.sync += [rc_base.eq(up_ahead), rc_second.eq(0), up_ret_drain.eq(1), up_st.eq(UP_RECV)]
            with m.Else():
                m.d.sync += up_st.eq(UP_DRAIN)
        with m.Elif(up_st == UP_RECV):
            with m.If(rd_fire):
                with m.If(cnt_done):
                    m.d.sync += [rc_second.eq(0), up_st.eq(Mux(up_ret_drain, UP_DRAIN, UP_AHEAD))]
                with m.Else():
                    m.d.sync += [rc_second.eq(1), rc_nlow.eq(b0)]
        with m.Elif(up_st == UP_DRAIN):
            with m.If(push_fire):
                m.d.sync += dr_left.eq(dr_left - 1)
                with m.If(dr_left == 1):
                    m.d.comb += uq.r_en.eq(1)
                    with m.If(~uq_out.ok):
                        m.d.sync += up_st.eq(UP_STOP)
                    with m.Elif(up_hi > up_cend):
                        m.d.sync += [up_rem.eq(up_hi - up_cend), up_off.eq(0), up_st.eq(UP_DATA)]
                    with m.Else():
                        up_next_row()
        with m.Elif(up_st == UP_DATA):
            with m.If(push_fire):
                m.d.sync += [up_rem.eq(up_rem - beat_n), up_off.eq(0)]
                with m.If(up_rem == beat_n):
                    up_next_row()

        # ---- writer ---------------------------------------------------------------------------
        # Compressed rows cost no extra cycle: the count is popped together with the row's first
        # line and the excess bytes of the count beat together with its last line. A trailing-
        # bytes fault is found with the last line, which is written (the fault is at line
        # row_lines), and reported in the next cycle before anything else is written.
        wy = Signal(11)
        wx = Signal(11)
        waddr = Signal(15)
        cfirst = Signal()  # next data line is the first of its row (count ahead)
        crem = Signal(17)
        ce = Signal(range(MB + 1))
        cs = Signal(ADDR_W)
        trail_err = Signal()

        finished = Signal()
        in_data = Signal()
        m.d.comb += [
            finished.eq(wy == prow_t),
            in_data.eq((wy >= pt) & (wy < pt_rows) & (wx >= pl) & (wx < pl_rl)),
        ]
        wvalid = Signal()
        wline = Signal(8 * ACCW)
        pop = Signal(range(WIN + 1))
        set_err = Signal(ErrorCode)
        w_ready = Signal()
        run = Signal()
        m.d.comb += win.pop.eq(pop)
        wfire = Signal()
        m.d.comb += wfire.eq(wvalid & w_ready)

        cnt_n = win.window[:16]
        s_hi = Signal(ADDR_W)
        s_cend = Signal(ADDR_W)
        m.d.comb += [s_hi.eq(cs + 2 + cnt_n), s_cend.eq(((cs + 1) & AMASK) + MB)]
        head = Signal(range(3))  # count bytes in front of this line's mask
        rem_eff = Signal(17)  # payload bytes left for this and later lines
        ce_eff = Signal(range(MB + 1))
        last_line = Signal()
        tail = Signal(range(MB + 1))
        m.d.comb += [
            head.eq(Mux(cfirst, 2, 0)),
            rem_eff.eq(Mux(cfirst, cnt_n, crem)),
            ce_eff.eq(Mux(cfirst, Mux(s_hi < s_cend, s_cend - s_hi, 0), ce)),
            last_line.eq(wx == pl_rl - 1),
            tail.eq(Mux(last_line, ce_eff, 0)),
            expand.data.eq(Mux(cfirst, win.window[16 : 16 + 8 * (MBK + C)], win.window[: 8 * (MBK + C)])),
        ]

        add_bytes = Signal(range(WIN + 2))
        add_raw = Signal(range(ACCW + 1))

        with m.If(run & ~halted):
            with m.If(trail_err):
                m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
            with m.Elif(finished):
                pass
            with m.Elif(in_data & ~comp):
                m.d.comb += [
                    wvalid.eq(win.level >= lb),
                    wline.eq(take_bytes(win.window[: 8 * ACCW], lb, ACCW)),
                ]
                with m.If(wfire):
                    m.d.comb += [pop.eq(lb), add_bytes.eq(lb), add_raw.eq(lb)]
            with m.Elif(in_data):
                with m.If(cfirst & (cs + 2 > DRAM)):
                    m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)
                with m.Elif(cfirst & (win.level < 2)):
                    pass
                with m.Elif(cfirst & (cnt_n > cap)):
                    m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                with m.Elif(cfirst & (s_hi > DRAM)):
                    m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)
                with m.Elif(rem_eff < MBK):
                    m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                with m.Elif(win.level >= head + MBK):
                    with m.If(expand.n > rem_eff):
                        m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                    with m.Else():
                        m.d.comb += [wvalid.eq(win.level >= head + expand.n + tail), wline.eq(expand.line)]
                        with m.If(wfire):
                            m.d.comb += [
                                pop.eq(head + expand.n + tail),
                                add_bytes.eq(head + expand.n),
                                add_raw.eq(C),
                            ]
                            m.d.sync += [crem.eq(rem_eff - expand.n), cfirst.eq(last_line)]
                            with m.If(cfirst):
                                m.d.sync += ce.eq(ce_eff)
                            with m.If(last_line & (rem_eff != expand.n)):
                                m.d.sync += trail_err.eq(1)
            with m.Else():
                m.d.comb += [wvalid.eq(1), wline.eq(0)]
            with m.If(wfire):
                m.d.sync += waddr.eq(waddr + 1)
                with m.If(wx == pcol_t - 1):
                    m.d.sync += [wx.eq(0), wy.eq(wy + 1)]
                    with m.If((wy >= pt) & (wy < pt_rows)):
                        m.d.sync += cs.eq(cs + stride)
                with m.Else():
                    m.d.sync += wx.eq(wx + 1)

        # write ports
        for name, sp, width in (("act_wr", Spad.ACT, C), ("wgt_wr", Spad.WGT, C), ("acc_wr", Spad.ACC, ACCW)):
            port = getattr(self, name)
            sel = spad == sp
            m.d.comb += [
                port.cmd.valid.eq(wvalid & sel),
                port.cmd.payload.addr.eq(waddr),
                port.cmd.payload.data.eq(wline[: 8 * width]),
            ]
            with m.If(sel):
                m.d.comb += w_ready.eq(port.cmd.ready)

        # membus write channels unused
        m.d.comb += [self.bus.wdata.valid.eq(0), self.bus.wresp.ready.eq(1)]

        # ---- control --------------------------------------------------------------------------
        depth = Signal(15)
        m.d.comb += depth.eq(
            Mux(spad == Spad.ACT, cfg.act_depth, Mux(spad == Spad.WGT, cfg.wgt_depth, cfg.acc_depth))
        )
        # Start-time checks in five registered steps (ck = 0..4), one add or one multiply per
        # term and cycle: region = (pt+rows+pb)*(pl+rl+pr) and the last byte
        # dram_addr + (rows-1)*stride + rl*lb, each compared only once registered.
        ck = Signal(3)
        ptb, plr = Signal(11), Signal(11)
        rows_m1 = Signal(10)
        rlb = Signal(15)
        region = Signal(22)
        span = Signal(26)
        spad_end = Signal(23)
        dram_e1 = Signal(ADDR_W + 1)
        dram_e2 = Signal(ADDR_W + 2)
        spad_bad = Signal()
        dram_bad = Signal()
        with m.If(ck == 0):
            m.d.sync += [ptb.eq(pt + rows + pb), plr.eq(pl + rl + pr), rows_m1.eq(rows - 1), rlb.eq(rl * lb)]
        with m.If(ck == 1):
            m.d.sync += [region.eq(ptb * plr), span.eq(rows_m1 * stride)]
        with m.If(ck == 2):
            m.d.sync += [spad_end.eq(spad_addr + region), dram_e1.eq(dram_addr + span)]
        with m.If(ck == 3):
            m.d.sync += [dram_e2.eq(dram_e1 + rlb), spad_bad.eq(spad_end > depth)]
        line_size = Mux(ins.spad == Spad.ACC, ACCW, C)

        with m.If(rd.valid & rd.ready & rd.payload.err & ~halted):
            m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.instr.ready.eq(~halted)
                with m.If(self.instr.valid & ~halted):
                    m.d.sync += [
                        spad.eq(ins.spad),
                        spad_addr.eq(ins.spad_addr),
                        dram_addr.eq(ins.dram_addr),
                        rows.eq(ins.rows),
                        rl.eq(ins.row_lines),
                        stride.eq(ins.dram_stride),
                        lb.eq(Mux(ins.line_bytes == 0, line_size, ins.line_bytes)),
                        pt.eq(ins.pad_top),
                        pb.eq(ins.pad_bottom),
                        pl.eq(ins.pad_left),
                        pr.eq(ins.pad_right),
                        comp.eq(ins.compressed),
                    ]
                    m.d.sync += ck.eq(0)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), win.clear.eq(1), dram_bad.eq(~comp & (dram_e2 > DRAM))]
                with m.If(ck != 4):
                    m.d.sync += ck.eq(ck + 1)
                with m.Elif(spad_bad):
                    m.d.sync += err.eq(ErrorCode.SPAD_RANGE)
                    m.next = "HALT"
                with m.Elif(dram_bad):
                    m.d.sync += err.eq(ErrorCode.DRAM_RANGE)
                    m.next = "HALT"
                with m.Else():
                    m.d.comb += cw_init.eq(1)
                    m.d.sync += [
                        row_bytes.eq(rlb),
                        cap.eq(rl * (MBK + C)),
                        prow_t.eq(pt + rows + pb),
                        pcol_t.eq(pl + rl + pr),
                        pt_rows.eq(pt + rows),
                        pl_rl.eq(pl + rl),
                        wy.eq(0),
                        wx.eq(0),
                        waddr.eq(spad_addr),
                        cfirst.eq(1),
                        trail_err.eq(0),
                        cs.eq(dram_addr),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), run.eq(1)]
                with m.If(set_err != ErrorCode.NONE):
                    m.d.sync += err.eq(set_err)
                    m.next = "HALT"
                with m.Elif(finished & ~trail_err & ~halted):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
            with m.State("HALT"):
                m.d.comb += self.busy.eq(1)
                with m.If((set_err != ErrorCode.NONE) & ~halted):
                    m.d.sync += err.eq(set_err)

        # ---- counters -------------------------------------------------------------------------
        m.d.sync += [self.bytes.eq(self.bytes + add_bytes), self.bytes_raw.eq(self.bytes_raw + add_raw)]
        with m.If(self.busy & ~halted):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
            with m.If(~(cmd_fire | rd_fire | wfire)):
                m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        return m
