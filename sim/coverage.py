"""``make coverage``: Verilator line + toggle coverage of the RTL per ``hdl/`` block, and
functional coverage of the ISA, over the regression workload.

::

    python -m sparrow.sim.coverage [--preset small] [--fuzz 300]      # = make coverage

1. The Verilog of ``Sparrow(cfg, bus="membus")`` (the harness top) is generated *with* source
   attributes, so every Verilog module names the ``hdl/*.py`` file that elaborated it, and is
   built with the fast C++ harness (``sim/harness.cpp``, unchanged) plus a small shim that
   writes ``coverage.dat`` (``--coverage-line --coverage-toggle``), cached in
   ``build/coverage/lib/`` apart from the normal harness.
2. Workload: every system program of :mod:`sparrow.testprograms` (final memory compared with the
   golden model), the host/debug features (breakpoints, step, resume, halt-all, abort, clear,
   every CSR read), and a batch of :mod:`sparrow.fuzz` programs (valid, hand-synchronised and
   faulty ones: every error code), each compared with the golden model.
3. ``coverage.dat`` is parsed: each Verilator point belongs to the Verilog module whose text
   holds its line; a module belongs to the ``hdl/`` file of its ``src`` attribute (modules of
   ``amaranth.lib`` — FIFOs — to the nearest enclosing ``hdl`` module). Reported per block:
   line points (statement blocks and branches) and toggle points (signal bits), covered/total.
   ``verilator_coverage --annotate`` writes annotated Verilog to ``build/coverage/annotated/``.
4. Functional ISA coverage: :class:`sparrow.fuzz.FeatureCounter` over every program run (system
   programs and fuzz programs): opcode x flag combinations executed, error codes reported; the
   holes are listed.

Outputs: ``build/coverage/report.txt``, ``build/coverage/coverage.json``; through the benchmark
convention (``bench/coverage.py``) ``bench/results/coverage.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .cocotb_run import BUILD_ROOT, VERILATOR_WAIVERS, _locked, component_ports
from .verilator_build import copy_harness_sources, harness_cflags, harness_sources

__all__ = ["COV_DIR", "coverage_verilog", "build_coverage_harness", "parse_dat", "module_blocks", "run", "main"]

SIM_DIR = Path(__file__).resolve().parent
COV_DIR = BUILD_ROOT / "coverage"
TOP = "sparrow_top"
COV_FLAGS = ("--coverage-line", "--coverage-toggle", "-O3", "--x-assign", "fast", "--x-initial", "fast")
#: C++ optimisation: the model's evaluation code at -O1; the huge one-time construction code
#: (coverage point registration) at -O0, which compiles in a fraction of the time.
CXX_OPT = "-O1"
CXX_OPT_SLOW = "-O0"

_SHIM = r"""
// Coverage shim linked next to sim/harness.cpp: writes / clears the coverage of the last
// created VerilatedContext (the fuzz/coverage flow uses one device at a time).
#include "verilated.h"
#include "verilated_cov.h"
extern "C" int sp_cov_write(const char *path) {
    VerilatedContext *c = Verilated::lastContextp();
    if (!c) return -1;
    c->coveragep()->write(path);
    return 0;
}
extern "C" void sp_cov_zero(void) {
    VerilatedContext *c = Verilated::lastContextp();
    if (c) c->coveragep()->zero();
}
"""


def coverage_verilog(cfg) -> Path:
    """Path of the harness-top Verilog *with* ``src`` attributes (cached by the HDL source key)."""
    from .verilator_build import _source_key
    key = _source_key(cfg)
    vdir = COV_DIR / "verilog"
    path = vdir / f"{cfg.name}-{key}.v"
    vdir.mkdir(parents=True, exist_ok=True)
    with _locked(vdir / f".{cfg.name}-{key}.lock"):
        if not path.exists():
            from amaranth.back import verilog

            from sparrow.hdl.top import Sparrow
            comp = Sparrow(cfg, bus="membus")
            text = verilog.convert(comp, name=TOP, ports=component_ports(comp), emit_src=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return path


def build_coverage_harness(cfg, jobs: int = 2) -> tuple[Path, Path]:
    """``(library, verilog)``: the harness library with coverage for ``cfg`` (built on first use)
    and the copy of the Verilog it was built from (the file named by its coverage points)."""
    from sparrow.config import HwConfig
    if not isinstance(cfg, HwConfig):
        raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
    vpath = coverage_verilog(cfg)
    verilog = vpath.read_text()
    cflags = harness_cflags(cfg)
    vflags = list(VERILATOR_WAIVERS) + list(COV_FLAGS)
    sources = harness_sources() + _SHIM.encode()
    digest = hashlib.sha256(b"\0".join([verilog.encode(), sources, " ".join(vflags + cflags).encode(),
                                        (CXX_OPT + CXX_OPT_SLOW).encode()])).hexdigest()[:16]
    bdir = COV_DIR / "lib" / f"{cfg.name}-{digest}"
    lib = bdir / "libsparrow_harness_cov.so"
    with _locked(COV_DIR / "lib" / f".{cfg.name}-{digest}.lock"):
        if not lib.exists():
            if bdir.exists():
                shutil.rmtree(bdir)
            bdir.mkdir(parents=True)
            (bdir / f"{TOP}.v").write_text(verilog)
            copy_harness_sources(bdir)
            (bdir / "cov_shim.cpp").write_text(_SHIM)
            cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), f"{TOP}.v", "harness.cpp",
                   "cov_shim.cpp", "--top-module", TOP, "--prefix", "Vtop", "--Mdir", "obj",
                   "-CFLAGS", " ".join(cflags), "-LDFLAGS", "-shared", "-o", lib.name,
                   "-MAKEFLAGS", f"OPT_FAST={CXX_OPT} OPT_SLOW={CXX_OPT_SLOW} OPT_GLOBAL={CXX_OPT}", *vflags]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=bdir, capture_output=True, text=True)
            (bdir / "build.log").write_text(" ".join(cmd) + "\n" + r.stdout + r.stderr)
            if r.returncode != 0:
                raise RuntimeError(f"Verilator coverage build failed (see {bdir / 'build.log'}):\n"
                                   f"{r.stderr[-3000:]}")
            shutil.copy(bdir / "obj" / lib.name, lib.with_suffix(".tmp"))
            lib.with_suffix(".tmp").replace(lib)
            (bdir / "build.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                                                         "verilator_flags": vflags}))
    return lib, bdir / f"{TOP}.v"     # the file the coverage points name


# -- coverage.dat -> blocks --------------------------------------------------------------------------

_MODULE = re.compile(r"^module\s+(\\?\S+)")
_SRC = re.compile(r'\(\*\s*src\s*=\s*"([^"]+)"\s*\*\)')


def module_blocks(vfile) -> tuple[list, dict]:
    """``(ranges, block_of)``: sorted ``(first_line, last_line, module)`` of every module in the
    Verilog file, and for each module the ``hdl`` file name (``"fetch.py"``) it belongs to."""
    lines = Path(vfile).read_text().splitlines()
    ranges, src_of = [], {}
    pending_src = None
    cur, start = None, 0
    for n, line in enumerate(lines, start=1):
        m = _SRC.search(line)
        if m and not line.startswith(" "):
            pending_src = m.group(1)
        mm = _MODULE.match(line)
        if mm:
            cur, start = mm.group(1).lstrip("\\"), n
            src_of[cur] = pending_src
            pending_src = None
        elif line.startswith("endmodule") and cur is not None:
            ranges.append((start, n, cur))
            cur = None
        elif line.strip() and not line.startswith("(*"):
            pending_src = pending_src if cur is None else None

    def hdl_file(src):
        if not src:
            return None
        path = src.rsplit(":", 1)[0]
        p = Path(path)
        return p.name if p.parent.name == "hdl" else None

    block_of = {}
    for _, _, mod in ranges:
        name = mod
        block = hdl_file(src_of.get(name))
        while block is None and "." in name:
            name = name.rsplit(".", 1)[0]
            block = hdl_file(src_of.get(name))
        block_of[mod] = block or "(other)"
    return sorted(ranges), block_of


def _parse_key(key: str) -> dict:
    out = {}
    for item in key.split("\x01"):
        if "\x02" in item:
            k, v = item.split("\x02", 1)
            out[k] = v
    return out


#: Verilog lines whose line points are artifacts of the Verilog writer, not design logic: yosys
#: starts every ``always @*`` block with ``if (<constant-0 register>) begin end`` (an
#: evaluation trigger; the branch can never be taken) and writes register initial values as
#: ``reg x = v;`` (initial blocks, run once at time 0).
_ARTIFACT = re.compile(r"^\s*(if \(\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ \)|reg\b[^;]*=[^;]*;\s*$)")


def parse_dat(dat, vfile) -> dict:
    """Per block: ``{"line": (covered, total), "toggle": (covered, total)}`` from a Verilator
    ``coverage.dat`` of the design in ``vfile``. Points of other files are ignored; line points
    on writer artifacts (:data:`_ARTIFACT`) are counted under the block ``"(writer artifacts)"``."""
    import bisect
    ranges, block_of = module_blocks(vfile)
    starts = [r[0] for r in ranges]
    vname = Path(vfile).name
    vlines = Path(vfile).read_text().splitlines()
    rep: dict = {}
    pat = re.compile(r"^C '(.*)' (\d+)\s*$")
    with open(dat, encoding="latin-1") as fh:
        for line in fh:
            m = pat.match(line)
            if not m:
                continue
            k = _parse_key(m.group(1))
            if Path(k.get("f", "")).name != vname:
                continue
            page = k.get("page", "")
            kind = "toggle" if page.startswith("v_toggle") else (
                "line" if page.startswith(("v_line", "v_branch")) else None)
            if kind is None:
                continue
            ln = int(k.get("l", 0))
            i = bisect.bisect_right(starts, ln) - 1
            if i < 0 or not ranges[i][0] <= ln <= ranges[i][1]:
                continue
            block = block_of[ranges[i][2]]
            if kind == "line" and ln <= len(vlines) and _ARTIFACT.match(vlines[ln - 1]):
                block = "(writer artifacts)"
            d = rep.setdefault(block, {"line": (0, 0), "toggle": (0, 0)})
            c, t = d[kind]
            d[kind] = (c + (int(m.group(2)) > 0), t + 1)
    return rep


# -- workload ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _library(path):
    """Make the runtime's Verilator backend load ``path`` instead of the normal harness."""
    from . import verilator_build
    saved = verilator_build.build_harness
    verilator_build.build_harness = lambda cfg, **kw: path
    try:
        yield
    finally:
        verilator_build.build_harness = saved


