"""``make verilog``: write ``build/sparrow_<preset>.v`` and ``.json`` for each preset and lint them.

The JSON holds the hardware parameters and the CSR register map (``sparrow.regmap``). Linting
uses Verilator with exactly the waivers in ``sparrow.sim.cocotb_run.VERILATOR_WAIVERS``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sparrow import regmap
from sparrow.config import PRESETS, preset

__all__ = ["export", "lint", "main"]


def export(name: str, out_dir: Path, *, bus: str = "axi") -> Path:
    from amaranth.back import verilog

    from .top import Sparrow
    cfg = preset(name)
    top = f"sparrow_{name}"
    text = verilog.convert(Sparrow(cfg, bus=bus), name=top, emit_src=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    vpath = out_dir / f"{top}.v"
    vpath.write_text(text)
    meta = json.loads(regmap.to_json(cfg))
    meta.update(top=top, bus=bus)
    (out_dir / f"{top}.json").write_text(json.dumps(meta, indent=2))
    return vpath


def lint(vpath: Path, top: str) -> subprocess.CompletedProcess:
    from sparrow.sim.cocotb_run import VERILATOR_WAIVERS
    cmd = ["verilator", "--lint-only", *VERILATOR_WAIVERS, "--top-module", top, str(vpath)]
    return subprocess.run(cmd, capture_output=True, text=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sparrow.hdl.export", description=__doc__)
    ap.add_argument("presets", nargs="*", default=list(PRESETS))
    ap.add_argument("-o", "--out", default="build", type=Path)
    ap.add_argument("--bus", choices=("axi", "membus"), default="axi")
    args = ap.parse_args(argv)
    bad = 0
    for name in args.presets:
        t0 = time.perf_counter()
        v = export(name, args.out, bus=args.bus)
        r = lint(v, f"sparrow_{name}")
        status = "lint clean" if r.returncode == 0 else "LINT FAILED"
        print(f"{v} ({v.stat().st_size // 1024} KiB, {time.perf_counter() - t0:.0f} s): {status}")
        if r.returncode:
            bad += 1
            print(r.stderr[-4000:], file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
