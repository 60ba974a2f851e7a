"""sparrow.runtime.Device: the same calls on the golden, Verilator-harness and cocotb backends.

References: the golden model's final image of each system case (``case.golden()``), which the
golden model in turn is checked against NumPy in its own tests; error codes, engines and
indices follow docs/isa.md for hand-built faulty programs.
"""

import numpy as np
import pytest

from sparrow import isa
from sparrow.config import preset
from sparrow.errors import DeviceError, ErrorCode
from sparrow.isa import Engine, Program, make
from sparrow.runtime import Device
from sparrow.runtime.cocotb import execute, result_to_info
from sparrow.testprograms import CASE_NAMES, build_case, system_cases

SMALL = preset("small")
PROG = 0x10000


@pytest.fixture(scope="module")
def vdev():
    dev = Device(SMALL, "verilator")
    yield dev
    dev.close()


def _run_case(dev, case, **kw):
    dev.write_dram(0, np.zeros(len(case.image) + 4096, np.uint8))
    dev.write_dram(0, case.image)
    dev.load_program(case.program, case.prog_base)
    info = dev.run(**kw)
    return dev.read_dram(0, len(case.image)), info


# -- every system program: identical memory on every backend -----------------------------------

@pytest.mark.verilator
def test_system_cases_golden_and_verilator_small(vdev):
    gdev = Device(SMALL, "golden")
    for case in system_cases(SMALL):
        expected, res = case.golden()
        g_img, g_info = _run_case(gdev, case)
        v_img, v_info = _run_case(vdev, case, max_cycles=1_000_000)
        assert g_info.stop == v_info.stop == "done"
        assert np.array_equal(g_img, expected), f"{case.name}: golden backend differs from case.golden()"
        bad = np.flatnonzero(v_img != expected)
        assert bad.size == 0, f"{case.name}: {bad.size} bytes differ from golden, first at {bad[0]:#x}"
        v_cnt, g_cnt = vdev.counters(), gdev.counters()
        for c in ("macs", "macs_skipped", "load_bytes", "store_bytes", "instructions"):
            assert v_cnt[c] == g_cnt[c] == res.counters[c], f"{case.name}: counter {c}"
        assert v_cnt["cycles"] > 0


@pytest.mark.verilator
@pytest.mark.slow
def test_system_cases_golden_and_verilator_default():
    cfg = preset("default")
    with Device(cfg, "verilator") as dev:
        for case in system_cases(cfg):
            expected, _ = case.golden()
            img, info = _run_case(dev, case, max_cycles=2_000_000)
            assert info.stop == "done"
            bad = np.flatnonzero(img != expected)
            assert bad.size == 0, f"{case.name}: {bad.size} bytes differ from golden, first at {bad[0]:#x}"


@pytest.mark.verilator
def test_system_cases_cocotb_small(tmp_path):
    """All cases in one cocotb simulation (same operations the cocotb Device backend replays)."""
    cases = system_cases(SMALL)
    ops, blobs = [], {"zero": np.zeros(max(len(c.image) for c in cases) + 4096, np.uint8)}
    for c in cases:
        blobs[c.name] = c.image
        ops += [["write_dram", 0, "zero"], ["write_dram", 0, c.name],
                ["set_program", c.prog_base, c.n_instructions], ["run", 1_000_000],
                ["read_dram", 0, len(c.image)], ["counters"]]
    results = execute(SMALL, ops, blobs, work_dir=tmp_path)
    for i, c in enumerate(cases):
        run, img, cnt = results[6 * i + 3], results[6 * i + 4], results[6 * i + 5]
        expected, res = c.golden()
        assert result_to_info(run, 1_000_000).stop == "done"
        got = np.array(img, np.uint8)
        assert np.array_equal(got, expected), f"{c.name}: cocotb image differs from golden"
        assert cnt["macs"] == res.counters["macs"]


