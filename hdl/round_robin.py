"""Round-robin arbiter: the fairness primitive shared by the scratchpads and the membus arbiter."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RoundRobin"]


class RoundRobin(wiring.Component):
    """Combinational round-robin grant among ``n`` requesters with a registered priority pointer.

    The requester granted is the first one with its ``requests`` bit set, searching cyclically
    from the one *after* the requester granted last (index 0 first after reset). When ``advance``
    is high at a clock edge the pointer moves to the current grant, so that requester has the
    lowest priority next time.

    Fairness: a requester that keeps requesting is granted after at most ``n - 1`` grants to
    others, because every grant given with ``advance`` moves the pointer past the winner, and
    the winner then ranks below everyone who was waiting.

    Parameters
    ----------
    n : int
        Number of requesters (>= 1).

    Ports
    -----
    requests : In(n)
        One bit per requester.
    advance : In(1)
        Consume the current grant (move the priority pointer to it).
    grant : Out(n)
        One-hot grant (all zero when nobody requests).
    index : Out(range(n))
        Index of the granted requester (meaningful when ``valid``).
    valid : Out(1)
        Some requester is granted.
    """

    def __init__(self, n: int):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, not {n!r}")
        self.n = n
        super().__init__({
            "requests": In(n),
            "advance": In(1),
            "grant": Out(n),
            "index": Out(range(max(n, 2))),
            "valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        if n == 1:
            m.d.comb += [self.grant.eq(self.requests), self.valid.eq(self.requests), self.index.eq(0)]
            return m
        last = Signal(range(n), init=n - 1)
        # Search order: indices after `last` first (in increasing order), then all of them. Later
        # `If`s win in Amaranth, so walk both halves backwards.
        for i in reversed(range(n)):
            with m.If(self.requests[i]):
                m.d.comb += self.index.eq(i)
        for i in reversed(range(1, n)):
            with m.If(self.requests[i] & (last < i)):
                m.d.comb += self.index.eq(i)
        m.d.comb += self.valid.eq(self.requests.any())
        for i in range(n):
            m.d.comb += self.grant[i].eq(self.valid & (self.index == i))
        with m.If(self.advance & self.valid):
            m.d.sync += last.eq(self.index)
        return m
