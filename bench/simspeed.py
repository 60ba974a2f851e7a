"""Simulation speed: cycles per second of the fast Verilator harness (``sim/harness.cpp`` via
``sparrow.runtime.Device(backend="verilator")``) and of the cocotb backend on the same program,
per preset, plus the Verilator build time of each preset's harness.

Workload: the ``gemm_big`` system case (sparrow.testprograms), checked against the golden
model's final image before it is timed. Harness speed = simulated cycles / wall time of the
``run`` calls (repeated until >= 1 s). cocotb speed = cycles / wall time of the same ``run``
inside the cocotb test (simulator start-up excluded). Build time: the ``seconds`` recorded when
the harness library was compiled (``build.json``; ``cached`` says whether this run compiled it).
The machine is shared: figures are for whatever load it had at the time.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sparrow.config import preset
from sparrow.runtime import Device
from sparrow.runtime.cocotb import execute
from sparrow.sim import verilator_build as vb
from sparrow.testprograms import build_case

PRESETS = os.environ.get("SIMSPEED_PRESETS", "small,default,large").split(",")
COCOTB_PRESETS = os.environ.get("SIMSPEED_COCOTB", "small").split(",")
CASE = "gemm_big"


def _harness(cfg):
    case = build_case(CASE, cfg)
    expected, _ = case.golden()
    t0 = time.perf_counter()
    dev = Device(cfg, "verilator")
    info = dict(vb.last_build_info)
    first = time.perf_counter() - t0
    built = json.loads((Path(info["path"]).parent / "build.json").read_text())
    dev.write_dram(0, case.image)
    dev.load_program(case.program, case.prog_base)
    cycles, wall, runs = 0, 0.0, 0
    while wall < 1.0 or runs < 3:
        dev.write_dram(0, case.image)
        t = time.perf_counter()
        r = dev.run(max_cycles=10_000_000)
        wall += time.perf_counter() - t
        cycles += r.cycles
        runs += 1
        if runs == 1 and not np.array_equal(dev.read_dram(0, len(case.image)), expected):
            raise AssertionError(f"{cfg.name}: harness result differs from the golden model")
    dev.close()
    return {"cycles_per_run": cycles // runs, "runs": runs, "cycles_per_s": cycles / wall,
            "build_s": built["seconds"], "build_cached": info["cached"], "verilog_s": info["verilog_seconds"],
            "first_device_s": first}


def _cocotb(cfg):
    case = build_case(CASE, cfg)
    expected, _ = case.golden()
    with tempfile.TemporaryDirectory() as d:
        res = execute(cfg, [["write_dram", 0, "img"], ["set_program", case.prog_base, case.n_instructions],
                            ["run", 10_000_000], ["read_dram", 0, len(case.image)]], {"img": case.image},
                      work_dir=d)
    if not np.array_equal(np.array(res[3], np.uint8), expected):
        raise AssertionError(f"{cfg.name}: cocotb result differs from the golden model")
    run = res[2]
    return {"cycles": run["cycles"], "cycles_per_s": run["cycles"] / run["wall_seconds"]}


def run():
    metrics, rows = {}, []
    for name in PRESETS:
        cfg = preset(name)
        h = _harness(cfg)
        c = _cocotb(cfg) if name in COCOTB_PRESETS else None
        metrics[f"{name}_harness_cycles_per_s"] = round(h["cycles_per_s"])
        metrics[f"{name}_build_s"] = h["build_s"]
        metrics[f"{name}_verilog_s"] = h["verilog_s"]
        metrics[f"{name}_program_cycles"] = h["cycles_per_run"]
        if c:
            metrics[f"{name}_cocotb_cycles_per_s"] = round(c["cycles_per_s"])
            metrics[f"{name}_speedup"] = round(h["cycles_per_s"] / c["cycles_per_s"], 1)
        rows.append(f"{name:8s} {h['cycles_per_run']:9d} {h['cycles_per_s']:14,.0f} "
                    f"{(format(c['cycles_per_s'], '12,.0f') if c else '—'):>12s} "
                    f"{h['build_s']:8.1f}{' (cached)' if h['build_cached'] else ''}")
    table = ("preset   cycles/run  harness cyc/s  cocotb cyc/s  build s\n" + "\n".join(rows)
             + f"\nworkload: {CASE}; build s = Verilator + C++ compile of the harness library "
               f"(C++ {vb.CXX_OPT}); load average at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return {"metrics": metrics, "config": {"presets": PRESETS, "cocotb_presets": COCOTB_PRESETS, "case": CASE,
                                           "cxx_opt": vb.CXX_OPT, "verilator_flags": list(vb.VERILATOR_FLAGS),
                                           "loadavg": os.getloadavg()},
            "table": table}
