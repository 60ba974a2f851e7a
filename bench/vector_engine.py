"""VECTOR engine throughput on Verilator: lines per cycle per operation with ideal ports.

Runs the ``throughput`` cocotb test of ``tb/tb_vector_engine.py`` (latency-1 scratchpad ports, no
stalls; every result is also checked against the reference there) and reports, per operation,
cycles from instruction accept to its ``done`` pulse and the output/input lines per cycle.
"""

import json
import os
import tempfile

from sparrow.config import preset
from sparrow.hdl.vector_engine import vector_engine_verilog
from sparrow.sim.cocotb_run import run_cocotb

PRESET = os.environ.get("SPARROW_PRESET", "small")
SEED = 1


def run():
    cfg = preset(PRESET)
    name = f"vector_engine_{PRESET}"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "throughput.json")
        run_cocotb(None, name=name, verilog_text=vector_engine_verilog(cfg, name),
                   test_module="tb_vector_engine", testcase=["throughput"], seed=SEED,
                   extra_env={"SPARROW_PRESET": PRESET, "SPARROW_VE_THROUGHPUT": out})
        with open(out) as fh:
            res = json.load(fh)
    metrics, rows = {}, ["op            out  in   cycles  out/cycle  in/cycle"]
    for op, r in res["ops"].items():
        metrics[f"{op}.out_lines_per_cycle"] = r["out_lines_per_cycle"]
        metrics[f"{op}.in_lines_per_cycle"] = r["in_lines_per_cycle"]
        metrics[f"{op}.overhead_cycles"] = r["cycles"] - max(r["out_lines"], r["in_lines"])
        rows.append(f"{op:<13} {r['out_lines']:>4} {r['in_lines']:>4} {r['cycles']:>7} "
                    f"{r['out_lines_per_cycle']:>10} {r['in_lines_per_cycle']:>9}")
    return {"metrics": metrics,
            "config": {"preset": PRESET, "seed": SEED, "ports": "latency 1, no stalls"},
            "table": "\n".join(rows)}
