"""Bank of counting semaphores shared by the engines' issue stages."""

import operator
from functools import reduce
from itertools import combinations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from sparrow.config import HwConfig

__all__ = ["SemaphoreUnit", "sem_client_signature"]


def sem_client_signature(cfg: HwConfig) -> wiring.Signature:
    """One engine's connection to the semaphore unit (engine-side view).

    ``wait_sem``/``wait_count``/``wait_consume``: the head instruction's wait. ``next_load``:
    the head changes at the next clock edge, its wait to ``next_sem``/``next_count``/
    ``next_consume``; without it the wait stays (the unit decodes the next cycle's wait into
    registers, so the wait fields must follow this rule). ``request`` is high when the head would
    be issued this cycle if its wait allowed it; ``wait_ok`` is high when the wait allows it;
    ``take`` issues it (and consumes ``wait_count`` when ``wait_consume``) and may only be raised
    together with ``request`` and ``wait_ok``. ``signal_oh``: increment on completion, one bit
    per semaphore, at most one set (the client decodes its semaphore id before its register, so
    each bit feeds only its own semaphore's adder and compares: timing, the decode behind the
    register fanned every client's id out to all the semaphores).
    """
    return wiring.Signature({
        "wait_sem": Out(4), "wait_count": Out(8), "wait_consume": Out(1),
        "next_load": Out(1), "next_sem": Out(4), "next_count": Out(8), "next_consume": Out(1),
        "request": Out(1), "wait_ok": In(1), "take": Out(1),
        "signal_oh": Out(cfg.n_semaphores),
    })


