"""Golden-model speed: instructions/s and MACs/s of a hand-built, double-buffered tiled GEMM
(C[M, N] = A[M, K] @ W[K, N], int8 -> int32) in program-order and concurrent mode (with and
without the race checker), on the ``default`` preset. The result is checked against NumPy once
per configuration so the timed runs measure a correct execution."""

from __future__ import annotations

import time

import numpy as np

from sparrow.config import preset
from sparrow.golden import Machine
from sparrow.isa import Program, make

A_ADDR, W_ADDR, C_ADDR = 0x000000, 0x400000, 0x800000


def gemm_program(cfg, m_rows, k, n, tm):
    """Tiles of ``tm`` rows; all N/cols weight tiles resident; ACT and ACC double-buffered.

    Semaphores: 0 A tile loaded, 1 ACT buffer free, 2 ACC tile ready, 3 ACC buffer free, 4 weights.
    """
    cols = cfg.cols
    nl = -(-k // cols)
    n_tiles = n // cols
    p = [make("load", spad="wgt", spad_addr=j * k, dram_addr=W_ADDR + j * cols, rows=k, row_lines=1,
              dram_stride=n, signal_en=1, signal_sem=4) for j in range(n_tiles)]
    for t in range(m_rows // tm):
        b = t % 2
        act, acc = b * tm * nl, b * tm * n_tiles
        free = dict(wait_sem=1, wait_count=1, wait_consume=1) if t >= 2 else {}
        p.append(make("load", spad="act", spad_addr=act, dram_addr=A_ADDR + t * tm * k, rows=tm, row_lines=nl,
                      dram_stride=k, signal_en=1, signal_sem=0, **free))
        if t == 0:
            p.append(make("nop", engine="matmul", wait_sem=4, wait_count=n_tiles))
        if t >= 2:
            p.append(make("nop", engine="matmul", wait_sem=3, wait_count=1, wait_consume=1))
        for j in range(n_tiles):
            hdr = dict(wait_sem=0, wait_count=1, wait_consume=1) if j == 0 else {}
            if j == n_tiles - 1:
                hdr.update(signal_en=1, signal_sem=1)
            p.append(make("matmul", a_addr=act, w_addr=j * k, acc_addr=acc + j * tm, k=k, m_inner=tm,
                          a_stride=nl, **hdr))
        p.append(make("nop", engine="matmul", signal_en=1, signal_sem=2))
        for j in range(n_tiles):
            hdr = dict(wait_sem=2, wait_count=1, wait_consume=1) if j == 0 else {}
            if j == n_tiles - 1:
                hdr.update(signal_en=1, signal_sem=3)
            dst = C_ADDR + t * tm * n * 4 + j * cols * 4
            p.append(make("store", spad="acc", spad_addr=acc + j * tm, dram_addr=dst,
                          rows=tm, row_lines=1, dram_stride=n * 4, **hdr))
    p.append(make("halt"))
    return Program(p)


def _machine(cfg, a, w):
    m = Machine(cfg)
    m.write_dram(A_ADDR, a)
    m.write_dram(W_ADDR, w)
    return m


def run():
    cfg = preset("default")
    rng = np.random.default_rng(1)
    cases = [("large_tiles", 1024, 256, 32, 32), ("small_tiles", 256, 64, 32, 4)]
    modes = [("program", {}), ("concurrent", {"check_races": False}),
             ("concurrent+races", {"check_races": True})]
    metrics, rows = {}, []
    for name, m_rows, k, n, tm in cases:
        a = rng.integers(-128, 128, (m_rows, k))
        a = np.where(rng.random(a.shape) < 0.5, a, 0).astype(np.int8)       # 50% sparse activations
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        ref = a.astype(np.int64) @ w.astype(np.int64)
        prog = gemm_program(cfg, m_rows, k, n, tm)
        macs_total = m_rows * k * n
        for label, kw in modes:
            mode = "program" if label == "program" else "concurrent"
            m = _machine(cfg, a, w)
            res = m.run(prog, mode=mode, **kw)
            out = m.read_dram(C_ADDR, m_rows * n * 4).view(np.int32).reshape(m_rows, n)
            if not np.array_equal(out, ref):
                raise AssertionError(f"{name}/{label}: wrong GEMM result")
            best = float("inf")
            for _ in range(3):
                m = _machine(cfg, a, w)
                t0 = time.perf_counter()
                m.run(prog, mode=mode, **kw)
                best = min(best, time.perf_counter() - t0)
            n_instr = res.counters["instructions"]
            key = f"{name}_{label.replace('+', '_')}"
            metrics[f"{key}_instr_per_s"] = round(n_instr / best, 1)
            metrics[f"{key}_macs_per_s"] = round(macs_total / best)
            metrics[f"{key}_est_cycles"] = res.cycles
            rows.append((name, label, n_instr, macs_total, best, res.cycles))
    table = [f"{'program':<12} {'mode':<17} {'instrs':>7} {'MACs':>10} {'seconds':>8} {'instr/s':>9} "
             f"{'MMAC/s':>8} {'est. cycles':>12}"]
    for name, label, n_instr, macs, sec, cyc in rows:
        table.append(f"{name:<12} {label:<17} {n_instr:>7} {macs:>10} {sec:>8.4f} {n_instr / sec:>9.0f} "
                     f"{macs / sec / 1e6:>8.1f} {cyc:>12}")
    fields = ("name", "M", "K", "N", "tile_rows")
    config = {"preset": cfg.name, "cases": [dict(zip(fields, c, strict=True)) for c in cases],
              "sparsity": 0.5, "timing": "best of 3 runs, decode included"}
    return {"metrics": metrics, "config": config, "table": "\n".join(table)}


if __name__ == "__main__":
    print(run()["table"])
