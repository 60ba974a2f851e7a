"""Register slice for a valid/ready stream whose two ends are far apart on the die."""

from amaranth.hdl import Array, Module, Mux, Shape, Signal
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
        # the state, made here so that the formal check (sim/formal_streams.py) can state its
        # invariants over it
        d = depth
        self._count = Signal(range(d + 1), name="count")
        self._room = Signal(init=1, name="room")
        self._passed = Signal(name="passed")
        self._spare = [Signal(shape, name=f"spare{k}", reset_less=True) for k in range(d - 1)]
        self._n_spare = Signal(range(d), name="n_spare")
        self._any_spare = Signal(name="any_spare")
        self._wp = Signal(range(d - 1), name="wp")
        self._rp = Signal(range(d - 1), name="rp")

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        # -- sending end: the count and the room flag
        count, room = self._count, self._room
        passed = self._passed             # registered at the receiving end: the head moved on
        push = Signal()
        m.d.comb += [self.i.ready.eq(room), push.eq(self.i.valid & room)]
        count_next = Signal.like(count)
        m.d.comb += count_next.eq(count + push - passed)
        m.d.sync += [count.eq(count_next), room.eq(self._has_room(count_next))]

        # -- receiving end: the head (o's registers) and d - 1 spare entries behind it, a ring
        # written and read by pointers (so a spare entry is only ever loaded from i, and the
        # head from i or the oldest spare: one 2-way choice per bit after the ring's read)
        head_v = Signal()
        head = Signal(self.shape, reset_less=True)  # payloads need no reset (valid says)
        spare, n_spare, wp, rp = self._spare, self._n_spare, self._wp, self._rp
        pop = Signal()
        refill = Signal()                 # the head is free after this cycle
        m.d.comb += [self.o.valid.eq(head_v), self.o.payload.eq(head), pop.eq(head_v & self.o.ready),
                     refill.eq(~head_v | pop)]
        m.d.sync += passed.eq(pop)

        def step(ptr):
            return Mux(ptr == d - 2, 0, ptr + 1)

        # any_spare: the ring is not empty, a register of its own (timing and area: a decode of
        # the count beside the ring's read made the head's input a six-input function per bit)
        any_spare = self._any_spare
        take_spare = Signal()
        to_ring = Signal()
        m.d.comb += [take_spare.eq(refill & any_spare),
                     to_ring.eq(push & ~(refill & ~any_spare))]   # else it goes straight to the head
        head_src = Signal(self.shape)
        m.d.comb += head_src.eq(self._head_source(any_spare, Array(spare)[rp], self.i.payload))
        with m.If(refill):
            m.d.sync += [head_v.eq(any_spare | push), head.eq(head_src)]
        # every pushed item is written into the ring's free entry at wp, whether it stays there
        # or goes straight to the head (then wp does not move and the entry stays free), so the
        # ring's enables do not depend on o.ready (timing: on the whole design the arbitration's
        # grant ran into a slice's spare entries, pulled away towards the sender). The entry is
        # free: a push means fewer than depth items inside, so the ring is not full.
        with m.If(push):
            m.d.sync += Array(spare)[wp].eq(self.i.payload)
        with m.If(to_ring):
            m.d.sync += wp.eq(step(wp))
        with m.If(take_spare):
            m.d.sync += rp.eq(step(rp))
        # The ring's count for either outcome of the head's refill, which selects last (timing:
        # `o.ready` is the receiver's decision, often long; it ran through the count's adder and
        # its compare into `any_spare`). Refilled, the oldest spare moves to the head and a push
        # goes to the ring; kept, a push goes to the ring, unless the head is empty (refill).
        n_if_refill, n_if_kept = Signal.like(n_spare), Signal.like(n_spare)
        any_if_refill, any_if_kept = Signal(), Signal()
        m.d.comb += [n_if_refill.eq(n_spare + (push & any_spare) - any_spare),
                     n_if_kept.eq(n_spare + push),
                     any_if_refill.eq(any_spare & (push | (n_spare != 1))),
                     any_if_kept.eq(any_spare | push)]
        m.d.sync += [n_spare.eq(Mux(refill, n_if_refill, n_if_kept)),
                     any_spare.eq(Mux(refill, any_if_refill, any_if_kept))]
        return m

    # the two decisions the slice's correctness rests on, as methods so the formal check's
    # mutants (``sim/formal_streams.py``) can break each one
    def _has_room(self, count_next):
        """The sender may push next cycle: fewer than ``depth`` items unaccounted for."""
        return count_next < self.depth

    def _head_source(self, any_spare, oldest_spare, incoming):
        """What refills the head: the oldest spare entry, if any (order), else the input."""
        return Mux(any_spare, oldest_spare, incoming)
