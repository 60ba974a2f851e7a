"""Smoke test of the shared testbench helpers: a FIFO passes a random stream under back-pressure."""

import cocotb
from cocotb.triggers import FallingEdge

from sparrow.sim.tbutil import StreamSink, StreamSource, reset, seeded, start_clock


@cocotb.test()
async def fifo_preserves_order_under_backpressure(dut):
    rng, _, _ = seeded(dut)
    start_clock(dut)
    await reset(dut)
    items = [rng.randrange(256) for _ in range(300)]
    src = StreamSource(dut, "i", idle=0.3, rng=rng)
    sink = StreamSink(dut, "o", stall=0.4, rng=rng)
    src.extend(items)
    for _ in range(5000):
        await FallingEdge(dut.clk)
        if sink.count == len(items):
            break
    assert list(sink.items) == items, "FIFO output differs from input"
