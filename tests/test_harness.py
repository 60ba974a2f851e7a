"""The C++ harness itself: memory model (latency, strobes through STOREs, err), CSR access, limits.

Expected values come from the golden model (final images) and from docs/isa.md / hdl/membus.py
(``err`` -> DRAM_RANGE of the issuing engine).
"""

import subprocess

import numpy as np
import pytest

from sparrow import regmap
from sparrow.config import preset
from sparrow.errors import DeviceError, ErrorCode
from sparrow.isa import Engine, Program, make
from sparrow.runtime import Device
from sparrow.runtime.verilator import Harness
from sparrow.sim import verilator_build as vb
from sparrow.testprograms import build_case

SMALL = preset("small")
pytestmark = pytest.mark.verilator


def test_csr_id_hwcfg_and_memory_roundtrip():
    hw = Harness(SMALL)
    try:
        assert hw.csr_read("ID") == regmap.MAGIC
        hwcfg = hw.csr_read("HWCFG")
        assert (hwcfg & 0xFF, (hwcfg >> 8) & 0xFF) == (SMALL.rows, SMALL.cols)
        hw.csr_write("DELAY_3", 0xDEADBEEF)
        assert hw.csr_read("DELAY_3") == 0xDEADBEEF
        data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8)
        hw.mem_write(SMALL.dram_bytes - 1000, data.tobytes())
        assert np.array_equal(hw.mem_read(SMALL.dram_bytes - 1000, 1000), data)
        with pytest.raises(ValueError, match="addr"):
            hw.mem_read(SMALL.dram_bytes - 10, 11)
        c0 = hw.cycles
        hw.step(100)
        assert hw.cycles == c0 + 100
        with pytest.raises(RuntimeError, match="FST"):
            hw.trace("/dev/null")
    finally:
        hw.close()


@pytest.mark.parametrize("name", ["conv", "compress"])
def test_read_latency_changes_timing_not_results(name):
    case = build_case(name, SMALL)
    expected, _ = case.golden()
    cycles = {}
    for lat in (1, 9):
        with Device(SMALL, "verilator", read_latency=lat) as dev:
            dev.write_dram(0, case.image)
            dev.load_program(case.program, case.prog_base)
            cycles[lat] = dev.run(max_cycles=1_000_000).cycles
            assert np.array_equal(dev.read_dram(0, len(case.image)), expected), f"latency {lat}"
    assert cycles[9] > cycles[1]


def test_bus_err_becomes_dram_range():
    """A memory smaller than the address space answers err beyond its end: DRAM_RANGE of LOAD."""
    mem = 1 << 16
    with Device(SMALL, "verilator", mem_bytes=mem) as dev:
        prog = Program([make("nop", engine="load"),
                        make("load", spad="act", spad_addr=0, dram_addr=mem + 64, rows=1, row_lines=1),
                        make("halt")])
        dev.load_program(prog, 0x1000)
        with pytest.raises(DeviceError) as ei:
            dev.run(max_cycles=100_000)
        assert (ei.value.code, ei.value.engine, ei.value.index) == (ErrorCode.DRAM_RANGE, Engine.LOAD, 1)


@pytest.mark.slow
def test_waves_fst_window(tmp_path):
    """WAVES: the --trace-fst build dumps the requested window and still computes the result."""
    case = build_case("gemm", SMALL)
    expected, _ = case.golden()
    path = tmp_path / "gemm.fst"
    with Device(SMALL, "verilator", waves=path, wave_window=(0, 400)) as dev:
        dev.write_dram(0, case.image)
        dev.load_program(case.program, case.prog_base)
        assert dev.run(max_cycles=100_000).stop == "done"
        assert np.array_equal(dev.read_dram(0, len(case.image)), expected)
    assert path.stat().st_size > 1000


_TOY = """
module sparrow_top(clk, rst, a, q, y);
  input clk;
  input rst;
  input [3:0] a;
  output [3:0] q;
  reg [3:0] q = 4'h0;
  output [3:0] y;
  always @(posedge clk) q <= rst ? 4'h0 : a;
  assign y = a ^ q;
endmodule
"""


