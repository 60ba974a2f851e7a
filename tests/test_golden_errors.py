"""Every error path of the golden model, in both modes: decode errors from a bytes image,
SPAD_RANGE / DRAM_RANGE on the exact footprint boundaries of docs/isa.md, SEM_OVERFLOW,
CORRUPT_DATA (with the partial-row rule), the compressed-STORE slot rule, TIMEOUT."""

import os

import numpy as np
import pytest

from sparrow import isa
from sparrow.config import preset
from sparrow.errors import DeviceError, ErrorCode
from sparrow.golden import Machine
from sparrow.isa import Engine, make

SEED = int(os.environ.get("SPARROW_SEED", "1"))
print(f"SPARROW_SEED={SEED}")
MODES = ["program", "concurrent"]
CFG = preset("small").replace(dram_bytes=1 << 16)


@pytest.fixture
def m():
    rng = np.random.default_rng(SEED)
    mach = Machine(CFG)
    mach.act[:] = rng.integers(-128, 128, mach.act.shape)
    mach.wgt[:] = rng.integers(-128, 128, mach.wgt.shape)
    mach.acc[:] = rng.integers(-(1 << 31), 1 << 31, mach.acc.shape)
    mach.dram[:] = rng.integers(0, 256, mach.dram.shape)
    return mach


def state(mach):
    return [a.copy() for a in (mach.act, mach.wgt, mach.acc, mach.dram)]


def assert_state(mach, st):
    for a, b in zip((mach.act, mach.wgt, mach.acc, mach.dram), st, strict=True):
        np.testing.assert_array_equal(a, b)


def word(instr):
    return isa.encode(instr).to_bytes(16, "little")


# -- decode errors -------------------------------------------------------------------------

def _bad_words():
    nop = isa.encode(make("nop", engine="vector"))
    load = isa.encode(make("load", rows=1, row_lines=1))
    rows_field = 66                                      # bits 75:66 of load
    return {
        "opcode": (15, ErrorCode.ILLEGAL_OPCODE, "opcode"),
        "vop": (6 | (15 << 22), ErrorCode.ILLEGAL_OPCODE, "vop"),
        "reserved": (nop | (1 << 127), ErrorCode.ILLEGAL_FIELD, "reserved"),
        "enum": ((load & ~(3 << 22)) | (3 << 22), ErrorCode.ILLEGAL_FIELD, "spad"),
        "minimum": (load & ~(((1 << 10) - 1) << rows_field), ErrorCode.ILLEGAL_FIELD, "rows"),
        "sem_id": (nop | (1 << 21) | (7 << 17), ErrorCode.ILLEGAL_FIELD, "signal_sem"),
        "wait_count": (nop | (200 << 8), ErrorCode.ILLEGAL_FIELD, "wait_count"),
        "delay_slot": (isa.encode(make("delay", slot=9)), ErrorCode.ILLEGAL_FIELD, "slot"),
        "line_bytes": (isa.encode(make("load", rows=1, row_lines=1, line_bytes=5)), ErrorCode.ILLEGAL_FIELD,
                       "line_bytes"),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(_bad_words()))
def test_decode_errors_from_bytes(mode, case, m):
    cfg = CFG.replace(n_semaphores=4, delay_slots=8, sem_bits=6)
    mach = Machine(cfg)
    mach.act[:] = m.act
    raw, code, fld = _bad_words()[case]
    good = make("vadd", src_a=0, src_b=0, dst=100, lines=1, mult_a=1)
    image = word(good) + raw.to_bytes(16, "little") + word(make("vadd", src_a=0, src_b=0, dst=101, lines=1,
                                                                mult_a=1))
    res = mach.run(image, mode=mode, raise_on_error=False)
    assert res.error == code and res.error_index == 1 and res.error_engine is None
    assert fld in res.detail
    assert (mach.act[100] == m.act[0]).all()          # the instruction before ran
    assert (mach.act[101] == m.act[101]).all()        # the one after did not
    with pytest.raises(DeviceError) as e:
        mach.run(image, mode=mode)
    assert e.value.code == code and e.value.index == 1
    assert e.value.result.error == code


