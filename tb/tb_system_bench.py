"""System benchmark testbench: the ``tb_system`` flow plus a per-cycle engine-activity trace.

Same cases and checks as ``tb_system`` (memory image vs golden image, clean finish), with no
AXI back-pressure. In addition, a monitor samples the sequencer's per-engine busy counters
(``count_busy``, the registers behind the ``*_BUSY`` CSRs) on every clock edge: the engines whose
counter advanced were busy in that cycle, so the busy mask per cycle is exactly the one the RTL
counters count. The trace is stored run-length encoded, ``[[mask, n_cycles], ...]`` (bit ``e`` =
engine ``e`` in LOAD, MATMUL, VECTOR, STORE order), with the counters, in ``SPARROW_RESULTS``.
"""

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from sparrow import regmap
from sparrow.sim.tbutil import CsrMaster, reset, seeded, start_clock

N_ENGINES = len(regmap.ENGINES)


class BusyMonitor:
    """Run-length trace of the busy mask derived from ``dut.count_busy`` increments."""

    def __init__(self, dut):
        self.dut = dut
        self.runs = []
        self.prev = None
        self.active = False

    def start(self):
        self.runs, self.prev, self.active = [], None, True

    def stop(self):
        self.active = False
        return self.runs

    async def run(self):
        mask64 = (1 << 64) - 1
        while True:
            await RisingEdge(self.dut.clk)
            if not self.active:
                self.prev = None
                continue
            v = int(self.dut.count_busy.value)
            counts = [(v >> (64 * e)) & mask64 for e in range(N_ENGINES)]
            if self.prev is not None:
                mask = 0
                for e in range(N_ENGINES):
                    d = counts[e] - self.prev[e]
                    if d < 0 or d > 1:      # counters cleared by start: no busy information
                        d = 0
                    mask |= d << e
                if self.runs and self.runs[-1][0] == mask:
                    self.runs[-1][1] += 1
                else:
                    self.runs.append([mask, 1])
            self.prev = counts


@cocotb.test()
async def system_bench(dut):
    seeded(dut)
    cases_dir = Path(os.environ["SPARROW_SYSTEM_CASES"])
    manifest = json.loads((cases_dir / "manifest.json").read_text())
    start_clock(dut)
    dut.csr__r_stb.value = 0
    dut.csr__w_stb.value = 0
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=1 << manifest["addr_bits"])
    await reset(dut)
    csr = CsrMaster(dut)
    assert await csr.read("ID") == regmap.MAGIC
    mon = BusyMonitor(dut)
    cocotb.start_soon(mon.run())
    results, failures = {}, []
    for case in manifest["cases"]:
        name = case["name"]
        data = np.load(cases_dir / f"{name}.npz")
        image, expected = data["image"], data["expected"]
        ram.write(0, image.tobytes())
        await csr.program(case["prog_base"], case["n_instructions"])
        mon.start()
        await csr.write("CTRL", 1)
        status = await csr.wait_idle(case["max_polls"], poll_cycles=16)
        await ClockCycles(dut.clk, 2)
        runs = mon.stop()
        got = np.frombuffer(ram.read(0, len(image)), dtype=np.uint8)
        counters = {c: await csr.read64(c) for c in regmap.COUNTERS}
        results[name] = {"status": status, "counters": counters, "busy_runs": runs,
                         "mismatched_bytes": int(np.count_nonzero(got != expected))}
        if status.get("busy") or not status.get("done") or status.get("error"):
            failures.append(f"{name}: run did not finish cleanly: {status}")
        elif not np.array_equal(got, expected):
            bad = int(np.count_nonzero(got != expected))
            failures.append(f"{name}: {bad} bytes differ from the golden model")
        dut._log.info(f"{name}: {counters['cycles']} cycles")
    Path(os.environ["SPARROW_RESULTS"]).write_text(json.dumps(results))
    assert not failures, "\n".join(failures)
