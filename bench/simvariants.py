"""Harness build variants: does any compiler or Verilator setting buy the simulation speed target?

``simspeed`` records the harness as ``sparrow.sim.verilator_build`` builds it (Verilator ``-O3``,
C++ ``-O2``, one model evaluation per cycle). This benchmark builds the same wrapped Verilog of
one preset (``SIMVARIANTS_PRESET``, default ``default``) several other ways, runs the same
workload on each and records what every variant costs and buys:

* ``base``: the standard build's flags, compiled here again so that all variants are measured in
  one run under the same conditions;
* ``o3native``: C++ ``-O3 -march=native``;
* ``pgo``: GCC profile-guided optimisation: a ``-fprofile-generate`` build runs the workload
  once (training), then the C++ is compiled again with ``-fprofile-use`` (build time = both
  compiles + the training run);
* ``threads2``: Verilator ``--threads 2`` (the model's evaluation split over two threads);
* ``noinline``: Verilator ``-fno-inline`` (modules kept as C++ classes; the eight matrix lanes
  share one class's code instead of eight inlined copies).

Workload: the ``gemm_big`` system case back to back until ``SIMVARIANTS_CYCLES`` simulated
cycles (default 1,000,000), the final memory checked against the golden model; best of 3.
Metrics per variant: ``<v>_cycles_per_cpu_s`` (cycles / process CPU time, which for
``threads2`` includes both threads), ``<v>_cycles_per_s`` (wall), ``<v>_build_s`` and
``<v>_build_cpu_s`` (Verilator + C++ compile, wall and CPU), ``<v>_speedup`` (cycles per CPU
second over ``base``: the machine is shared, and CPU time is the less disturbed of the two).
Builds go to ``build/simvariants/<preset>/<variant>`` (rebuilt on every run: the build time is
one of the figures).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sparrow.bench import REPO
from sparrow.config import preset
from sparrow.runtime import Device
from sparrow.sim import verilator_build as vb
from sparrow.testprograms import build_case

PRESET = os.environ.get("SIMVARIANTS_PRESET", "default")
CYCLES = int(os.environ.get("SIMVARIANTS_CYCLES", "1000000"))
CASE = "gemm_big"
REPEATS = 3

#: name -> (extra Verilator flags, C++ optimisation flags, profile-guided)
VARIANTS = {
    "base": ((), vb.CXX_OPT, False),
    "o3native": ((), "-O3 -march=native", False),
    "pgo": ((), vb.CXX_OPT, True),
    "threads2": (("--threads", "2"), vb.CXX_OPT, False),
    "noinline": (("-fno-inline",), vb.CXX_OPT, False),
}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd, cwd, log):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(" ".join(map(str, cmd)) + "\n" + r.stdout + r.stderr)
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} failed, see {log}:\n{r.stderr[-2000:]}")


def _make(obj: Path, cxx: str, cflags: list[str], ldflags: list[str], log: Path):
    _run(["make", "-j", "2", "-f", "Vtop.mk", f"OPT_FAST={cxx}", f"OPT_SLOW={vb.CXX_OPT_SLOW}",
          f"OPT_GLOBAL={cxx}", f"VM_USER_CFLAGS={' '.join(cflags)}", f"VM_USER_LDLIBS={' '.join(ldflags)}"],
         obj, log)


def _speed(cfg, lib: Path, case, expected) -> tuple[float, float]:
    """Best (cycles/CPU-s, cycles/wall-s) of the workload on the harness library ``lib``."""
    real = vb.build_harness
    vb.build_harness = lambda *a, **k: lib   # the runtime builds its library through this name
    try:
        dev = Device(cfg, "verilator")
    finally:
        vb.build_harness = real
    try:
        dev.load_program(case.program, case.prog_base)
        best_cpu = best_wall = 0.0
        for _ in range(REPEATS):
            cycles, cpu, wall = 0, 0.0, 0.0
            while cycles < CYCLES:
                dev.write_dram(0, case.image)
                c, t = time.process_time(), time.perf_counter()
                cycles += dev.run(max_cycles=10_000_000).cycles
                cpu += time.process_time() - c
                wall += time.perf_counter() - t
            if not np.array_equal(dev.read_dram(0, len(case.image)), expected):
                raise AssertionError(f"{lib}: result differs from the golden model ({CASE})")
            best_cpu, best_wall = max(best_cpu, cycles / cpu), max(best_wall, cycles / wall)
        return best_cpu, best_wall
    finally:
        dev.close()


def _build(cfg, name: str, vflags, cxx: str, pgo: bool, text: str, case) -> tuple[Path, float, float]:
    d = REPO / "build" / "simvariants" / cfg.name / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    vb.copy_harness_sources(d)
    (d / f"{vb.WRAP}.v").write_text(text)
    log, obj = d / "build.log", d / "obj"
    cflags = vb.harness_cflags(cfg) + ["-DSP_ONE_EVAL"]
    gen = ["-fprofile-generate", "-fprofile-update=single"] if pgo else []
    t0, c0 = time.perf_counter(), _children_cpu()
    _run(["verilator", "--cc", "--exe", f"{vb.WRAP}.v", "harness.cpp", "--top-module", vb.WRAP, "--prefix", "Vtop",
          "--Mdir", "obj", "-o", "libsparrow_harness.so", *vb.VERILATOR_WAIVERS, *vb.VERILATOR_FLAGS, *vflags],
         d, log)
    _make(obj, cxx, cflags + gen, ["-shared"] + gen[:1], log)
    lib = obj / "libsparrow_harness.so"
    if pgo:
        # training run, in a child process: the profiles (.gcda) are written when it exits
        _run([sys.executable, __file__, "train", cfg.name, str(lib)], d, log)
        for f in list(obj.glob("*.o")) + list(obj.glob("*.a")) + [lib]:
            f.unlink()
        _make(obj, cxx, cflags + ["-fprofile-use", "-fprofile-partial-training", "-Wno-missing-profile"],
              ["-shared"], log)
        # a new file name: the training library stays loaded in this process under the old one
        lib = lib.replace(obj / "libsparrow_harness_pgo.so")
    return lib, time.perf_counter() - t0, _children_cpu() - c0


def run():
    cfg = preset(PRESET)
    case = build_case(CASE, cfg)
    expected, _ = case.golden()
    verilog = vb.wrap_top(vb.compact_memory_init(vb.harness_verilog(cfg)), both_edges=True)
    metrics, rows = {}, []
    load_start = os.getloadavg()
    for name, (vflags, cxx, pgo) in VARIANTS.items():
        lib, secs, cpu_s = _build(cfg, name, vflags, cxx, pgo, verilog, case)
        per_cpu, per_wall = _speed(cfg, lib, case, expected)
        metrics.update({f"{name}_cycles_per_cpu_s": round(per_cpu), f"{name}_cycles_per_s": round(per_wall),
                        f"{name}_build_s": round(secs, 1), f"{name}_build_cpu_s": round(cpu_s, 1)})
    for name in VARIANTS:
        metrics[f"{name}_speedup"] = round(metrics[f"{name}_cycles_per_cpu_s"] / metrics["base_cycles_per_cpu_s"], 2)
        vflags, cxx, pgo = VARIANTS[name]
        how = " ".join([*vflags, cxx] + (["+ PGO"] if pgo else []))
        rows.append(f"{name:9s} {how:28s} {metrics[f'{name}_cycles_per_s']:11,d} "
                    f"{metrics[f'{name}_cycles_per_cpu_s']:11,d} {metrics[f'{name}_speedup']:6.2f} "
                    f"{metrics[f'{name}_build_s']:8.1f} {metrics[f'{name}_build_cpu_s']:7.1f}")
    load_end = os.getloadavg()
    table = (f"preset {cfg.name}, workload {CASE} (>= {CYCLES:,} cycles, best of {REPEATS})\n"
             f"{'variant':9s} {'flags':28s} {'cyc/s':>11s} {'cyc/cpu-s':>11s} {'x base':>6s} "
             f"{'build s':>8s} {'cpu s':>7s}\n" + "\n".join(rows)
             + f"\nload average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end, on {os.cpu_count()} cores")
    return {"metrics": metrics,
            "config": {"preset": cfg.name, "case": CASE, "cycles": CYCLES, "repeats": REPEATS,
                       "variants": {n: {"verilator": list(v), "cxx": c, "pgo": p} for n, (v, c, p) in VARIANTS.items()},
                       "common_verilator_flags": list(vb.VERILATOR_WAIVERS) + list(vb.VERILATOR_FLAGS),
                       "loadavg_start": load_start, "loadavg_end": load_end},
            "table": table}


if __name__ == "__main__" and sys.argv[1:2] == ["train"]:
    _cfg = preset(sys.argv[2])
    _case = build_case(CASE, _cfg)
    _speed(_cfg, Path(sys.argv[3]), _case, _case.golden()[0])