def test_bad_word_after_halt_is_never_fetched(m):
    for mode in MODES:
        res = m.run(word(make("halt")) + (15).to_bytes(16, "little"), mode=mode)
        assert res.error == ErrorCode.NONE


def test_instruction_list_checked_against_cfg(m):
    cfg = CFG.replace(n_semaphores=4)
    prog = [make("nop"), make("nop", signal_en=1, signal_sem=9)]     # valid without a cfg
    for mode in MODES:
        res = Machine(cfg).run(prog, mode=mode, raise_on_error=False)
        assert (res.error, res.error_index) == (ErrorCode.ILLEGAL_FIELD, 1)
        assert "signal_sem" in res.detail


def test_bad_image_length(m):
    with pytest.raises(ValueError, match="program"):
        m.run(b"\0" * 17)


# -- SPAD_RANGE: the footprint formulas of docs/isa.md at their boundary ------------------------

A, W, C = CFG.act_depth, CFG.wgt_depth, CFG.acc_depth


def _spad_cases():
    """name -> (engine, builder(over)); over=0 touches exactly the last line, over=1 one past."""
    cols = CFG.cols
    return {
        "load": (Engine.LOAD,
            lambda o: make("load", spad="act", spad_addr=A - 5 * 6 + o, rows=2, row_lines=3,
                           pad_top=1, pad_bottom=2, pad_left=2, pad_right=1, dram_stride=12)),
        "load_acc": (Engine.LOAD,
            lambda o: make("load", spad="acc", spad_addr=C - 6 + o, rows=3, row_lines=2)),
        "store": (Engine.STORE,
            lambda o: make("store", spad="wgt", spad_addr=W - (2 * 5 + 3) + o, rows=3,
                           row_lines=3, spad_stride=5, dram_stride=12)),
        "matmul_act": (Engine.MATMUL,
            lambda o: make("matmul", a_addr=A - (2 * 7 + 3 * 2 + 3) + o, k=3 * cols - 1,
                           m_outer=3, a_outer_stride=7, m_inner=4, a_stride=2)),
        "matmul_wgt": (Engine.MATMUL,
            lambda o: make("matmul", w_addr=W - 13 + o, k=13)),
        "matmul_acc": (Engine.MATMUL,
            lambda o: make("matmul", acc_addr=C - 12 + o, k=2, m_outer=3, m_inner=4)),
        "requant_src": (Engine.VECTOR,
            lambda o: make("requant", src=C - 5 + o, rows=5)),
        "requant_param": (Engine.VECTOR,
            lambda o: make("requant", param=C - 3 + o, rows=5)),
        "requant_dst": (Engine.VECTOR,
            lambda o: make("requant", dst=A - 1 - 4 * 3 + o, rows=5, dst_stride=3)),
        "add_a": (Engine.VECTOR,
            lambda o: make("vadd", src_a=A - 4 + o, lines=4)),
        "add_b": (Engine.VECTOR,
            lambda o: make("vadd", src_b=A - 4 + o, lines=4)),
        "add_dst": (Engine.VECTOR,
            lambda o: make("vadd", dst=A - 4 + o, lines=4)),
        "pool_in": (Engine.VECTOR,
            lambda o: make(
                "maxpool", src=A - 1 - (((2 - 1) * 2 + 3 - 1) * 40 + ((3 - 1) * 1 + 2 - 1) * 2 + 2 - 1) + o,
                dst=0, lpp=2, row_stride=40, out_h=2, out_w=3, kh=3, kw=2, stride_h=2, stride_w=1)),
        "pool_out": (Engine.VECTOR,
            lambda o: make("avgpool", src=0, dst=A - 2 * 3 * 2 + o, lpp=2, row_stride=40,
                           out_h=2, out_w=3, kh=1, kw=1)),
        "mask_src": (Engine.VECTOR,
            lambda o: make("mask", src=A - 12 + o, rows=4, row_lines=3)),
        "mask_dst": (Engine.VECTOR,
            lambda o: make("mask", dst=A - 12 + o, rows=4, row_lines=3)),
        "mask_bitmap": (Engine.VECTOR,
            lambda o: make("mask", mode="loaded", mask_addr=A - 1 - (17 * 3 - 1) // 8 + o,
                           rows=17, row_lines=3)),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(_spad_cases()))