def _system_programs(dev, cfg, features, log):
    import numpy as np

    from sparrow import fuzz
    from sparrow.testprograms import CASE_NAMES, build_case
    bad = []
    for name in CASE_NAMES:
        case = build_case(name, cfg)
        expected, res = case.golden()
        dev.write_dram(0, bytes(cfg.dram_bytes))
        dev.write_dram(0, case.image)
        dev.load_program(case.program, case.prog_base)
        dev.run(max_cycles=5_000_000)
        got = dev.read_dram(0, len(case.image))
        if not np.array_equal(got, expected):
            bad.append(name)
        fc = fuzz.Case("system", 0, 0, [int.from_bytes(bytes(case.program)[i:i + 16], "little")
                                        for i in range(0, len(bytes(case.program)), 16)], [])
        out = fuzz.Outcome(res.error, None, None, None, {})
        out.executed = [t[0] for t in res.timeline]
        features.add(fc, cfg, out)
    log(f"system programs: {len(CASE_NAMES) - len(bad)}/{len(CASE_NAMES)} equal to golden"
        + (f" (differ: {bad})" if bad else ""))
    return bad


def _host_features(dev, cfg, log):
    """Breakpoints, step, resume, halt-all, abort, clear and every CSR, on the gemm program."""
    from sparrow import regmap
    from sparrow.errors import DeviceError
    from sparrow.testprograms import build_case
    case = build_case("gemm", cfg)
    hw = dev._b.hw

    def fresh():
        dev.clear_breakpoints()
        dev.write_dram(0, case.image)
        dev.load_program(case.program, case.prog_base)

    engines = [i.engine_queue for i in case.program if i.engine_queue is not None]
    for e in range(4):
        idx = next((i for i, ins in enumerate(case.program) if ins.engine_queue is not None
                    and ins.engine_queue.value == e), None)
        if idx is None:
            continue
        fresh()
        dev.set_breakpoint(e, idx, halt_all=bool(e % 2))
        try:
            info = dev.run(max_cycles=200_000)
            dev.pcs()
            if info.stop == "breakpoint":
                try:
                    dev.step(e, max_cycles=20_000)
                except DeviceError:      # the stepped engine may wait on a halted one
                    hw.step(3000)
                dev.clear_breakpoints()
                info = dev.resume(max_cycles=200_000)
                while info.stop == "breakpoint":
                    info = dev.resume(max_cycles=200_000)
        except DeviceError as err:
            log(f"host features: breakpoint on engine {e}: {err}")
            hw.step(3000)
    fresh()
    hw.csr_write("CTRL", 1)
    hw.step(40)
    hw.csr_write("CTRL", 2)          # abort a running program
    hw.step(3000)
    hw.csr_write("CTRL", 4)          # clear
    for r in regmap.REGISTERS:
        hw.csr_read(r.addr)
    for r in regmap.REGISTERS:
        if r.access == "rw":
            hw.csr_write(r.addr, hw.csr_read(r.addr))
    hw.csr_read(0xFF)                # an unmapped address
    dev.set_watchdog(1 << 20)
    fresh()
    try:
        dev.run(max_cycles=50)       # the driver's cycle limit: TIMEOUT, abort
    except DeviceError:
        pass
    hw.step(3000)
    fresh()
    try:
        dev.run(max_cycles=1_000_000)
    except DeviceError as err:
        log(f"host features: final run: {err}")
        hw.step(3000)
    log(f"host features: breakpoints on {len(set(engines))} engines, step, resume, abort, clear, "
        f"{len(regmap.REGISTERS)} CSRs")


