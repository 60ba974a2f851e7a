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
        j = Signal(8)            # line within the row
        grp = Signal(3)          # i % 8
        thr = Signal(signed(14))  # masked where col > thr
        ebits = (cols - 1).bit_length()

        causal = self.mode == MaskMode.CAUSAL
        # The generated (CAUSAL / PADDING) bits are registered: they are computed for the start
        # position and for the next line from registers and inputs, and start/step only select
        # (comparing in front of the vector engine's data select, or behind its step decision,
        # was the vector block's FPGA critical path).
        def generated(jj, tt):      # bit e: col = jj*cols + e > tt
            return Cat(*[(Cat(Const(e, ebits), jj) if ebits else jj).as_unsigned() > tt for e in range(cols)])

        last_line = j == self.row_lines - 1
        j_adv = Signal(8)
        thr_adv, thr_start = Signal(signed(14)), Signal(signed(14))
        m.d.comb += [j_adv.eq(Mux(last_line, 0, j + 1)),
                     thr_adv.eq(Mux(last_line & causal, thr + 1, thr)),
                     thr_start.eq(Mux(causal, self.param, self.param - 1))]
        gen = Signal(cols)       # generated bits of the current line
        with m.If(self.start):
            m.d.sync += [j.eq(0), grp.eq(0), thr.eq(thr_start), gen.eq(generated(Const(0, 8), thr_start))]
        with m.Elif(self.step):
            m.d.sync += [j.eq(j_adv), grp.eq(grp + 1), thr.eq(thr_adv), gen.eq(generated(j_adv, thr_adv))]

        loaded = self.mode == MaskMode.LOADED
        bits = self.bitmap.word_select(grp, cols)
        m.d.comb += self.mask.eq(Mux(loaded, bits, gen))
        m.d.comb += self.need_bitmap.eq(loaded & (grp == 0))
        return m
