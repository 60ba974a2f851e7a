"""Mask generator of VECTOR MASK: which elements of the current data line are replaced by ``alt``.

The unit walks the lines of a MASK instruction in order (line ``j`` of row ``r``, linear index
``i = r*row_lines + j``) and, for the current line, outputs one bit per element ``e``
(``col = j*cols + e``), as ``docs/isa.md`` defines:

* CAUSAL: ``col > r + param`` (``param`` signed),
* PADDING: ``col >= param``,
* LOADED: bit ``(i % 8)*cols + e`` of the bitmap line ``mask_addr + i // 8`` (bits LSB-first
  over the line's bytes). The unit does not read memory: it raises ``need_bitmap`` on the
  first line of every group of 8 and uses the ``bitmap`` input given with that line; it keeps
  the group's remaining bits itself (shifted down by ``cols`` per line).

Timing: ``need_bitmap`` and the current line's bits are registers (the generated bits, or the
kept bitmap bits), so ``mask`` is one 2:1 select (the new bitmap line's low bits while
``need_bitmap``) -- the owner's pop decisions and its operand register read them late in the
cycle. Every compare behind those registers reads registers and the inputs only (below).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sparrow.isa import MaskMode

__all__ = ["MaskUnit"]


class MaskUnit(wiring.Component):
    """Per-line mask bits for VECTOR MASK.

    Parameters
    ----------
    cols : int
        Elements per line (a power of two, 1..64).

    Ports
    -----
    start : In(1)
        Restart at line 0 (row 0); ``mode``, ``param`` and ``row_lines`` must be valid from
        this cycle until the instruction ends.
    step : In(1)
        The current line was consumed; advance to the next one.
    mode : In(MaskMode)
    param : In(signed(12))
    row_lines : In(unsigned(8))
        Lines per row (>= 1).
    bitmap : In(unsigned(8*cols))
        LOADED mode: the bitmap line of the current group of 8 lines (bits LSB-first); read
        only while ``need_bitmap`` (the unit keeps what it needs of it for the group).
    mask : Out(cols)
        Bit ``e`` set: element ``e`` of the current line is masked (a register, or the low
        ``cols`` bits of ``bitmap`` while ``need_bitmap``). Valid from the cycle after ``start``.
    need_bitmap : Out(1)
        LOADED mode and the current line starts a group of 8 (a new bitmap line is due).
        A register.
    need_bitmap_next : Out(1)
        The value ``need_bitmap`` takes in the next cycle (after this cycle's ``start`` /
        ``step``), for an owner that registers decisions made on it.
    """

    def __init__(self, cols: int):
        if not isinstance(cols, int) or isinstance(cols, bool) or not 1 <= cols <= 64 or cols & (cols - 1):
            raise ValueError(f"cols must be a power of two in 1..64, not {cols!r}")
        self.cols = cols
        super().__init__({
            "start": In(1),
            "step": In(1),
            "mode": In(MaskMode),
            "param": In(signed(12)),
            "row_lines": In(unsigned(8)),
            "bitmap": In(unsigned(8 * cols)),
            "mask": Out(cols),
            "need_bitmap": Out(1),
            "need_bitmap_next": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cols = self.cols
        left = Signal(8)         # lines of the row after the current one
        j1 = Signal(8)           # (line within the row) + 1
        grp = Signal(3)          # i % 8
        thr = Signal(signed(14))  # masked where col > thr
        ebits = (cols - 1).bit_length()

        causal = self.mode == MaskMode.CAUSAL
        # The generated (CAUSAL / PADDING) bits are registered, and every compare behind that
        # register reads registers and the inputs only: the next line's bits are computed for
        # both cases -- same row (line j + 1, kept as ``j1``) and next row (line 0, threshold
        # +1 if causal, as a compare against a constant) -- and the row-end flag (a down-count
        # reaching 0) only selects. Deriving the row end from ``row_lines - 1`` and comparing
        # after the select was the vector block's FPGA critical path.
        def generated(jj, tt):      # bit e: col = jj*cols + e > tt
            return Cat(*[(Cat(Const(e, ebits), jj) if ebits else jj).as_unsigned() > tt for e in range(cols)])

        def const_gt(offset, tt):   # bit e: e + offset > tt
            return Cat(*[Const(e + offset, signed(16)) > tt for e in range(cols)])

        last_line = left == 0
        loaded = self.mode == MaskMode.LOADED
        gen_same_row = Signal(cols)
        gen_next_row = Signal(cols)
        m.d.comb += [gen_same_row.eq(generated(j1, thr)),
                     gen_next_row.eq(Mux(causal, const_gt(-1, thr), const_gt(0, thr)))]
        cur = Signal(cols)       # bits of the current line (generated, or kept from the bitmap)
        kept = Signal(8 * cols)  # LOADED: the group's bits from the current line on
        nb = Signal()            # need_bitmap
        nb_n = Signal()
        with m.If(self.start):
            m.d.comb += nb_n.eq(loaded)
        with m.Elif(self.step):
            m.d.comb += nb_n.eq(loaded & (grp == 7))
        with m.Else():
            m.d.comb += nb_n.eq(nb)
        m.d.sync += nb.eq(nb_n)
        src = Signal(8 * cols)   # the group's bits from the current line on, this cycle
        m.d.comb += src.eq(Mux(nb, self.bitmap, kept))
        with m.If(self.start):
            # line 0, threshold param (CAUSAL) or param - 1 (PADDING: e > param - 1 is e >= param)
            m.d.sync += [left.eq(self.row_lines - 1), j1.eq(1), grp.eq(0),
                         thr.eq(Mux(causal, self.param, self.param - 1)),
                         cur.eq(Mux(causal, const_gt(0, self.param), const_gt(1, self.param)))]
        with m.Elif(self.step):
            m.d.sync += [grp.eq(grp + 1), kept.eq(src >> cols),
                         cur.eq(Mux(loaded, src[cols:2 * cols],
                                    Mux(last_line, gen_next_row, gen_same_row)))]
            with m.If(last_line):
                m.d.sync += [left.eq(self.row_lines - 1), j1.eq(1)]
                with m.If(causal):
                    m.d.sync += thr.eq(thr + 1)
            with m.Else():
                m.d.sync += [left.eq(left - 1), j1.eq(j1 + 1)]

        m.d.comb += [self.mask.eq(Mux(nb, self.bitmap[:cols], cur)), self.need_bitmap.eq(nb),
                     self.need_bitmap_next.eq(nb_n)]
        return m