def test_spad_range_boundary(mode, case, m):
    engine, build = _spad_cases()[case]
    m.run([build(0)], mode=mode)                              # exactly the last line: fine
    st = state(m)
    res = m.run([make("nop"), build(1)], mode=mode, raise_on_error=False)
    assert (res.error, res.error_index, res.error_engine) == (ErrorCode.SPAD_RANGE, 1, engine)
    assert_state(m, st)                                       # nothing of the instruction done


# -- DRAM_RANGE ----------------------------------------------------------------------------

D = CFG.dram_bytes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["load", "load_lb", "store", "store_lb", "store_compressed"])
def test_dram_range_boundary(mode, case, m):
    worst = 2 + 3 * (1 + CFG.cols)
    build = {
        "load":
            lambda o: make("load", dram_addr=D - (2 * 20 + 3 * 4) + o, rows=3, row_lines=3, dram_stride=20),
        "load_lb":
            lambda o: make("load", spad="acc", dram_addr=D - (2 * 20 + 3 * 5) + o, rows=3, row_lines=3,
                           dram_stride=20, line_bytes=5),
        "store":
            lambda o: make("store", spad="acc", dram_addr=D - (1 * 40 + 2 * 16) + o, rows=2, row_lines=2,
                           dram_stride=40),
        "store_lb":
            lambda o: make("store", dram_addr=D - (4 * 9 + 3 * 3) + o, rows=5, row_lines=3,
                           dram_stride=9, line_bytes=3),
        "store_compressed":
            lambda o: make("store", dram_addr=D - (2 * worst + worst) + o, rows=3, row_lines=3,
                           dram_stride=worst, compressed=1),
    }[case]
    m.run([build(0)], mode=mode)
    st = state(m)
    res = m.run([build(1)], mode=mode, raise_on_error=False)
    assert (res.error, res.error_index) == (ErrorCode.DRAM_RANGE, 0)
    assert_state(m, st)


def _group(payload: bytes) -> np.ndarray:
    return np.frombuffer(len(payload).to_bytes(2, "little") + payload, np.uint8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["count", "payload", "fits"])
def test_dram_range_compressed_load_per_row(mode, where, m):
    """Row 0 is a valid group; row 1's slot leaves memory in its count or its payload."""
    cols = CFG.cols
    row0 = np.array([[1, 0, 2, 0]], np.int8)
    g0 = _group(bytes([0b0101, 1, 2]))
    g1 = _group(bytes([0b1111, 5, 6, 7, 8]))                 # 7 bytes
    slot1 = {"count": D - 1, "payload": D - g1.size + 1, "fits": D - g1.size}[where]
    addr = 100
    stride = slot1 - addr
    m.dram[addr:addr + g0.size] = g0
    m.dram[slot1:slot1 + min(g1.size, D - slot1)] = g1[:D - slot1]
    st = state(m)
    res = m.run([make("load", spad_addr=20, dram_addr=addr, rows=2, row_lines=1, dram_stride=stride,
                      compressed=1)], mode=mode, raise_on_error=False)
    if where == "fits":
        assert res.error == ErrorCode.NONE
        assert m.act[20:22].tolist() == [row0[0].tolist(), [5, 6, 7, 8]]
        assert res.counters["load_bytes"] == g0.size + g1.size
        return
    assert (res.error, res.error_index, res.error_engine) == (ErrorCode.DRAM_RANGE, 0, Engine.LOAD)
    st[0][20] = row0[0]                                      # rows before the faulting one are written
    assert_state(m, st)
    assert cols == 4


