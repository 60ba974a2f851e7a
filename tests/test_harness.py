"""The C++ harness itself: memory model (latency, strobes through STOREs, err), CSR access, limits.

Expected values come from the golden model (final images) and from docs/isa.md / hdl/membus.py
(``err`` -> DRAM_RANGE of the issuing engine).
"""

import numpy as np
import pytest

from sparrow import regmap
from sparrow.config import preset
from sparrow.errors import DeviceError, ErrorCode
from sparrow.isa import Engine, Program, make
from sparrow.runtime import Device
from sparrow.runtime.verilator import Harness
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
