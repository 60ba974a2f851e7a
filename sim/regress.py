"""``make sim``: the long regression on Verilator.

1. every system program (``sparrow.testprograms``) on every preset through the fast harness
   (``Device(backend="verilator")``), each final memory image compared with the golden model's;
2. every cocotb testbench: the pytest tests marked ``verilator`` (slow ones included);

both on ``--jobs`` workers (default 2), then one summary table; the exit status is non-zero when
anything failed. ``WAVES=1`` (or ``--waves``) builds the ``--trace-fst`` harness and keeps one FST
per system program in ``build/waves/<preset>/<case>.fst``.

    python -m sparrow.sim.regress [--presets small,default,large] [--jobs 2] [--waves] [--no-cocotb]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .cocotb_run import BUILD_ROOT, REPO

__all__ = ["run_programs", "main"]


def run_programs(preset_name: str, waves: bool = False) -> list[dict]:
    """All system cases on one preset through the harness; one result row per case."""
    import numpy as np

    from sparrow.config import preset
    from sparrow.runtime import Device
    from sparrow.testprograms import CASE_NAMES, build_case
    cfg = preset(preset_name)
    rows = []
    t0 = time.perf_counter()
    try:
        from sparrow.sim.verilator_build import build_harness
        build_harness(cfg, trace=waves)
    except Exception as e:  # build failure: every case fails with it
        return [{"preset": preset_name, "case": n, "ok": False, "cycles": 0, "seconds": 0.0,
                 "detail": f"build failed: {e}"[:300]} for n in CASE_NAMES]
    build_s = time.perf_counter() - t0
    for name in CASE_NAMES:
        row = {"preset": preset_name, "case": name, "ok": False, "cycles": 0, "seconds": 0.0, "detail": ""}
        try:
            case = build_case(name, cfg)
            expected, _ = case.golden()
            opts = {}
            if waves:
                wdir = BUILD_ROOT / "waves" / preset_name
                wdir.mkdir(parents=True, exist_ok=True)
                opts["waves"] = wdir / f"{name}.fst"
            with Device(cfg, "verilator", **opts) as dev:
                dev.write_dram(0, case.image)
                dev.load_program(case.program, case.prog_base)
                t = time.perf_counter()
                info = dev.run(max_cycles=5_000_000)
                row["seconds"] = time.perf_counter() - t
                row["cycles"] = info.cycles
                got = dev.read_dram(0, len(case.image))
            bad = np.flatnonzero(got != expected)
            row["ok"] = bad.size == 0
            if bad.size:
                row["detail"] = f"{bad.size} bytes differ from golden, first at {bad[0]:#x}"
            elif waves:
                row["detail"] = str(opts["waves"])
        except Exception as e:
            row["detail"] = f"{type(e).__name__}: {e}"[:300]
            traceback.print_exc()
        rows.append(row)
    rows[0]["build_s"] = build_s
    return rows


def _pytest_verilator(jobs: int) -> tuple[int, str]:
    xml = BUILD_ROOT / "regress-cocotb.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "verilator", "-n", str(jobs), f"--junitxml={xml}"]
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=REPO)
    return r.returncode, str(xml)


def _junit_rows(xml: str) -> list[dict]:
    import xml.etree.ElementTree as ET
    rows = []
    if not Path(xml).exists():
        return rows
    for case in ET.parse(xml).iter("testcase"):
        bad = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        rows.append({"name": f"{case.get('classname')}::{case.get('name')}",
                     "result": "FAIL" if bad else ("skip" if skipped else "ok"),
                     "seconds": float(case.get("time", 0))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=os.environ.get("PRESETS", "small default large"),
                    help="comma- or space-separated preset names")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    ap.add_argument("--waves", action="store_true", default=os.environ.get("WAVES", "0") not in ("", "0"))
    ap.add_argument("--no-cocotb", action="store_true", help="skip the pytest -m verilator part")
    a = ap.parse_args(argv)
    presets = [p for p in a.presets.replace(",", " ").split() if p]
    if a.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        results = list(ex.map(run_programs, presets, [a.waves] * len(presets)))
    prog_rows = [r for rows in results for r in rows]
    tb_rc, tb_rows = 0, []
    if not a.no_cocotb:
        tb_rc, xml = _pytest_verilator(a.jobs)
        tb_rows = _junit_rows(xml)

    print("\n== make sim summary ==")
    print(f"{'preset':8s} {'program':14s} {'result':6s} {'cycles':>9s} {'cyc/s':>11s}  detail")
    for r in prog_rows:
        speed = f"{r['cycles'] / r['seconds']:,.0f}" if r["seconds"] else "-"
        res = "ok" if r["ok"] else "FAIL"
        print(f"{r['preset']:8s} {r['case']:14s} {res:6s} {r['cycles']:9d} {speed:>11s}  {r['detail']}")
    if tb_rows:
        print(f"\n{'testbench (pytest -m verilator)':80s} {'result':6s} {'s':>7s}")
        for r in tb_rows:
            print(f"{r['name'][:80]:80s} {r['result']:6s} {r['seconds']:7.1f}")
    n_prog_bad = sum(not r["ok"] for r in prog_rows)
    n_tb_bad = sum(r["result"] == "FAIL" for r in tb_rows)
    print(f"\nsystem programs: {len(prog_rows) - n_prog_bad}/{len(prog_rows)} ok; testbenches: "
          f"{len(tb_rows) - n_tb_bad}/{len(tb_rows)} ok (pytest exit {tb_rc}); "
          f"{time.perf_counter() - t0:.0f} s")
    if not a.no_cocotb and not tb_rows:
        print("no testbench results (pytest collected nothing?)")
        return 1
    return 1 if (n_prog_bad or n_tb_bad or tb_rc) else 0


if __name__ == "__main__":
    sys.exit(main())
