"""The pre-route path estimate (sparrow.fpga_paths) on hand-built ECP5 netlists."""

import pytest

from sparrow import fpga_paths as fp

_DIRS = {
    "TRELLIS_FF": {"CLK": "input", "DI": "input", "LSR": "input", "Q": "output"},
    "LUT4": {"A": "input", "B": "input", "C": "input", "D": "input", "Z": "output"},
    "PFUMX": {"ALUT": "input", "BLUT": "input", "C0": "input", "Z": "output"},
    "TRELLIS_DPR16X4": {"DI": "input", "DO": "output", "RAD": "input", "WAD": "input", "WCK": "input",
                        "WRE": "input"},
}


class Netlist:
    """A flattened top module built cell by cell; nets are ints."""

    def __init__(self):
        self.cells = {}

    def add(self, name, kind, **conns):
        self.cells[name] = {"type": kind, "port_directions": _DIRS[kind], "parameters": {},
                            "connections": {p: (v if isinstance(v, list) else [v]) for p, v in conns.items()}}

    def json(self):
        return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                    "cells": self.cells}}}


def _endpoint(eps, cell, port="DI"):
    return next(e for e in eps if e.cell == cell and e.port == port)


def test_a_chain_of_luts_adds_up_cell_and_net_delays():
    n = Netlist()
    n.add("dut.a.src", "TRELLIS_FF", CLK=1, DI=2, Q=10)
    n.add("dut.a.l1", "LUT4", A=10, Z=11)
    n.add("dut.a.l2", "LUT4", A=11, B=10, Z=12)
    n.add("dut.a.dst", "TRELLIS_FF", CLK=1, DI=12, Q=13)
    n.add("dut.a.near", "TRELLIS_FF", CLK=1, DI=10, Q=14)
    eps = fp.analyse(n.json())
    far, near = _endpoint(eps, "dut.a.dst"), _endpoint(eps, "dut.a.near")
    # src.Q drives three loads: l1, l2, near
    net3 = fp.NET_BASE + fp.NET_PER_FANOUT_BIT * 1.584962500721156
    net1 = fp.NET_BASE
    assert far.estimate_ns == pytest.approx(fp.CLK_TO_Q + net3 + fp.DELAYS["LUT4"] + net1 + fp.DELAYS["LUT4"]
                                            + net1 + fp.SETUP, abs=1e-3)
    assert far.levels == 2 and [c for c, _ in far.path] == ["dut.a.src", "dut.a.l1", "dut.a.l2", "dut.a.dst"]
    assert near.estimate_ns == pytest.approx(fp.CLK_TO_Q + net3 + fp.SETUP, abs=1e-3) and near.levels == 0
    assert eps[0] is far, "worst endpoint first"


def test_crossing_blocks_costs_more_and_is_named():
    def build(dst_block):
        n = Netlist()
        n.add("dut.load.src", "TRELLIS_FF", CLK=1, DI=2, Q=10)
        n.add("dut.load.l1", "LUT4", A=10, Z=11)
        n.add(f"dut.{dst_block}.dst", "TRELLIS_FF", CLK=1, DI=11, Q=12)
        return _endpoint(fp.analyse(n.json()), f"dut.{dst_block}.dst")
    same, other = build("load"), build("seq")
    assert other.estimate_ns - same.estimate_ns == pytest.approx(fp.NET_CROSS_BLOCK, abs=1e-3)
    assert other.blocks == ["load", "seq"] and same.blocks == ["load"]
    row = fp.summarise([other, same])[0]
    assert row["blocks"] == ["load", "seq"] and row["end"] == "dut.seq.dst.DI"


def test_dedicated_wiring_is_free_and_distributed_ram_starts_paths():
    n = Netlist()
    n.add("dut.a.src", "TRELLIS_FF", CLK=1, DI=2, Q=10)
    n.add("dut.a.la", "LUT4", A=10, Z=11)
    n.add("dut.a.mux", "PFUMX", ALUT=11, BLUT=11, C0=10, Z=12)
    n.add("dut.a.dst", "TRELLIS_FF", CLK=1, DI=12, Q=13)
    # a distributed RAM written from the LUT's output: its read data starts fresh at the clock
    n.add("dut.a.raddr", "TRELLIS_FF", CLK=1, DI=2, Q=30)
    n.add("dut.a.ram", "TRELLIS_DPR16X4", DI=[11, 11, 11, 11], WAD=[30, 30, 30, 30], WRE=11, WCK=1,
          RAD=[30, 30, 30, 30], DO=[20, 21, 22, 23])
    n.add("dut.a.ramq", "TRELLIS_FF", CLK=1, DI=20, Q=24)
    eps = fp.analyse(n.json())
    mux = _endpoint(eps, "dut.a.dst")
    # src.Q drives la.A and mux.C0; la's output reaches the mux over dedicated wiring
    lut_out = fp.CLK_TO_Q + fp.NET_BASE + fp.NET_PER_FANOUT_BIT * 1.0 + fp.DELAYS["LUT4"]
    assert mux.estimate_ns == pytest.approx(lut_out + fp.DELAYS["PFUMX"] + fp.NET_BASE + fp.SETUP, abs=1e-3)
    ram = _endpoint(eps, "dut.a.ramq")
    assert [c for c, _ in ram.path] == ["dut.a.raddr", "dut.a.ram", "dut.a.ramq"], "only RAD is combinational"
    assert any(e.cell == "dut.a.ram" and e.port == "WRE" for e in eps), "the write side is an endpoint"


def test_a_combinational_loop_ends_instead_of_hanging():
    n = Netlist()
    n.add("dut.a.src", "TRELLIS_FF", CLK=1, DI=2, Q=10)
    n.add("dut.a.l1", "LUT4", A=10, B=12, Z=11)
    n.add("dut.a.l2", "LUT4", A=11, Z=12)
    n.add("dut.a.dst", "TRELLIS_FF", CLK=1, DI=12, Q=13)
    eps = fp.analyse(n.json())
    assert _endpoint(eps, "dut.a.dst").levels >= 1


def test_a_netlist_without_one_top_is_refused():
    n = Netlist().json()
    n["modules"]["other"] = {"attributes": {"top": "1"}, "cells": {}}
    with pytest.raises(ValueError, match="one top module"):
        fp.analyse(n)


def test_not_a_netlist_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="no 'modules'"):
        fp.analyse({"creator": "yosys"})
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        fp.main([str(bad)])
    assert e.value.code == 2 and "x.json" in capsys.readouterr().err


def test_match_prints_only_the_paths_that_start_or_end_at_a_named_cell(tmp_path, capsys):
    import json
    n = Netlist()
    n.add("dut.a.src", "TRELLIS_FF", CLK=1, DI=2, Q=10)
    n.add("dut.a.l1", "LUT4", A=10, Z=11)
    n.add("dut.a.long", "TRELLIS_FF", CLK=1, DI=11, Q=12)     # the worst path: one LUT
    n.add("dut.b.short", "TRELLIS_FF", CLK=1, DI=10, Q=13)    # no LUT
    f = tmp_path / "n.json"
    f.write_text(json.dumps(n.json()))
    fp.main([str(f), "--path", "1"])
    out = capsys.readouterr().out
    assert "dut.a.l1" in out and "dut.b.short" not in out.split("LUT levels:")[-1]
    fp.main([str(f), "--path", "1", "--match", "b.short"])
    listed = capsys.readouterr().out.split("LUT levels:")[-1]
    assert "dut.b.short" in listed and "dut.a.l1" not in listed
