"""RTL coverage (Verilator line + toggle, per hdl block) and functional ISA coverage over the
regression workload: ``sparrow.sim.coverage`` (``make coverage``).

Environment: ``SPARROW_COV_PRESET`` (default small), ``SPARROW_COV_FUZZ`` (fuzz programs in the
workload, default 120), ``SPARROW_COV_SEED`` (default 1); ``SPARROW_COV_BUILD``: an existing
``build/coverage/lib/<name>`` directory to use instead of building for the current HDL (the
Verilog it was built from is in it). Reports also go to ``build/coverage/``.
"""

import os
from pathlib import Path

from sparrow.config import preset
from sparrow.sim import coverage


def run():
    cfg = preset(os.environ.get("SPARROW_COV_PRESET", "small"))
    n = int(os.environ.get("SPARROW_COV_FUZZ", "120"))
    seed = int(os.environ.get("SPARROW_COV_SEED", "1"))
    build = os.environ.get("SPARROW_COV_BUILD")
    library = None
    if build:
        d = Path(build)
        library = (d / "libsparrow_harness_cov.so", d / f"{coverage.TOP}.v")
        if not library[0].exists():
            raise ValueError(f"SPARROW_COV_BUILD: no coverage library in {d}")
    rep = coverage.run(cfg, n_fuzz=n, seed=seed, log=lambda s: print(s, flush=True), library=library)
    t = rep["total"]
    metrics = {"hdl_line_pct": t["line_pct"], "hdl_line_points": t["line_points"],
               "hdl_line_covered": t["line_covered"], "hdl_toggle_pct": t["toggle_pct"],
               "hdl_toggle_points": t["toggle_points"], "isa_features_covered": rep["isa"]["covered"],
               "isa_features_total": rep["isa"]["total"], "fuzz_programs": rep["workload"]["fuzz_programs"],
               "fuzz_mismatches": rep["workload"]["fuzz_mismatches"],
               "system_programs_differ": len(rep["workload"]["system_programs_differ"]),
               "build_s": rep["times"]["build_s"], "run_s": rep["times"]["run_s"]}
    for b, d in rep["blocks"].items():
        metrics[f"line_pct_{b}"] = d["line_pct"]
        metrics[f"toggle_pct_{b}"] = d["toggle_pct"]
    config = {"preset": cfg.name, "fuzz_programs": n, "seed": seed, "flags": list(coverage.COV_FLAGS),
              "library": str(rep["library"]),
              "isa_holes": rep["isa"]["holes"], "blocks": {b: {"line": d["line"], "toggle": d["toggle"]}
                                                            for b, d in rep["blocks"].items()}}
    return {"metrics": metrics, "config": config, "table": rep["table"]}
