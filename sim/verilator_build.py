"""Build the fast Verilator harness (``sim/harness.cpp``) as a shared library, once per preset.

::

    from sparrow.sim.verilator_build import build_harness
    lib_path = build_harness(preset("small"))            # build/harness/small-<hash>/libsparrow_harness.so
    lib_path = build_harness(preset("small"), trace=True)  # the --trace-fst variant (waveforms)

* The Verilog of ``Sparrow(cfg, bus="membus")`` is generated with ``amaranth.back.verilog`` and
  cached under ``build/harness/verilog/`` by a hash of the HDL sources (``hdl/*.py`` and the
  ``sparrow`` modules it imports), the config and the Amaranth version, so an unchanged design
  is not re-elaborated (which takes ~20 s for the small preset).
* The library is cached by a hash of that Verilog, the harness sources and the build flags;
  parallel pytest workers share one build behind a file lock (the pattern of
  :mod:`sparrow.sim.cocotb_run`).
* Flags: the project's waivers (:data:`sparrow.sim.cocotb_run.VERILATOR_WAIVERS`), Verilator
  ``-O3``, no ``--threads``; generated C++ is compiled with ``OPT_FAST`` (see :data:`CXX_OPT`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .cocotb_run import BUILD_ROOT, VERILATOR_WAIVERS, _locked

__all__ = ["build_harness", "harness_verilog", "HARNESS_DIR", "CXX_OPT", "last_build_info"]

SIM_DIR = Path(__file__).resolve().parent
HARNESS_DIR = BUILD_ROOT / "harness"
TOP = "sparrow_top"
#: C++ optimisation of the Verilated model (OPT_FAST/OPT_SLOW/OPT_GLOBAL of verilated.mk).
CXX_OPT = os.environ.get("SPARROW_HARNESS_CXX_OPT", "-O2")
VERILATOR_FLAGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast")

#: Filled by build_harness: {"path", "cached", "verilog_seconds", "build_seconds"} of the last call.
last_build_info: dict = {}


#: The ``sparrow`` modules the HDL reads (their text is part of the Verilog cache key).
_SW_MODULES = ("isa.py", "config.py", "regmap.py", "errors.py", "codec.py", "golden/numerics.py")


def _source_key(cfg) -> str:
    import amaranth
    repo = SIM_DIR.parent
    h = hashlib.sha256()
    sw = repo / "sw" / "sparrow"
    files = sorted((repo / "hdl").glob("*.py")) + [sw / f for f in _SW_MODULES]
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(cfg.to_json().encode())
    h.update(amaranth.__version__.encode())
    return h.hexdigest()[:16]


def harness_verilog(cfg) -> str:
    """Verilog text of ``Sparrow(cfg, bus="membus")`` with top module ``sparrow_top`` (cached)."""
    from .cocotb_run import verilog_of
    key = _source_key(cfg)
    vdir = HARNESS_DIR / "verilog"
    path = vdir / f"{cfg.name}-{key}.v"
    with _locked(vdir / f".{cfg.name}-{key}.lock"):
        if not path.exists():
            from sparrow.hdl.top import Sparrow
            text = verilog_of(Sparrow(cfg, bus="membus"), TOP)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return path.read_text()


def _verilator_version() -> str:
    r = subprocess.run(["verilator", "--version"], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def build_harness(cfg, *, trace: bool = False, jobs: int = 2) -> Path:
    """Path of the harness shared library for ``cfg`` (built on first use)."""
    from sparrow.config import HwConfig
    if not isinstance(cfg, HwConfig):
        raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
    if not isinstance(trace, bool):
        raise ValueError(f"trace must be a bool, not {trace!r}")
    t0 = time.perf_counter()
    verilog = harness_verilog(cfg)
    t_verilog = time.perf_counter() - t0
    aw, mb = cfg.dram_addr_bits, cfg.mem_bytes
    cflags = ["-fPIC", f"-DSP_AW={aw}", f"-DSP_MB={mb}"] + (["-DSP_TRACE"] if trace else [])
    vflags = list(VERILATOR_WAIVERS) + list(VERILATOR_FLAGS) + (["--trace-fst"] if trace else [])
    sources = (SIM_DIR / "harness.cpp").read_bytes() + (SIM_DIR / "harness.h").read_bytes()
    digest = hashlib.sha256(b"\0".join([
        verilog.encode(), sources, " ".join(vflags + cflags).encode(), CXX_OPT.encode(),
        _verilator_version().encode()])).hexdigest()[:16]
    name = f"{cfg.name}{'-fst' if trace else ''}-{digest}"
    bdir = HARNESS_DIR / name
    lib = bdir / "libsparrow_harness.so"
    cached = True
    with _locked(HARNESS_DIR / f".{name}.lock"):
        if not lib.exists():
            cached = False
            if bdir.exists():
                shutil.rmtree(bdir)
            bdir.mkdir(parents=True)
            (bdir / f"{TOP}.v").write_text(verilog)
            for f in ("harness.cpp", "harness.h"):
                shutil.copy(SIM_DIR / f, bdir / f)
            cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), f"{TOP}.v", "harness.cpp",
                   "--top-module", TOP, "--prefix", "Vtop", "--Mdir", "obj",
                   "-CFLAGS", " ".join(cflags), "-LDFLAGS", "-shared", "-o", "libsparrow_harness.so",
                   "-MAKEFLAGS", f"OPT_FAST={CXX_OPT} OPT_SLOW={CXX_OPT} OPT_GLOBAL={CXX_OPT}",
                   *vflags]
            r = subprocess.run(cmd, cwd=bdir, capture_output=True, text=True)
            (bdir / "build.log").write_text(" ".join(cmd) + "\n" + r.stdout + r.stderr)
            if r.returncode != 0:
                raise RuntimeError(f"Verilator harness build failed for {cfg.name} "
                                   f"(see {bdir / 'build.log'}):\n{r.stderr[-3000:]}")
            built = bdir / "obj" / "libsparrow_harness.so"
            shutil.copy(built, lib.with_suffix(".tmp"))
            lib.with_suffix(".tmp").replace(lib)
            secs = round(time.perf_counter() - t0 - t_verilog, 2)
            (bdir / "build.json").write_text(json.dumps(
                {"preset": cfg.name, "trace": trace, "seconds": secs, "cxx_opt": CXX_OPT,
                 "verilator_flags": vflags, "cflags": cflags}))
    last_build_info.clear()
    last_build_info.update(path=str(lib), cached=cached, verilog_seconds=round(t_verilog, 2),
                           build_seconds=round(time.perf_counter() - t0 - t_verilog, 2))
    return lib
