"""Zero-mask line codec units and byte-stream helpers shared by the DMA engines.

The compressed format is defined by :mod:`sparrow.codec`: per line a mask of ``ceil(cols/8)``
bytes (bit ``i``, LSB first, set when element ``i`` is non-zero) followed by the non-zero bytes
in order. The two combinational units here convert one line per cycle:

* :class:`ZeroCompact` (STORE): a line -> its mask and packed non-zero bytes, as one byte
  string of ``mask_bytes + k`` bytes (``k`` = non-zero count) zero-filled above;
* :class:`ZeroExpand` (LOAD): a mask and the bytes that follow it -> the line.

Also the byte-granular helpers :func:`shl_bytes` / :func:`take_bytes` used by the realigners, and
:func:`shl_bits` for their byte masks (left shifts by a variable amount are built as explicit
mux stages truncated to the output width, so the generated Verilog never contains a shift whose
result width grows with the shift amount and the shifter needs no subtraction in front of it).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ZeroCompact", "ZeroExpand", "popcount", "shl_bits", "shl_bytes", "shl_units", "take_bytes",
           "take_units", "mask_bytes"]


def mask_bytes(cols: int) -> int:
    return (cols + 7) // 8


def popcount(bits):
    """Sum of the bits of ``bits`` (an Amaranth value) as a value wide enough to hold it."""
    total = Const(0, 1)
    for i in range(len(bits)):
        total = total + bits[i]
    return total


def shl_units(value, pos, out_units: int, unit: int):
    """``value << unit*pos`` truncated to ``out_units`` units of ``unit`` bits (see
    :func:`shl_bytes`): for per-byte values (e.g. counts) that move with the bytes they describe."""
    width = unit * out_units
    v = Cat(value, Const(0, max(0, width - len(value))))[:width]
    for b in range(len(pos)):
        step = unit << b
        v = Mux(pos[b], Cat(Const(0, min(step, width)), v)[:width], v)
    return v


def shl_bytes(value, pos, out_bytes: int):
    """``value << 8*pos`` truncated to ``out_bytes`` bytes, for a variable ``pos`` (zero when
    ``pos >= out_bytes``): a logarithmic shifter, one 2:1 mux stage per bit of ``pos`` from the
    LSB (so the low bits of a computed ``pos``, which settle first, are used first), every stage
    truncated to ``out_bytes``."""
    return shl_units(value, pos, out_bytes, 8)


def shl_bits(value, pos, out_bits: int):
    """``value << pos`` truncated to ``out_bits`` bits, built like :func:`shl_bytes` (mux stages,
    no subtraction in front, no result wider than ``out_bits``): for byte masks that move with
    the bytes they describe."""
    return shl_units(value, pos, out_bits, 1)


def take_units(value, n, units: int, unit: int):
    """The low ``n`` units of ``unit`` bits of ``value`` (``units`` wide), units at and above ``n``
    zeroed (see :func:`take_bytes`)."""
    return Cat(*[Mux(i < n, value[unit * i : unit * i + unit], 0) for i in range(units)])


def take_bytes(value, n, nbytes: int):
    """The low ``n`` bytes of ``value`` (``nbytes`` wide), bytes at and above ``n`` zeroed."""
    return take_units(value, n, nbytes, 8)


class ZeroCompact(wiring.Component):
    """Compress one line (combinational).

    Parameters
    ----------
    cols : int
        Elements (bytes) per line, >= 1.

    Ports
    -----
    line : In(8*cols)
        The line, element ``i`` in bits ``[8i, 8i+8)``.
    data : Out(8*(mask_bytes + cols))
        Mask bytes then the non-zero bytes in order; bytes at and above ``n`` are zero.
    n : Out(range(mask_bytes + cols + 1))
        Bytes of the compressed line: ``mask_bytes + k``.
    k : Out(range(cols + 1))
        Non-zero elements.
    """

    def __init__(self, cols: int):
        if not isinstance(cols, int) or cols < 1:
            raise ValueError(f"cols must be a positive int, not {cols!r}")
        self.cols = cols
        self.mb = mask_bytes(cols)
        super().__init__(
            {
                "line": In(8 * cols),
                "data": Out(8 * (self.mb + cols)),
                "n": Out(range(self.mb + cols + 1)),
                "k": Out(range(cols + 1)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cols, mb = self.cols, self.mb
        nz = Signal(cols)
        m.d.comb += nz.eq(Cat(*[self.line[8 * i : 8 * i + 8].any() for i in range(cols)]))
        # prefix[i] = non-zeros before element i = output slot of element i
        prefix = []
        acc = Const(0, 1)
        for i in range(cols):
            p = Signal(range(cols + 1), name=f"prefix{i}")
            m.d.comb += p.eq(acc)
            prefix.append(p)
            acc = p + nz[i]
        packed = []
        for j in range(cols):
            byte = Const(0, 8)
            # only elements i >= j can land in slot j
            for i in range(j, cols):
                byte = byte | Mux(nz[i] & (prefix[i] == j), self.line[8 * i : 8 * i + 8], 0)
            packed.append(byte)
        m.d.comb += [
            self.k.eq(popcount(nz)),
            self.n.eq(mb + self.k),
            self.data.eq(Cat(nz, Const(0, 8 * mb - cols), *packed)),
        ]
        return m


class ZeroExpand(wiring.Component):
    """Decompress one line (combinational).

    Parameters
    ----------
    cols : int
        Elements (bytes) per line, >= 1.

    Ports
    -----
    data : In(8*(mask_bytes + cols))
        The bytes at the start of the line's encoding: mask bytes, then (at least) the ``k``
        non-zero bytes. Bytes beyond ``mask_bytes + k`` are ignored.
    line : Out(8*cols)
        The decoded line (zeros where the mask bit is clear).
    k : Out(range(cols + 1))
        Non-zero elements claimed by the mask.
    n : Out(range(mask_bytes + cols + 1))
        Encoded bytes of the line: ``mask_bytes + k``.
    """

    def __init__(self, cols: int):
        if not isinstance(cols, int) or cols < 1:
            raise ValueError(f"cols must be a positive int, not {cols!r}")
        self.cols = cols
        self.mb = mask_bytes(cols)
        super().__init__(
            {
                "data": In(8 * (self.mb + cols)),
                "line": Out(8 * cols),
                "k": Out(range(cols + 1)),
                "n": Out(range(self.mb + cols + 1)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cols, mb = self.cols, self.mb
        mask = self.data[:cols]
        payload = self.data[8 * mb :]
        out = []
        acc = Const(0, 1)
        for i in range(cols):
            p = Signal(range(cols + 1), name=f"prefix{i}")
            m.d.comb += p.eq(acc)
            acc = p + mask[i]
            out.append(Mux(mask[i], payload.word_select(p[: max(1, (cols - 1).bit_length())], 8), 0))
        m.d.comb += [
            self.line.eq(Cat(*out)),
            self.k.eq(popcount(mask)),
            self.n.eq(mb + self.k),
        ]
        return m
