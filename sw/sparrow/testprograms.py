"""System programs: complete, self-checking workloads built with the kernel builders.

Each :class:`SystemCase` holds a program, the external-memory image it starts from (constants,
inputs and the program itself) and where its outputs are. The same cases run on every backend
(golden model, cocotb/Verilator testbench, the fast harness), so "identical memory on every
backend" is one comparison of the final images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import HwConfig
from .isa import WORD_BYTES, Program, make

__all__ = ["SystemCase", "system_cases", "build_case", "CASE_NAMES"]


@dataclass
class SystemCase:
    name: str
    cfg: HwConfig
    program: Program
    image: np.ndarray            # uint8: DRAM bytes [0, len(image)) before the run
    prog_base: int
    outputs: dict = field(default_factory=dict)   # name -> (addr, nbytes)

    @property
    def n_instructions(self) -> int:
        return len(self.program)

    def golden(self, mode: str = "concurrent"):
        """Run on the golden model; returns ``(final_image, RunResult)``."""
        from .golden import Machine
        m = Machine(self.cfg)
        m.write_dram(0, self.image)
        res = m.run(self.program, mode=mode)
        return m.read_dram(0, len(self.image)).copy(), res


def _finish(name, cfg, b, inputs, outputs) -> SystemCase:
    """Program + image from a kernel builder: constants, inputs, then the program at the end."""
    from .golden import Machine
    program = b.finish()
    prog_base = b.alloc(len(program) * WORD_BYTES, align=64)
    top = b.alloc(0, align=64)
    m = Machine(cfg)
    b.write_segments(m)
    for t, data in inputs:
        t.write(m, data)
    m.write_dram(prog_base, bytes(program))
    image = m.read_dram(0, top).copy()
    outs = {k: (t if isinstance(t, tuple) else (t.addr, t.nbytes)) for k, t in outputs.items()}
    return SystemCase(name, cfg, program, image, prog_base, outs)


def _i8(rng, shape, sparsity=0.5):
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    x[rng.random(shape) < sparsity] = 0
    return x


def _requant(rng, n, k, relu=True):
    from .kernels import Requant
    scale = 0.5 / (np.sqrt(k) * 16)
    return Requant.from_scale(scale, bias=rng.integers(-500, 500, n).astype(np.int32), relu=relu)


def build_case(name: str, cfg: HwConfig, seed: int = 0) -> SystemCase:
    """Build one named case (see :data:`CASE_NAMES`) for ``cfg``."""
    from . import kernels as K
    rng = np.random.default_rng(seed)
    b = K.ProgramBuilder(cfg)
    if name == "gemm":
        A, W = _i8(rng, (12, 20)), _i8(rng, (20, 7), 0.1)
        a = b.tensor(A.shape, name="a")
        y = K.gemm(b, a, W, requant=_requant(rng, 7, 20))
        return _finish(name, cfg, b, [(a, A)], {"y": y})
    if name == "gemm_int32":
        A, W = _i8(rng, (5, 9)), _i8(rng, (9, 6), 0.0)
        a, w = b.tensor(A.shape), b.tensor(W.shape)
        y = K.gemm(b, a, w)
        return _finish(name, cfg, b, [(a, A), (w, W)], {"y": y})
    if name == "gemm_big":
        A, W = _i8(rng, (40, 3 * cfg.cols * 4 + 3), 0.6), _i8(rng, (3 * cfg.cols * 4 + 3, 2 * cfg.cols + 1), 0.0)
        a = b.tensor(A.shape)
        y = K.gemm(b, a, W, requant=_requant(rng, W.shape[1], W.shape[0]))
        return _finish(name, cfg, b, [(a, A)], {"y": y})
    if name == "conv":
        X, Wt = _i8(rng, (1, 6, 6, 3)), _i8(rng, (3, 3, 3, 5), 0.0)
        x = b.tensor(X.shape)
        y = K.conv2d(b, x, Wt, _requant(rng, 5, 27), stride=1, padding=1)
        return _finish(name, cfg, b, [(x, X)], {"y": y})
    if name == "conv_stride2":
        X, Wt = _i8(rng, (1, 7, 7, 6)), _i8(rng, (3, 3, 6, 4), 0.0)
        x = b.tensor(X.shape)
        y = K.conv2d(b, x, Wt, _requant(rng, 4, 54), stride=2, padding=1)
        return _finish(name, cfg, b, [(x, X)], {"y": y})
    if name == "depthwise":
        C = cfg.cols + 1
        X, Wt = _i8(rng, (1, 5, 5, C)), _i8(rng, (3, 3, 1, C), 0.0)
        x = b.tensor(X.shape)
        y = K.conv2d(b, x, Wt, _requant(rng, C, 9), stride=1, padding=1, groups=C)
        return _finish(name, cfg, b, [(x, X)], {"y": y})
    if name == "pool":
        X = np.abs(_i8(rng, (1, 6, 6, cfg.cols + 2))).astype(np.int8)
        x = b.tensor(X.shape)
        y1 = K.maxpool(b, x, 2, 2)
        y2 = K.avgpool(b, x, 3, 1, padding=1)
        return _finish(name, cfg, b, [(x, X)], {"max": y1, "avg": y2})
    if name == "add":
        X, Y = _i8(rng, (9, 2 * cfg.cols)), _i8(rng, (9, 2 * cfg.cols))
        x, y = b.tensor(X.shape), b.tensor(Y.shape)
        z = K.add(b, x, y, 0.7, 0.45, relu=True)
        return _finish(name, cfg, b, [(x, X), (y, Y)], {"z": z})
    if name == "mask":
        X = _i8(rng, (6, 3 * cfg.cols), 0.2)
        x = b.tensor(X.shape)
        z1 = K.mask(b, x, "causal", param=1, alt=-128)
        z2 = K.mask(b, x, "padding", param=2 * cfg.cols - 1, alt=0)
        z3 = K.mask(b, x, "loaded", masked=rng.random(X.shape) < 0.3, alt=7)
        return _finish(name, cfg, b, [(x, X)], {"causal": z1, "padding": z2, "loaded": z3})
    if name == "compress":
        return _compress_case(cfg, rng)
    raise ValueError(f"unknown system case {name!r}; choose one of {CASE_NAMES}")


def _compress_case(cfg, rng):
    """LOAD raw -> STORE compressed -> LOAD compressed -> STORE raw, at several sparsities."""
    from .kernels import ProgramBuilder
    b = ProgramBuilder(cfg)
    rows, row_lines = 6, 3
    X = _i8(rng, (rows, row_lines * cfg.cols), 0.7)
    X[1] = 0
    X[2] = rng.integers(1, 127, X.shape[1])
    x = b.tensor(X.shape)
    slot = 2 + row_lines * (cfg.mask_bytes + cfg.cols)
    comp = b.alloc(rows * slot)
    y = b.tensor(X.shape)
    sem = dict(signal_en=1)
    b_prog = Program([
        make("load", spad="act", spad_addr=0, dram_addr=x.addr, rows=rows, row_lines=row_lines,
             dram_stride=row_lines * cfg.cols, signal_sem=0, **sem),
        make("store", spad="act", spad_addr=0, dram_addr=comp, rows=rows, row_lines=row_lines,
             dram_stride=slot, compressed=1, wait_sem=0, wait_count=1, wait_consume=1, signal_sem=1, **sem),
        make("load", spad="act", spad_addr=64, dram_addr=comp, rows=rows, row_lines=row_lines,
             dram_stride=slot, compressed=1, wait_sem=1, wait_count=1, wait_consume=1, signal_sem=2, **sem),
        make("store", spad="act", spad_addr=64, dram_addr=y.addr, rows=rows, row_lines=row_lines,
             dram_stride=row_lines * cfg.cols, wait_sem=2, wait_count=1, wait_consume=1),
        make("halt"),
    ])
    b.finish = lambda: b_prog  # a hand-written program: no builder sync needed
    return _finish("compress", cfg, b, [(x, X)], {"y": y, "compressed": (comp, rows * slot)})


CASE_NAMES = ("gemm", "gemm_int32", "gemm_big", "conv", "conv_stride2", "depthwise", "pool", "add", "mask",
              "compress")


def system_cases(cfg: HwConfig, names=CASE_NAMES, seed: int = 0) -> list[SystemCase]:
    return [build_case(n, cfg, seed) for n in names]
