"""Round-robin arbiter: the fairness primitive shared by the scratchpads and the membus arbiter."""

import operator
from functools import reduce

from amaranth import Const, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RoundRobin", "one_hot_mux"]


class RoundRobin(wiring.Component):
    """Combinational round-robin grant among ``n`` requesters with a registered priority state.

    The requester granted is the first one with its ``requests`` bit set, searching cyclically
    from the one *after* the requester granted last (index 0 first after reset). When ``advance``
    is high at a clock edge the priority moves past the current grant, so that requester has the
    lowest priority next time.

    Fairness: a requester that keeps requesting is granted after at most ``n - 1`` grants to
    others, because every grant given with ``advance`` moves the priority past the winner, and
    the winner then ranks below everyone who was waiting.

    Timing: the priority order is kept as a register per pair of requesters (``i`` ranks above
    ``j``), so the one-hot ``grant`` is ``requests[i]`` and no request of a higher-ranked
    requester: one AND-OR over registers and requests (2 LUT levels for up to 7 requesters, 3
    for up to 15), where a search from a pointer is a chain as long as ``n``. The pairs are
    updated from ``grant`` when ``advance`` is high. Use ``grant`` (e.g. as the selects of an
    AND-OR multiplexer) rather than ``index`` in paths that must be short: ``index`` is encoded
    from ``grant``.

    Parameters
    ----------
    n : int
        Number of requesters (>= 1).

    Ports
    -----
    requests : In(n)
        One bit per requester.
    advance : In(1)
        Consume the current grant (move the priority past it).
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
        n, req = self.n, self.requests
        m.d.comb += self.valid.eq(req.any())
        if n == 1:
            m.d.comb += [self.grant.eq(req), self.index.eq(0)]
            return m
        # above[i, j] (i < j): i ranks above j. After the grant of w the search starts at w + 1,
        # so i ranks above j when (i - w - 1) % n < (j - w - 1) % n; after reset it starts at 0.
        above = {(i, j): Signal(name=f"above_{i}_{j}", init=1) for i in range(n) for j in range(i + 1, n)}

        def ranks_above(a, b):
            return above[a, b] if a < b else ~above[b, a]

        for i in range(n):
            beaten = [req[j] & ranks_above(j, i) for j in range(n) if j != i]
            m.d.comb += self.grant[i].eq(req[i] & ~reduce(operator.or_, beaten))
        m.d.comb += self.index.eq(reduce(operator.or_, [Const(i, self.index.shape()) & self.grant[i].replicate(
            len(self.index)) for i in range(1, n)]))
        with m.If(self.advance):
            for (i, j), bit in above.items():
                after = [self.grant[w] for w in range(n) if (i - w - 1) % n < (j - w - 1) % n]
                with m.If(self.valid):
                    m.d.sync += bit.eq(reduce(operator.or_, after, Const(0, 1)))
        return m


def one_hot_mux(sel, values):
    """``values[i]`` where bit ``i`` of the one-hot ``sel`` is set (0 where none is): an AND-OR,
    so the select meets no decoder (for a :class:`RoundRobin`'s late ``grant``)."""
    values = [Value.cast(v) for v in values]
    width = max(len(v) for v in values)
    return reduce(operator.or_, [v & sel[i].replicate(width) for i, v in enumerate(values)])
