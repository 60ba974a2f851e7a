"""Semaphore unit: waits release exactly at their count, consumes never underflow, overflow detected."""

import random


from sparrow.sim.amsim import run_testbench
from sparrow.config import preset
from sparrow.hdl.semaphores import SemaphoreUnit

CFG = preset("small").replace(n_semaphores=4, sem_bits=4)

WAIT = ("wait_sem", "wait_count", "wait_consume")


def present(ctx, cl, wait, nxt=None):
    """Drive client ``cl``: ``wait`` (sem, count, consume) is its wait this cycle; ``nxt`` the
    wait it loads for the next cycle (None: no load, the wait stays)."""
    for k, v in zip(WAIT, wait):
        ctx.set(getattr(cl, k), int(v))
    ctx.set(cl.next_load, nxt is not None)
    if nxt is not None:
        ctx.set(cl.next_sem, nxt[0])
        ctx.set(cl.next_count, nxt[1])
        ctx.set(cl.next_consume, int(nxt[2]))


def signal(ctx, cl, sem):
    """Client ``cl`` signals semaphore ``sem`` this cycle (``None``: no signal)."""
    ctx.set(cl.signal_oh, 0 if sem is None else 1 << sem)


async def change_wait(ctx, cl, wait, new):
    """Load ``new`` as client ``cl``'s wait (one clock edge, ``wait`` presented meanwhile)."""
    present(ctx, cl, wait, new)
    await ctx.tick()
    present(ctx, cl, new)


def test_random_traffic_matches_rules():
    seed = 7
    rng = random.Random(seed)
    print(f"seed {seed}")
    dut = SemaphoreUnit(CFG, n_clients=4)
    n = CFG.n_semaphores
    model = [0] * n
    checked = {"ok": 0, "overflow": 0}

    async def tb(ctx):
        pending = []            # (sem, count) consumed by last cycle's takes, subtracted now
        landed = []             # the same, of the cycle before
        prev_count = [0] * len(dut.clients)    # the count each client presented last cycle
        waits = [(0, 0, False)] * len(dut.clients)     # each client's wait (after reset: zeros)
        for _ in range(1500):
            acts, loads = [], []
            for c, cl in enumerate(dut.clients):
                sem, count, consume = waits[c]
                a = dict(wait_sem=sem, wait_count=count, wait_consume=consume,
                         request=rng.random() < 0.8, signal=rng.random() < 0.35, signal_sem=rng.randrange(n))
                # the next cycle's wait: mostly the same count (the compares are registered: a
                # new count is compared in the cycle after it appears), any semaphore; a load
                # of the same wait or no load (then the next fields are noise to be ignored)
                new = (rng.randrange(n), count if rng.random() < 0.6 else rng.choice([0, 1, 2, 3, rng.randrange(16)]),
                       rng.random() < 0.6)
                load = rng.random() < 0.6
                present(ctx, cl, waits[c], new if load else None)
                if not load:
                    for k, v in (("next_sem", rng.randrange(n)), ("next_count", rng.randrange(16)),
                                 ("next_consume", rng.randrange(2))):
                        ctx.set(getattr(cl, k), v)
                ctx.set(cl.request, int(a["request"]))
                signal(ctx, cl, a["signal_sem"] if a["signal"] else None)
                acts.append(a)
                loads.append(new if load else waits[c])
            # reference: a wait is seen satisfied when its count is 0, or when sem >= count and
            # the count was presented in the previous cycle too; a consuming wait is held back
            # while a lower client requests a consuming wait seen satisfied on the same semaphore
            # (whether or not that client takes); any counted wait is held back while last
            # cycle's consume of its semaphore is applied
            busy = {sem for sem, _ in pending + landed}

            def seen(c, a, prev=prev_count):
                return a["wait_count"] == 0 or (a["wait_count"] == prev[c]
                                                and model[a["wait_sem"]] >= a["wait_count"])
            exp_ok = []
            for c, a in enumerate(acts):
                consuming = a["wait_consume"] and a["wait_count"] != 0
                blocked = any(p["request"] and p["wait_consume"] and p["wait_count"] != 0
                              and seen(q, p) and p["wait_sem"] == a["wait_sem"]
                              for q, p in enumerate(acts[:c]))
                exp_ok.append(seen(c, a) and not (consuming and blocked)
                              and not (a["wait_count"] != 0 and a["wait_sem"] in busy))
            got_ok = [ctx.get(cl.wait_ok) for cl in dut.clients]
            assert got_ok == [int(o) for o in exp_ok], (got_ok, exp_ok, model, acts)
            checked["ok"] += sum(exp_ok)
            # take only with request and wait_ok (the sequencer's contract), not always
            takes = [a["request"] and ok and rng.random() < 0.85 for a, ok in zip(acts, exp_ok)]
            for cl, t in zip(dut.clients, takes):
                ctx.set(cl.take, int(t))
            # completions before starts: overflow is judged on the value plus the signals
            inc = [0] * n
            for a in acts:
                if a["signal"]:
                    inc[a["signal_sem"]] += 1
            ovf = [model[i] + inc[i] > CFG.sem_max for i in range(n)]
            nxt = [model[i] + inc[i] for i in range(n)]
            for sem, count in pending:
                nxt[sem] -= count
            landed = pending
            pending = [(a["wait_sem"], a["wait_count"]) for a, t in zip(acts, takes)
                       if t and a["wait_consume"] and a["wait_count"]]
            assert min(nxt) >= 0, f"two consumes underflow a semaphore: {nxt}"
            overflow = any(ovf)
            assert ctx.get(dut.overflow) == overflow
            if overflow:
                first = min(c for c, a in enumerate(acts) if a["signal"] and ovf[a["signal_sem"]])
                assert ctx.get(dut.overflow_client) == first
            assert ctx.get(dut.overflow_clients) == sum(1 << c for c, a in enumerate(acts)
                                                         if a["signal"] and ovf[a["signal_sem"]])
            checked["overflow"] += overflow
            nxt = [CFG.sem_max if o else v for o, v in zip(ovf, nxt)]
            await ctx.tick()
            model[:] = nxt
            prev_count = [a["wait_count"] for a in acts]
            waits = loads
            assert [ctx.get(dut.values[i]) for i in range(n)] == model

    run_testbench(dut, tb)
    assert checked["ok"] > 1000 and checked["overflow"] > 0