@pytest.mark.verilator
def test_device_api_cocotb_backend(tmp_path):
    """The Device calls themselves on the cocotb backend (record + replay)."""
    case = build_case("gemm", SMALL)
    expected, _ = case.golden()
    dev = Device(SMALL, "cocotb", work_dir=tmp_path)
    dev.write_dram(0, case.image)
    dev.load_program(case.program, case.prog_base)
    assert dev.run(max_cycles=100_000).stop == "done"
    assert np.array_equal(dev.read_dram(0, len(case.image)), expected)


# -- faults ------------------------------------------------------------------------------------

def _expect_error(dev, program, code, engine, index, **run):
    dev.load_program(program, PROG)
    with pytest.raises(DeviceError) as ei:
        dev.run(**run)
    e = ei.value
    assert (e.code, e.engine, e.index) == (code, engine, index), str(e)
    return e


def _illegal_opcode_program():
    good = Program([make("nop", engine="load"), make("nop", engine="store"), make("halt")])
    raw = bytearray(bytes(good))
    raw[16:32] = (0xF).to_bytes(16, "little")     # opcode 15 at instruction 1
    return bytes(raw)


def _corrupt_program(dev):
    cfg = dev.cfg
    slot = bytearray(64)
    slot[0:2] = (0xFFFF).to_bytes(2, "little")      # N beyond the worst case: count overflow
    dev.write_dram(0x2000, bytes(slot))
    return Program([make("nop", engine="load"),
                    make("load", spad="act", spad_addr=0, dram_addr=0x2000, rows=1, row_lines=2,
                         dram_stride=64, compressed=1),
                    make("halt")]), cfg


FAULTS = [
    ("illegal_opcode", lambda dev: (_illegal_opcode_program(), ErrorCode.ILLEGAL_OPCODE, None, 1)),
    ("spad_range", lambda dev: (Program([
        make("load", spad="act", spad_addr=0, dram_addr=0, rows=1, row_lines=1),
        make("load", spad="wgt", spad_addr=dev.cfg.wgt_depth - 1, dram_addr=0, rows=2, row_lines=1,
             dram_stride=dev.cfg.cols),
        make("halt")]), ErrorCode.SPAD_RANGE, Engine.LOAD, 1)),
    ("corrupt_data", lambda dev: (_corrupt_program(dev)[0], ErrorCode.CORRUPT_DATA, Engine.LOAD, 1)),
]


