"""Formal properties of the zero-mask line codec (:mod:`sparrow.hdl.zero_codec`).

Both units are combinational, so one step (``bmc`` depth 1) is a proof over *every* input.
Checked for the line widths of the presets (``cols`` = 4, 8, 16; the 16-wide ones take several
minutes with z3 and are ``slow``: run by name or with ``--all``):

``codec.roundtrip_<cols>``
    For every line ``x``: ``ZeroExpand(ZeroCompact(x)) == x``; both agree on ``n`` and ``k``;
    the mask is exactly the non-zero flags of ``x`` (the format of :mod:`sparrow.codec`),
    ``n = mask_bytes + k`` and the compressed bytes at and above ``n`` are zero.
``codec.expand_any_<cols>``
    For *every* byte string (corrupt streams included) fed to ``ZeroExpand``: ``n`` equals
    ``mask_bytes + popcount(mask)`` and never exceeds ``mask_bytes + cols``; elements whose mask
    bit is clear are zero; the output depends only on the ``n`` claimed bytes (a second
    instance whose input agrees on bytes ``< n`` gives the same line), i.e. the decoder never
    reads outside its claimed region; and a canonical encoding (claimed payload bytes non-zero,
    unused mask bits clear) is reproduced exactly by ``ZeroCompact`` of the decoded line.
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cat, Const, Signal
from amaranth.hdl._ast import AnyConst

from sparrow.hdl.zero_codec import ZeroCompact, ZeroExpand, mask_bytes

from .formal import FormalCheck, FormalWrapper, register

COLS = (4, 8, 16)

ROUNDTRIP_MUTANTS = {
    "swap_payload": "ZeroCompact's first two packed bytes are swapped",
    "n_plus_one": "ZeroExpand reports one byte more than the line's encoding",
    "dirty_tail": "ZeroCompact leaves a non-zero byte just above its n bytes",
}
EXPAND_MUTANTS = {
    "reads_beyond": "ZeroExpand's element 0 also ORs in the last byte of its input (outside the claim when k < cols)",
    "ignores_mask": "ZeroExpand's element 0 is taken from the payload even when its mask bit is clear",
}


def _byte(v, i):
    return v[8 * i: 8 * i + 8]


def _popcount(bits):
    return sum((bits[i] for i in range(len(bits))), Const(0, 8))


class RoundTrip(FormalWrapper):
    def __init__(self, mutant=None, cols=8):
        super().__init__(mutant)
        self.cols = cols

    def build(self, m):
        cols, mb, mut = self.cols, mask_bytes(self.cols), self.mutant
        m.submodules.comp = comp = ZeroCompact(cols)
        m.submodules.exp = exp = ZeroExpand(cols)
        nbytes = mb + cols
        x = AnyConst(8 * cols)
        m.d.comb += comp.line.eq(x)
        cdata = Signal(8 * nbytes)
        m.d.comb += cdata.eq(comp.data)
        if mut == "swap_payload":
            m.d.comb += [_byte(cdata, mb).eq(_byte(comp.data, mb + 1)), _byte(cdata, mb + 1).eq(_byte(comp.data, mb))]
        if mut == "dirty_tail":
            with m.If(comp.n < nbytes):
                m.d.comb += cdata.eq(comp.data | (Const(0x80, 8 * nbytes) << (comp.n * 8)))
        m.d.comb += exp.data.eq(cdata)
        exp_n = exp.n + 1 if mut == "n_plus_one" else exp.n

        nz = Cat(*[_byte(x, i) != 0 for i in range(cols)])
        k_ref = _popcount(nz)
        m.d.comb += [
            Assert(exp.line == x, "decompress(compress(x)) != x"),
            Assert(exp_n == comp.n, "expand and compact disagree on n"),
            Assert(exp.k == comp.k, "expand and compact disagree on k"),
            Assert(comp.k == k_ref, "k is not the number of non-zero elements"),
            Assert(comp.n == mb + k_ref, "n != mask_bytes + k"),
            Assert(cdata[:8 * mb] == nz, "mask bytes are not the non-zero flags (LSB first, zero padded)"),
        ]
        for i in range(nbytes):
            with m.If(i >= comp.n):
                m.d.comb += Assert(_byte(cdata, i) == 0, f"compressed byte {i} above n is not zero")


class ExpandAny(FormalWrapper):
    def __init__(self, mutant=None, cols=8):
        super().__init__(mutant)
        self.cols = cols

    def build(self, m):
        cols, mb, mut = self.cols, mask_bytes(self.cols), self.mutant
        nbytes = mb + cols
        m.submodules.a = a = ZeroExpand(cols)
        m.submodules.b = b = ZeroExpand(cols)
        m.submodules.comp = comp = ZeroCompact(cols)
        d1, d2 = AnyConst(8 * nbytes), AnyConst(8 * nbytes)
        m.d.comb += [a.data.eq(d1), b.data.eq(d2)]

        def present(unit, d):
            line = Signal(8 * cols)
            m.d.comb += line.eq(unit.line)
            if mut == "reads_beyond":
                m.d.comb += line[:8].eq(unit.line[:8] | _byte(d, nbytes - 1))
            if mut == "ignores_mask":
                m.d.comb += line[:8].eq(_byte(d, mb))
            return line

        la, lb = present(a, d1), present(b, d2)
        mask = d1[:cols]
        k_ref = _popcount(mask)
        m.d.comb += [
            Assert(a.k == k_ref, "k != popcount(mask)"),
            Assert(a.n == mb + k_ref, "n != mask_bytes + popcount(mask)"),
            Assert(a.n <= nbytes, "n exceeds the line's worst case"),
        ]
        for i in range(cols):
            with m.If(~mask[i]):
                m.d.comb += Assert(_byte(la, i) == 0, f"element {i} non-zero although its mask bit is clear")
        # a second decoder whose input agrees on the claimed bytes decodes the same line
        for i in range(nbytes):
            with m.If(i < a.n):
                m.d.comb += Assume(_byte(d2, i) == _byte(d1, i))
        m.d.comb += Assert(la == lb, "decoded line depends on bytes beyond the claimed n")
        # canonical encodings round-trip the other way: compress(decompress(d)) == d[:n]
        canonical = Signal()
        payload_nz = Cat(*[(i >= k_ref) | (_byte(d1, mb + i) != 0) for i in range(cols)]).all()
        pad_clear = (d1[cols:8 * mb] == 0) if 8 * mb > cols else Const(1, 1)
        m.d.comb += [canonical.eq(payload_nz & pad_clear), comp.line.eq(la)]
        with m.If(canonical):
            m.d.comb += Assert(comp.n == a.n, "re-compressed size differs")
            for i in range(nbytes):
                with m.If(i < a.n):
                    m.d.comb += Assert(_byte(comp.data, i) == _byte(d1, i), f"re-compressed byte {i} differs")


for _cols in COLS:
    register(FormalCheck(
        f"codec.roundtrip_{_cols}", lambda mutant, c=_cols: RoundTrip(mutant, c), "bmc", 1,
        f"cols={_cols}: decompress(compress(x)) == x for every line; mask/n/k per sw/sparrow/codec.py; "
        "zero above n", mutants=ROUNDTRIP_MUTANTS, slow=_cols > 8))
    register(FormalCheck(
        f"codec.expand_any_{_cols}", lambda mutant, c=_cols: ExpandAny(mutant, c), "bmc", 1,
        f"cols={_cols}: on any input (corrupt included) the decoder's n = mask_bytes + popcount <= worst "
        "case, masked-off elements are zero, output depends only on the n claimed bytes; canonical "
        "encodings round-trip", mutants=EXPAND_MUTANTS, slow=_cols > 8))
