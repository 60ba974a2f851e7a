"""Semaphore unit: waits release exactly at their count, consumes never underflow, overflow detected."""

import random


from sparrow.sim.amsim import run_testbench
from sparrow.config import preset
from sparrow.hdl.semaphores import SemaphoreUnit

CFG = preset("small").replace(n_semaphores=4, sem_bits=4)



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
        prev_count = [0] * len(dut.clients)    # the count each client presented last cycle
        for _ in range(1500):
            acts = []
            for c, cl in enumerate(dut.clients):
                # a head's count mostly stays (the compares are registered: a new count is
                # compared in the cycle after it appears)
                count = (prev_count[c] if rng.random() < 0.6 else
                         rng.choice([0, 1, 2, 3, rng.randrange(16)]))
                a = dict(wait_sem=rng.randrange(n), wait_count=count,
                         wait_consume=rng.random() < 0.6, request=rng.random() < 0.8,
                         signal=rng.random() < 0.35, signal_sem=rng.randrange(n))
                for k, v in a.items():
                    ctx.set(getattr(cl, k), int(v))
                acts.append(a)
            # reference: a wait is seen satisfied when its count is 0, or when sem >= count and
            # the count was presented in the previous cycle too; a consuming wait is held back
            # while a lower client requests a consuming wait seen satisfied on the same semaphore
            # (whether or not that client takes); any counted wait is held back while last
            # cycle's consume of its semaphore is applied
            busy = {sem for sem, _ in pending}

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
            assert [ctx.get(dut.values[i]) for i in range(n)] == model

    run_testbench(dut, tb)
    assert checked["ok"] > 1000 and checked["overflow"] > 0


def test_wait_released_exactly_at_count_and_clear():
    dut = SemaphoreUnit(CFG, n_clients=2)

    async def tb(ctx):
        w, s = dut.clients[0], dut.clients[1]
        ctx.set(w.wait_sem, 2)
        ctx.set(w.wait_count, 3)
        for i in range(3):
            assert ctx.get(w.wait_ok) == 0, f"released after {i} signals"
            ctx.set(s.signal, 1)
            ctx.set(s.signal_sem, 2)
            await ctx.tick()
            ctx.set(s.signal, 0)
        assert ctx.get(w.wait_ok) == 1
        ctx.set(w.wait_consume, 1)
        ctx.set(w.request, 1)
        ctx.set(w.take, 1)
        await ctx.tick()
        ctx.set(w.take, 0)
        # the consume lands a cycle after the take; meanwhile the waiter is held back
        assert ctx.get(dut.values[2]) == 3 and ctx.get(w.wait_ok) == 0
        await ctx.tick()
        assert ctx.get(dut.values[2]) == 0 and ctx.get(w.wait_ok) == 0
        ctx.set(s.signal, 1)
        await ctx.tick()
        ctx.set(s.signal, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert ctx.get(dut.values[2]) == 0

    run_testbench(dut, tb)


def test_new_count_is_compared_a_cycle_later():
    """The compares are registered: a head whose non-zero count differs from last cycle's is
    released one cycle after it appears, even if its semaphore already holds the count; a count
    of 0 is released at once."""
    dut = SemaphoreUnit(CFG, n_clients=2)

    async def tb(ctx):
        w, s = dut.clients[0], dut.clients[1]
        ctx.set(s.signal_sem, 1)
        ctx.set(s.signal, 1)
        await ctx.tick()
        await ctx.tick()
        ctx.set(s.signal, 0)
        assert ctx.get(dut.values[1]) == 2
        ctx.set(w.wait_sem, 1)
        ctx.set(w.wait_count, 2)
        assert ctx.get(w.wait_ok) == 0, "a new count released before its compare was registered"
        await ctx.tick()
        assert ctx.get(w.wait_ok) == 1
        ctx.set(w.wait_count, 3)                # not reached: stays held
        await ctx.tick()
        assert ctx.get(w.wait_ok) == 0
        ctx.set(w.wait_count, 0)                # no wait: at once
        assert ctx.get(w.wait_ok) == 1
        ctx.set(w.wait_count, 1)
        assert ctx.get(w.wait_ok) == 0
        await ctx.tick()
        assert ctx.get(w.wait_ok) == 1

    run_testbench(dut, tb)