class SemaphoreUnit(wiring.Component):
    """``cfg.n_semaphores`` counters of ``cfg.sem_bits`` bits with ``n_clients`` wait/signal ports.

    Rules (``docs/isa.md``): a wait is satisfied when ``sem >= count`` (count 0 never waits); the
    compares are registered (each client's count against every semaphore's next value), so a
    non-zero count is seen satisfied only when the client presented the same count in the
    previous cycle: a head with a new count is released a cycle after it appears at the
    earliest (measured: not one kernel of the system benchmark changed by a cycle); a
    consuming wait subtracts ``count`` when taken; signals add one each (several clients may
    signal the same semaphore in one cycle). Two consuming waits on one semaphore are never
    granted in the same cycle: a consuming wait is held back while a lower-indexed client
    *requests* a consuming wait it sees satisfied on the same semaphore, so a consume can never
    underflow. The hold-back depends on the lower client's request and count, not on its grant,
    so the grants are not chained from client to client (timing); a lower request that is not
    granted itself (a consume of its semaphore is landing, below) costs the higher client a
    cycle, never correctness.
    A consume is subtracted in the cycle after its take; in that cycle and the next every wait
    with a non-zero count on that semaphore is held back (its value is about to drop, then the
    compares, which leave the consumes out, are stale), so waiters never see a stale value, and
    one semaphore is consumed at most every third cycle.

    Timing: the registered compares are not made on the next value (an adder behind the late
    signals, then a compare, was the block's critical path): ``next >= count`` is rewritten as
    ``x < inc`` with ``x = count + ~sem`` from registers only (one carry chain; the consume
    landing in the cycle is left out, above) and the number of signals ``inc`` entering last, as
    thresholds of the signal bits (no adder); the signal count and the overflow are LUT logic
    too. The grants start from registers: ``ge_r`` through the semaphore select, and what the
    unit decodes from each client's next wait (``next_load``, ``next_*``: the count compares,
    whether two clients wait on one semaphore, whether a consume is landing on a client's
    semaphore), selected by ``next_load`` as the last step, so the issue decision behind
    ``next_load`` meets no compare.
    Overflow is judged on the value plus this cycle's signals, before this cycle's consumes
    (the golden model processes completions before starts): a result above
    ``2**sem_bits - 1`` saturates the counter, ``overflow`` rises and ``overflow_client`` names the
    lowest client signalling an overflowing semaphore.

    Ports
    -----
    clients : In(sem_client_signature(cfg)).array(n_clients)
        Per-client wait/signal connections.
    clear : In(1)
        Zero every semaphore (program start).
    overflow : Out(1)
        Pulses in the cycle an overflow happens.
    overflow_client : Out(range(n_clients))
        The lowest client signalling an overflowing semaphore.
    overflow_clients : Out(n_clients)
        Bit ``c``: client ``c`` signals an overflowing semaphore in this cycle (a user that
        registers these picks the lowest after its register, off the signals' path).
    values : Out(ArrayLayout(sem_bits, n_semaphores))
        Current values (for CSRs and debug).
    """

    def __init__(self, cfg: HwConfig, n_clients: int = 4):
        if not isinstance(n_clients, int) or n_clients < 1:
            raise ValueError(f"n_clients must be a positive int, not {n_clients!r}")
        self.cfg, self.n_clients = cfg, n_clients
        super().__init__({
            "clients": In(sem_client_signature(cfg)).array(n_clients),
            "clear": In(1),
            "overflow": Out(1),
            "overflow_client": Out(range(max(2, n_clients))),
            "overflow_clients": Out(n_clients),
            "values": Out(data.ArrayLayout(cfg.sem_bits, cfg.n_semaphores)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, n = self.cfg, self.n_clients
        sb = cfg.sem_bits
        sems = [Signal(sb, name=f"sem{i}") for i in range(cfg.n_semaphores)]
        for i, s in enumerate(sems):
            m.d.comb += self.values[i].eq(s)

        nsem = cfg.n_semaphores
        # What the grants need of each client's wait, decoded from the next cycle's wait into
        # registers (timing: the grants start from registers, not from count compares and
        # semaphore-id compares behind the queue heads; `next_load`, which hangs off the issue
        # decision, only selects between compares made on the current and the new wait):
        # `count_zero` is `count == 0`, `count_same` is `count == the previous cycle's count`,
        # `consuming` a consuming wait of a non-zero count, `sem_eq[p, c]` (p < c) that clients
        # p and c wait on the same semaphore, `land_eq[p, c]` that client c waits on the
        # semaphore client p waited on in the previous cycle (where p's consume, if it took one,
        # is landing). Reset values: every client's wait (0, 0, no consume).
        zeros = [Signal(name=f"count_zero{c}", init=1) for c in range(n)]
        sames = [Signal(name=f"count_same{c}", init=1) for c in range(n)]
        consuming = [Signal(name=f"consuming{c}") for c in range(n)]
        sem_eq = {(p, c): Signal(name=f"sem_eq{p}_{c}", init=1) for c in range(n) for p in range(c)}
        land_eq = {(p, c): Signal(name=f"land_eq{p}_{c}", init=1) for c in range(n) for p in range(n)}
        # (the compares are kept as nets of their own, so that synthesis leaves `next_load` as
        # the last select instead of folding it into the compares' first LUT level)
        def kept(value, name):
            sig = Signal(name=name, attrs={"keep": 1})
            m.d.comb += sig.eq(value)
            return sig

        for c, cl in enumerate(self.clients):
            m.d.sync += [
                zeros[c].eq(Mux(cl.next_load, kept(cl.next_count == 0, f"count_zero{c}_new"),
                                kept(cl.wait_count == 0, f"count_zero{c}_old"))),
                sames[c].eq(~cl.next_load | kept(cl.next_count == cl.wait_count, f"count_same{c}_new")),
                consuming[c].eq(Mux(cl.next_load, kept(cl.next_consume & (cl.next_count != 0), f"consuming{c}_new"),
                                    kept(cl.wait_consume & (cl.wait_count != 0), f"consuming{c}_old"))),
            ]
        for (p, c), eq in sem_eq.items():
            cp, cc = self.clients[p], self.clients[c]
            with m.Switch(Cat(cp.next_load, cc.next_load)):
                for k, (sp, sc) in enumerate([(cp.wait_sem, cc.wait_sem), (cp.next_sem, cc.wait_sem),
                                              (cp.wait_sem, cc.next_sem), (cp.next_sem, cc.next_sem)]):
                    with m.Case(k):
                        m.d.sync += eq.eq(kept(sp == sc, f"sem_eq{p}_{c}_case{k}"))
        for (p, c), eq in land_eq.items():
            cp, cc = self.clients[p], self.clients[c]
            m.d.sync += eq.eq(Mux(cc.next_load, kept(cp.wait_sem == cc.next_sem, f"land_eq{p}_{c}_new"),
                                  kept(cp.wait_sem == cc.wait_sem, f"land_eq{p}_{c}_old")))

        # Consumes are applied a cycle after their take (timing: the take decision does not feed
        # the counters' adders): `con_r[c]` is client c's consume in flight, one-hot over the
        # semaphores, `con_any[c]` whether there is one; any counted wait on its semaphore is held
        # back for that cycle, as the value is about to drop.
        con_r = [Signal(nsem, name=f"con_r{c}") for c in range(n)]
        con_any = [Signal(name=f"con_any{c}") for c in range(n)]
        cnt_r = [Signal(8, name=f"cnt_r{c}") for c in range(n)]
        # The counted waits on a semaphore are held back in the cycle after its consume landed
        # too (the compares leave the consumes out, see below, so they are stale then):
        # `landed[c]` is high when one landed in the previous cycle on client c's semaphore of
        # this cycle. `con_sem[p]` is the semaphore of the consume landing now.
        con_sem = [Signal(4, name=f"con_sem{c}") for c in range(n)]
        landed = [Signal(name=f"landed{c}") for c in range(n)]
        for c, cl in enumerate(self.clients):
            m.d.sync += con_sem[c].eq(cl.wait_sem)
            m.d.sync += landed[c].eq(reduce(operator.or_, (
                con_any[p] & Mux(cl.next_load, kept(con_sem[p] == cl.next_sem, f"landed{p}_{c}_new"),
                                 kept(con_sem[p] == cl.wait_sem, f"landed{p}_{c}_old")) for p in range(n))))

        # `ge_r[c]` bit i is `sem_i >= count` for the count client c presented in the previous
        # cycle, against the semaphore's value in this cycle, so it is exact this cycle when the
        # count is unchanged (`count_same`); a head with a new non-zero count waits one cycle for
        # its compare. How it is computed without a compare behind the counters: see below.
        ge_r = [Signal(nsem, name=f"ge_r{c}", init=(1 << nsem) - 1) for c in range(n)]
        # Grant waits: a consuming wait (count != 0) is held back by a lower client's satisfied
        # consuming request on the same semaphore.
        strong = []
        for c, cl in enumerate(self.clients):
            ge = Signal(name=f"ge_sel{c}")
            en = Signal(name=f"enough{c}")
            landing = Signal(name=f"landing{c}")
            m.d.comb += [ge.eq(ge_r[c].bit_select(cl.wait_sem, 1)), en.eq(zeros[c] | (sames[c] & ge)),
                         landing.eq(reduce(operator.or_, (con_any[p] & land_eq[p, c] for p in range(n))))]
            # a satisfied consuming request: holds back the higher clients' consumes of its
            # semaphore
            st = Signal(name=f"strong{c}")
            m.d.comb += st.eq(cl.request & consuming[c] & sames[c] & ge)
            blocked = reduce(operator.or_, (strong[p] & sem_eq[p, c] for p in range(c)), Const(0))
            m.d.comb += cl.wait_ok.eq(en & ~(~zeros[c] & (landing | landed[c])) & ~(consuming[c] & blocked))
            strong.append(st)

        # Each client touches at most one semaphore per cycle, so its signal (one-hot from the
        # client) and its consume (decoded here once) are one-hot vectors over the semaphores; a
        # semaphore's increment is then a count of bits and its decrement a select (at most one
        # consume of a non-zero count per semaphore per cycle, see above; consumes of count 0
        # subtract nothing and are left out). The same logic as comparing every client's index
        # against every semaphore, written so that a simulator evaluates a shift per client
        # instead of n_semaphores x n_clients compares and masked adds.
        sig_oh = [cl.signal_oh for cl in self.clients]
        for c, cl in enumerate(self.clients):
            # (the consume decoded from the wait fields, not from `consuming`: the same value, and
            # the unit's state after a cycle depends on its inputs alone, which keeps the formal
            # proof inductive at a small depth)
            con = cl.take & cl.wait_consume & (cl.wait_count != 0) & ~self.clear
            m.d.sync += [con_r[c].eq(Mux(con, Const(1, nsem) << cl.wait_sem, 0)), con_any[c].eq(con),
                         cnt_r[c].eq(cl.wait_count)]

        # The compares are made a cycle ahead, on this cycle's operands, without waiting for the
        # semaphore's next value (timing: the signals arrive late, from the engines'
        # completions; an adder then a compare behind them was the block's critical path), and
        # without the consume landing in this cycle (timing: the consumes' select fed the
        # compares' adders, the block's critical path; the waits on a semaphore whose consume
        # landed are held back in the next cycle, when the compare is stale):
        #     next >= count  <=>  sem + inc >= count  <=>  x < inc,
        #     x = count - sem - 1 = count + ~sem,
        # where x comes from registers only (one carry chain) and the late increment `inc`
        # (0..n signals) enters at the end: x < inc <=> x < 0, or 0 <= x < 2**wl and the
        # signals number more than x (a threshold of the signal bits, no adder). Clear and
        # overflow (the counter saturates) select constants of the count.
        xw = max(8, sb) + 2
        wl = n.bit_length()

        ovf_vec = Signal(nsem)
        ge_next = [[Signal(name=f"ge_next{c}_{i}") for i in range(nsem)] for c in range(n)]
        for i, s in enumerate(sems):
            # at_least[k]: k or more of this cycle's signals land on semaphore i (k = 0..n)
            bits = [so[i] for so in sig_oh]
            at_least = [Const(1)] + [
                Signal(name=f"sig_ge{k}_{i}") for k in range(1, n + 1)]
            for k in range(1, n + 1):
                m.d.comb += at_least[k].eq(reduce(operator.or_, (
                    reduce(operator.and_, sub) for sub in combinations(bits, k))))
            # the number of signals, as a binary number for the counter's adder
            inc = Signal(range(n + 1), name=f"inc{i}")
            for k in range(1, n + 1):
                with m.If(at_least[k]):
                    m.d.comb += inc.eq(k)
            # at most one client consumes semaphore i in a cycle: an AND-OR, not a priority chain
            dec = Signal(unsigned(sb + 1), name=f"dec{i}")
            m.d.comb += dec.eq(reduce(operator.or_, (Mux(co[i], cnt, 0) for co, cnt in zip(con_r, cnt_r))))
            # overflow from the signals alone, so it does not wait for the grants; written as
            # "within k of the maximum and at least k+1 signals" (timing: compares of the
            # registered value against constants, in parallel with the signal count, instead of
            # an adder feeding a compare)
            near = [(s == cfg.sem_max - k) & at_least[k + 1] for k in range(min(n, cfg.sem_max + 1))]
            m.d.comb += ovf_vec[i].eq(reduce(operator.or_, near))
            touched = Cat(*(so[i] for so in sig_oh), *(co[i] for co in con_r)).any()
            nxt = Signal(sb, name=f"sem_next{i}")
            with m.If(self.clear):
                m.d.comb += nxt.eq(0)
            with m.Elif(ovf_vec[i]):
                m.d.comb += nxt.eq(cfg.sem_max)
            with m.Elif(touched):
                m.d.comb += nxt.eq((s + inc - dec)[:sb])
            with m.Else():
                m.d.comb += nxt.eq(s)
            m.d.sync += s.eq(nxt)

            # the compares against the next value but this cycle's consume (see above)
            nsw = Signal(xw, name=f"nsem_w{i}")
            m.d.comb += nsw.eq(~Cat(s, Const(0, xw - sb)))
            for c, cl in enumerate(self.clients):
                x = Signal(xw, name=f"ge_x{c}_{i}")
                m.d.comb += x.eq(cl.wait_count + nsw)
                small = Signal(name=f"ge_small{c}_{i}")
                m.d.comb += small.eq(x[wl:] == 0)
                lt = reduce(operator.or_, ((x[:wl] == j) & at_least[j + 1] for j in range(n)), Const(0))
                hit = x[-1] | (small & lt)
                maxge = (cl.wait_count[sb:] == 0) if sb < 8 else Const(1)
                with m.If(self.clear):
                    m.d.comb += ge_next[c][i].eq(cl.wait_count == 0)
                with m.Elif(ovf_vec[i]):
                    m.d.comb += ge_next[c][i].eq(maxge)
                with m.Else():
                    m.d.comb += ge_next[c][i].eq(hit)
        for c in range(n):
            m.d.sync += ge_r[c].eq(Cat(*ge_next[c]))
        overflow_any = Signal()
        m.d.comb += overflow_any.eq(ovf_vec.any() & ~self.clear)
        # the clients whose signal lands on an overflowing semaphore, and the lowest of them
        for c, cl in enumerate(self.clients):
            m.d.comb += self.overflow_clients[c].eq((cl.signal_oh & ovf_vec).any())
        for c in reversed(range(n)):
            with m.If(self.overflow_clients[c]):
                m.d.comb += self.overflow_client.eq(c)
        m.d.comb += self.overflow.eq(overflow_any)
        return m
