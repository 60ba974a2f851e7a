"""Pipelined multiplier: registered operands, registered product, each with a clock enable.

Every multiply of the datapath that sits between two registers goes through this component, so
that an FPGA flow can put those registers *inside* the vendor's DSP block. On ECP5 a multiply
whose operands and product live in fabric flip-flops spends ~4.5 ns in the MULT18X18D plus the
routing into and out of it. One 18 x 18 multiply between shift registers on an LFE5U-25F
(nextpnr seed 1, single runs) closed at 141 MHz with fabric registers and at 242 MHz with the
DSP's own input and output registers. yosys does not move fabric registers into ECP5 DSPs, so
the choice is made at elaboration time:

* with no platform, or one without a ``get_multiplier`` method, the component is plain Amaranth
  (two operand registers, a product register) -- this is what simulation and Verilator run;
* a platform with ``get_multiplier(mul)`` may return its own implementation of ``mul`` (same
  ports, same latency, same reset behaviour), or ``None`` to keep the plain one.
  :class:`sparrow.fpga.ECP5Synthesis` returns a MULT18X18D with its input and output registers.
"""

from amaranth import Module, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier"]


class Multiplier(wiring.Component):
    """``p = a * b`` two clock edges after the operands are presented.

    Timing: at a clock edge with ``en_in`` the operands are registered; at an edge with
    ``en_out`` the product of the registered operands is registered into ``p``. With both
    enables tied high the latency is two cycles and one product leaves per cycle. Reset clears
    the operand and product registers.

    Parameters
    ----------
    a_shape, b_shape : Shape-castable
        Operand shapes (signed or unsigned, any width).
    p_width : int or None
        Width of ``p`` (default: the full product width). ``p`` is signed if either operand is.

    Ports
    -----
    a : In(a_shape)
    b : In(b_shape)
    en_in : In(1), init 1
        Register the operands at this clock edge.
    en_out : In(1), init 1
        Register the product at this clock edge.
    p : Out(signed/unsigned(p_width))
        The registered product (truncated to ``p_width`` bits).
    """

    def __init__(self, a_shape, b_shape, p_width=None):
        try:
            a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        except TypeError as e:
            raise TypeError(f"Multiplier: a_shape and b_shape must be shape-castable ({e})") from None
        full = a_shape.width + b_shape.width
        if p_width is None:
            p_width = full
        if not isinstance(p_width, int) or isinstance(p_width, bool) or p_width < 1:
            raise ValueError(f"Multiplier: p_width must be a positive int, not {p_width!r}")
        self.a_shape, self.b_shape = a_shape, b_shape
        self.signed = a_shape.signed or b_shape.signed
        self.p_width = p_width
        p_shape = Shape(p_width, self.signed)
        super().__init__({
            "a": In(a_shape),
            "b": In(b_shape),
            "en_in": In(1, init=1),
            "en_out": In(1, init=1),
            "p": Out(p_shape),
        })

    def elaborate(self, platform):
        get = getattr(platform, "get_multiplier", None)
        if get is not None:
            impl = get(self)
            if impl is not None:
                return impl
        m = Module()
        a_r = Signal(self.a_shape)
        b_r = Signal(self.b_shape)
        with m.If(self.en_in):
            m.d.sync += [a_r.eq(self.a), b_r.eq(self.b)]
        with m.If(self.en_out):
            m.d.sync += self.p.eq(a_r * b_r)
        return m
