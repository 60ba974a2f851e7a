"""cocotb testbench of the MatrixEngine (MATMUL engine) on Verilator.

A scratchpad model (tbutil ReadPortModel/WritePortModel with random stalls and latencies on every
port) holds random ACT/WGT/ACC contents; seeded random MATMULs run back to back; after every
done pulse the whole ACC scratchpad is compared bit for bit with the reference computed here
from the model contents with ``sparrow.golden.numerics.matmul_acc``; counters are compared with
counts computed independently from the activations.

Environment: ``SPARROW_PRESET`` (HwConfig preset), ``SPARROW_ZERO_SKIP`` (1/0),
``SPARROW_BENCH_OUT`` (bench_cycles only: JSON file the measured figures go to).
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from sparrow import isa
from sparrow.config import preset
from sparrow.errors import ErrorCode
from sparrow.golden.numerics import matmul_acc
from sparrow.hdl.spad_port import acc_line, act_line
from sparrow.sim.tbutil import ReadPortModel, StreamSource, WritePortModel, reset, seeded, start_clock

SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def cfg_from_env():
    return preset(os.environ.get("SPARROW_PRESET", "small"))


def ceil_div(a, b):
    return -(-a // b)


def reference(cols, f, act, wgt, acc):
    """Apply one MATMUL (field dict ``f``) to ``acc`` (int32 [depth, cols], in place).

    Returns ``(macs, macs_skipped)`` counted from the activations.
    """
    k, L = f["k"], ceil_div(f["k"], cols)
    macs = skipped = 0
    for mo in range(f["m_outer"]):
        for mi in range(f["m_inner"]):
            m = mo * f["m_inner"] + mi
            a = f["a_addr"] + mo * f["a_outer_stride"] + mi * f["a_stride"]
            row = act[a:a + L].reshape(-1)[:k]
            w = wgt[f["w_addr"]:f["w_addr"] + k]
            nz = int(np.count_nonzero(row))
            macs += cols * nz
            skipped += cols * (k - nz)
            old = acc[f["acc_addr"] + m][None, :] if f["accumulate"] else None
            acc[f["acc_addr"] + m] = matmul_acc(row[None, :], w, old)[0]
    return macs, skipped


def footprint(cols, f):
    """Largest line touched in (ACT, WGT, ACC), per docs/isa.md."""
    return (f["a_addr"] + (f["m_outer"] - 1) * f["a_outer_stride"] + (f["m_inner"] - 1) * f["a_stride"]
            + ceil_div(f["k"], cols) - 1,
            f["w_addr"] + f["k"] - 1,
            f["acc_addr"] + f["m_outer"] * f["m_inner"] - 1)


def word(f):
    return isa.encode(isa.make("matmul", **f))


def random_matmul(rng, cfg, *, kmax=None, mmax=(6, 3)):
    cols = cfg.cols
    kmax = min(kmax or 16 * cols, cfg.wgt_depth)
    k = rng.choice([1, cols - 1, cols, cols + 1, rng.randint(1, kmax), rng.randint(1, kmax)])
    L = ceil_div(k, cols)
    m_inner, m_outer = rng.randint(1, mmax[0]), rng.randint(1, mmax[1])
    a_stride = rng.choice([0, L, L, rng.randint(0, L + 3)])
    a_outer_stride = rng.choice([m_inner * a_stride + L, rng.randint(0, 3 * L * m_inner + 2)])
    f = dict(a_addr=0, w_addr=0, acc_addr=0, k=k, m_inner=m_inner, a_stride=a_stride, m_outer=m_outer,
             a_outer_stride=a_outer_stride, accumulate=rng.randint(0, 1))
    act_max, wgt_max, acc_max = footprint(cols, f)
    f["a_addr"] = rng.randint(0, cfg.act_depth - 1 - act_max)
    f["w_addr"] = rng.randint(0, cfg.wgt_depth - 1 - wgt_max)
    f["acc_addr"] = rng.randint(0, cfg.acc_depth - 1 - acc_max)
    return f


class Harness:
    """DUT + scratchpad model + instruction source + done monitor."""

    def __init__(self, dut, rng, nrng, *, stall=0.25, latency=(1, 4), idle=0.3):
        self.dut, self.rng, self.nrng = dut, rng, nrng
        self.cfg = cfg = cfg_from_env()
        self.cols = cfg.cols
        self.act = nrng.integers(-128, 128, size=(cfg.act_depth, cfg.cols), dtype=np.int64).astype(np.int8)
        self.wgt = nrng.integers(-128, 128, size=(cfg.wgt_depth, cfg.cols), dtype=np.int64).astype(np.int8)
        self.acc = nrng.integers(-(1 << 31), 1 << 31, size=(cfg.acc_depth, cfg.cols),
                                 dtype=np.int64).astype(np.int32)
        # model memories are lists of lines (the port models index them)
        self.act_mem = [list(map(int, r)) for r in self.act]
        self.wgt_mem = [list(map(int, r)) for r in self.wgt]
        self.acc_mem = [list(map(int, r)) for r in self.acc]
        al, cl = act_line(cfg.cols), acc_line(cfg.cols)
        self.ports = []
        for i in range(cfg.rows):
            for pre, mem in (("act_rd", self.act_mem), ("wgt_rd", self.wgt_mem)):
                self.ports.append(ReadPortModel(dut, f"{pre}__{i}", mem, al, stall=stall, latency=latency,
                                                rng=rng))
        self.acc_rd = ReadPortModel(dut, "acc_rd", self.acc_mem, cl, stall=stall, latency=latency, rng=rng)
        self.acc_wr = WritePortModel(dut, "acc_wr", self.acc_mem, cl, stall=stall, rng=rng)
        self.src = StreamSource(dut, "instr", idle=idle, rng=rng)
        self.dones = 0
        self.cycle = 0
        self.done_cycles = []
        self.expected = []       # ACC snapshot expected after each accepted instruction, in order
        self.errors = []
        self.max_cycles = 0
        cocotb.start_soon(self._monitor())

    def set_stall(self, stall, latency):
        for p in self.ports + [self.acc_rd]:
            p.stall, p.latency = stall, latency
        self.acc_wr.stall = stall

    def set_act(self, act):
        self.act[:] = act
        for i, r in enumerate(act):
            self.act_mem[i] = list(map(int, r))

    async def _monitor(self):
        pending = False
        while True:
            await FallingEdge(self.dut.clk)
            self.cycle += 1
            if pending:   # the write of the done cycle has landed in the model by now
                idx = self.dones
                self.dones += 1
                if idx >= len(self.expected):
                    self.errors.append(f"done pulse {idx} without an instruction")
                else:
                    got = np.array(self.acc_mem, dtype=np.int64).astype(np.int32)
                    bad = np.argwhere(np.any(got != self.expected[idx], axis=1)).ravel()
                    if len(bad):
                        self.errors.append(f"after done {idx}: ACC lines {bad[:8].tolist()} differ, "
                                           f"e.g. line {bad[0]} got {got[bad[0]].tolist()} "
                                           f"want {self.expected[idx][bad[0]].tolist()}")
            await ReadOnly()
            pending = bool(int(self.dut.done.value))
            if pending:
                self.done_cycles.append(self.cycle)
            if int(self.dut.error.value) != 0 and not self.errors:
                self.errors.append(f"error {int(self.dut.error.value)} at cycle {self.cycle}")

    def counters(self):
        d = self.dut
        return {n: int(getattr(d, n).value) for n in ("macs", "macs_skipped", "busy_cycles", "stall_cycles")}

    def queue(self, fields_list):
        """Queue instructions; returns the expected (macs, skipped) over them."""
        macs = skipped = 0
        state = self.acc.copy() if not self.expected else self.expected[-1].copy()
        for f in fields_list:
            mc, sk = reference(self.cols, f, self.act, self.wgt, state)
            macs, skipped = macs + mc, skipped + sk
            self.expected.append(state.copy())
            self.src.send_nowait(word(f))
        return macs, skipped

    async def run(self, fields_list, timeout=200_000):
        """Run instructions back to back; check results after every done, and the counters."""
        before = self.counters()
        n0 = len(self.expected)
        macs, skipped = self.queue(fields_list)
        start = self.cycle
        while self.dones < n0 + len(fields_list):
            await FallingEdge(self.dut.clk)
            assert self.cycle - start < timeout, f"timeout: {self.dones - n0}/{len(fields_list)} done"
            assert not self.errors, self.errors[:3]
        for _ in range(4):
            await FallingEdge(self.dut.clk)
        assert not self.errors, self.errors[:3]
        after = self.counters()
        assert after["macs"] - before["macs"] == macs, (after["macs"] - before["macs"], macs)
        assert after["macs_skipped"] - before["macs_skipped"] == skipped, \
            (after["macs_skipped"] - before["macs_skipped"], skipped)
        assert int(self.dut.busy.value) == 0
        return {k: after[k] - before[k] for k in after} | {"cycles": self.cycle - start}


def sparse_act(nrng, cfg, s):
    act = nrng.integers(-128, 128, size=(cfg.act_depth, cfg.cols), dtype=np.int64).astype(np.int8)
    act[nrng.random(act.shape) < s] = 0
    if 0 < s < 1:   # some whole zero lines too
        act[nrng.random(cfg.act_depth) < s / 4] = 0
    return act


async def _setup(dut, **kw):
    rng, nrng, _ = seeded(dut)
    start_clock(dut)
    dut.rst.value = 1
    h = Harness(dut, rng, nrng, **kw)
    await reset(dut)
    return h


@cocotb.test()
async def random_matmuls_at_sparsities(dut):
    """Seeded random MATMULs, back to back, at activation sparsity 0..100 %, random port stalls."""
    h = await _setup(dut)
    n = int(os.environ.get("SPARROW_TB_N", "10"))
    for s in SPARSITIES:
        h.set_act(sparse_act(h.nrng, h.cfg, s))
        if s == 0.5:
            h.set_stall(0.0, (1, 1))      # one level with an ideal scratchpad
        else:
            h.set_stall(0.25, (1, 4))
        res = await h.run([random_matmul(h.rng, h.cfg) for _ in range(n)])
        dut._log.info(f"sparsity {s:.2f}: {res}")


@cocotb.test()
async def edge_tiles(dut):
    """k = 1, cols-1, cols, cols+1, max; M = 1; footprints touching the top of every scratchpad;
    extreme operands with accumulate (int32 wrap)."""
    h = await _setup(dut)
    cfg, cols = h.cfg, h.cols
    act = h.act.copy()
    act[: cfg.act_depth // 2] = -128
    h.set_act(act)
    for i in range(0, cfg.wgt_depth, 2):
        h.wgt_mem[i] = [-128] * cols
        h.wgt[i] = -128
    big = np.int32(2**31 - 5)
    for i in range(cfg.acc_depth // 2):
        h.acc[i] = big
        h.acc_mem[i] = [int(big)] * cols
    fl = []
    for k in (1, cols - 1, cols, cols + 1, min(cfg.wgt_depth, 4095)):
        fl.append(dict(a_addr=0, w_addr=0, acc_addr=k, k=k, m_inner=1, a_stride=0, m_outer=1,
                       a_outer_stride=0, accumulate=1))
    # every footprint exactly at the top of its scratchpad
    k = 2 * cols + 1
    L = ceil_div(k, cols)
    f = dict(k=k, m_inner=3, a_stride=L, m_outer=2, a_outer_stride=3 * L + 1, accumulate=1,
             a_addr=0, w_addr=0, acc_addr=0)
    amax, wmax, cmax = footprint(cols, f)
    f.update(a_addr=cfg.act_depth - 1 - amax, w_addr=cfg.wgt_depth - 1 - wmax,
             acc_addr=cfg.acc_depth - 1 - cmax)
    fl.append(f)
    # large M, same row repeated (a_stride = 0), k not a multiple of cols
    fl.append(dict(a_addr=5, w_addr=3, acc_addr=20, k=cols * 3 + 2, m_inner=40, a_stride=0, m_outer=2,
                   a_outer_stride=1, accumulate=0))
    await h.run(fl)
    h.set_stall(0.0, (1, 1))
    await h.run(fl[::-1])


@cocotb.test()
async def spad_range(dut):
    """Footprint one line beyond each scratchpad: SPAD_RANGE, nothing read or written, no done;
    the engine accepts nothing afterwards. The same footprint one line lower executes."""
    rng, nrng, _ = seeded(dut)
    start_clock(dut)
    dut.rst.value = 1
    h = Harness(dut, rng, nrng, stall=0.1, latency=(1, 2), idle=0.0)
    cfg, cols = h.cfg, h.cols
    k = cols + 3
    L = ceil_div(k, cols)
    base = dict(k=k, m_inner=2, a_stride=L, m_outer=3, a_outer_stride=2 * L, accumulate=1,
                a_addr=0, w_addr=0, acc_addr=0)
    amax, wmax, cmax = footprint(cols, base)
    tops = dict(a_addr=cfg.act_depth - 1 - amax, w_addr=cfg.wgt_depth - 1 - wmax,
                acc_addr=cfg.acc_depth - 1 - cmax)
    for which in ("a_addr", "w_addr", "acc_addr"):
        await reset(dut)
        await FallingEdge(dut.clk)
        h.errors.clear()
        h.expected.clear()
        h.done_cycles.clear()
        h.dones = 0
        h.acc = np.array(h.acc_mem, dtype=np.int64).astype(np.int32)
        ok = dict(base, **{which: tops[which]})
        await h.run([ok])                                # exactly at the top: legal
        reads0 = sum(p.reads for p in h.ports) + h.acc_rd.reads
        writes0 = len(h.acc_wr.writes)
        bad = dict(base, **{which: tops[which] + 1})
        h.src.send_nowait(word(bad))
        h.src.send_nowait(word(ok))                      # must not be accepted after the error
        sent0 = h.src.sent
        for _ in range(60):
            await FallingEdge(dut.clk)
        await ReadOnly()
        assert int(dut.error.value) == ErrorCode.SPAD_RANGE.value, (which, int(dut.error.value))
        assert h.src.sent == sent0 + 1, "an instruction was accepted after the error"
        assert sum(p.reads for p in h.ports) + h.acc_rd.reads == reads0, f"{which}: reads after the error"
        assert len(h.acc_wr.writes) == writes0, f"{which}: writes after the error"
        assert h.dones == 1 and len(h.done_cycles) == 1, "done pulse for a faulting instruction"
        assert int(dut.busy.value) == 1
        h.src.queue.clear()
        h.src._cur = None
        await FallingEdge(dut.clk)


@cocotb.test(skip=os.environ.get("SPARROW_BENCH_OUT") is None)
async def bench_cycles(dut):
    """Benchmark: a fixed seeded set of MATMULs at several sparsities; figures to SPARROW_BENCH_OUT."""
    import random
    h = await _setup(dut, stall=0.0, latency=(1, 1), idle=0.0)
    cfg = h.cfg
    spec = json.loads(os.environ.get("SPARROW_BENCH_SPEC", "{}"))
    sparsities = spec.get("sparsities", [0.0, 0.25, 0.5, 0.75, 0.9])
    ks = spec.get("ks", [64, 128, 192, 256])
    M = spec.get("M", 64)
    lat = tuple(spec.get("latency", (1, 1)))
    h.set_stall(0.0, lat)
    out = {"sparsities": [], "config": {"preset": cfg.name, "M": M, "ks": ks, "latency": lat}}
    for s in sparsities:
        nrng = np.random.default_rng(1234)
        act = nrng.integers(-128, 128, size=(cfg.act_depth, cfg.cols), dtype=np.int64).astype(np.int8)
        act[act == 0] = 1
        act[nrng.random(act.shape) < s] = 0
        h.set_act(act)
        rng = random.Random(99)
        fl = []
        for k in ks:
            L = ceil_div(k, cfg.cols)
            fl.append(dict(a_addr=rng.randint(0, cfg.act_depth - 1 - M * L), w_addr=0,
                           acc_addr=rng.randint(0, cfg.acc_depth - M), k=k, m_inner=M // 4, a_stride=L,
                           m_outer=4, a_outer_stride=(M // 4) * L, accumulate=rng.randint(0, 1)))
        res = await h.run(fl)
        res["sparsity"] = s
        res["measured_sparsity"] = res["macs_skipped"] / max(1, res["macs"] + res["macs_skipped"])
        out["sparsities"].append(res)
        dut._log.info(f"bench sparsity {s}: {res}")
    with open(os.environ["SPARROW_BENCH_OUT"], "w") as fh:
        json.dump(out, fh, indent=1)
