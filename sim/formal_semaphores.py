"""Formal properties of :class:`sparrow.hdl.semaphores.SemaphoreUnit`.

The wrapper drives every client port with free inputs (``AnySeq``) under the sequencer's
contract (semaphore ids are legal — the decoder guarantees it —, ``take`` only together with
``request`` and ``wait_ok``, and a client's wait changes only to the ``next_*`` fields it
presented with ``next_load`` in the cycle before; all zeros in the first cycle), keeps a
*shadow* of the semaphore values computed from the port events alone (the ISA rule: ``+1`` per
signal, ``-count`` per granted consuming wait — subtracted the cycle after its grant, the unit's
pipelining — saturate and flag overflow when the value plus the cycle's signals exceeds
``2**sem_bits - 1``, zero on ``clear``), and asserts:

* ``values`` equals the shadow every cycle (so no lost/duplicated signal or consume);
* no underflow: the consumes granted on a semaphore in one cycle never exceed its value, and at
  most one consuming wait (count != 0) per semaphore is granted per cycle;
* a wait is released exactly when its count is reached: ``wait_ok`` implies
  ``sem[wait_sem] >= wait_count``, and ``sem >= count`` with a count of 0 or the same count as
  in the previous cycle (the unit registers its compares) implies ``wait_ok`` unless it is a
  consuming wait and a lower-indexed client requests a consuming wait seen satisfied on the same
  semaphore in that cycle, or a counted wait on a semaphore whose consume is being subtracted or
  was subtracted in the previous cycle;
* ``overflow`` pulses exactly when a result would exceed the maximum (the counter saturates) and
  ``overflow_client`` is a client signalling such a semaphore.

Because the shadow pins down the whole state, the properties are inductive: ``prove`` mode (at
depth 3: the unit remembers the consumes of two cycles).
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Const, Cover, Mux, Signal, unsigned
from amaranth.hdl._ast import AnySeq

from sparrow.config import HwConfig
from sparrow.hdl.semaphores import SemaphoreUnit

from .formal import FormalCheck, FormalWrapper, register

#: Small unit: 4 semaphores of 3 bits (overflow reachable in 7 signals), 4 clients (as the sequencer).
CFG = HwConfig(rows=2, cols=2, act_depth=16, wgt_depth=16, acc_depth=16, act_banks=1, acc_banks=1,
               n_semaphores=4, sem_bits=3, name="formal-sem")
N_CLIENTS = 4

MUTANTS = {
    "early_release": "client 2's wait_ok is also raised one count early (sem == count - 1)",
    "lost_signal": "client 3's signal is dropped when client 0 signals the same semaphore in the same cycle",
    "double_consume": "client 1 ignores the lower-client priority on consuming waits (two consumes per cycle)",
    "wide_counter": "the unit is built with sem_bits + 1, so it does not saturate/flag at the ISA maximum",
    "lost_load": "client 1's next_load does not reach the unit (its decoded wait goes stale)",
}


class SemaphoreProps(FormalWrapper):
    def __init__(self, mutant=None, cfg: HwConfig = CFG, n_clients: int = N_CLIENTS, covers=False):
        super().__init__(mutant)
        self.cfg, self.n, self.covers = cfg, n_clients, covers

    def build(self, m):
        cfg, n, mut = self.cfg, self.n, self.mutant
        dut_cfg = cfg.replace(sem_bits=cfg.sem_bits + 1) if mut == "wide_counter" else cfg
        m.submodules.dut = dut = SemaphoreUnit(dut_cfg, n_clients=n)
        nsem, smax = cfg.n_semaphores, cfg.sem_max

        # -- environment: free inputs (what the checker sees) -----------------------------------
        clear = AnySeq(1)
        env = []
        started = Signal()
        m.d.sync += started.eq(1)
        waits = ("wait_sem", "wait_count", "wait_consume")
        for c in range(n):
            e = {k: AnySeq(w) for k, w in (("wait_sem", 4), ("wait_count", 8), ("wait_consume", 1),
                                             ("next_load", 1), ("next_sem", 4), ("next_count", 8),
                                             ("next_consume", 1),
                                             ("request", 1), ("take", 1), ("signal", 1), ("signal_sem", 4))}
            e["wait_ok"] = Signal(name=f"ok{c}")       # as presented to the client
            env.append(e)
            m.d.comb += [Assume(e["wait_sem"] < nsem), Assume(e["next_sem"] < nsem),
                         Assume(e["signal_sem"] < nsem)]
            # the wait changes only as announced in the previous cycle (zeros after reset)
            for k in waits:
                nxt_k = "next_" + k[len("wait_"):]
                prev = Signal(len(e[k]), name=f"prev_{k}{c}")
                m.d.sync += prev.eq(Mux(e["next_load"], e[nxt_k], e[k]))
                m.d.comb += Assume(Mux(started, e[k] == prev, e[k] == 0))
        m.d.comb += dut.clear.eq(clear)
        values = [Signal(cfg.sem_bits + 1, name=f"value{i}") for i in range(nsem)]
        for i in range(nsem):
            m.d.comb += values[i].eq(dut.values[i])

        def cur(sem):
            v = Signal(cfg.sem_bits + 1)
            for i in range(nsem):
                with m.If(sem == i):
                    m.d.comb += v.eq(values[i])
            return v

        for c, (e, cl) in enumerate(zip(env, dut.clients)):
            sig = e["signal"]
            if mut == "lost_signal" and c == 3:
                sig = e["signal"] & ~(env[0]["signal"] & (env[0]["signal_sem"] == e["signal_sem"]))
            load = e["next_load"] & ~(mut == "lost_load" and c == 1)
            m.d.comb += [cl.wait_sem.eq(e["wait_sem"]), cl.wait_count.eq(e["wait_count"]),
                         cl.wait_consume.eq(e["wait_consume"]), cl.next_load.eq(load),
                         cl.next_sem.eq(e["next_sem"]), cl.next_count.eq(e["next_count"]),
                         cl.next_consume.eq(e["next_consume"]), cl.request.eq(e["request"]), cl.take.eq(e["take"]),
                         cl.signal_oh.eq(Mux(sig, Const(1, nsem) << e["signal_sem"], 0))]
            ok = cl.wait_ok
            if mut == "early_release" and c == 2:
                ok = ok | ((cur(e["wait_sem"]) + 1) == e["wait_count"])
            if mut == "double_consume" and c == 1:
                ok = cur(e["wait_sem"]) >= e["wait_count"]
            m.d.comb += e["wait_ok"].eq(ok)
            # the sequencer raises take only with its request and wait_ok
            m.d.comb += Assume(~e["take"] | (e["wait_ok"] & e["request"]))

        # -- shadow model from port events ---------------------------------------------------------
        width = cfg.sem_bits + 6
        shadow = [Signal(cfg.sem_bits, name=f"shadow{i}") for i in range(nsem)]
        ovf_any = Signal()
        ovf_clients = Signal(n)
        pend = Signal(nsem)             # semaphores whose last-cycle consume is subtracted now
        landed = Signal(nsem)           # semaphores whose consume was subtracted in the last cycle
        m.d.sync += landed.eq(pend)
        for i in range(nsem):
            inc = sum(((e["signal"] & (e["signal_sem"] == i)) for e in env), Const(0, 4))
            granted = [e["take"] & e["wait_ok"] & e["wait_consume"] & (e["wait_sem"] == i) & (e["wait_count"] != 0)
                       for e in env]
            now = Signal(unsigned(11), name=f"granted{i}")
            m.d.comb += now.eq(sum((g.replicate(8) & e["wait_count"] for g, e in zip(granted, env)), Const(0, 11)))
            dec = Signal(unsigned(11), name=f"dec{i}")
            m.d.sync += dec.eq(Mux(clear, 0, now))
            m.d.comb += pend[i].eq(dec != 0)
            n_granted = sum(granted, Const(0, 3))
            nxt = Signal(unsigned(width), name=f"shadow_next{i}")
            m.d.comb += nxt.eq(shadow[i] + inc - dec)
            ovf = Signal(name=f"shadow_ovf{i}")
            m.d.comb += ovf.eq(~clear & (shadow[i] + inc > smax))
            # no underflow: granted consumes never exceed the value, at most one consumer
            m.d.comb += [Assert(dec <= values[i], f"underflow on semaphore {i}"),
                         Assert(n_granted <= 1, f"two consuming waits granted on semaphore {i}"),
                         Assert(~((now != 0) & pend[i]), f"consume granted on semaphore {i} while one lands")]
            with m.If(clear):
                m.d.sync += shadow[i].eq(0)
            with m.Elif(ovf):
                m.d.sync += shadow[i].eq(smax)
            with m.Else():
                m.d.sync += shadow[i].eq(nxt)
            with m.If(ovf):
                m.d.comb += ovf_any.eq(1)
                for c, e in enumerate(env):
                    with m.If(e["signal"] & (e["signal_sem"] == i)):
                        m.d.comb += ovf_clients[c].eq(1)
            m.d.comb += Assert(values[i] == shadow[i], f"semaphore {i} differs from the ISA model")

        # -- release exactly when the count is reached ---------------------------------------------
        # the unit's compares are registered: a non-zero count is seen reached only when the
        # client presented the same count in the previous cycle
        seen = []
        for c, e in enumerate(env):
            prev = Signal(8, name=f"prev_count{c}")
            m.d.sync += prev.eq(e["wait_count"])
            seen.append((e["wait_count"] == 0)
                        | ((e["wait_count"] == prev) & (cur(e["wait_sem"]) >= e["wait_count"])))
        for c, e in enumerate(env):
            reached = cur(e["wait_sem"]) >= e["wait_count"]
            consuming = e["wait_consume"] & (e["wait_count"] != 0)
            blocked = Const(0, 1)
            for p in range(c):
                ep = env[p]
                blocked = blocked | (ep["request"] & seen[p] & ep["wait_consume"]
                                     & (ep["wait_count"] != 0) & (ep["wait_sem"] == e["wait_sem"]))
            landing = (e["wait_count"] != 0) & (pend | landed).bit_select(e["wait_sem"], 1)
            m.d.comb += [Assert(~e["wait_ok"] | reached, f"client {c} released before its count"),
                         Assert(~(seen[c] & ~(consuming & blocked) & ~landing) | e["wait_ok"],
                                f"client {c} not released although its count is reached")]

        m.d.comb += Assert(dut.overflow == ovf_any, "overflow flag differs from the ISA model")
        with m.If(ovf_any):
            m.d.comb += Assert(ovf_clients.bit_select(dut.overflow_client, 1),
                               "overflow_client not an overflowing signaller")

        if self.covers:
            # non-vacuity: a counted consuming wait is released; an overflow; a blocked waiter
            e0, e1 = env[0], env[1]
            m.d.comb += [
                Cover(e1["take"] & e1["wait_ok"] & e1["wait_consume"] & (e1["wait_count"] == 2) & (values[1] == 2)),
                Cover(dut.overflow),
                Cover(e0["take"] & e0["wait_ok"] & e0["wait_consume"] & (e0["wait_count"] == 1)
                      & (e1["wait_sem"] == e0["wait_sem"]) & e1["wait_consume"] & (e1["wait_count"] == 1)
                      & ~e1["wait_ok"]),
            ]


register(FormalCheck(
    "semaphores.isa_model", lambda mutant: SemaphoreProps(mutant), "prove", 3,
    "SemaphoreUnit (4 sems x 3 bits, 4 clients): values follow the ISA model, no underflow, one consume "
    "per semaphore per cycle, wait released exactly when sem >= count, overflow saturates and flags",
    mutants=MUTANTS, mutant_depth=4))

register(FormalCheck(
    "semaphores.cover", lambda mutant: SemaphoreProps(mutant, covers=True), "cover", 10,
    "reachability: a count-2 consuming wait released, an overflow, a consume blocked by a lower client"))
