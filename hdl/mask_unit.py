"""Mask generator of VECTOR MASK: which elements of the current data line are replaced by ``alt``.

The unit walks the lines of a MASK instruction in order (line ``j`` of row ``r``, linear index
``i = r*row_lines + j``) and, for the current line, outputs one bit per element ``e``
(``col = j*cols + e``), as ``docs/isa.md`` defines:

* CAUSAL: ``col > r + param`` (``param`` signed),
* PADDING: ``col >= param``,
* LOADED: bit ``(i % 8)*cols + e`` of the bitmap line ``mask_addr + i // 8`` (bits LSB-first
  over the line's bytes). The unit does not read memory: it raises ``need_bitmap`` on the
  first line of every group of 8 and uses the ``bitmap`` input given with that line (the
  owner keeps it for the group's other lines).
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
        LOADED mode: the bitmap line of the current group of 8 lines (bits LSB-first).
    mask : Out(cols)
        Bit ``e`` set: element ``e`` of the current line is masked (registered for CAUSAL and
        PADDING; combinational from ``bitmap`` for LOADED). Valid from the cycle after ``start``.
    need_bitmap : Out(1)
        LOADED mode and the current line starts a group of 8 (a new bitmap line is due).
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
        gen_same_row = Signal(cols)
        gen_next_row = Signal(cols)
        m.d.comb += [gen_same_row.eq(generated(j1, thr)),
                     gen_next_row.eq(Mux(causal, const_gt(-1, thr), const_gt(0, thr)))]
        gen = Signal(cols)       # generated bits of the current line
        with m.If(self.start):
            # line 0, threshold param (CAUSAL) or param - 1 (PADDING: e > param - 1 is e >= param)
            m.d.sync += [left.eq(self.row_lines - 1), j1.eq(1), grp.eq(0),
                         thr.eq(Mux(causal, self.param, self.param - 1)),
                         gen.eq(Mux(causal, const_gt(0, self.param), const_gt(1, self.param)))]
        with m.Elif(self.step):
            m.d.sync += [grp.eq(grp + 1), gen.eq(Mux(last_line, gen_next_row, gen_same_row))]
            with m.If(last_line):
                m.d.sync += [left.eq(self.row_lines - 1), j1.eq(1)]
                with m.If(causal):
                    m.d.sync += thr.eq(thr + 1)
            with m.Else():
                m.d.sync += [left.eq(left - 1), j1.eq(j1 + 1)]

        loaded = self.mode == MaskMode.LOADED
        bits = self.bitmap.word_select(grp, cols)
        m.d.comb += self.mask.eq(Mux(loaded, bits, gen))
        m.d.comb += self.need_bitmap.eq(loaded & (grp == 0))
        return m