# -- CORRUPT_DATA ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["count_overflow", "mask_overrun", "trailing"])
def test_corrupt_data_writes_lines_before_fault(mode, case, m):
    rl, pt, pl, pr = 3, 1, 1, 1
    w = pl + rl + pr
    good = [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 4]]
    g0 = _group(bytes([0b0001, 1, 0b0010, 2, 0b1100, 3, 4]))
    bad, n_good = {
        # count 3*(1+4)+1 = 16 > capacity 15
        "count_overflow": (np.frombuffer((16).to_bytes(2, "little") + bytes(16), np.uint8), 0),
        # line 0 fine (one value), line 1 claims 4 values with 2 left
        "mask_overrun": (_group(bytes([0b1000, 9, 0b1111, 5, 6])), 1),
        # three empty lines then one byte too many
        "trailing": (_group(bytes([0b0001, 7, 0, 0b0011, 8, 9, 0xAB])), 3),
    }[case]
    m.dram[200:200 + g0.size] = g0
    m.dram[300:300 + bad.size] = bad
    base = 40
    st = state(m)
    res = m.run([make("nop", engine="load"),
                 make("load", spad_addr=base, dram_addr=200, rows=2, row_lines=rl, dram_stride=100,
                      compressed=1, pad_top=pt, pad_left=pl, pad_right=pr, pad_bottom=2)],
                mode=mode, raise_on_error=False)
    assert (res.error, res.error_index, res.error_engine) == (ErrorCode.CORRUPT_DATA, 1, Engine.LOAD)
    exp = st[0]
    exp[base:base + pt * w] = 0                                        # top padding
    exp[base + w:base + 2 * w] = [[0] * 4] + good + [[0] * 4]           # row 0 complete
    row1 = base + 2 * w
    exp[row1:row1 + pl] = 0                                            # row 1: left padding
    prefix = {"count_overflow": [], "mask_overrun": [[0, 0, 0, 9]],
              "trailing": [[7, 0, 0, 0], [0] * 4, [8, 9, 0, 0]]}
    for i, line in enumerate(prefix[case]):
        exp[row1 + pl + i] = line                                      # decoded lines before the fault
    assert n_good == len(prefix[case])
    np.testing.assert_array_equal(m.act, exp)                          # nothing after the fault line


# -- compressed STORE slot rule ----------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_compressed_store_stride_rule(mode, m):
    worst = 2 + 2 * (1 + CFG.cols)
    ok = make("store", dram_addr=64, rows=1, row_lines=2, dram_stride=worst, compressed=1)
    m.run([ok], mode=mode)
    st = state(m)
    res = m.run([ok.replace(dram_stride=worst - 1)], mode=mode, raise_on_error=False)
    assert (res.error, res.error_index, res.error_engine) == (ErrorCode.ILLEGAL_FIELD, 0, Engine.STORE)
    assert "dram_stride" in res.detail
    assert_state(m, st)


# -- semaphores ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_sem_overflow(mode):
    cfg = CFG.replace(sem_bits=2)                        # maximum 3
    mach = Machine(cfg)
    sig = make("nop", engine="matmul", signal_en=1, signal_sem=2)
    res = mach.run([sig] * 3, mode=mode)
    assert res.error == ErrorCode.NONE and mach.sems[2] == 3
    res = mach.run([sig] * 5, mode=mode, raise_on_error=False)
    assert (res.error, res.error_index, res.error_engine) == (ErrorCode.SEM_OVERFLOW, 3, Engine.MATMUL)


@pytest.mark.parametrize("mode", MODES)
def test_consumes_bound_the_count(mode):
    """Signals balanced by consumes never overflow, even when a consume comes first in program order."""
    cfg = CFG.replace(sem_bits=2)
    mach = Machine(cfg)
    prog = []
    for _ in range(40):
        prog += [make("nop", engine="store", wait_sem=1, wait_count=1, wait_consume=1),
                 make("nop", engine="load", signal_en=1, signal_sem=1)]
    res = mach.run(prog, mode=mode)
    assert res.error == ErrorCode.NONE and mach.sems[1] == 0
    assert res.counters["instructions"] == 80


@pytest.mark.parametrize("mode", MODES)
def test_timeout(mode):
    mach = Machine(CFG)
    mach.delays[0] = 500
    res = mach.run([make("delay", slot=0)], mode=mode, max_cycles=100, raise_on_error=False)
    assert res.error == ErrorCode.TIMEOUT
    assert mach.run([make("delay", slot=0)], mode=mode, max_cycles=1000).error == ErrorCode.NONE
