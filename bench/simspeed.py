"""Simulation speed: cycles per second of the fast Verilator harness (``sim/harness.cpp`` via
``sparrow.runtime``) and of the cocotb backend on the same program, per preset, plus the
Verilator build time of each preset's harness.

Workload: the ``gemm_big`` system case (sparrow.testprograms), checked against the golden
model's final image before it is timed, run back to back until at least ``MIN_CYCLES``
simulated cycles (and 1 s). Three figures per preset, each the best of ``REPEATS`` such
measurements (the machine is shared by several jobs: the best is the least disturbed):

* ``harness_cycles_per_s``: cycles / wall time of ``Device.run`` (start, the C++ clock loop,
  then the status and counter reads over ctypes): what a user of the driver gets;
* ``loop_cycles_per_s``: cycles / wall time of the C++ loop alone (``sp_run``, entered with
  the program already started);
* ``harness_cycles_per_cpu_s``: cycles / process CPU time of ``Device.run``; less sensitive to
  other jobs on the machine than wall time.

cocotb speed = cycles / wall time of the same ``run`` inside the cocotb test (simulator start-up
excluded). Build time: ``seconds`` (wall) and ``cpu_seconds`` (Verilator + C++ compiler CPU
time) recorded when the harness library was compiled (``build.json``, with the load average
then; ``cached`` says whether this run compiled it). ``one_eval``: the library evaluates the
model once per cycle (``sim/harness.cpp``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sparrow import regmap
from sparrow.config import preset
from sparrow.runtime import Device
from sparrow.runtime.cocotb import execute
from sparrow.sim import verilator_build as vb
from sparrow.testprograms import build_case

PRESETS = os.environ.get("SIMSPEED_PRESETS", "small,default,large").split(",")
COCOTB_PRESETS = [p for p in os.environ.get("SIMSPEED_COCOTB", "small").split(",") if p]
CASE = "gemm_big"
MIN_CYCLES = int(os.environ.get("SIMSPEED_MIN_CYCLES", "1000000"))
REPEATS = 3
TARGET_CYCLES_PER_S = 1_000_000
TARGET_BUILD_S = 60


def _device_speed(dev, case, expected):
    """Best (wall, cpu) cycles/s of back-to-back Device.run over >= MIN_CYCLES."""
    best_wall = best_cpu = 0.0
    for rep in range(REPEATS):
        cycles, wall, cpu, runs = 0, 0.0, 0.0, 0
        while cycles < MIN_CYCLES or wall < 1.0:
            dev.write_dram(0, case.image)
            t, c = time.perf_counter(), time.process_time()
            r = dev.run(max_cycles=10_000_000)
            wall += time.perf_counter() - t
            cpu += time.process_time() - c
            cycles += r.cycles
            runs += 1
            if rep == 0 and runs == 1 and not np.array_equal(dev.read_dram(0, len(case.image)), expected):
                raise AssertionError(f"harness result differs from the golden model ({CASE})")
        best_wall, best_cpu = max(best_wall, cycles / wall), max(best_cpu, cycles / max(cpu, 1e-9))
    return best_wall, best_cpu, cycles // runs


def _loop_speed(dev, case):
    """Best cycles/s of the C++ clock loop alone (sp_run), program started beforehand."""
    hw = dev._b.hw
    best = 0.0
    for _ in range(REPEATS):
        cycles, wall = 0, 0.0
        while cycles < MIN_CYCLES or wall < 1.0:
            dev.write_dram(0, case.image)
            hw.csr_write("CTRL", 1)
            hw.step(regmap.START_CYCLES)
            t = time.perf_counter()
            reason, ran = hw.run(10_000_000)
            wall += time.perf_counter() - t
            cycles += ran
            if reason != 0:
                raise AssertionError(f"sp_run stopped with reason {reason}, status "
                                     f"{regmap.status_fields(hw.csr_read('STATUS'))}")
        best = max(best, cycles / wall)
    return best


def _harness(cfg):
    case = build_case(CASE, cfg)
    expected, _ = case.golden()
    t0 = time.perf_counter()
    dev = Device(cfg, "verilator")
    info = dict(vb.last_build_info)
    first = time.perf_counter() - t0
    built = json.loads((Path(info["path"]).parent / "build.json").read_text())
    dev.load_program(case.program, case.prog_base)
    wall, cpu, per_run = _device_speed(dev, case, expected)
    loop = _loop_speed(dev, case)
    one_eval = dev._b.hw.one_eval
    dev.close()
    return {"cycles_per_run": per_run, "cycles_per_s": wall, "cycles_per_cpu_s": cpu, "loop_cycles_per_s": loop,
            "build_s": built["seconds"], "build_cpu_s": built.get("cpu_seconds"),
            "build_load": (built.get("loadavg") or [None])[0], "build_cached": info["cached"],
            "verilog_s": info["verilog_seconds"], "first_device_s": first, "one_eval": one_eval}


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
    load_start = os.getloadavg()
    for name in PRESETS:
        cfg = preset(name)
        h = _harness(cfg)
        c = _cocotb(cfg) if name in COCOTB_PRESETS else None
        metrics[f"{name}_harness_cycles_per_s"] = round(h["cycles_per_s"])
        metrics[f"{name}_harness_cycles_per_cpu_s"] = round(h["cycles_per_cpu_s"])
        metrics[f"{name}_loop_cycles_per_s"] = round(h["loop_cycles_per_s"])
        metrics[f"{name}_build_s"] = h["build_s"]
        metrics[f"{name}_build_cpu_s"] = h["build_cpu_s"]
        metrics[f"{name}_build_loadavg"] = h["build_load"]
        metrics[f"{name}_verilog_s"] = h["verilog_s"]
        metrics[f"{name}_program_cycles"] = h["cycles_per_run"]
        metrics[f"{name}_one_eval"] = h["one_eval"]
        if c:
            metrics[f"{name}_cocotb_cycles_per_s"] = round(c["cycles_per_s"])
            metrics[f"{name}_speedup"] = round(h["cycles_per_s"] / c["cycles_per_s"], 1)
        cpu = f"{h['build_cpu_s']:.0f}" if h["build_cpu_s"] is not None else "—"
        load = f"{h['build_load']:.1f}" if h["build_load"] is not None else "—"
        rows.append(f"{name:8s} {h['cycles_per_run']:9d} {h['cycles_per_s']:12,.0f} {h['loop_cycles_per_s']:12,.0f} "
                    f"{h['cycles_per_cpu_s']:12,.0f} "
                    f"{(format(c['cycles_per_s'], '10,.0f') if c else '—'):>10s} "
                    f"{h['build_s']:7.1f} {cpu:>6s} {load:>5s}{' (cached)' if h['build_cached'] else ''}")
    load_end = os.getloadavg()
    table = ("preset   cycles/run  device cyc/s   loop cyc/s  cyc/cpu-s  cocotb c/s  build s  cpu s  load\n"
             + "\n".join(rows)
             + f"\nworkload: {CASE} back to back, >= {MIN_CYCLES:,} cycles per measurement, best of {REPEATS}; "
               f"targets {TARGET_CYCLES_PER_S:,} cycles/s and {TARGET_BUILD_S} s build per preset.\n"
               f"build s / cpu s = wall / CPU seconds of Verilator + C++ compile (C++ {vb.CXX_OPT}, run-once code "
               f"{vb.CXX_OPT_SLOW}), load = 1-min load average during that build; "
               f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end, on {os.cpu_count()} cores")
    return {"metrics": metrics, "config": {"presets": PRESETS, "cocotb_presets": COCOTB_PRESETS, "case": CASE,
                                           "min_cycles": MIN_CYCLES, "repeats": REPEATS,
                                           "cxx_opt": vb.CXX_OPT, "cxx_opt_slow": vb.CXX_OPT_SLOW,
                                           "verilator_flags": list(vb.VERILATOR_FLAGS),
                                           "loadavg_start": load_start, "loadavg_end": load_end},
            "table": table}
