"""Full-system testbench: Sparrow top (AXI4 port) + cocotbext-axi AxiRam, driven through CSRs.

For every case in ``SPARROW_SYSTEM_CASES`` (a directory written by tests/test_system.py): load
the memory image (constants, inputs, program), set PROG_BASE/PROG_LEN, start, poll STATUS until
the run ends, then compare the whole image with the golden model's final image and record the
counters in ``results.json`` for the test to compare.
"""

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotbext.axi import AxiBus, AxiRam

from sparrow import regmap
from sparrow.sim.tbutil import CsrMaster, reset, seeded, start_clock


def _pause(rng, p):
    while True:
        yield rng.random() < p


@cocotb.test()
async def system_programs(dut):
    rng, _, _ = seeded(dut)
    cases_dir = Path(os.environ["SPARROW_SYSTEM_CASES"])
    manifest = json.loads((cases_dir / "manifest.json").read_text())
    start_clock(dut)
    dut.csr__r_stb.value = 0
    dut.csr__w_stb.value = 0
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=1 << manifest["addr_bits"])
    pause = manifest.get("pause", 0.0)
    if pause:
        for ch in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                   ram.read_if.ar_channel, ram.read_if.r_channel):
            ch.set_pause_generator(_pause(rng, pause))
    await reset(dut)
    csr = CsrMaster(dut)
    assert await csr.read("ID") == regmap.MAGIC
    results = {}
    failures = []
    for case in manifest["cases"]:
        name = case["name"]
        data = np.load(cases_dir / f"{name}.npz")
        image, expected = data["image"], data["expected"]
        ram.write(0, image.tobytes())
        await csr.program(case["prog_base"], case["n_instructions"])
        await csr.write("CTRL", 1)
        status = await csr.wait_idle(case["max_polls"], poll_cycles=64)
        got = np.frombuffer(ram.read(0, len(image)), dtype=np.uint8)
        counters = {c: await csr.read64(c) for c in regmap.COUNTERS}
        results[name] = {"status": status, "counters": counters,
                         "err_index": await csr.read("ERR_INDEX"),
                         "mismatched_bytes": int(np.count_nonzero(got != expected))}
        if status.get("busy") or not status.get("done") or status.get("error") or status.get("collision"):
            failures.append(f"{name}: run did not finish cleanly: {status}")
        elif not np.array_equal(got, expected):
            bad = np.flatnonzero(got != expected)
            failures.append(f"{name}: {len(bad)} bytes differ from the golden model, first at {bad[0]:#x} "
                            f"(got {got[bad[0]]}, want {expected[bad[0]]})")
        dut._log.info(f"{name}: {results[name]['counters']['cycles']} cycles, status {status}")
    (Path(os.environ.get("SPARROW_RESULTS", "results_system.json"))).write_text(json.dumps(results, indent=1))
    assert not failures, "\n".join(failures)
