"""Fetch unit: delivers exactly the program, in order, under bus stalls, for every port width."""

import random

import pytest
from amaranth.sim import Simulator

from sparrow.config import preset
from sparrow.hdl.fetch import FetchUnit
from sparrow.sim.amsim import MembusModel


def _run(cfg, base, n_instr, seed, *, stop_after=None, out_stall=0.3, mem_size=1 << 16):
    rng = random.Random(seed)
    mem = bytearray(rng.randbytes(mem_size))
    words = [int.from_bytes(mem[base + 16 * i: base + 16 * i + 16], "little") for i in range(n_instr)]
    dut = FetchUnit(cfg)
    model = MembusModel(dut.bus, mem, cfg.mem_bytes, rng=random.Random(seed + 1), stall=0.3, gap=0.3, latency=3)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(model.process)

    async def tb(ctx):
        ctx.set(dut.base, base)
        ctx.set(dut.length, n_instr)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(20 * n_instr + 200):
            ready = int(rng.random() >= out_stall)
            ctx.set(dut.out.ready, ready)
            if ready and ctx.get(dut.out.valid):
                p = ctx.get(dut.out.payload)
                got.append((p.index, p.word))
                if stop_after is not None and len(got) == stop_after:
                    ctx.set(dut.stop, 1)
                    await ctx.tick()
                    ctx.set(dut.stop, 0)
                    ctx.set(dut.out.ready, 0)
                    continue
            await ctx.tick()
            if not ctx.get(dut.busy) and (stop_after is None or len(got) >= stop_after):
                break
        assert not ctx.get(dut.busy), "fetch did not finish"
        assert ctx.get(dut.error) == 0

    sim.add_testbench(tb)
    sim.run()
    return got, words, model


@pytest.mark.parametrize("mem_bytes", [4, 8, 16, 32])
@pytest.mark.parametrize("n_instr", [1, 7, 40])
def test_fetch_delivers_program_in_order(mem_bytes, n_instr):
    cfg = preset("small").replace(mem_bytes=mem_bytes, max_burst=8)
    base = 4096 - 3 * 32  # bursts must split at the 4 KiB boundary
    got, words, model = _run(cfg, base, n_instr, seed=mem_bytes * 100 + n_instr)
    assert [i for i, _ in got] == list(range(n_instr))
    assert [w for _, w in got] == words
    for addr, n, _ in model.commands:
        assert addr // 4096 == (addr + n * mem_bytes - 1) // 4096, "burst crosses 4 KiB"
        assert n <= cfg.max_burst


def test_stop_drains_outstanding_reads():
    cfg = preset("small")
    got, words, _ = _run(cfg, 0, 50, seed=3, stop_after=5)
    assert [w for _, w in got] == words[:5]


def test_bus_error_is_reported():
    cfg = preset("small")
    dut = FetchUnit(cfg)
    mem = bytearray(256)  # the program runs off the end of memory
    model = MembusModel(dut.bus, mem, cfg.mem_bytes)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(model.process)

    async def tb(ctx):
        ctx.set(dut.base, 128)
        ctx.set(dut.length, 20)
        ctx.set(dut.start, 1)
        ctx.set(dut.out.ready, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(300):
            await ctx.tick()
            if ctx.get(dut.error):
                break
        assert ctx.get(dut.error) == 1
        assert ctx.get(dut.error_index) == 8  # 128 bytes of program fit before the end

    sim.add_testbench(tb)
    sim.run()
