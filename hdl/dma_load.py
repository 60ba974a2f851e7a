"""LOAD DMA engine: external memory -> scratchpad, with padding and zero-mask decompression.

Semantics are exactly ``docs/isa.md`` (LOAD). The engine is three decoupled walkers over the
same instruction, so the bus is kept busy while lines are written:

* **command walker** — issues read bursts (aligned beats, at most ``max_burst`` beats, never
  crossing 4 KiB) for each row's byte range. Uncompressed row ``y`` is the contiguous range
  ``[dram_addr + y*dram_stride, + row_lines*LB)``. A compressed row first reads the beat(s)
  holding its 2-byte count, waits for the count (from the unpacker, as soon as the beat arrives)
  and then reads the rest of ``[slot, slot + 2 + N)``; it never reads a byte it has not range
  checked, and stops at the first bad count.
* **unpacker** — takes read beats in order and pushes their useful bytes (offset, count) into
  the :class:`ByteWindow` realigner; extracts compressed counts on the fly.
* **writer** — walks the padded region in row-major order writing one line per cycle: zero
  lines for padding, ``LB`` bytes popped from the window (zero-extended) for uncompressed data,
  and for compressed rows pops the count, then per line the mask and its non-zero bytes
  (:class:`~sparrow.hdl.zero_codec.ZeroExpand`), checking the format on the way; the corrupt
  cases raise ``CORRUPT_DATA`` before the line at which they are found is written.

Start-time checks: ``SPAD_RANGE`` then ``DRAM_RANGE`` (uncompressed; compressed rows are checked
per row: count bytes, then count <= capacity, then the ``2 + N`` bytes). A read beat with
``err`` gives ``DRAM_RANGE``. Errors are sticky; the engine then stops writing, accepts no
instruction and drains read data.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
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
        super().__init__({
            "push": In(stream.Signature(push_layout(in_bytes))),
            "pop": In(range(win_bytes + 1)),
            "window": Out(8 * win_bytes),
            "level": Out(range(self.cap + 1)),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        ib, cap = self.in_bytes, self.cap
        buf = Signal(8 * cap)
        cnt = Signal(range(cap + 1))
        buf_a = Signal(8 * cap)
        cnt_a = Signal(range(cap + 1))
        m.d.comb += [
            self.window.eq(buf[:8 * self.win_bytes]),
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
        super().__init__({
            **engine_control_members(),
            "bus": Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes)),
            "act_wr": Out(WritePortSignature(cfg.act_addr_bits, act_line(c))),
            "wgt_wr": Out(WritePortSignature(cfg.wgt_addr_bits, act_line(c))),
            "acc_wr": Out(WritePortSignature(cfg.acc_addr_bits, acc_line(c))),
            "bytes": Out(32),
            "bytes_raw": Out(32),
            "busy_cycles": Out(32),
            "stall_cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C, MB = cfg.cols, cfg.mem_bytes
        LMB = _clog2(MB)
        MBK = mask_bytes(C)
        ACCW = 4 * C
        WIN = max(ACCW, MBK + C)
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
        prow_t = Signal(11)     # padded rows
        pcol_t = Signal(11)     # padded lines per row
        pt_rows = Signal(11)
        pl_rl = Signal(11)

        err = Signal(ErrorCode)
        m.d.comb += self.error.eq(err)
        halted = Signal()
        m.d.comb += halted.eq(err != ErrorCode.NONE)

        # ---- submodules -----------------------------------------------------------------------
        m.submodules.win = win = ByteWindow(MB, WIN)
        m.submodules.expand = expand = ZeroExpand(C)
        m.d.comb += expand.data.eq(win.window[:8 * (MBK + C)])

        # ---- command walker -------------------------------------------------------------------
        cw_st = Signal(range(5))           # 0 idle, 1 row, 2 range, 3 wait count, 4 stop
        cw_y = Signal(10)
        cw_base = Signal(ADDR_W)
        cw_cur = Signal(ADDR_W)
        cw_last = Signal(ADDR_W)
        cw_count = Signal()                # current range is a count read
        # count handshake unpacker -> walker
        nv = Signal()
        nval = Signal(16)
        nok = Signal()

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
            cmd.valid.eq((cw_st == 2) & ~halted),
        ]
        cmd_fire = Signal()
        m.d.comb += cmd_fire.eq(cmd.valid & cmd.ready)

        cw_cend = Signal(ADDR_W)
        cw_hi = Signal(ADDR_W)
        m.d.comb += [
            cw_cend.eq(((cw_base + 1) & AMASK) + MB),
            cw_hi.eq(cw_base + 2 + nval),
        ]

        cw_init = Signal()   # pulsed by the control FSM to start the walkers

        with m.If(cw_init):
            m.d.sync += [cw_st.eq(1), cw_y.eq(0), cw_base.eq(dram_addr)]
        with m.Elif(cw_st == 1):
            with m.If(cw_y == rows):
                m.d.sync += cw_st.eq(0)
            with m.Elif(~comp):
                m.d.sync += [cw_cur.eq(cw_base & AMASK), cw_last.eq((cw_base + row_bytes - 1) & AMASK),
                             cw_count.eq(0), cw_st.eq(2)]
            with m.Elif(cw_base + 2 > DRAM):
                m.d.sync += cw_st.eq(4)
            with m.Else():
                m.d.sync += [cw_cur.eq(cw_base & AMASK), cw_last.eq((cw_base + 1) & AMASK),
                             cw_count.eq(1), cw_st.eq(2)]
        with m.Elif(cw_st == 2):
            with m.If(cmd_fire):
                m.d.sync += cw_cur.eq(cw_cur + ((blen + 1) << LMB))
                with m.If(reach_last):
                    with m.If(cw_count):
                        m.d.sync += cw_st.eq(3)
                    with m.Else():
                        m.d.sync += [cw_y.eq(cw_y + 1), cw_base.eq(cw_base + stride), cw_st.eq(1)]
        with m.Elif(cw_st == 3):
            with m.If(nv):
                with m.If(~nok):
                    m.d.sync += cw_st.eq(4)
                with m.Elif(cw_hi > cw_cend):
                    m.d.sync += [cw_cur.eq(cw_cend), cw_last.eq((cw_hi - 1) & AMASK),
                                 cw_count.eq(0), cw_st.eq(2)]
                with m.Else():
                    m.d.sync += [cw_y.eq(cw_y + 1), cw_base.eq(cw_base + stride), cw_st.eq(1)]

        # ---- unpacker -------------------------------------------------------------------------
        up_st = Signal(range(5))           # 0 idle, 1 row, 2 data, 3 count, 4 stop
        up_y = Signal(10)
        up_base = Signal(ADDR_W)
        up_off = Signal(range(MB))
        up_rem = Signal(20)
        up_second = Signal()               # waiting for the count's high byte in the next beat
        up_nlow = Signal(8)

        rd = self.bus.rdata
        beat_n = Signal(range(MB + 1))
        m.d.comb += beat_n.eq(Mux(up_st == 3, MB - up_off,
                                  Mux(up_rem < MB - up_off, up_rem, MB - up_off)))
        m.d.comb += [
            win.push.payload.data.eq(rd.payload.data),
            win.push.payload.off.eq(up_off),
            win.push.payload.n.eq(beat_n),
            win.push.valid.eq(rd.valid & ((up_st == 2) | (up_st == 3)) & ~halted),
            rd.ready.eq((win.push.ready & ((up_st == 2) | (up_st == 3))) | halted),
        ]
        rd_fire = Signal()
        m.d.comb += rd_fire.eq(rd.valid & rd.ready)
        push_fire = Signal()
        m.d.comb += push_fire.eq(win.push.valid & win.push.ready)

        # count extraction
        b0 = rd.payload.data.word_select(up_off, 8)
        b1 = rd.payload.data.word_select(up_off + 1, 8)
        cnt_done = Signal()
        cnt_val = Signal(16)
        with m.If(up_second):
            m.d.comb += [cnt_done.eq(1), cnt_val.eq(Cat(up_nlow, rd.payload.data[:8]))]
        with m.Elif(up_off + 2 <= MB):
            m.d.comb += [cnt_done.eq(1), cnt_val.eq(Cat(b0, b1))]
        up_cend = Signal(ADDR_W)
        up_hi = Signal(ADDR_W)
        up_ok = Signal()
        m.d.comb += [
            up_cend.eq(((up_base + 1) & AMASK) + MB),
            up_hi.eq(up_base + 2 + cnt_val),
            up_ok.eq((cnt_val <= cap) & (up_hi <= DRAM)),
        ]

        with m.If(cw_init):
            m.d.sync += [up_st.eq(1), up_y.eq(0), up_base.eq(dram_addr), up_second.eq(0)]
        with m.Elif(up_st == 1):
            with m.If(up_y == rows):
                m.d.sync += up_st.eq(0)
            with m.Elif(~comp):
                m.d.sync += [up_off.eq(up_base[:LMB] if LMB else 0), up_rem.eq(row_bytes), up_st.eq(2)]
            with m.Else():
                m.d.sync += [up_off.eq(up_base[:LMB] if LMB else 0), up_second.eq(0), up_st.eq(3)]
        with m.Elif(up_st == 2):
            with m.If(push_fire):
                m.d.sync += [up_rem.eq(up_rem - beat_n), up_off.eq(0)]
                with m.If(up_rem == beat_n):
                    m.d.sync += [up_y.eq(up_y + 1), up_base.eq(up_base + stride), up_st.eq(1)]
        with m.Elif(up_st == 3):
            with m.If(push_fire):
                m.d.sync += up_off.eq(0)
                with m.If(cnt_done):
                    m.d.sync += [nv.eq(1), nval.eq(cnt_val), nok.eq(up_ok), up_second.eq(0)]
                    with m.If(~up_ok):
                        m.d.sync += up_st.eq(4)
                    with m.Elif(up_hi > up_cend):
                        m.d.sync += [up_rem.eq(up_hi - up_cend), up_st.eq(2)]
                    with m.Else():
                        m.d.sync += [up_y.eq(up_y + 1), up_base.eq(up_base + stride), up_st.eq(1)]
                with m.Else():
                    m.d.sync += [up_second.eq(1), up_nlow.eq(b0)]
        # the walker consumes the count (never in the same cycle the unpacker sets it)
        with m.If((cw_st == 3) & nv):
            m.d.sync += nv.eq(0)
        with m.If(cw_init):
            m.d.sync += nv.eq(0)

        # ---- writer ---------------------------------------------------------------------------
        wy = Signal(11)
        wx = Signal(11)
        waddr = Signal(15)
        cst = Signal(range(3))             # 0 count, 1 lines, 2 end-of-row check
        crem = Signal(17)
        ce = Signal(range(MB + 1))
        cs = Signal(ADDR_W)

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

        add_bytes = Signal(range(WIN + 2))
        add_raw = Signal(range(ACCW + 1))

        with m.If(run & ~halted):
            with m.If(comp & (cst == 2)):
                with m.If(crem != 0):
                    m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                with m.Elif(win.level >= ce):
                    m.d.comb += pop.eq(ce)
                    m.d.sync += cst.eq(0)
            with m.Elif(finished):
                pass
            with m.Elif(in_data & ~comp):
                m.d.comb += [wvalid.eq(win.level >= lb), wline.eq(take_bytes(win.window[:8 * ACCW], lb, ACCW))]
                with m.If(wfire):
                    m.d.comb += [pop.eq(lb), add_bytes.eq(lb), add_raw.eq(lb)]
            with m.Elif(in_data & (cst == 0)):
                with m.If(cs + 2 > DRAM):
                    m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)
                with m.Elif(win.level >= 2):
                    with m.If(cnt_n > cap):
                        m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                    with m.Elif(s_hi > DRAM):
                        m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)
                    with m.Else():
                        m.d.comb += [pop.eq(2), add_bytes.eq(2)]
                        m.d.sync += [crem.eq(cnt_n), cst.eq(1),
                                     ce.eq(Mux(s_hi < s_cend, s_cend - s_hi, 0))]
            with m.Elif(in_data):
                with m.If(crem < MBK):
                    m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                with m.Elif(win.level >= MBK):
                    with m.If(expand.n > crem):
                        m.d.comb += set_err.eq(ErrorCode.CORRUPT_DATA)
                    with m.Else():
                        m.d.comb += [wvalid.eq(win.level >= expand.n), wline.eq(expand.line)]
                        with m.If(wfire):
                            m.d.comb += [pop.eq(expand.n), add_bytes.eq(expand.n), add_raw.eq(C)]
                            m.d.sync += crem.eq(crem - expand.n)
                            with m.If(wx == pl_rl - 1):
                                m.d.sync += cst.eq(2)
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
                port.cmd.payload.data.eq(wline[:8 * width]),
            ]
            with m.If(sel):
                m.d.comb += w_ready.eq(port.cmd.ready)

        # membus write channels unused
        m.d.comb += [self.bus.wdata.valid.eq(0), self.bus.wresp.ready.eq(1)]

        # ---- control --------------------------------------------------------------------------
        region = Signal(21)
        m.d.comb += region.eq((pt + rows + pb) * (pl + rl + pr))
        depth = Signal(15)
        m.d.comb += depth.eq(Mux(spad == Spad.ACT, cfg.act_depth, Mux(spad == Spad.WGT, cfg.wgt_depth, cfg.acc_depth)))
        last_byte_end = Signal(ADDR_W + 8)
        m.d.comb += last_byte_end.eq(dram_addr + (rows - 1) * stride + rl * lb)
        line_size = Mux(ins.spad == Spad.ACC, ACCW, C)

        with m.If(rd.valid & rd.ready & rd.payload.err & ~halted):
            m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.instr.ready.eq(~halted)
                with m.If(self.instr.valid & ~halted):
                    m.d.sync += [
                        spad.eq(ins.spad), spad_addr.eq(ins.spad_addr), dram_addr.eq(ins.dram_addr),
                        rows.eq(ins.rows), rl.eq(ins.row_lines), stride.eq(ins.dram_stride),
                        lb.eq(Mux(ins.line_bytes == 0, line_size, ins.line_bytes)),
                        pt.eq(ins.pad_top), pb.eq(ins.pad_bottom), pl.eq(ins.pad_left), pr.eq(ins.pad_right),
                        comp.eq(ins.compressed),
                    ]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), win.clear.eq(1)]
                with m.If(spad_addr + region > depth):
                    m.d.sync += err.eq(ErrorCode.SPAD_RANGE)
                    m.next = "HALT"
                with m.Elif(~comp & (last_byte_end > DRAM)):
                    m.d.sync += err.eq(ErrorCode.DRAM_RANGE)
                    m.next = "HALT"
                with m.Else():
                    m.d.comb += cw_init.eq(1)
                    m.d.sync += [
                        row_bytes.eq(rl * lb), cap.eq(rl * (MBK + C)),
                        prow_t.eq(pt + rows + pb), pcol_t.eq(pl + rl + pr),
                        pt_rows.eq(pt + rows), pl_rl.eq(pl + rl),
                        wy.eq(0), wx.eq(0), waddr.eq(spad_addr), cst.eq(0), cs.eq(dram_addr),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), run.eq(1)]
                with m.If(set_err != ErrorCode.NONE):
                    m.d.sync += err.eq(set_err)
                    m.next = "HALT"
                with m.Elif(finished & ~(comp & (cst == 2)) & ~halted):
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