def test_wrap_top_registers_reset_and_keeps_ports():
    text = vb.wrap_top(_TOY, both_edges=True)
    wrapper = text[text.index("module harness_top("):]
    for port in ("input clk", "input rst", "input [3:0] a", "output [3:0] q", "output [3:0] y"):
        assert port in wrapper
    assert ".rst(rst_q)" in wrapper and ".a(a)" in wrapper
    assert "posedge" not in text and text.count("@(edge clk)") == 2
    assert "posedge" in vb.wrap_top(_TOY)
    with pytest.raises(ValueError, match="verilog"):
        vb.wrap_top(_TOY.replace("sparrow_top", "other"))
    with pytest.raises(ValueError, match="clk and rst"):
        vb.wrap_top(_TOY.replace("input rst;", "input rstx;").replace("rst ?", "rstx ?")
                    .replace("clk, rst,", "clk, rstx,"))


def test_outputs_state_only_sees_input_to_output_paths(tmp_path):
    """The check that selects the one-eval loop: y = a ^ q depends on an input, q does not."""
    (tmp_path / "toy.v").write_text(vb.wrap_top(_TOY, both_edges=True))
    subprocess.run(["verilator", "--cc", "toy.v", "--top-module", "harness_top", "--prefix", "Vtop",
                    "--Mdir", "obj", "-O3"], cwd=tmp_path, check=True, capture_output=True)
    assert vb.outputs_state_only(tmp_path / "obj", ["q"])
    assert not vb.outputs_state_only(tmp_path / "obj", ["y"])
    assert not vb.outputs_state_only(tmp_path / "obj", ["q", "y"])


def test_default_build_is_one_eval():
    """The small preset's outputs are state-only, so the default build evaluates once per cycle."""
    hw = Harness(SMALL)
    try:
        assert hw.one_eval
    finally:
        hw.close()


def _trace_of_runs(dev, names):
    out = []
    for name in names:
        case = build_case(name, SMALL)
        expected, _ = case.golden()
        dev.write_dram(0, case.image)
        dev.load_program(case.program, case.prog_base)
        info = dev.run(max_cycles=1_000_000)
        assert np.array_equal(dev.read_dram(0, len(case.image)), expected), name
        out.append((name, info.stop, info.cycles, info.counters))
    dev.set_breakpoint("matmul", 1)
    case = build_case("gemm", SMALL)
    dev.write_dram(0, case.image)
    dev.load_program(case.program, case.prog_base)
    first = dev.run(max_cycles=1_000_000)
    dev.clear_breakpoints()
    rest = dev.resume(max_cycles=1_000_000)
    out.append(("gemm-bp", first.stop, first.cycles, first.halted, rest.stop, rest.cycles, rest.counters))
    return out


@pytest.mark.slow
def test_one_eval_matches_two_eval_cycle_for_cycle():
    """One eval per cycle (default build) against the plain two-eval loop (built on purpose):
    every program stops at the same cycle with the same counters and golden-identical images."""
    names = ["gemm_big", "conv", "compress", "pool", "mask"]
    with Device(SMALL, "verilator") as one, Device(SMALL, "verilator", one_eval=False) as two:
        assert one._b.hw.one_eval and not two._b.hw.one_eval
        assert _trace_of_runs(one, names) == _trace_of_runs(two, names)


def test_compact_memory_init_loops_only_all_zero_memories():
    words = "".join(f"    mem[{i}] = 8'h00;\n" for i in range(300))
    nonzero = "    rom[0] = 8'h00;\n    rom[1] = 8'h05;\n"
    text = (f"module m;\n  reg [7:0] mem [299:0];\n  initial begin\n{words}  end\n"
            f"  reg [7:0] rom [1:0];\n  initial begin\n{nonzero}  end\nendmodule\n")
    out = vb.compact_memory_init(text)
    assert "mem[0] =" not in out and "< 300;" in out and "mem[sparrow_harness_init_1] = 0;" in out
    assert nonzero in out                      # a block with a non-zero word is kept as it is
    gap = text.replace("    mem[7] = 8'h00;\n", "")
    assert vb.compact_memory_init(gap) == gap  # so is one that skips a word
