"""Build the fast Verilator harness (``sim/harness.cpp``) as a shared library, once per preset.

::

    from sparrow.sim.verilator_build import build_harness
    lib_path = build_harness(preset("small"))            # build/harness/small-<hash>/libsparrow_harness.so
    lib_path = build_harness(preset("small"), trace=True)  # the --trace-fst variant (waveforms)

* The Verilog of ``Sparrow(cfg, bus="membus")`` is generated with ``amaranth.back.verilog`` and
  cached under ``build/harness/verilog/`` by a hash of the HDL sources (``hdl/*.py`` and the
  ``sparrow`` modules it imports), the config and the Amaranth version, so an unchanged design
  is not re-elaborated (which takes ~20 s for the small preset).
* :func:`wrap_top` puts a wrapper module ``harness_top`` around it (same ports) that registers
  ``rst`` once: with ``rst`` a top-level input, every register's next-state logic read an input,
  so Verilator evaluated the whole design in its input-combinational region as well, twice per
  cycle. (The ``trace`` build is not wrapped, so its FST keeps the ``TOP.sparrow_top``
  hierarchy.) Without trace, the wrapper's and design's flops are made sensitive to both clock
  edges and the harness evaluates once per cycle (``-DSP_ONE_EVAL``; see ``sim/harness.cpp``), but only
  when :func:`outputs_state_only` finds no output port written by the input-combinational
  region of the generated C++; otherwise the usual rising-edge, two-eval loop is used.
* :func:`compact_memory_init` turns the word-by-word zero init of each memory into a loop (same
  contents, far less run-once C++ to compile: the large preset's was 18 MB).
* The library is cached by a hash of that Verilog, the harness sources and the build flags;
  parallel pytest workers share one build behind a file lock (the pattern of
  :mod:`sparrow.sim.cocotb_run`).
* Flags: the project's waivers (:data:`sparrow.sim.cocotb_run.VERILATOR_WAIVERS`), Verilator
  ``-O3``, no ``--threads``; generated C++ is compiled with :data:`CXX_OPT` (``OPT_FAST``), the
  run-once construction/initialisation code (``*__Slow.cpp``) with :data:`CXX_OPT_SLOW`. The
  Verilator runtime objects (``verilated.o``, ...) do not depend on the design: they are compiled
  once per Verilator version and flags into ``build/harness/runtime-<hash>/`` and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

from .cocotb_run import BUILD_ROOT, VERILATOR_WAIVERS, _locked

__all__ = ["build_harness", "harness_verilog", "wrap_top", "compact_memory_init", "outputs_state_only",
           "HARNESS_DIR", "CXX_OPT", "CXX_OPT_SLOW", "last_build_info"]

SIM_DIR = Path(__file__).resolve().parent
HARNESS_DIR = BUILD_ROOT / "harness"
TOP = "sparrow_top"
#: the Verilated top: :func:`wrap_top`'s wrapper around ``TOP``
WRAP = "harness_top"
#: C++ optimisation of the Verilated model's per-cycle code (OPT_FAST of verilated.mk) and of
#: the Verilator runtime (OPT_GLOBAL).
CXX_OPT = os.environ.get("SPARROW_HARNESS_CXX_OPT", "-O2")
#: C++ optimisation of the run-once code (``*__Slow.cpp``: constructors, initial settle).
CXX_OPT_SLOW = os.environ.get("SPARROW_HARNESS_CXX_OPT_SLOW", "-O1")
#: ``SPARROW_HARNESS_ONE_EVAL=0`` forces the two-eval loop (for comparisons).
ONE_EVAL = os.environ.get("SPARROW_HARNESS_ONE_EVAL", "1") != "0"
VERILATOR_FLAGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast")

#: Version of the build steps in :func:`build_harness` (part of the cache key: bump it when they change).
_FLOW = "3: memory-init loops, wrapper, one-eval check, runtime object cache"

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


_PORT = re.compile(r"^  (input|output)\s+(\[\d+:\d+\]\s+)?([A-Za-z_][A-Za-z0-9_$]*)\s*;", re.M)


def _ports(verilog: str, top: str) -> list[tuple[str, str, str]]:
    m = re.search(r"^module %s\(.*?^endmodule" % re.escape(top), verilog, re.S | re.M)
    if m is None:
        raise ValueError(f"verilog: no module {top!r}")
    return [(d, w.strip(), n) for d, w, n in _PORT.findall(m.group(0))]


def wrap_top(verilog: str, *, both_edges: bool = False) -> str:
    """``verilog`` plus a module :data:`WRAP` with ``TOP``'s ports that registers ``rst``.

    The design sees ``rst`` one rising edge late (the register starts at 1, so the design is in
    reset from the first edge). With ``both_edges`` every ``@(posedge clk)`` of the text becomes
    ``@(edge clk)``: one eval per cycle, toggling ``clk`` (``sim/harness.cpp``, SP_ONE_EVAL).
    """
    ports = _ports(verilog, TOP)
    names = {n for _, _, n in ports}
    if not {"clk", "rst"} <= names:
        raise ValueError(f"verilog: {TOP} needs clk and rst ports, has {sorted(names)}")
    decl = ",\n".join(f"  {d} {w + ' ' if w else ''}{n}" for d, w, n in ports)
    conn = ",\n".join(f"    .{n}({'rst_q' if n == 'rst' else n})" for _, _, n in ports)
    text = (verilog + f"\n// harness wrapper (sparrow.sim.verilator_build.wrap_top)\nmodule {WRAP}(\n{decl}\n);\n"
            f"  reg rst_q = 1'b1;\n  always @(posedge clk) rst_q <= rst;\n  {TOP} dut (\n{conn}\n  );\nendmodule\n")
    if both_edges:
        text = text.replace("@(posedge clk)", "@(edge clk)")
    return text


_INIT_BLOCK = re.compile(r"^  initial begin\n((?:    [^\n]*\n)+?)  end\n", re.M)
_ZERO_ENTRY = re.compile(r"^    (\S+)\[(\d+)\] = \d+'[hdb]0+;$")


def compact_memory_init(verilog: str) -> str:
    """Rewrite each ``initial`` block that zeroes a whole memory word by word (how Yosys writes
    the init of an Amaranth ``Memory``: one statement per word) as a ``for`` loop.

    Same initial contents; Verilator then emits a loop instead of one C++ statement per word
    (the large preset's unrolled inits were 18 MB of run-once C++). Blocks with any non-zero
    word, gaps or several memories are left as they are."""
    count = 0

    def sub(m):
        nonlocal count
        names, idx = set(), []
        for ln in m.group(1).splitlines():
            e = _ZERO_ENTRY.match(ln)
            if not e:
                return m.group(0)
            names.add(e.group(1))
            idx.append(int(e.group(2)))
        if len(names) != 1 or idx != list(range(len(idx))):
            return m.group(0)
        count += 1
        name, var = names.pop(), f"sparrow_harness_init_{count}"
        return (f"  integer {var};\n  initial begin\n"
                f"    for ({var} = 0; {var} < {len(idx)}; {var} = {var} + 1)\n      {name}[{var}] = 0;\n  end\n")

    return _INIT_BLOCK.sub(sub, verilog)


def _cname(port: str) -> str:
    return port.replace("__", "___05F")  # Verilator's escape of "__" in port names


def outputs_state_only(obj_dir: Path, outputs) -> bool:
    """True if no output port is written in the input-combinational ("ico") functions of the
    Verilated C++ in ``obj_dir``, i.e. all outputs depend on state only.

    Conservative: a statement starting with the port, or the port inside a ``VL_`` macro call,
    counts as a write."""
    funcs = []
    for f in sorted(Path(obj_dir).glob("*.cpp")):
        if f.name.endswith("__Slow.cpp"):
            continue
        text = f.read_text()
        for m in re.finditer(r"^(?:VL_INLINE_OPT )?void (\w*___ico\w*)\(.*?^}", text, re.S | re.M):
            funcs.append(m.group(0))
    body = "\n".join(funcs)
    for port in outputs:
        c = re.escape(_cname(port))
        if re.search(rf"^\s*vlSelf->{c}(\[\d+U\])?\s*(=[^=]|$)", body, re.M):
            return False
        if re.search(rf"^.*\bVL_[A-Z0-9_]+\(.*vlSelf->{c}\b", body, re.M):
            return False
    return True


def _run(cmd, cwd, log) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(" ".join(map(str, cmd)) + "\n" + r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"Verilator harness build failed (see {log}):\n{r.stderr[-3000:]}")


def _global_objs(obj: Path) -> list[str]:
    """The Verilator runtime objects of a generated Vtop_classes.mk (VM_GLOBAL_FAST/SLOW)."""
    text = (obj / "Vtop_classes.mk").read_text()
    names = []
    for var in ("VM_GLOBAL_FAST", "VM_GLOBAL_SLOW"):
        m = re.search(rf"^{var} \+?= *\\?\n((?:\t.*\\?\n)*)", text, re.M)
        if m:
            names += [ln.strip(" \t\\") for ln in m.group(1).splitlines() if ln.strip(" \t\\")]
    return [f"{n}.o" for n in names]


HARNESS_SOURCES = ("harness.cpp", "harness.h")


def harness_cflags(cfg) -> list[str]:
    """C++ flags every harness build of ``cfg`` needs (bus address bits and bytes per beat)."""
    from sparrow import regmap
    return ["-fPIC", f"-DSP_AW={cfg.dram_addr_bits}", f"-DSP_MB={cfg.mem_bytes}",
            f"-DSP_CSR_RL={regmap.READ_LATENCY}"]


def harness_sources() -> bytes:
    """The C++ harness sources, for build cache keys."""
    return b"".join((SIM_DIR / f).read_bytes() for f in HARNESS_SOURCES)


def copy_harness_sources(bdir: Path) -> None:
    for f in HARNESS_SOURCES:
        shutil.copy(SIM_DIR / f, bdir / f)


def build_harness(cfg, *, trace: bool = False, jobs: int = 2, one_eval: bool | None = None) -> Path:
    """Path of the harness shared library for ``cfg`` (built on first use).

    ``one_eval``: allow the one-eval-per-cycle loop (default :data:`ONE_EVAL`; never with
    ``trace``); ``False`` builds the two-eval loop (for cross-checks and comparisons)."""
    from sparrow.config import HwConfig
    if not isinstance(cfg, HwConfig):
        raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
    if not isinstance(trace, bool):
        raise ValueError(f"trace must be a bool, not {trace!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, not {jobs!r}")
    if one_eval is not None and not isinstance(one_eval, bool):
        raise ValueError(f"one_eval must be a bool or None, not {one_eval!r}")
    t0 = time.perf_counter()
    verilog = compact_memory_init(harness_verilog(cfg))
    t_verilog = time.perf_counter() - t0
    base_cflags = harness_cflags(cfg) + (["-DSP_TRACE"] if trace else [])
    vflags = list(VERILATOR_WAIVERS) + list(VERILATOR_FLAGS) + (["--trace-fst"] if trace else [])
    one_eval_wanted = (ONE_EVAL if one_eval is None else one_eval) and not trace
    sources = harness_sources()
    digest = hashlib.sha256(b"\0".join([
        (verilog if trace else wrap_top(verilog, both_edges=one_eval_wanted)).encode(), sources,
        " ".join(vflags + base_cflags).encode(),
        CXX_OPT.encode(), CXX_OPT_SLOW.encode(), _FLOW.encode(), _verilator_version().encode()])).hexdigest()[:16]
    name = f"{cfg.name}{'-fst' if trace else ''}-{digest}"
    bdir = HARNESS_DIR / name
    lib = bdir / "libsparrow_harness.so"
    cached = True
    with _locked(HARNESS_DIR / f".{name}.lock"):
        if not lib.exists():
            cached = False
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if bdir.exists():
                shutil.rmtree(bdir)
            bdir.mkdir(parents=True)
            copy_harness_sources(bdir)
            log = bdir / "build.log"
            outputs = [n for d, _, n in _ports(verilog, TOP) if d == "output"]
            one_eval = one_eval_wanted
            t_gen = time.perf_counter()
            for attempt in (one_eval, False) if one_eval else (False,):
                # the trace build keeps the design's own hierarchy (TOP.sparrow_top...) in the FST
                top = TOP if trace else WRAP
                text = verilog if trace else wrap_top(verilog, both_edges=attempt)
                if attempt and re.search(r"\b(posedge|negedge)\b", text):
                    continue  # flops on other edges or clocks: keep the two-eval loop
                (bdir / f"{top}.v").write_text(text)
                if (bdir / "obj").exists():
                    shutil.rmtree(bdir / "obj")
                cflags = base_cflags + (["-DSP_ONE_EVAL"] if attempt else [])
                _run(["verilator", "--cc", "--exe", f"{top}.v", "harness.cpp", "--top-module", top,
                      "--prefix", "Vtop", "--Mdir", "obj", "-CFLAGS", " ".join(cflags),
                      "-LDFLAGS", "-shared", "-o", "libsparrow_harness.so", *vflags], bdir, log)
                one_eval = attempt
                if not attempt or outputs_state_only(bdir / "obj", outputs):
                    break
            t_gen = time.perf_counter() - t_gen
            # Verilator runtime objects: compiled once per version/flags, then copied in (newer
            # than Vtop.mk, so make keeps them)
            obj = bdir / "obj"
            rt_key = hashlib.sha256("\0".join([_verilator_version(), CXX_OPT, str(trace), "-fPIC"]).encode())
            rt_dir = HARNESS_DIR / f"runtime-{rt_key.hexdigest()[:16]}"
            globs = _global_objs(obj)
            have_rt = bool(globs) and all((rt_dir / g).exists() for g in globs)
            if have_rt:
                for g in globs:
                    shutil.copy(rt_dir / g, obj / g)
            _run(["make", "-j", str(jobs), "-f", "Vtop.mk", f"OPT_FAST={CXX_OPT}", f"OPT_SLOW={CXX_OPT_SLOW}",
                  f"OPT_GLOBAL={CXX_OPT}"], obj, log)
            if not have_rt and globs:
                with _locked(HARNESS_DIR / f".runtime-{rt_key.hexdigest()[:16]}.lock"):
                    rt_dir.mkdir(exist_ok=True)
                    for g in globs:
                        shutil.copy(obj / g, rt_dir / f"{g}.tmp")
                        (rt_dir / f"{g}.tmp").replace(rt_dir / g)
            built = obj / "libsparrow_harness.so"
            shutil.copy(built, lib.with_suffix(".tmp"))
            lib.with_suffix(".tmp").replace(lib)
            secs = round(time.perf_counter() - t0 - t_verilog, 2)
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2)
            (bdir / "build.json").write_text(json.dumps(
                {"preset": cfg.name, "trace": trace, "seconds": secs, "cpu_seconds": cpu, "jobs": jobs,
                 "loadavg": [round(x, 2) for x in os.getloadavg()], "verilator_seconds": round(t_gen, 2),
                 "runtime_cached": have_rt, "one_eval": one_eval, "cxx_opt": CXX_OPT,
                 "cxx_opt_slow": CXX_OPT_SLOW, "verilator_flags": vflags,
                 "cflags": base_cflags + (["-DSP_ONE_EVAL"] if one_eval else [])}))
    last_build_info.clear()
    last_build_info.update(path=str(lib), cached=cached, verilog_seconds=round(t_verilog, 2),
                           build_seconds=round(time.perf_counter() - t0 - t_verilog, 2))
    return lib
