"""Whole accelerator on Verilator: RTL cycles vs the golden model's estimate, and engine overlap.

Runs every system program of :mod:`sparrow.testprograms` on the AXI top (``tb/tb_system_bench.py``:
cocotbext-axi RAM without back-pressure, results checked against the golden image there) and
reports per kernel:

* ``rtl_cycles`` — the RTL ``CYCLES`` counter (start to done);
* ``model_cycles`` — the golden model's concurrent-mode estimate with the current
  :data:`sparrow.golden.perf.DEFAULT_COSTS`, and ``ratio`` = model / RTL (target: within 5 %);
* ``baseline_cycles``/``baseline_ratio`` — the same with :data:`BASELINE_COSTS`, the constants
  before they were tuned against these measurements (so the file records before/after);
* ``overlap`` — fraction of RTL cycles with at least two engines busy, from a per-cycle trace of
  the engines' busy counters (exact: the same busy definition the ``*_BUSY`` CSRs count);
* per engine busy cycles, RTL vs model.

The RTL measurements (``build/system_rtl_<preset>.json``) are keyed by the SHA-256 of the top's
Verilog, the cases and the seed, and reused while those are unchanged (``SPARROW_SYSTEM_RERUN=1``
simulates anyway): tuning :mod:`sparrow.golden.perf` then needs no new simulation.

Metrics: ``<case>.rtl_cycles``, ``<case>.model_cycles``, ``<case>.ratio``, ``<case>.baseline_ratio``,
``<case>.overlap``, ``max_abs_error``/``mean_abs_error`` (|ratio - 1|, tuned model),
``baseline_max_abs_error``/``baseline_mean_abs_error``, ``cases_within_5pct``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from sparrow import regmap
from sparrow.bench import REPO
from sparrow.config import preset
from sparrow.golden import Machine
from sparrow.golden import perf
from sparrow.testprograms import system_cases

PRESET = os.environ.get("SPARROW_PRESET", "small")
SEED = 1
REUSE = os.environ.get("SPARROW_SYSTEM_RERUN", "0") != "1"     # 1: always simulate again

#: perf.Costs as it was before tuning against this benchmark (the record's "before").
BASELINE_COSTS = perf.Costs(dma_start=4, dma_row_setup=2, store_start=4, store_row_setup=2, line_cycles=1,
                            pad_line_cycles=1, matmul_start=4, matmul_row_cycles=0, vector_start=3,
                            vector_line_cycles=1, nop=1, delay_overhead=1, load_compressed_row=0,
                            store_compressed_row=0, fetch_latency=0, issue_gap=0,
                            release_latency=0, signal_latency=0)


def _top(cfg):
    from sparrow.hdl.top import Sparrow
    return Sparrow(cfg, bus="axi")


def measure_rtl(cfg, cases, *, seed=SEED, verilog_text=None) -> dict:
    """Run ``cases`` on the RTL; returns ``{name: {"counters", "busy_runs", ...}}``."""
    from sparrow.sim.cocotb_run import run_cocotb
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = {"addr_bits": cfg.dram_addr_bits, "cases": []}
        for c in cases:
            expected, _ = c.golden()
            np.savez(tmp / f"{c.name}.npz", image=c.image, expected=expected)
            manifest["cases"].append({"name": c.name, "prog_base": c.prog_base,
                                      "n_instructions": c.n_instructions, "max_polls": 20000})
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        out = tmp / "results.json"
        run_cocotb(lambda: _top(cfg), name=f"sparrow_{cfg.name}_axi", test_module="tb_system_bench",
                   seed=seed, verilog_text=verilog_text,
                   extra_env={"SPARROW_SYSTEM_CASES": str(tmp), "SPARROW_RESULTS": str(out)})
        return json.loads(out.read_text())


def check_trace(name, r):
    """The busy trace must add up to the RTL's busy counters (else the overlap figure is not exact)."""
    for e, eng in enumerate(regmap.ENGINES):
        traced = sum(n for mask, n in r["busy_runs"] if mask >> e & 1)
        counted = r["counters"][f"{eng}_busy"]
        if traced != counted:
            raise RuntimeError(f"{name}: traced {eng} busy cycles {traced} != counter {counted}")


