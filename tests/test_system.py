"""Whole accelerator on Verilator: system programs from the kernel builders vs the golden model."""

import json

import numpy as np
import pytest

from sparrow.config import preset
from sparrow.sim.cocotb_run import run_cocotb
from sparrow.testprograms import CASE_NAMES, system_cases

# Counters that depend only on the program and its data, so RTL and golden model must agree.
EXACT_COUNTERS = ("macs", "macs_skipped", "load_bytes", "load_bytes_raw", "store_bytes", "store_bytes_raw",
                  "instructions")


def _top(cfg):
    from sparrow.hdl.top import Sparrow
    return Sparrow(cfg, bus="axi")


def write_cases(cfg, cases, path, *, pause=0.0):
    manifest = {"addr_bits": cfg.dram_addr_bits, "pause": pause, "cases": []}
    golden = {}
    for c in cases:
        expected, res = c.golden()
        np.savez(path / f"{c.name}.npz", image=c.image, expected=expected)
        manifest["cases"].append({"name": c.name, "prog_base": c.prog_base, "n_instructions": c.n_instructions,
                                  "max_polls": 2000})
        golden[c.name] = res
    (path / "manifest.json").write_text(json.dumps(manifest))
    return golden


@pytest.mark.verilator
@pytest.mark.parametrize("pause", [0.0, 0.3])
def test_system_programs_match_golden(tmp_path, pause):
    cfg = preset("small")
    cases = system_cases(cfg)
    golden = write_cases(cfg, cases, tmp_path, pause=pause)
    out = tmp_path / "results.json"
    run_cocotb(lambda: _top(cfg), name="sparrow_small_axi", test_module="tb_system",
               extra_env={"SPARROW_SYSTEM_CASES": str(tmp_path), "SPARROW_RESULTS": str(out)})
    results = json.loads(out.read_text())
    assert set(results) == set(CASE_NAMES)
    for name, res in golden.items():
        rtl = results[name]["counters"]
        for c in EXACT_COUNTERS:
            assert rtl[c] == res.counters[c], f"{name}: counter {c}: RTL {rtl[c]}, golden {res.counters[c]}"
        print(f"{name:14s} RTL cycles {rtl['cycles']:7d}  golden estimate {res.cycles:7d}")
