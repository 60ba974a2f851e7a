"""The cycle model's documented formulas (sparrow.golden.perf docstring), recomputed here from
the constants for each instruction kind and compared with the durations the model reports."""

import numpy as np
import pytest

from sparrow import codec
from sparrow.config import preset
from sparrow.golden import Machine
from sparrow.golden.perf import DEFAULT_COSTS as K
from sparrow.golden.perf import Costs
from sparrow.isa import make

CFG = preset("small").replace(dram_bytes=1 << 16)        # rows (lanes) 4, cols 4, mem_bytes 8


def duration(m, instr):
    res = m.run([instr])
    (_, _, s, e), = res.timeline
    return e - s


def ceil(a, b):
    return -(-a // b)


def test_fetch_and_nop():
    m = Machine(CFG)
    res = m.run([make("nop"), make("halt")])
    assert res.cycles == 2 * ceil(16, CFG.mem_bytes) + K.nop


@pytest.mark.parametrize("line_bytes", [0, 3])
def test_load_uncompressed(line_bytes):
    m = Machine(CFG)
    rows, rl = 3, 5
    lb = line_bytes or CFG.cols
    ins = make("load", rows=rows, row_lines=rl, dram_stride=64, line_bytes=line_bytes, pad_top=1, pad_left=2)
    pad_lines = (1 + rows) * (2 + rl) - rows * rl
    exp = K.dma_start + rows * (K.dma_row_setup + max(ceil(rl * lb, CFG.mem_bytes), rl * K.line_cycles)) \
        + pad_lines * K.pad_line_cycles
    assert duration(m, ins) == exp


def test_store_acc_is_beat_bound():
    m = Machine(CFG)
    ins = make("store", spad="acc", rows=2, row_lines=3, dram_stride=64)
    exp = K.store_start + 2 * (K.store_row_setup + max(ceil(3 * 16, CFG.mem_bytes), 3))
    assert duration(m, ins) == exp


def test_compressed_counts_group_bytes():
    m = Machine(CFG)
    data = np.array([[[1, 0, 0, 0], [0, 0, 0, 0]], [[5, 6, 7, 8], [9, 9, 9, 9]]], np.int8)
    m.act[0:4] = data.reshape(4, 4)
    worst = 2 + 2 * (1 + 4)
    st = make("store", rows=2, row_lines=2, dram_stride=worst, compressed=1)
    sizes = [len(codec.compress_group(r)) for r in data]           # 5 and 12 bytes
    beats = [max(ceil(n, CFG.mem_bytes), 2) for n in sizes]
    assert duration(m, st) == K.store_start + sum(K.store_row_setup + K.store_compressed_row + b for b in beats)
    ld = make("load", spad_addr=100, rows=2, row_lines=2, dram_stride=worst, compressed=1)
    assert duration(m, ld) == K.dma_start + sum(K.dma_row_setup + K.load_compressed_row + b for b in beats)
    # the per-row surcharge applies to compressed rows only
    raw = make("load", spad_addr=100, rows=2, row_lines=2, dram_stride=worst)
    before = duration(m, ld), duration(m, raw)
    m.costs = Costs(load_compressed_row=K.load_compressed_row + 5)
    assert (duration(m, ld), duration(m, raw)) == (before[0] + 2 * 5, before[1])


def test_load_and_store_fixed_costs_are_separate():
    costs = Costs(dma_start=3, dma_row_setup=2, store_start=11, store_row_setup=0)
    m = Machine(CFG, costs=costs)
    ld = make("load", rows=2, row_lines=1, dram_stride=64)            # 4 bytes a row: 1 beat, 1 line
    st = make("store", rows=2, row_lines=1, dram_stride=64)
    assert duration(m, ld) == 3 + 2 * (2 + 1)
    assert duration(m, st) == 11 + 2 * (0 + 1)


def test_matmul_lane_scheduling():
    """Rows cost [5, 1, 1, 1, 8] on 4 lanes: row 4 goes to lane 1 (earliest free, at 1), makespan 9."""
    m = Machine(CFG)
    k = 8                                                          # two lines per row
    lines = {0: ([1, 2, 3, 4], [0, 0, 0, 0]), 1: ([0] * 4, [0] * 4), 2: ([0] * 4, [0] * 4),
             3: ([0] * 4, [0] * 4), 4: ([1, 1, 1, 1], [2, 2, 2, 2])}
    for r, (l0, l1) in lines.items():
        m.act[2 * r], m.act[2 * r + 1] = l0, l1
    # row costs: 4 + 1 (last line all zero: one cycle), 0 + 1 (first line all zero: dropped), ...,
    # 4 + 4 -> [5, 1, 1, 1, 8]; lanes 0-3 take rows 0-3, row 4 goes to lane 1 at 1 -> ends at 9
    assert duration(m, make("matmul", k=k, m_inner=5, a_stride=2)) == K.matmul_start + 9


def test_matmul_zero_lines_cost_nothing_but_a_rows_end():
    """One row of four lines: zero, [1 nz], zero, zero -> 0 + 1 + 0 + max(1, 0) = 2 cycles."""
    m = Machine(CFG, costs=Costs(matmul_row_cycles=0))
    m.act[0:4] = [[0, 0, 0, 0], [0, 5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert duration(m, make("matmul", k=16)) == m.costs.matmul_start + 2
    m.act[3] = [1, 2, 0, 3]                                        # last line 3 non-zeros: 0 + 1 + 0 + 3
    assert duration(m, make("matmul", k=16)) == m.costs.matmul_start + 4


def test_matmul_writeback_bound():
    """Eight one-line rows of one non-zero each on 4 lanes: lanes need 2 cycles, write-back 8."""
    m = Machine(CFG)
    for r in range(8):
        m.act[r] = [3, 0, 0, 0]
    span = max(2, 8 * K.matmul_row_cycles)
    assert duration(m, make("matmul", k=4, m_inner=8, a_stride=1)) == K.matmul_start + span
    m2 = Machine(CFG, costs=Costs(matmul_row_cycles=0))
    for r in range(8):
        m2.act[r] = [3, 0, 0, 0]
    assert duration(m2, make("matmul", k=4, m_inner=8, a_stride=1)) == m2.costs.matmul_start + 2


def test_matmul_ignores_elements_beyond_k_for_cost():
    m = Machine(CFG)
    m.act[0] = [0, 0, 7, 7]              # k = 2: the two sevens are beyond k
    assert duration(m, make("matmul", k=2)) == K.matmul_start + 1


@pytest.mark.parametrize("ins,lines", [
    (make("requant", rows=7), 7 + 3),
    (make("vadd", lines=5), 5),                       # a and b read in the same cycle
    (make("mask", rows=3, row_lines=2), 6),
    (make("mask", rows=3, row_lines=3, mode="loaded", mask_addr=100), 9 + 2),
    (make("maxpool", lpp=2, out_h=2, out_w=3, kh=2, kw=3, row_stride=40), 2 * 3 * 2 * 2 * 3),
])
def test_vector(ins, lines):
    assert duration(Machine(CFG), ins) == K.vector_start + lines * K.vector_line_cycles


def test_delay_and_custom_costs():
    m = Machine(CFG, costs=Costs(delay_overhead=5, nop=3))
    m.delays[1] = 40
    assert duration(m, make("delay", slot=1)) == 45
    assert duration(m, make("nop")) == 3
    with pytest.raises(ValueError, match="costs"):
        Machine(CFG, costs={"nop": 1})