def run(cfg=None, n_fuzz: int = 120, seed: int = 1, out_dir=None, log=print, library=None) -> dict:
    """Build, run the workload, write the reports; returns the report dict. ``library``: an
    already built ``(library path, Verilog path)`` to use instead of building."""
    from sparrow import fuzz
    from sparrow.config import preset
    cfg = cfg or preset("small")
    out = Path(out_dir or COV_DIR)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lib_path, vpath = library or build_coverage_harness(cfg)
    t_build = time.perf_counter() - t0
    log(f"coverage harness: {lib_path} ({t_build:.0f} s)")
    lib = ctypes.CDLL(str(lib_path))
    lib.sp_cov_write.argtypes = [ctypes.c_char_p]
    lib.sp_cov_write.restype = ctypes.c_int
    parts = []

    kept = []

    class _CovRunner(fuzz.VerilatorRunner):
        def _renew(self):
            """Write the counts of a hung device, then replace it. The old one is kept alive (not
            destroyed): its coverage counters stay registered in its context."""
            from sparrow.runtime import Device
            p = out / f"part{len(parts)}.dat"
            lib.sp_cov_write(str(p).encode())
            parts.append(p)
            kept.append(self.dev)
            self.dev = Device(self.cfg, "verilator")
            self.renewed += 1

    features = fuzz.FeatureCounter()
    t1 = time.perf_counter()
    with _library(lib_path):
        runner = _CovRunner(cfg)      # counts include reset/initialisation (initial blocks)
        bad_sys = _system_programs(runner.dev, cfg, features, log)
        res = fuzz.run_batch(cfg, n_fuzz, seed, 0, runner=runner, save_dir=out / "fuzz_cases", log=log)
        features.merge(res.features)
        log(res.summary())
        # valid programs with permuted semaphore ids: every (engine, semaphore) pair
        n_remap = max(1, n_fuzz // 3)
        rem = fuzz.run_batch(cfg, n_remap, seed, 100_000, runner=runner, save_dir=out / "fuzz_cases", log=log,
                             kinds=["remap"])
        features.merge(rem.features)
        log(rem.summary())
        res.programs += rem.programs
        res.mismatches += rem.mismatches
        # last: the host-side features (aborts, breakpoints, delays)
        _host_features(runner.dev, cfg, log)
        last = out / f"part{len(parts)}.dat"
        lib.sp_cov_write(str(last).encode())
        parts.append(last)
        runner.close()
        for d in kept:              # leaked on purpose (see _renew)
            d._b.hw._h = None
    t_run = time.perf_counter() - t1
    dat = out / "coverage.dat"
    if len(parts) == 1:
        parts[0].replace(dat)
    else:
        subprocess.run(["verilator_coverage", "--write", str(dat), *map(str, parts)], check=True,
                       capture_output=True)
        for p in parts:
            p.unlink()
    ann = out / "annotated"
    if ann.exists():
        shutil.rmtree(ann)
    r = subprocess.run(["verilator_coverage", "--annotate", str(ann), "--annotate-min", "1", str(dat)],
                       capture_output=True, text=True)
    blocks = parse_dat(dat, vpath)
    if not any(d["line"][1] for d in blocks.values()):
        raise RuntimeError(f"{dat} has no line point in {vpath.name}: wrong Verilog file?")
    report = _report(cfg, blocks, features, res, bad_sys, n_fuzz, seed,
                     {"build_s": round(t_build, 1), "run_s": round(t_run, 1)})
    report["library"] = str(lib_path)
    report["annotate"] = (r.stdout.strip().splitlines() or [""])[-1] if r.returncode == 0 else r.stderr[-300:]
    (out / "coverage.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out / "report.txt").write_text(report["table"] + "\n")
    log(report["table"])
    return report


def _pct(c, t):
    return round(100.0 * c / t, 1) if t else 100.0


def _report(cfg, blocks, features, res, bad_sys, n_fuzz, seed, times) -> dict:
    hdl = {b: d for b, d in blocks.items() if not b.startswith("(")}
    lc = sum(d["line"][0] for d in hdl.values())
    lt = sum(d["line"][1] for d in hdl.values())
    tc = sum(d["toggle"][0] for d in hdl.values())
    tt = sum(d["toggle"][1] for d in hdl.values())
    rows = [f"{'hdl block':22s} {'line':>15s} {'%':>6s} {'toggle':>17s} {'%':>6s}"]
    for b in sorted(hdl):
        (c, t), (c2, t2) = hdl[b]["line"], hdl[b]["toggle"]
        rows.append(f"{b:22s} {c:7d}/{t:<7d} {_pct(c, t):6.1f} {c2:8d}/{t2:<8d} {_pct(c2, t2):6.1f}")
    rows.append(f"{'hdl/ total':22s} {lc:7d}/{lt:<7d} {_pct(lc, lt):6.1f} {tc:8d}/{tt:<8d} {_pct(tc, tt):6.1f}")
    for b in sorted(set(blocks) - set(hdl)):
        (c, t), (c2, t2) = blocks[b]["line"], blocks[b]["toggle"]
        rows.append(f"{b:22s} {c:7d}/{t:<7d} {_pct(c, t):6.1f} {c2:8d}/{t2:<8d} {_pct(c2, t2):6.1f}  (not in total)")
    holes = features.holes()
    from sparrow.fuzz import FEATURES
    table = "\n".join(rows) + (
        f"\n\nworkload: {len(res.by_kind) and res.programs} fuzz programs (seed {seed}), system programs"
        f" ({'all equal to golden' if not bad_sys else 'DIFFER: ' + ', '.join(bad_sys)}), host features;"
        f" fuzz mismatches {len(res.mismatches)}\n"
        f"functional ISA coverage: {len(FEATURES) - len(holes)}/{len(FEATURES)} opcode x flag features"
        + (f"; holes: {', '.join(holes)}" if holes else "; no holes") + "\n\n" + features.table())
    return {"preset": cfg.name, "blocks": {b: {"line": list(d["line"]), "toggle": list(d["toggle"]),
                                               "line_pct": _pct(*d["line"]), "toggle_pct": _pct(*d["toggle"])}
                                           for b, d in sorted(blocks.items())},
            "total": {"line_covered": lc, "line_points": lt, "line_pct": _pct(lc, lt),
                      "toggle_covered": tc, "toggle_points": tt, "toggle_pct": _pct(tc, tt)},
            "isa": {"covered": len(FEATURES) - len(holes), "total": len(FEATURES), "holes": holes,
                    "counts": dict(features.counts)},
            "workload": {"fuzz_programs": res.programs, "fuzz_seed": seed, "fuzz_mismatches": len(res.mismatches),
                         "system_programs_differ": bad_sys},
            "times": times, "table": table}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparrow.sim.coverage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--fuzz", type=int, default=120, help="fuzz programs in the workload")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    import os

    from sparrow import bench
    os.environ["SPARROW_COV_PRESET"] = a.preset
    os.environ["SPARROW_COV_FUZZ"] = str(a.fuzz)
    os.environ["SPARROW_COV_SEED"] = str(a.seed)
    rec = bench.run_one("coverage")     # bench/coverage.py -> bench/results/coverage.json
    return 1 if rec["metrics"].get("fuzz_mismatches") or rec["metrics"].get("system_programs_differ") else 0


if __name__ == "__main__":
    sys.exit(main())
