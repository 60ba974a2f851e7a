"""Bank of counting semaphores shared by the engines' issue stages."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from sparrow.config import HwConfig

__all__ = ["SemaphoreUnit", "sem_client_signature"]


def sem_client_signature(cfg: HwConfig) -> wiring.Signature:
    """One engine's connection to the semaphore unit (engine-side view).

    ``wait_sem``/``wait_count``/``wait_consume``: the head instruction's wait; ``wait_ok`` is
    high when it may issue now; raising ``take`` in a cycle where ``wait_ok`` is high issues it
    (and consumes ``wait_count`` when ``wait_consume``). ``signal``/``signal_sem``: increment on
    completion.
    """
    return wiring.Signature({
        "wait_sem": Out(4), "wait_count": Out(8), "wait_consume": Out(1),
        "wait_ok": In(1), "take": Out(1),
        "signal": Out(1), "signal_sem": Out(4),
    })


class SemaphoreUnit(wiring.Component):
    """``cfg.n_semaphores`` counters of ``cfg.sem_bits`` bits with ``n_clients`` wait/signal ports.

    Rules (``docs/isa.md``): a wait is satisfied when ``sem >= count`` (count 0 never waits); a
    consuming wait subtracts ``count`` when taken; signals add one each (several clients may
    signal the same semaphore in one cycle). Two consuming waits on one semaphore are never
    granted in the same cycle (the lower client index wins), so a consume can never underflow.
    A result above ``2**sem_bits - 1`` is an overflow: the counter saturates, ``overflow`` rises
    and ``overflow_client`` names the lowest signalling client.

    Ports
    -----
    clients : In(sem_client_signature(cfg)).array(n_clients)
        Per-client wait/signal connections.
    clear : In(1)
        Zero every semaphore (program start).
    overflow : Out(1)
        Pulses in the cycle an overflow happens.
    overflow_client : Out(range(n_clients))
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
            "values": Out(data.ArrayLayout(cfg.sem_bits, cfg.n_semaphores)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, n = self.cfg, self.n_clients
        sems = [Signal(cfg.sem_bits, name=f"sem{i}") for i in range(cfg.n_semaphores)]
        for i, s in enumerate(sems):
            m.d.comb += self.values[i].eq(s)

        def value_of(idx):
            v = Signal(cfg.sem_bits)
            with m.Switch(idx):
                for i, s in enumerate(sems):
                    with m.Case(i):
                        m.d.comb += v.eq(s)
            return v

        # Grant waits; among consuming waits on one semaphore, the lowest client wins.
        takes_consume = []
        oks = []
        for c, cl in enumerate(self.clients):
            cur = value_of(cl.wait_sem)
            ok = Signal(name=f"ok{c}")
            blocked = Const(0)
            for p in range(c):
                pc = self.clients[p]
                blocked = blocked | (oks[p] & pc.take & pc.wait_consume & (pc.wait_count != 0)
                                     & (pc.wait_sem == cl.wait_sem))
            enough = cur >= cl.wait_count
            m.d.comb += ok.eq(enough & ~(cl.wait_consume & (cl.wait_count != 0) & blocked))
            m.d.comb += cl.wait_ok.eq(ok)
            oks.append(ok)
            takes_consume.append(cl.take & ok & cl.wait_consume)

        # Each client touches at most one semaphore per cycle, so its signal and its consume are
        # decoded once into one-hot vectors over the semaphores; a semaphore's increment is then
        # a sum of bits and its decrement a select (at most one consume of a non-zero count per
        # semaphore per cycle, see above; consumes of count 0 subtract nothing and are left
        # out). The same logic as comparing every client's index against every semaphore,
        # written so that a simulator evaluates a shift per client instead of n_semaphores x
        # n_clients compares and masked adds.
        nsem = cfg.n_semaphores
        sig_oh = []
        con_oh = []
        for c, (tc, cl) in enumerate(zip(takes_consume, self.clients)):
            so, co = Signal(nsem, name=f"sig_oh{c}"), Signal(nsem, name=f"con_oh{c}")
            m.d.comb += [so.eq(Mux(cl.signal, Const(1, nsem) << cl.signal_sem, 0)),
                         co.eq(Mux(tc & (cl.wait_count != 0), Const(1, nsem) << cl.wait_sem, 0))]
            sig_oh.append(so)
            con_oh.append(co)

        width = cfg.sem_bits + 4
        overflow_any = Signal()
        for i, s in enumerate(sems):
            inc = Signal(unsigned(4), name=f"inc{i}")
            dec = Signal(unsigned(cfg.sem_bits + 1), name=f"dec{i}")
            m.d.comb += inc.eq(sum(so[i] for so in sig_oh))
            sel = Const(0, 8)
            for co, cl in reversed(list(zip(con_oh, self.clients))):
                sel = Mux(co[i], cl.wait_count, sel)
            m.d.comb += dec.eq(sel)
            nxt = Signal(unsigned(width), name=f"next{i}")
            m.d.comb += nxt.eq(s + inc - dec)
            ovf = Signal(name=f"ovf{i}")
            m.d.comb += ovf.eq(nxt > cfg.sem_max)
            touched = Cat(*(so[i] for so in sig_oh), *(co[i] for co in con_oh)).any()
            with m.If(self.clear):
                m.d.sync += s.eq(0)
            with m.Elif(touched):
                m.d.sync += s.eq(Mux(ovf, cfg.sem_max, nxt))
            with m.If(ovf & ~self.clear):
                m.d.comb += overflow_any.eq(1)
                for c in reversed(range(n)):
                    with m.If(sig_oh[c][i]):
                        m.d.comb += self.overflow_client.eq(c)
        m.d.comb += self.overflow.eq(overflow_any)
        return m
