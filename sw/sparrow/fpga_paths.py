"""Pre-route path estimate for a synthesized ECP5 netlist.

nextpnr reports one critical path per clock, and a whole-design place and route takes about half
an hour, so cutting paths one routed run at a time is slow. This module reads yosys'
``write_json`` netlist after ``synth_ecp5`` and estimates, in seconds, the arrival time of every
register input from a simple delay model (a cell delay per primitive plus a net delay that grows
with fan-out and with crossing from one block to another). It lists the worst endpoints, each with
its path and the blocks it crosses, so that all the long paths of a design can be seen (and cut)
before the next place and route.

The model is an estimate for ranking, not sign-off: compare ``estimate_ns`` between paths of one
netlist, and take Fmax from nextpnr.

Run ``python -m sparrow.fpga_paths build/fpga/<preset>/<name>.netlist.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sparrow.fpga import _block_of

# Delays in ns, close to what nextpnr reports for an LFE5U-*-6 (speed grade 6).
CLK_TO_Q = 0.52
DELAYS = {"LUT4": 0.25, "PFUMX": 0.22, "L6MUX21": 0.22, "TRELLIS_DPR16X4": 0.25}
CARRY_IN_TO_OUT = 0.07          # CCU2C CIN -> COUT (two bits)
CARRY_IN_TO_SUM = 0.40          # CCU2C CIN -> S0/S1
CARRY_LUT = 0.45                # CCU2C A/B/C/D -> S0/S1/COUT
BRAM_CLK_TO_OUT = {"NOREG": 5.6, "OUTREG": 1.1}
MULT_COMB = 4.5                 # MULT18X18D inputs -> P, no registers
MULT_CLK_TO_OUT = 0.9
NET_BASE = 0.65                 # a short general-routing net
NET_PER_FANOUT_BIT = 0.12       # grows with log2(fan-out)
NET_CROSS_BLOCK = 0.9           # extra when driver and load sit in different top-level blocks
SETUP = 0.1

# Inputs fed by dedicated in-slice wiring (no general routing).
_DEDICATED = {("PFUMX", "ALUT"), ("PFUMX", "BLUT"), ("L6MUX21", "D0"), ("L6MUX21", "D1"),
              ("CCU2C", "CIN")}


@dataclass
class Endpoint:
    cell: str
    port: str
    estimate_ns: float
    levels: int
    path: list = field(default_factory=list)     # [(cell, type), ...] start first

    @property
    def blocks(self) -> list[str]:
        out = []
        for cell, _ in self.path:
            b = block_of(cell)
            if not out or out[-1] != b:
                out.append(b)
        return out


def block_of(cell: str) -> str:
    """Top-level block of a flattened cell name (``dut.load.win.x`` -> ``load``)."""
    return _block_of(cell).split(".")[0]


def over_counts(endpoints: list[Endpoint], thresholds) -> dict[float, int]:
    """How many endpoints are estimated above each threshold (ns)."""
    return {ns: sum(e.estimate_ns > ns for e in endpoints) for ns in thresholds}


def _bits(conn) -> list:
    return [b for b in conn if isinstance(b, int)]


def _is_registered_mult(params: dict) -> bool:
    return str(params.get("REG_OUTPUT_CLK", "NONE")) not in ("NONE", "")


def analyse(netlist: dict, top: str | None = None) -> list[Endpoint]:
    """Estimated arrival at every sequential input of the flattened module ``top`` (the module
    marked top if None), worst first."""
    mods = netlist.get("modules") if isinstance(netlist, dict) else None
    if not isinstance(mods, dict):
        raise ValueError("netlist: no 'modules' object (expected yosys write_json output after synth_ecp5)")
    if top is None:
        tops = [n for n, m in mods.items() if str(m.get("attributes", {}).get("top", "0")).strip("0")]
        if len(tops) != 1:
            raise ValueError(f"netlist: expected one top module, found {tops}")
        top = tops[0]
    cells = mods[top]["cells"]

    driver: dict[int, tuple[str, str]] = {}
    loads: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for name, c in cells.items():
        dirs = c.get("port_directions", {})
        for port, conn in c.get("connections", {}).items():
            for b in _bits(conn):
                if dirs.get(port) == "output":
                    driver[b] = (name, port)
                elif dirs.get(port) == "input":
                    loads[b].append((name, port))

    def seq_source(name: str, port: str) -> float | None:
        """Arrival at an output that starts a path, or None if it is combinational."""
        c = cells[name]
        t = c["type"]
        if t == "TRELLIS_FF":
            return CLK_TO_Q
        if t == "DP16KD":
            side = "A" if port.startswith("DOA") else "B"
            mode = str(c["parameters"].get(f"REGMODE_{side}", "NOREG"))
            return BRAM_CLK_TO_OUT.get(mode, BRAM_CLK_TO_OUT["NOREG"])
        if t == "MULT18X18D" and _is_registered_mult(c["parameters"]):
            return MULT_CLK_TO_OUT
        if t not in DELAYS and t not in ("CCU2C", "MULT18X18D"):
            return CLK_TO_Q   # unknown primitive: treat as a register
        return None

    def seq_sink(name: str, port: str) -> bool:
        c = cells[name]
        t = c["type"]
        if t == "TRELLIS_DPR16X4":
            return port != "RAD"
        if t == "MULT18X18D":
            return _is_registered_mult(c["parameters"])
        return t not in DELAYS and t != "CCU2C"

    def cell_delay(t: str, in_port: str, out_port: str) -> float:
        if t == "CCU2C":
            if in_port == "CIN":
                return CARRY_IN_TO_OUT if out_port == "COUT" else CARRY_IN_TO_SUM
            return CARRY_LUT
        if t == "MULT18X18D":
            return MULT_COMB
        return DELAYS[t]

    def net_delay(bit: int, drv: str, load: str, load_type: str, load_port: str) -> float:
        if (load_type, load_port) in _DEDICATED:
            return 0.0
        d = NET_BASE + NET_PER_FANOUT_BIT * math.log2(max(1, len(loads[bit])))
        if block_of(drv) != block_of(load):
            d += NET_CROSS_BLOCK
        return d

    # Arrival per (cell, output port), computed on demand with an explicit stack.
    arrival: dict[tuple[str, str], tuple[float, int, tuple | None]] = {}
    out_ports: dict[str, list[str]] = {}
    in_bits: dict[str, list[tuple[str, int]]] = {}
    for name, c in cells.items():
        dirs = c.get("port_directions", {})
        out_ports[name] = [p for p, d in dirs.items() if d == "output"]
        in_bits[name] = [(p, b) for p, conn in c.get("connections", {}).items()
                         if dirs.get(p) == "input" for b in _bits(conn)]

    # Inputs that reach an output within the cycle: a distributed RAM's read address only (its
    # contents change at the clock, so they start a path like a register).
    comb_in = {name: [(p, b) for p, b in ins if cells[name]["type"] != "TRELLIS_DPR16X4" or p == "RAD"]
               for name, ins in in_bits.items()}

    def input_arrival(name: str, port: str, bit: int):
        """(time, levels, predecessor key) at a cell input."""
        if bit not in driver:
            return (0.0, 0, None)
        dname, dport = driver[bit]
        at, lv, _ = arrival[(dname, dport)]
        return (at + net_delay(bit, dname, name, cells[name]["type"], port), lv, (dname, dport))

    def resolve(key):
        # Depth-first with an explicit stack: a cell's outputs are computed once all its drivers
        # are; a driver still in progress closes a combinational loop, and that input is left out.
        stack, in_progress = [key], set()
        while stack:
            name, port = stack[-1]
            if (name, port) in arrival:
                stack.pop()
                continue
            src = seq_source(name, port)
            if src is not None:
                arrival[(name, port)] = (src, 0, None)
                stack.pop()
                continue
            if name not in in_progress:
                in_progress.add(name)
                pending = [driver[b] for _, b in comb_in[name] if b in driver
                           and driver[b] not in arrival and driver[b][0] not in in_progress]
                if pending:
                    stack.extend(pending)
                    continue
            t = cells[name]["type"]
            for op in out_ports[name]:
                best = (CLK_TO_Q, 0, None) if t == "TRELLIS_DPR16X4" else (0.0, 0, None)
                for p, b in comb_in[name]:
                    if b not in driver or driver[b] not in arrival:
                        continue  # a combinational loop: cut it here
                    at, lv, pred = input_arrival(name, p, b)
                    at += cell_delay(t, p, op)
                    if at > best[0]:
                        best = (at, lv + (t == "LUT4"), pred)
                arrival[(name, op)] = best
            in_progress.discard(name)
            stack.pop()

    endpoints = []
    for name in cells:
        for p, b in in_bits[name]:
            if not seq_sink(name, p) or b not in driver:
                continue
            resolve(driver[b])
            at, lv, _ = input_arrival(name, p, b)
            endpoints.append((at + SETUP, lv, name, p, driver[b]))

    endpoints.sort(key=lambda e: -e[0])
    return [Endpoint(name, p, round(at, 3), lv, _trace(arrival, cells, drv) + [(name, cells[name]["type"])])
            for at, lv, name, p, drv in endpoints]


def _trace(arrival, cells, key) -> list:
    path = []
    while key is not None:
        name, _ = key
        path.append((name, cells[name]["type"]))
        key = arrival[key][2]
    return path[::-1]


def summarise(endpoints: list[Endpoint], *, limit: int = 25) -> list[dict]:
    """The worst path per (start block, end block) pair, worst first, ``limit`` of them."""
    best: dict[tuple[str, str], Endpoint] = {}
    for e in endpoints:
        b = e.blocks
        k = (b[0], b[-1])
        if k not in best:
            best[k] = e
        if len(best) >= limit * 4:
            break
    rows = sorted(best.values(), key=lambda e: -e.estimate_ns)[:limit]
    return [{"estimate_ns": e.estimate_ns, "levels": e.levels, "blocks": e.blocks,
             "start": e.path[0][0], "end": f"{e.cell}.{e.port}"} for e in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sparrow.fpga_paths", description=__doc__.split("\n\n")[0])
    ap.add_argument("netlist", type=Path, help="yosys write_json netlist after synth_ecp5")
    ap.add_argument("--limit", type=int, default=25, help="block pairs to list (default 25)")
    ap.add_argument("--path", type=int, default=0, help="print the cells of the N worst paths")
    ap.add_argument("--match", default=None, metavar="TEXT",
                    help="with --path: only paths whose start or end cell name contains TEXT")
    args = ap.parse_args(argv)
    try:
        eps = analyse(json.loads(args.netlist.read_text()))
    except (OSError, ValueError) as e:       # json.JSONDecodeError is a ValueError
        ap.error(f"{args.netlist}: {e}")
    for ns, n in over_counts(eps, (6.67, 10.0, 13.3, 16.7)).items():
        print(f"register inputs estimated above {ns:5.2f} ns ({1000 / ns:5.1f} MHz): {n}")
    print()
    for row in summarise(eps, limit=args.limit):
        print(f"{row['estimate_ns']:6.2f} ns {row['levels']:3d} LUT levels  {' -> '.join(row['blocks'])}")
        print(f"         {row['start']}  =>  {row['end']}")
    shown = eps if args.match is None else [e for e in eps if args.match in e.path[0][0] or args.match in e.cell]
    for e in shown[:args.path]:
        print(f"\n{e.estimate_ns} ns, {e.levels} LUT levels:")
        for cell, t in e.path:
            print(f"  {t:16s} {cell}")


if __name__ == "__main__":
    main()
