"""Register slice for a valid/ready stream (a two-register skid buffer)."""

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Pass a stream through with one cycle of latency and full throughput, cutting every
    combinational path through it: ``i.ready``, ``o.valid`` and ``o.payload`` all come from
    registers.

    The output register holds the item offered on ``o``; a second (skid) register catches the
    item accepted on ``i`` in a cycle in which ``o`` did not move, so ``i.ready`` can be a
    register (``~skid valid``) instead of depending on ``o.ready``. The skid register empties
    into the output register before new items are accepted, so order is kept.

    Parameters
    ----------
    shape : shape-like
        The payload shape.

    Ports
    -----
    i : In(stream.Signature(shape))
        Items in.
    o : Out(stream.Signature(shape))
        The same items, in order, from the cycle after they were accepted on ``i`` at the
        earliest.
    """

    def __init__(self, shape):
        try:
            Shape.cast(shape)
        except TypeError:
            raise TypeError(f"shape must be a shape-castable object, not {shape!r}") from None
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        out_v, skid_v = Signal(), Signal()
        out_d, skid_d = Signal(self.shape), Signal(self.shape)
        m.d.comb += [self.o.valid.eq(out_v), self.o.payload.eq(out_d), self.i.ready.eq(~skid_v)]
        take_in = self.i.valid & ~skid_v
        with m.If(~out_v | self.o.ready):
            # the output register is free this cycle: refill it, the skid register first
            with m.If(skid_v):
                m.d.sync += [out_d.eq(skid_d), skid_v.eq(0)]
            with m.Else():
                m.d.sync += [out_d.eq(self.i.payload), out_v.eq(self.i.valid)]
        with m.Elif(take_in):
            m.d.sync += [skid_d.eq(self.i.payload), skid_v.eq(1)]
        return m
