"""Pipelined scale/round/clamp datapath shared by every VECTOR operation.

Per column ``c`` the unit computes, bit-exactly as ``sparrow.golden.numerics``::

    p   = use_add ? a*mult_a + b*mult_b                 # ADD
                  : (x + bias[c]) * mult[c]              # REQUANT (and AVGPOOL / pass-through)
    y   = rne_shift(p, shift[c]) + zp                   # round half to even
    out = min(max(y, lo), hi)                           # int8

which is ``numerics.requant`` (``x`` = accumulator, ``mult`` already masked to 31 bits,
``shift`` already ``& 63``), ``numerics.vadd`` (``zp = 0``, ``lo = -128`` or ``0`` for ReLU,
``hi = 127``) and ``numerics.avgpool_scale`` (``x`` = window sum, ``bias = 0``, ``lo/hi`` =
int8 range). MAXPOOL and MASK pass values through with ``mult = 1``, ``shift = 0``.

The 33 x 31-bit product is split into four registered partial products of at most 17 x 17
bits (one ECP5 18x18 multiplier each) summed over two adder stages; the 64-bit rounding shift
takes two stages (by ``8*(s//8)``, then by ``s%8``; round and sticky bits come from the
product, selected by masks registered from ``shift``) and the rounded value is saturated to
16 bits before the final ``+ zp`` and clamp (saturation cannot change the clamped int8
result); the clamp compares are made beside the ``+ zp`` (against bounds minus ``zp``,
registered from the configuration) and the last stage only selects. The pipeline never
stalls: a valid input appears at the output exactly :attr:`LATENCY` cycles later.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .multiplier import Multiplier

__all__ = ["RequantUnit"]


class RequantUnit(wiring.Component):
    """Fixed-latency (``LATENCY`` cycles) int32/int8 -> int8 scaling pipeline, ``cols`` lanes.

    Parameters
    ----------
    cols : int
        Elements per line (a power of two, 1..64).

    Ports
    -----
    i_valid : In(1)
        An input line is present this cycle.
    i_x : In(ArrayLayout(signed(32), cols))
        Operand of the multiply path (accumulator, pool sum/max or masked value).
    i_a, i_b : In(ArrayLayout(signed(8), cols))
        Operands of the ADD path.
    use_add : In(1)
        Select ``a*mult_a + b*mult_b`` instead of ``(x + bias)*mult``. Held constant while
        lines are in flight, like every other configuration input below.
    mult_a, mult_b : In(signed(16))
        ADD multipliers.
    bias : In(ArrayLayout(signed(32), cols))
        Per-column bias added to ``x``.
    mult : In(ArrayLayout(unsigned(31), cols))
        Per-column unsigned multiplier.
    shift : In(ArrayLayout(unsigned(6), cols))
        Per-column rounding right shift (0..63).
    zp, lo, hi : In(signed(8))
        Zero point added after rounding, and the clamp bounds (``min(max(y, lo), hi)``).
    o_valid : Out(1)
        Output line present (``LATENCY`` cycles after ``i_valid``).
    o_y : Out(ArrayLayout(signed(8), cols))
        The int8 result.
    """

    LATENCY = 9

    def __init__(self, cols: int):
        if not isinstance(cols, int) or isinstance(cols, bool) or not 1 <= cols <= 64 or cols & (cols - 1):
            raise ValueError(f"cols must be a power of two in 1..64, not {cols!r}")
        self.cols = cols
        super().__init__({
            "i_valid": In(1),
            "i_x": In(data.ArrayLayout(signed(32), cols)),
            "i_a": In(data.ArrayLayout(signed(8), cols)),
            "i_b": In(data.ArrayLayout(signed(8), cols)),
            "use_add": In(1),
            "mult_a": In(signed(16)),
            "mult_b": In(signed(16)),
            "bias": In(data.ArrayLayout(signed(32), cols)),
            "mult": In(data.ArrayLayout(unsigned(31), cols)),
            "shift": In(data.ArrayLayout(unsigned(6), cols)),
            "zp": In(signed(8)),
            "lo": In(signed(8)),
            "hi": In(signed(8)),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(signed(8), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        sync = m.d.sync

        valid = [Signal(name=f"v{k}") for k in range(1, self.LATENCY + 1)]
        sync += valid[0].eq(self.i_valid)
        for k in range(1, self.LATENCY):
            sync += valid[k].eq(valid[k - 1])
        m.d.comb += self.o_valid.eq(valid[-1])

        # Stage k's registers load only when a line enters it (clock enable = the valid bit of
        # its input): an idle pipeline holds still, which costs nothing on the FPGA (flip-flops
        # with enable) and lets a simulator skip the arithmetic of idle cycles.
        enables = [self.i_valid] + valid[:-1]

        def at(k, stmts):
            with m.If(enables[k - 1]):
                m.d.sync += stmts

        # Clamp bounds relative to zp, registered: y = qs + up + zp is compared with lo and hi as
        # qs against lo - zp and hi - zp (and those minus one, for up = 1) in S8, beside the add
        # instead of after it. The configuration is held while lines are in flight and a line
        # takes seven cycles to reach S8, so the registers are current when it gets there.
        d_hi, d_hi_m1 = Signal(signed(10)), Signal(signed(10))
        d_lo, d_lo_m1 = Signal(signed(10)), Signal(signed(10))
        lo_above_hi = Signal()
        sync += [d_hi.eq(self.hi - self.zp), d_hi_m1.eq(self.hi - self.zp - 1),
                 d_lo.eq(self.lo - self.zp), d_lo_m1.eq(self.lo - self.zp - 1),
                 lo_above_hi.eq(self.lo > self.hi)]

        for c in range(self.cols):
            def reg(shape, stage, what, _c=c):
                return Signal(shape, name=f"s{stage}_{what}_{_c}")

            # S1 + S2: t = x + bias (exact, 33 bits) split as t = th*2**16 + tl and mult as
            # mult = mh*2**16 + ml; the four partial products and the ADD products. Each is a
            # Multiplier: operands registered as the line enters S1, product as it enters S2 --
            # the registers an FPGA flow keeps inside its DSP blocks.
            t = Signal(signed(33), name=f"t_{c}")
            m.d.comb += t.eq(self.i_x[c] + self.bias[c])
            tl, th = t[0:16], t[16:33].as_signed()
            ml, mh = self.mult[c][0:16], self.mult[c][16:31]

            def product(what, a, b, _c=c):
                mul = Multiplier(a.shape(), b.shape())
                m.submodules[f"mul_{what}_{_c}"] = mul
                m.d.comb += [mul.a.eq(a), mul.b.eq(b), mul.en_in.eq(enables[0]), mul.en_out.eq(enables[1])]
                return mul.p
            pp_ll, pp_lh = product("ll", tl, ml), product("lh", tl, mh)             # 32 u, 31 u
            pp_hl, pp_hh = product("hl", th, ml), product("hh", th, mh)             # 33 s, 32 s
            pa = product("pa", self.i_a[c], self.mult_a)                              # 24 s
            pb = product("pb", self.i_b[c], self.mult_b)

            # S3: two partial sums and the ADD sum.
            s_lo = reg(unsigned(48), 3, "slo")
            s_hi = reg(signed(49), 3, "shi")
            s_add = reg(signed(25), 3, "sadd")
            at(3, [s_lo.eq(pp_ll + (pp_lh << 16)), s_hi.eq(pp_hl + (pp_hh << 16)), s_add.eq(pa + pb)])

            # S4: the exact 64-bit product (|t| <= 2**32, mult < 2**31) or the ADD sum.
            p = reg(signed(64), 4, "p")
            at(4, p.eq(Mux(self.use_add, s_add, s_lo + (s_hi << 16))))

            # S5: coarse shift by 8*(s // 8); round bit = bit s-1 of p; sticky = any bit below s-1.
            sh = self.shift[c]
            pe = Cat(Const(0, 1), p)                    # pe[k] = p[k-1], pe[0] = 0
            qc = reg(signed(64), 5, "qc")
            rbit = reg(1, 5, "rbit")
            sticky = reg(1, 5, "sticky")
            # bits 0..s-1 of pe = bits -1..s-2 of p: a thermometer mask of s ones, made by shifting
            # 63 ones right by 63 - s (= ~s in 6 bits). One 64-bit shift in a simulator, where 63
            # separate compares cost ~220 instructions per column per cycle; a decoder on the FPGA.
            # The mask and a one-hot of s are registered from the configuration (like the clamp
            # bounds: a line reaches S5 four cycles after entering, the registers are then
            # current), so S5 is AND-OR trees of p and registers, no decoder from the shift.
            below = Signal(63, name=f"below_{c}")
            sel = Signal(64, name=f"rsel_{c}")
            sync += [below.eq(Const(2**63 - 1, 63) >> (~sh)[:6]), sel.eq(Const(1, 64) << sh)]
            at(5, [qc.eq(p >> Cat(Const(0, 3), sh[3:6])), rbit.eq((pe & sel).any()),
                   sticky.eq((pe[:63] & below).any())])

            # S6: fine shift by s % 8: q = floor(p / 2**s).
            q = reg(signed(64), 6, "q")
            rbit6, sticky6 = reg(1, 6, "rbit"), reg(1, 6, "sticky")
            at(6, [q.eq(qc >> sh[0:3]), rbit6.eq(rbit), sticky6.eq(sticky)])

            # S7: saturate q to 16 bits (harmless: the int8 clamp decides the same) and round.
            qs = reg(signed(16), 7, "qs")
            up = reg(1, 7, "up")
            # q > 32767: non-negative with a one in bits 15..62; q < -32768: negative with a zero
            # there (bit tests: two 64-bit compares were carry chains of 67 levels on the FPGA)
            hi_bits = q[15:63]
            at(7, [qs.eq(Mux(~q[63] & hi_bits.any(), 32767, Mux(q[63] & ~hi_bits.all(), -32768, q))),
                   up.eq(rbit6 & (sticky6 | q[0]))])

            # S8: y = qs + up + zp and its compares with the bounds, side by side: y > hi is
            # qs + up > hi - zp, i.e. qs > hi - zp - up; y < lo is qs < lo - zp - up. Only y's low
            # byte is kept: when lo <= y <= hi, y is an int8.
            y8 = reg(signed(8), 8, "y")
            gt, lt = reg(1, 8, "gt"), reg(1, 8, "lt")
            at(8, [y8.eq(qs[:8] + up + self.zp),
                   gt.eq(Mux(up, qs > d_hi_m1, qs > d_hi)),
                   lt.eq(Mux(up, qs < d_lo_m1, qs < d_lo))])

            # S9: min(max(y, lo), hi): hi when y > hi or when lo > hi (then max(y, lo) >= lo >
            # hi), else lo when y < lo, else y. Selects only: the compares were made in S8 (a
            # compare chained behind a select here was the vector engine's FPGA critical path).
            out = reg(signed(8), 9, "out")
            at(9, out.eq(Mux(gt | lo_above_hi, self.hi, Mux(lt, self.lo, y8))))
            m.d.comb += self.o_y[c].eq(out)
        return m
