"""Benchmark runner: ``python -m sparrow.bench [NAME ...]`` (``make bench [B=NAME]``).

A benchmark is a module ``bench/NAME.py`` with a function ``run() -> dict`` returning::

    {"metrics": {metric: number, ...},     # what the benchmark measured, flat
     "config":  {...},                      # what it ran on (preset, sizes, seeds)
     "table":   "text"}                     # human-readable table, printed

The runner prints the table and writes ``bench/results/NAME.json`` with the metrics, the config,
the git revision, the date and the machine's core count. Figures quoted anywhere (README, issue
notes) come from these files, produced by one run.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(os.environ.get("SPARROW_BENCH_DIR", REPO / "bench"))


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str) -> dict:
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"no benchmark {name!r}; available: {', '.join(available()) or 'none'}")
    spec = importlib.util.spec_from_file_location(f"sparrow_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = time.perf_counter()
    res = mod.run()
    elapsed = time.perf_counter() - t0
    for key in ("metrics", "config", "table"):
        if key not in res:
            raise SystemExit(f"benchmark {name}: run() result has no {key!r}")
    print(f"== {name} ==")
    print(res["table"].rstrip())
    record = {"benchmark": name, "metrics": res["metrics"], "config": res["config"],
              "git": _git_rev(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "wall_seconds": round(elapsed, 2)}
    out = BENCH_DIR / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"-> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return record


def main(argv=None):
    names = list(argv if argv is not None else sys.argv[1:]) or available()
    if not names:
        raise SystemExit("no benchmarks in bench/")
    for n in names:
        run_one(n)


if __name__ == "__main__":
    main()
