"""Register slice for a valid/ready stream whose two ends are far apart on the die."""

from amaranth.hdl import Const, Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CreditSlice"]


class CreditSlice(wiring.Component):
    """Pass a stream through with one cycle of latency and full throughput, with no
    combinational path from one end to the other and back.

    A :class:`~sparrow.hdl.skid_buffer.SkidBuffer` already has registered outputs, but its
    ``i.ready`` is the skid register's state, which its buffer logic also uses: whichever end
    the placer puts the "accept" logic (``i.valid & i.ready``) near, the other end's registers
    reach it through a long route and back. Measured on the whole design, that round trip
    between an engine and a scratchpad's slice was the critical path (14.8 ns, 12.6 of it
    routing).

    Here the two ends share no logic. The sending end keeps a count of items sent and not yet
    passed on, and ``i.ready`` is a register (``room``: the count is below ``depth``) that only
    the sending end reads. The receiving end is a ``depth``-entry queue whose head is
    ``o.valid`` / ``o.payload``; it takes ``i.valid & i.ready`` and never refuses (the count
    guarantees room), and reports each item passed on by a registered pulse that lowers the
    count a cycle later. So the only paths between the ends are one-way: the accepted item
    (sender -> queue) and the pulse (queue -> count). Three entries cover the pulse's delay:
    with ``o.ready`` held high one item passes per cycle.

    Parameters
    ----------
    shape : shape-like
        The payload shape.
    depth : int
        Queue entries (>= 3, default 3; fewer would not keep full throughput).

    Ports
    -----
    i : In(stream.Signature(shape))
        Items in. ``ready`` is a register.
    o : Out(stream.Signature(shape))
        The same items, in order, from the cycle after they were accepted on ``i`` at the
        earliest. ``valid`` and ``payload`` are registers.
    """

    def __init__(self, shape, *, depth: int = 3):
        try:
            Shape.cast(shape)
        except TypeError:
            raise TypeError(f"shape must be a shape-castable object, not {shape!r}") from None
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 3:
            raise ValueError(f"depth must be an int >= 3, not {depth!r}")
        self.shape, self.depth = shape, depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        # -- sending end: the count and the room flag
        count = Signal(range(d + 1))
        room = Signal(init=1)
        passed = Signal()                 # registered at the receiving end: the head moved on
        push = Signal()
        m.d.comb += [self.i.ready.eq(room), push.eq(self.i.valid & room)]
        count_next = Signal.like(count)
        m.d.comb += count_next.eq(count + push - passed)
        m.d.sync += [count.eq(count_next), room.eq(count_next < d)]

        # -- receiving end: a shift queue, entry 0 the head
        ents = [Signal(self.shape, name=f"ent{k}") for k in range(d)]
        vals = [Signal(name=f"ent{k}_valid") for k in range(d)]
        pop = Signal()
        m.d.comb += [self.o.valid.eq(vals[0]), self.o.payload.eq(ents[0]), pop.eq(vals[0] & self.o.ready)]
        m.d.sync += passed.eq(pop)
        for k in range(d):
            # entry k after the pop (the next one down if the head left), then the pushed item
            # lands in the first free entry
            src = ents[k + 1] if k + 1 < d else ents[k]
            kept_v = vals[k + 1] if k + 1 < d else Const(0)
            after_v = Signal(name=f"ent{k}_kept")
            m.d.comb += after_v.eq(pop & kept_v | ~pop & vals[k])
            below_v = Const(1) if k == 0 else Signal(name=f"ent{k}_below")
            if k:
                m.d.comb += below_v.eq(pop & vals[k] | ~pop & vals[k - 1])
            with m.If(after_v):
                with m.If(pop):
                    m.d.sync += ents[k].eq(src)
            with m.Elif(push & below_v):
                m.d.sync += ents[k].eq(self.i.payload)
            m.d.sync += vals[k].eq(after_v | push & below_v)
        return m
