"""Smoke test of the golden model's program-order mode: a small GEMM against NumPy."""

import numpy as np

from sparrow.config import preset
from sparrow.golden import Machine
from sparrow.isa import Program, make


def test_gemm_program_order():
    cfg = preset("small")
    m = Machine(cfg)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (5, 7)).astype(np.int8)
    w = rng.integers(-128, 128, (7, 4)).astype(np.int8)
    m.write_dram(0, a)
    m.write_dram(100, w)
    p = Program([
        make("load", spad="act", spad_addr=0, dram_addr=0, rows=5, row_lines=2, dram_stride=7, line_bytes=4),
        make("load", spad="wgt", spad_addr=0, dram_addr=100, rows=7, row_lines=1, dram_stride=4),
        make("matmul", a_addr=0, w_addr=0, acc_addr=0, k=7, m_inner=5, a_stride=2),
        make("store", spad="acc", spad_addr=0, dram_addr=1000, rows=5, row_lines=1, dram_stride=16),
        make("halt"),
    ])
    res = m.run(p)
    out = m.read_dram(1000, 80).view(np.int32).reshape(5, 4)
    np.testing.assert_array_equal(out, a.astype(np.int64) @ w.astype(np.int64))
    assert res.counters["macs"] + res.counters["macs_skipped"] == 5 * 7 * 4
    assert res.counters["macs"] == np.count_nonzero(a) * 4