def overlap(runs, cycles) -> tuple[float, int]:
    """(fraction of the run's ``cycles`` with >= 2 engines busy, those cycles)."""
    multi = sum(n for mask, n in runs if bin(mask).count("1") >= 2)
    return (multi / cycles if cycles else 0.0), multi


def model(case, costs):
    m = Machine(case.cfg, costs)
    m.write_dram(0, case.image)
    return m.run(case.program, mode="concurrent")


def run():
    cfg = preset(PRESET)
    cases = system_cases(cfg)
    # raw counters + traces, for re-tuning perf.Costs; reused while the RTL (its Verilog), the
    # cases and the seed are unchanged, so retuning the model does not re-simulate
    from sparrow.sim.cocotb_run import verilog_of
    text = verilog_of(_top(cfg), f"sparrow_{cfg.name}_axi")
    key = hashlib.sha256(text.encode() + repr([(c.name, c.image.tobytes(), bytes(c.program)) for c in cases]
                                              ).encode() + str(SEED).encode()).hexdigest()
    raw = REPO / "build" / f"system_rtl_{PRESET}.json"
    old = json.loads(raw.read_text()) if raw.exists() else {}
    reused = old.get("_key") == key and REUSE
    if reused:
        rtl = old
    else:
        rtl = measure_rtl(cfg, cases, verilog_text=text)
        rtl["_key"] = key
        raw.parent.mkdir(exist_ok=True)
        raw.write_text(json.dumps(rtl))
    metrics, config_cases = {}, {}
    rows = [f"{'kernel':<13}{'RTL':>7}{'model':>7}{'ratio':>7}{'before':>8}{'overlap':>9}   "
            "busy RTL/model: load matmul vector store"]
    errs, base_errs = [], []
    for c in cases:
        r = rtl[c.name]
        cyc = r["counters"]["cycles"]
        now, base = model(c, perf.DEFAULT_COSTS), model(c, BASELINE_COSTS)
        check_trace(c.name, r)
        ov, multi = overlap(r["busy_runs"], cyc)
        ratio, bratio = now.cycles / cyc, base.cycles / cyc
        errs.append(abs(ratio - 1))
        base_errs.append(abs(bratio - 1))
        metrics.update({f"{c.name}.rtl_cycles": cyc, f"{c.name}.model_cycles": now.cycles,
                        f"{c.name}.ratio": round(ratio, 4), f"{c.name}.baseline_cycles": base.cycles,
                        f"{c.name}.baseline_ratio": round(bratio, 4), f"{c.name}.overlap": round(ov, 4)})
        busy = []
        for e in regmap.ENGINES:
            rb, mb = r["counters"][f"{e}_busy"], now.counters[f"{e}_busy"]
            metrics[f"{c.name}.{e}_busy_rtl"] = rb
            metrics[f"{c.name}.{e}_busy_model"] = mb
            busy.append(f"{rb}/{mb}")
        config_cases[c.name] = {"instructions": c.n_instructions, "overlap_cycles": multi}
        rows.append(f"{c.name:<13}{cyc:>7}{now.cycles:>7}{ratio:>7.3f}{bratio:>8.3f}{ov:>9.3f}   "
                    + "  ".join(busy))
    metrics.update({"max_abs_error": round(max(errs), 4), "mean_abs_error": round(float(np.mean(errs)), 4),
                    "baseline_max_abs_error": round(max(base_errs), 4),
                    "baseline_mean_abs_error": round(float(np.mean(base_errs)), 4),
                    "cases_within_5pct": sum(e <= 0.05 for e in errs), "cases": len(errs)})
    rows.append(f"|model/RTL - 1|: max {max(errs):.3f}, mean {np.mean(errs):.3f} "
                f"(before tuning: max {max(base_errs):.3f}, mean {np.mean(base_errs):.3f}); "
                f"{metrics['cases_within_5pct']}/{len(errs)} kernels within 5 %")
    return {"metrics": metrics,
            "config": {"preset": PRESET, "seed": SEED, "bus": "AXI4, cocotbext-axi AxiRam, no pauses",
                       "rtl_measurement": "reused (same Verilog, cases, seed)" if reused else "simulated",
                       "costs": perf.DEFAULT_COSTS.__dict__, "baseline_costs": BASELINE_COSTS.__dict__,
                       "cases": config_cases},
            "table": "\n".join(rows)}
