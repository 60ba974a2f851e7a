"""Differential fuzzing campaign: random programs, golden model vs the Verilator harness.

Runs ``SPARROW_FUZZ_N`` cases (default 10 000) of ``sparrow.fuzz`` with seed ``SPARROW_FUZZ_SEED``
(default 1, indices 0..N-1) on preset ``SPARROW_FUZZ_PRESET`` (default small), split over
``SPARROW_FUZZ_JOBS`` processes (default: one per core), each with its own simulated device; an
optional ``SPARROW_FUZZ_BUDGET_S`` stops each process early, and the figures then say how many ran. Mismatches are
shrunk and saved in ``tests/fuzz_cases/``. Metrics: programs run, mismatches, racy programs
(generator bugs), programs per second, the seed and index range, case kinds, golden outcomes,
functional ISA coverage, and how often a hung device had to be replaced.
"""

import os

from sparrow import fuzz
from sparrow.config import preset


def run():
    n = int(os.environ.get("SPARROW_FUZZ_N", "10000"))
    seed = int(os.environ.get("SPARROW_FUZZ_SEED", "1"))
    budget = float(os.environ.get("SPARROW_FUZZ_BUDGET_S", "0")) or None
    cfg = preset(os.environ.get("SPARROW_FUZZ_PRESET", "small"))
    jobs = int(os.environ.get("SPARROW_FUZZ_JOBS", "0")) or os.cpu_count() or 1
    res, renewed = fuzz.run_parallel(cfg, n, seed, jobs, time_budget=budget, progress_every=500)
    print(res.summary(), flush=True)
    holes = res.features.holes()
    metrics = {"programs": res.programs, "mismatches": len(res.mismatches), "racy": len(res.racy),
               "seconds": round(res.seconds, 1), "programs_per_s": round(res.rate, 2), "seed": seed,
               "first_index": res.first, "last_index": res.last, "device_renewals": renewed, "jobs": jobs,
               "features_covered": len(fuzz.FEATURES) - len(holes), "features_total": len(fuzz.FEATURES)}
    metrics.update({f"kind_{k}": v for k, v in sorted(res.by_kind.items())})
    metrics.update({f"golden_{k}": v for k, v in sorted(res.by_code.items())})
    config = {"preset": cfg.name, "n_requested": n, "seed": seed, "budget_s": budget,
              "watchdog": fuzz.WATCHDOG, "max_cycles": fuzz.MAX_CYCLES, "kinds": fuzz.KINDS,
              "mismatch_cases": [str(p) for *_, p in res.mismatches], "feature_holes": holes}
    return {"metrics": metrics, "config": config, "table": res.summary() + "\n\n" + res.features.table()}