def test_wait_released_exactly_at_count_and_clear():
    dut = SemaphoreUnit(CFG, n_clients=2)

    async def tb(ctx):
        w, s = dut.clients[0], dut.clients[1]
        await change_wait(ctx, w, (0, 0, 0), (2, 3, 1))
        for i in range(3):
            assert ctx.get(w.wait_ok) == 0, f"released after {i} signals"
            signal(ctx, s, 2)
            await ctx.tick()
            signal(ctx, s, None)
        assert ctx.get(w.wait_ok) == 1
        ctx.set(w.request, 1)
        ctx.set(w.take, 1)
        await ctx.tick()
        ctx.set(w.take, 0)
        # the consume lands a cycle after the take; meanwhile the waiter is held back
        assert ctx.get(dut.values[2]) == 3 and ctx.get(w.wait_ok) == 0
        await ctx.tick()
        assert ctx.get(dut.values[2]) == 0 and ctx.get(w.wait_ok) == 0
        signal(ctx, s, 2)
        await ctx.tick()
        signal(ctx, s, None)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert ctx.get(dut.values[2]) == 0

    run_testbench(dut, tb)


def test_new_count_is_compared_a_cycle_later():
    """The compares are registered: a head whose non-zero count differs from last cycle's is
    released one cycle after it appears, even if its semaphore already holds the count; a count
    of 0 is released at once, and so is a new head with the previous head's count."""
    dut = SemaphoreUnit(CFG, n_clients=2)

    async def tb(ctx):
        w, s = dut.clients[0], dut.clients[1]
        signal(ctx, s, 1)
        await ctx.tick()
        await ctx.tick()
        signal(ctx, s, None)
        assert ctx.get(dut.values[1]) == 2
        await change_wait(ctx, w, (0, 0, 0), (1, 2, 0))
        assert ctx.get(w.wait_ok) == 0, "a new count released before its compare was registered"
        await ctx.tick()
        assert ctx.get(w.wait_ok) == 1
        await change_wait(ctx, w, (1, 2, 0), (1, 3, 0))     # not reached: stays held
        assert ctx.get(w.wait_ok) == 0
        await ctx.tick()
        assert ctx.get(w.wait_ok) == 0
        await change_wait(ctx, w, (1, 3, 0), (1, 0, 0))     # no wait: at once
        assert ctx.get(w.wait_ok) == 1
        await change_wait(ctx, w, (1, 0, 0), (1, 1, 0))
        assert ctx.get(w.wait_ok) == 0
        await ctx.tick()
        assert ctx.get(w.wait_ok) == 1
        await change_wait(ctx, w, (1, 1, 0), (1, 1, 0))     # a new head, the same count: at once
        assert ctx.get(w.wait_ok) == 1

    run_testbench(dut, tb)


def test_next_wait_is_read_only_with_next_load():
    """``next_*`` change the wait only with ``next_load``: noise on them otherwise changes
    nothing (the unit decodes the next cycle's wait into registers); with ``next_load`` the
    decode follows the new wait in the next cycle (a consuming wait held back behind a lower
    client's consuming request on the same semaphore, released once that client moves to
    another semaphore)."""
    seed = 11
    rng = random.Random(seed)
    print(f"seed {seed}")
    dut = SemaphoreUnit(CFG, n_clients=2)

    async def tb(ctx):
        lo, hi = dut.clients[0], dut.clients[1]
        signal(ctx, lo, 3)
        await ctx.tick()
        signal(ctx, lo, None)
        await change_wait(ctx, hi, (0, 0, 0), (3, 1, 1))
        await change_wait(ctx, lo, (0, 0, 0), (3, 1, 1))
        await ctx.tick()
        ctx.set(lo.request, 1)
        ctx.set(hi.request, 1)
        for _ in range(20):
            for cl in (lo, hi):
                ctx.set(cl.next_sem, rng.randrange(CFG.n_semaphores))
                ctx.set(cl.next_count, rng.randrange(16))
                ctx.set(cl.next_consume, rng.randrange(2))
            assert ctx.get(lo.wait_ok) == 1 and ctx.get(hi.wait_ok) == 0
            await ctx.tick()
        await change_wait(ctx, lo, (3, 1, 1), (2, 1, 1))
        assert ctx.get(lo.wait_ok) == 0 and ctx.get(hi.wait_ok) == 1

    run_testbench(dut, tb)
