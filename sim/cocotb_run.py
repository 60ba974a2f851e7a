"""Build Amaranth designs to Verilog and run cocotb testbenches on them with Verilator.

One function for every testbench in ``tb/``::

    from sparrow.sim.cocotb_run import run_cocotb
    run_cocotb(lambda: MatrixEngine(cfg), name="matrix_engine_small",
               test_module="test_matrix_engine", extra_env={"SPARROW_PRESET": "small"})

* Verilog is generated once per design (keyed by a hash of its text and the build flags) in
  ``build/sim/<name>-<hash>/``; concurrent pytest-xdist workers share it behind a file lock, so
  each configuration is compiled once per test run (and reused by later runs).
* Every run gets its own results file and working directory; the call raises ``AssertionError``
  when a cocotb test failed or when no test ran at all.
* The random seed is passed to the testbench as ``SPARROW_SEED`` (and as cocotb's seed) and is
  printed, so a failure is reproducible with ``SPARROW_SEED=<seed>``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import sys
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Mapping, Sequence

__all__ = ["REPO", "BUILD_ROOT", "TB_DIR", "VERILATOR_WAIVERS", "default_seed", "verilog_of", "build",
           "run_cocotb"]

REPO = Path(__file__).resolve().parent.parent
BUILD_ROOT = Path(os.environ.get("SPARROW_BUILD", REPO / "build"))
TB_DIR = REPO / "tb"

#: The only Verilator warnings we waive, and why (one place for the whole project).
VERILATOR_WAIVERS = {
    # Amaranth emits arithmetic at natural widths and relies on Verilog's implicit extension.
    "-Wno-WIDTH": "Amaranth's generated Verilog extends/truncates implicitly (harmless, by design)",
    # Amaranth names every net; some intermediate nets in generated code are never read.
    "-Wno-UNUSEDSIGNAL": "unused nets in Amaranth-generated code (e.g. unread struct fields)",
    # Yosys' Verilog backend splits each Amaranth Switch into one case per driven signal and
    # omits empty default arms; each such signal is assigned its default before the case, so
    # an incomplete case never implies a latch.
    "-Wno-CASEINCOMPLETE": "yosys emits per-signal case statements without empty defaults (no latches)",
}


def default_seed(label: str) -> int:
    """Seed for a randomised test: ``SPARROW_SEED`` if set; a fresh random one with
    ``SPARROW_RANDOM_SEEDS=1`` (for long regressions); otherwise a fixed seed derived from
    ``label``, so ``make test`` is reproducible run to run. Callers print it."""
    import zlib
    if "SPARROW_SEED" in os.environ:
        return int(os.environ["SPARROW_SEED"])
    if os.environ.get("SPARROW_RANDOM_SEEDS") == "1":
        return random.randrange(1 << 31)
    return zlib.crc32(label.encode()) & 0x7FFFFFFF


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def verilog_of(component, name: str) -> str:
    """Verilog text of an elaborated Amaranth ``wiring.Component`` with top module ``name``.

    Ports are the component's signature members, named as Amaranth flattens them
    (``act_rd__0__cmd__valid``). Constant members (the ``ready`` of an ``always_ready`` stream,
    e.g. a scratchpad read response) are not ports: ``verilog.convert`` refuses them.
    """
    from amaranth.back import verilog

    ports = component_ports(component)
    if ports is None:
        return verilog.convert(component, name=name, emit_src=False)
    return verilog.convert(component, name=name, ports=ports, emit_src=False)


def component_ports(component):
    """``{flattened name: (value, direction)}`` of a component's non-constant signature members,
    for ``verilog.convert(ports=...)``; ``None`` when no member is constant (the default ports
    are then the same)."""
    from amaranth.hdl import Const, Value
    from amaranth.hdl._ir import PortDirection
    from amaranth.lib import wiring

    ports, has_const = {}, False
    for path, member, value in component.signature.flatten(component):
        value = Value.cast(value)
        if isinstance(value, Const):
            has_const = True
            continue
        ports["__".join(map(str, path))] = (
            value, PortDirection.Input if member.flow == wiring.In else PortDirection.Output)
    return ports if has_const else None


def build(make_component: Callable[[], object] | None, name: str, *, verilog_text: str | None = None,
          build_args: Sequence[str] = (), trace: bool = False) -> tuple[Path, str]:
    """Generate Verilog and compile it with Verilator once; returns ``(build_dir, toplevel)``.

    ``make_component`` is only called when ``verilog_text`` is not given.
    """
    from cocotb.runner import get_runner

    if verilog_text is None:
        verilog_text = verilog_of(make_component(), name)
    args = list(VERILATOR_WAIVERS) + ["-O3", "--x-assign", "fast", "--x-initial", "fast"] + list(build_args)
    if trace:
        args += ["--trace-fst", "--trace-structs"]
    digest = hashlib.sha256((verilog_text + "\0" + " ".join(args)).encode()).hexdigest()[:16]
    build_dir = BUILD_ROOT / "sim" / f"{name}-{digest}"
    stamp = build_dir / ".built"
    with _locked(BUILD_ROOT / "sim" / f".{name}-{digest}.lock"):
        if not stamp.exists():
            build_dir.mkdir(parents=True, exist_ok=True)
            src = build_dir / f"{name}.v"
            src.write_text(verilog_text)
            runner = get_runner("verilator")
            runner.build(verilog_sources=[src], hdl_toplevel=name, build_args=args,
                         build_dir=build_dir, always=True)
            stamp.write_text(digest)
    return build_dir, name


def _results(xml_path: Path) -> tuple[int, int, list[str]]:
    tree = ET.parse(xml_path)
    total, failed, names = 0, 0, []
    for case in tree.iter("testcase"):
        total += 1
        bad = case.find("failure") is not None or case.find("error") is not None
        failed += bad
        if bad:
            names.append(case.get("name"))
    return total, failed, names


def run_cocotb(make_component: Callable[[], object] | None, *, name: str, test_module: str,
               testcase: str | Sequence[str] | None = None, extra_env: Mapping[str, str] | None = None,
               seed: int | None = None, verilog_text: str | None = None, build_args: Sequence[str] = (),
               waves: bool = False, test_dir: str | os.PathLike | None = None) -> Path:
    """Run cocotb ``test_module`` (a module in ``tb/``) on the design; raise if anything failed.

    Returns the directory the simulation ran in (holds ``dump.fst`` when ``waves``).
    """
    from cocotb.runner import get_runner

    build_dir, top = build(make_component, name, verilog_text=verilog_text, build_args=build_args,
                           trace=waves)
    if seed is None:
        seed = default_seed(f"{name}:{test_module}")
    print(f"[sparrow] cocotb {test_module} on {name}: SPARROW_SEED={seed}")
    runner = get_runner("verilator")

    work = Path(test_dir) if test_dir else Path(tempfile.mkdtemp(prefix=f"{test_module}-", dir=build_dir))
    work.mkdir(parents=True, exist_ok=True)
    # The runner hands sys.path to the simulator's Python as PYTHONPATH: that is how tb/ is found.
    if str(TB_DIR) not in sys.path:
        sys.path.insert(0, str(TB_DIR))
    env = {"SPARROW_SEED": str(seed), **(extra_env or {})}
    plusargs = ["+trace"] if waves else []
    xml = runner.test(test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
                      testcase=testcase, seed=seed,
                      extra_env=env, build_dir=build_dir, test_dir=work,
                      results_xml="results.xml", plusargs=plusargs)
    total, failed, names = _results(Path(xml))
    if total == 0:
        raise AssertionError(f"cocotb ran no tests from {test_module} (seed {seed})")
    if failed:
        raise AssertionError(f"{failed}/{total} cocotb tests failed in {test_module}: {names} "
                             f"(reproduce with SPARROW_SEED={seed})")
    return work
