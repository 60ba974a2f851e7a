"""Semaphore unit: waits release exactly at their count, consumes never underflow, overflow detected."""

import random

from amaranth.sim import Simulator

from sparrow.config import preset
from sparrow.hdl.semaphores import SemaphoreUnit

CFG = preset("small").replace(n_semaphores=4, sem_bits=4)


def _sim(dut, tb):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_random_traffic_matches_rules():
    seed = 7
    rng = random.Random(seed)
    print(f"seed {seed}")
    dut = SemaphoreUnit(CFG, n_clients=4)
    n = CFG.n_semaphores
    model = [0] * n
    checked = {"ok": 0, "overflow": 0}

    async def tb(ctx):
        for _ in range(1500):
            acts = []
            for cl in dut.clients:
                a = dict(wait_sem=rng.randrange(n), wait_count=rng.choice([0, 1, 2, 3, rng.randrange(16)]),
                         wait_consume=rng.random() < 0.6, take=rng.random() < 0.7,
                         signal=rng.random() < 0.35, signal_sem=rng.randrange(n))
                for k, v in a.items():
                    ctx.set(getattr(cl, k), int(v))
                acts.append(a)
            # reference: grants in client order, one consumer per semaphore per cycle
            consumed = set()
            exp_ok = []
            for a in acts:
                enough = model[a["wait_sem"]] >= a["wait_count"]
                consuming = a["wait_consume"] and a["wait_count"] != 0
                ok = enough and not (consuming and a["wait_sem"] in consumed)
                exp_ok.append(ok)
                if ok and a["take"] and consuming:
                    consumed.add(a["wait_sem"])
            got_ok = [ctx.get(cl.wait_ok) for cl in dut.clients]
            assert got_ok == [int(o) for o in exp_ok], (got_ok, exp_ok, model, acts)
            checked["ok"] += sum(exp_ok)
            nxt = list(model)
            for a, ok in zip(acts, exp_ok):
                if ok and a["take"] and a["wait_consume"]:
                    nxt[a["wait_sem"]] -= a["wait_count"]
                if a["signal"]:
                    nxt[a["signal_sem"]] += 1
            overflow = any(v > CFG.sem_max for v in nxt)
            assert ctx.get(dut.overflow) == overflow
            checked["overflow"] += overflow
            await ctx.tick()
            model[:] = [min(v, CFG.sem_max) for v in nxt]
            assert [ctx.get(dut.values[i]) for i in range(n)] == model

    _sim(dut, tb)
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
        ctx.set(w.take, 1)
        await ctx.tick()
        ctx.set(w.take, 0)
        assert ctx.get(dut.values[2]) == 0 and ctx.get(w.wait_ok) == 0
        ctx.set(s.signal, 1)
        await ctx.tick()
        ctx.set(s.signal, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert ctx.get(dut.values[2]) == 0

    _sim(dut, tb)