@pytest.mark.verilator
@pytest.mark.parametrize("name,make_fault", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("backend", ["golden", "verilator"])
def test_faults_raise_device_error(vdev, backend, name, make_fault):
    dev = vdev if backend == "verilator" else Device(SMALL, "golden")
    program, code, engine, index = make_fault(dev)
    e = _expect_error(dev, program, code, engine, index, max_cycles=100_000)
    assert code.name in str(e)
    # the device is usable after a fault
    dev.load_program(Program([make("nop", engine="vector"), make("halt")]), PROG)
    assert dev.run(max_cycles=10_000).stop == "done"


def _hang_program():
    # MATMUL-queue NOP waits for semaphore 3, which nothing signals
    return Program([make("nop", engine="matmul", wait_sem=3, wait_count=1), make("halt")])


@pytest.mark.verilator
def test_timeout_on_hang_with_watchdog_off(vdev):
    vdev.set_watchdog(0)
    try:
        e = _expect_error(vdev, _hang_program(), ErrorCode.TIMEOUT, None, None, max_cycles=20_000)
        assert "cycle limit 20000" in str(e) and "'matmul': 0" in str(e)
        vdev.load_program(Program([make("nop", engine="vector"), make("halt")]), PROG)
        assert vdev.run(max_cycles=10_000).stop == "done"   # aborted, usable again
    finally:
        vdev.set_watchdog(1 << 20)


@pytest.mark.verilator
def test_watchdog_on_hang(vdev):
    vdev.set_watchdog(500)
    try:
        _expect_error(vdev, _hang_program(), ErrorCode.WATCHDOG, Engine.MATMUL, 0, max_cycles=100_000)
    finally:
        vdev.set_watchdog(1 << 20)
    # the golden model reports the same deadlock as WATCHDOG
    _expect_error(Device(SMALL, "golden"), _hang_program(), ErrorCode.WATCHDOG, Engine.MATMUL, 0)


@pytest.mark.verilator
@pytest.mark.parametrize("backend", ["golden", "verilator"])
def test_words_after_halt_never_run(vdev, backend):
    """A HALT ends the run even when the program's words go on behind it: the fetch unit has
    already delivered some of them, and they are dropped (a STORE among them would write DRAM,
    an illegal word would end in an error)."""
    dev = vdev if backend == "verilator" else Device(SMALL, "golden")
    out = 0x8000
    dev.write_dram(out, bytes(64))
    behind = [make("store", spad="act", spad_addr=0, dram_addr=out, rows=1, row_lines=1)] * 6
    program = (bytes(Program([make("nop", engine="vector"), make("halt")])) + bytes(Program(behind))
               + (0xF).to_bytes(16, "little") * 4)
    dev.load_program(program, PROG)
    info = dev.run(max_cycles=10_000)
    assert info.stop == "done"
    assert not np.asarray(dev.read_dram(out, 64)).any()


def test_bad_arguments():
    dev = Device(SMALL, "golden")
    with pytest.raises(ValueError, match="backend"):
        Device(SMALL, "fpga")
    with pytest.raises(ValueError, match="addr"):
        dev.write_dram(SMALL.dram_bytes - 1, b"ab")
    with pytest.raises(ValueError, match="engine"):
        dev.set_breakpoint("dma", 3)
    with pytest.raises(ValueError, match="slot"):
        dev.set_delay(SMALL.delay_slots, 1)
    with pytest.raises(ValueError, match="no program"):
        dev.run()
    with pytest.raises(ValueError, match="addr"):
        dev.load_program(Program([make("halt")]), 8)


# -- breakpoints -------------------------------------------------------------------------------

def _first_index(program, opcode):
    return next(i for i, ins in enumerate(program) if ins.opcode == opcode)


@pytest.mark.verilator
@pytest.mark.parametrize("backend", ["golden", "verilator"])
def test_breakpoint_halt_inspect_resume(vdev, backend):
    dev = vdev if backend == "verilator" else Device(SMALL, "golden")
    case = build_case("gemm", SMALL)
    expected, _ = case.golden()
    first_store = _first_index(case.program.instructions, isa.Opcode.STORE)
    dev.write_dram(0, case.image)
    dev.load_program(case.program, case.prog_base)
    dev.set_breakpoint("store", first_store, halt_all=True)
    try:
        info = dev.run(max_cycles=100_000)
        assert info.stop == "breakpoint" and info.halted == ("load", "matmul", "vector", "store")
        assert dev.pcs()["store"] == first_store
        assert dev.status()["halted"] == 0xF
        # nothing stored yet: the output region still holds its initial bytes
        addr, n = case.outputs["y"]
        assert np.array_equal(dev.read_dram(addr, n), case.image[addr:addr + n])
        assert not np.array_equal(expected[addr:addr + n], case.image[addr:addr + n])
        info = dev.resume()
        assert info.stop == "done"
        assert np.array_equal(dev.read_dram(0, len(case.image)), expected)
    finally:
        dev.clear_breakpoints()


@pytest.mark.verilator
def test_step_and_delay_slot(vdev):
    """STEP issues one instruction of the engine; DELAY reads the slot the driver set."""
    prog = Program([make("delay", engine="vector", slot=2), make("nop", engine="vector"),
                    make("nop", engine="vector"), make("halt")])
    vdev.set_delay(2, 3000)
    vdev.load_program(prog, PROG)
    info = vdev.run()
    assert info.stop == "done" and info.counters["vector_busy"] >= 3000
    vdev.set_delay(2, 10)
    assert vdev.run().counters["vector_busy"] < 100
    vdev.set_breakpoint("vector", 1)
    try:
        assert vdev.run().stop == "breakpoint"
        assert vdev.pcs()["vector"] == 1
        assert vdev.step("vector").stop == "breakpoint"    # issued 1, halted again before 2
        assert vdev.pcs()["vector"] == 2
        assert vdev.resume().stop == "done"
        assert vdev.counters()["instructions"] == 3
    finally:
        vdev.clear_breakpoints()


def test_case_names_cover_every_program():
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) >= 10
