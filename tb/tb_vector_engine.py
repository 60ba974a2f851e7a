"""cocotb testbench of the VECTOR engine (hdl/vector_engine.py) on Verilator.

The scratchpads are ``tbutil`` port models over Python lists (random stalls and latencies on
every port); instructions go in through a ``StreamSource``. Expected results are computed here,
instruction by instruction in program order, straight from ``docs/isa.md`` with
``sparrow.golden.numerics`` for the arithmetic, and compared bit for bit with every line the
engine writes (address, data and order), attributing writes to instructions by the ``done``
pulses; the final ACT contents must equal the reference (nothing else was written).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from sparrow.config import preset
from sparrow.errors import ErrorCode
from sparrow.golden import numerics
from sparrow.hdl.spad_port import acc_line, act_line
from sparrow.isa import MaskMode, encode, make
from sparrow.sim.tbutil import (ReadPortModel, StreamSource, WritePortModel, reset, seeded,
                                start_clock)

CFG = preset(os.environ.get("SPARROW_PRESET", "small"))
COLS = CFG.cols


# -- reference (docs/isa.md) ---------------------------------------------------------------------

def footprint(ins):
    """Largest line index touched per scratchpad, as docs/isa.md (Errors, SPAD_RANGE) states."""
    v, mn = ins.values, ins.mnemonic
    if mn == "requant":
        return {"ACC": max(v["src"] + v["rows"] - 1, v["param"] + 2),
                "ACT": v["dst"] + (v["rows"] - 1) * v["dst_stride"]}
    if mn == "vadd":
        return {"ACT": max(v["src_a"], v["src_b"], v["dst"]) + v["lines"] - 1}
    if mn in ("maxpool", "avgpool"):
        inp = v["src"] + ((v["out_h"] - 1) * v["stride_h"] + v["kh"] - 1) * v["row_stride"] \
            + ((v["out_w"] - 1) * v["stride_w"] + v["kw"] - 1) * v["lpp"] + v["lpp"] - 1
        out = v["dst"] + v["out_h"] * v["out_w"] * v["lpp"] - 1
        return {"ACT": max(inp, out)}
    n = v["rows"] * v["row_lines"]
    act = max(v["src"], v["dst"]) + n - 1
    if v["mode"] == MaskMode.LOADED:
        act = max(act, v["mask_addr"] + (n - 1) // 8)
    return {"ACT": act}


def in_range(ins):
    fp = footprint(ins)
    return fp.get("ACC", 0) < CFG.acc_depth and fp["ACT"] < CFG.act_depth


def reference_writes(ins, act, acc):
    """Ordered (addr, line) writes of one instruction, from the memory state before it."""
    v, mn = ins.values, ins.mnemonic
    A = lambda k: np.array(act[k], dtype=np.int64)   # noqa: E731
    out = []
    if mn == "requant":
        bias, mult, shift = (np.array(acc[v["param"] + k], dtype=np.int64) for k in range(3))
        for r in range(v["rows"]):
            y = numerics.requant(np.array(acc[v["src"] + r], dtype=np.int64), bias, mult, shift,
                                 v["zp"], v["lo"], v["hi"])
            out.append((v["dst"] + r * v["dst_stride"], y))
    elif mn == "vadd":
        for i in range(v["lines"]):
            out.append((v["dst"] + i, numerics.vadd(A(v["src_a"] + i), A(v["src_b"] + i), v["mult_a"],
                                                    v["mult_b"], v["shift"], v["relu"])))
    elif mn in ("maxpool", "avgpool"):
        for oy in range(v["out_h"]):
            for ox in range(v["out_w"]):
                for l in range(v["lpp"]):   # noqa: E741
                    win = [A(v["src"] + (oy * v["stride_h"] + dy) * v["row_stride"]
                             + (ox * v["stride_w"] + dx) * v["lpp"] + l)
                           for dy in range(v["kh"]) for dx in range(v["kw"])]
                    if mn == "maxpool":
                        y = np.max(win, axis=0).astype(np.int8)
                    else:
                        y = numerics.avgpool_scale(np.sum(win, axis=0), v["mult"], v["shift"])
                    out.append((v["dst"] + (oy * v["out_w"] + ox) * v["lpp"] + l, y))
    else:
        mode, param, rl = v["mode"], v["param"], v["row_lines"]
        for r in range(v["rows"]):
            for j in range(rl):
                i = r * rl + j
                data = A(v["src"] + i)
                y = data.copy()
                if mode == MaskMode.LOADED:
                    bm = act[v["mask_addr"] + i // 8]
                    bits = 0
                    for k, byte in enumerate(bm):
                        bits |= (int(byte) & 0xFF) << (8 * k)
                for e in range(COLS):
                    col = j * COLS + e
                    if mode == MaskMode.CAUSAL:
                        masked = col > r + param
                    elif mode == MaskMode.PADDING:
                        masked = col >= param
                    else:
                        masked = (bits >> ((i % 8) * COLS + e)) & 1
                    if masked:
                        y[e] = v["alt"]
                out.append((v["dst"] + i, y.astype(np.int8)))
    return [(a, [int(x) for x in y]) for a, y in out]


# -- random contents and instructions ----------------------------------------------------------

def random_act_line(nrng, sparsity):
    line = nrng.integers(-128, 128, COLS)
    line[nrng.random(COLS) < sparsity] = 0
    return [int(x) for x in line]


def random_memories(rng, nrng):
    act = []
    while len(act) < CFG.act_depth:          # chunks of random sparsity 0..100 %
        sp = rng.choice([0.0, 0.0, 0.3, 0.6, 0.9, 1.0])
        act += [random_act_line(nrng, sp) for _ in range(rng.randint(4, 40))]
    act = act[:CFG.act_depth]
    acc = []
    for _ in range(CFG.acc_depth):
        k = rng.choice([6, 12, 20, 31, 32])
        acc.append([int(x) for x in nrng.integers(-(1 << (k - 1)) if k < 32 else -(1 << 31),
                                                  (1 << (k - 1)) if k < 32 else (1 << 31), COLS)])
    # Parameter triples: "realistic" (requant to ~int8) at lines 0..2 and 3..5 (mult bit 31 set,
    # garbage above the shift's 6 bits); fully random ones wherever the instruction points.
    for base, dirty in ((0, False), (3, True)):
        acc[base] = [int(x) for x in nrng.integers(-5000, 5000, COLS)]
        acc[base + 1] = [int(x) | ((1 << 31) if dirty else 0) for x in nrng.integers(1 << 29, 1 << 31, COLS)]
        acc[base + 1] = [x - (1 << 32) if x >= 1 << 31 else x for x in acc[base + 1]]
        shifts, garbage = nrng.integers(28, 44, COLS), nrng.integers(0, 1 << 25, COLS)
        acc[base + 2] = [int(s) | ((int(g) << 6) if dirty else 0)
                         for s, g in zip(shifts, garbage, strict=True)]
    return act, acc


def overlaps(a0, n0, a1, n1):
    return a0 < a1 + n1 and a1 < a0 + n0


def pick_disjoint(rng, n, avoid, depth):
    """A start line for ``n`` lines in [0, depth) overlapping none of ``avoid`` [(start, n)]."""
    for _ in range(1000):
        a = rng.randint(0, depth - n)
        if not any(overlaps(a, n, s, k) for s, k in avoid):
            return a
    raise RuntimeError("could not place a region")


def random_instr(rng, kind=None):
    kind = kind or rng.choice(["requant", "requant", "vadd", "vadd", "maxpool", "avgpool", "mask", "mask"])
    D, AD = CFG.act_depth, CFG.acc_depth
    if kind == "requant":
        rows = rng.choice([1, 2, rng.randint(1, 24), rng.randint(20, 60)])
        dst_stride = rng.choice([1, 1, 2, 3, 0]) if rows > 1 else rng.randint(0, 5)
        span = (rows - 1) * dst_stride + 1
        lo, hi = sorted(rng.randint(-128, 127) for _ in range(2))
        lo, hi = rng.choice([(lo, hi), (-128, 127), (0, 127), (hi, lo)])
        return make("requant", src=rng.randint(6, AD - rows), dst=rng.randint(0, D - span), rows=rows,
                    dst_stride=dst_stride, param=rng.choice([0, 3, rng.randint(0, AD - 3)]),
                    lo=lo, hi=hi, zp=rng.randint(-128, 127))
    if kind == "vadd":
        lines = rng.choice([1, rng.randint(1, 24), rng.randint(20, 60)])
        sa = rng.randint(0, D - lines)
        sb = sa if rng.random() < 0.15 else pick_disjoint(rng, lines, [(sa, lines)], D)
        if rng.random() < 0.4:
            dst = rng.choice([sa, sb])                       # in place (a and b never partly overlap)
        else:
            dst = pick_disjoint(rng, lines, [(sa, lines), (sb, lines)], D)
        big = rng.random() < 0.2
        ma = rng.randint(-(1 << 15), (1 << 15) - 1) if big else rng.randint(-600, 600)
        mb = rng.randint(-(1 << 15), (1 << 15) - 1) if big else rng.randint(-600, 600)
        return make("vadd", src_a=sa, src_b=sb, dst=dst, lines=lines, mult_a=ma, mult_b=mb,
                    shift=rng.choice([rng.randint(0, 63), rng.randint(6, 12), 0, 8]), relu=rng.randint(0, 1))
    if kind in ("maxpool", "avgpool"):
        kh, kw = rng.choice([1, rng.randint(1, 5), 5]), rng.choice([1, rng.randint(1, 5), 5])
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        lpp = rng.choice([1, 1, 2, 3])
        oh, ow = rng.randint(1, 3), rng.randint(1, 4)
        row_stride = ((ow - 1) * sw + kw) * lpp + rng.choice([0, 0, 1, 5])
        ins = make(kind, src=0, dst=0, lpp=lpp, row_stride=row_stride, out_h=oh, out_w=ow, kh=kh, kw=kw,
                   stride_h=sh, stride_w=sw)
        in_n = footprint(ins)["ACT"] + 1
        src = rng.randint(0, D - in_n)
        dst = pick_disjoint(rng, oh * ow * lpp, [(src, in_n)], D)
        n = kh * kw
        shift = rng.randint(6, 16)
        mult = rng.choice([round((1 << shift) / n), rng.randint(0, (1 << 16) - 1)])
        if rng.random() < 0.1:
            shift = rng.randint(0, 63)
        return ins.replace(src=src, dst=dst, mult=min(mult, (1 << 16) - 1), shift=shift)
    rows, rl = rng.choice([1, rng.randint(1, 8)]), rng.choice([1, rng.randint(1, 6)])
    n = rows * rl
    mode = rng.choice(list(MaskMode))
    if mode == MaskMode.CAUSAL:
        param = rng.choice([rng.randint(-4, rl * COLS), rng.randint(-2048, 2047), 0])
    else:
        param = rng.choice([rng.randint(-3, rl * COLS + 3), rng.randint(-2048, 2047)])
    src = rng.randint(0, D - n)
    dst = src if rng.random() < 0.4 else pick_disjoint(rng, n, [(src, n)], D)
    nb = (n + 7) // 8
    mask_addr = pick_disjoint(rng, nb, [(dst, n)], D)
    return make("mask", src=src, dst=dst, rows=rows, row_lines=rl, mode=mode, param=param,
                mask_addr=mask_addr, alt=rng.randint(-128, 127))


def edge_instrs(rng):
    """Edge geometry that random draws might miss: 1x1 and 5x5 pools, lpp 3, rows 1, dst_stride 0,
    fully in-place ADD, all/nothing masked."""
    D, AD = CFG.act_depth, CFG.acc_depth
    out = []
    pools = (
        ("maxpool", dict(lpp=1, row_stride=1, out_h=1, out_w=1, kh=1, kw=1, stride_h=1, stride_w=1)),
        ("avgpool", dict(lpp=1, row_stride=3, out_h=3, out_w=3, kh=1, kw=1, stride_h=1, stride_w=1,
                         mult=1, shift=0)),
        ("avgpool", dict(lpp=3, row_stride=24, out_h=2, out_w=2, kh=5, kw=5, stride_h=3, stride_w=3,
                         mult=round((1 << 14) / 25), shift=14)),
        ("maxpool", dict(lpp=2, row_stride=10, out_h=2, out_w=3, kh=5, kw=4, stride_h=1, stride_w=1)),
    )
    for kind, g in pools:
        ins = make(kind, src=0, dst=0, **g)
        n_in = footprint(ins)["ACT"] + 1
        src = rng.randint(0, D - n_in)
        n_out = g["out_h"] * g["out_w"] * g["lpp"]
        out.append(ins.replace(src=src, dst=pick_disjoint(rng, n_out, [(src, n_in)], D)))
    out.append(make("requant", src=rng.randint(6, AD - 1), dst=rng.randint(0, D - 1), rows=1, dst_stride=0,
                    param=3, zp=-3))
    out.append(make("requant", src=rng.randint(6, AD - 5), dst=rng.randint(0, D - 1), rows=5, dst_stride=0,
                    param=0, lo=-100, hi=100))
    a = rng.randint(0, D - 20)
    out.append(make("vadd", src_a=a, src_b=a, dst=a, lines=20, mult_a=3, mult_b=5, shift=3, relu=1))
    for mode, param in (("causal", -2048), ("causal", 2047), ("padding", 0), ("padding", -2048)):
        src = rng.randint(0, D - 12)
        out.append(make("mask", src=src, dst=src, rows=3, row_lines=4, mode=mode, param=param, alt=-128))
    return out


# -- the bench ---------------------------------------------------------------------------------

class Bench:
    def __init__(self, dut, rng, nrng, *, stall=0.0, latency=(1, 1), wr_stall=0.0, idle=0.0):
        self.dut = dut
        self.act, self.acc = random_memories(rng, nrng)
        self.act0 = [list(x) for x in self.act]
        sub = lambda: random.Random(rng.random())   # noqa: E731
        self.ports = [
            ReadPortModel(dut, "acc_rd", self.acc, acc_line(COLS), stall=stall, latency=latency, rng=sub()),
            ReadPortModel(dut, "act_rd_a", self.act, act_line(COLS), stall=stall, latency=latency, rng=sub()),
            ReadPortModel(dut, "act_rd_b", self.act, act_line(COLS), stall=stall, latency=latency, rng=sub()),
            WritePortModel(dut, "act_wr", self.act, act_line(COLS), stall=wr_stall, rng=sub(),
                           on_write=self._on_write),
        ]
        self.src = StreamSource(dut, "instr", idle=idle, rng=sub())
        self.ndone = 0
        self.log = [[]]
        self.accept_cycle, self.done_cycle = [], []
        self.cycle = 0
        self._mon = cocotb.start_soon(self._monitor())

    def _on_write(self, addr, line):
        self.log[self.ndone].append((addr, list(line)))

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.clk)
            await ReadOnly()
            self.cycle += 1
            if int(self.dut.instr__valid.value) and int(self.dut.instr__ready.value):
                self.accept_cycle.append(self.cycle)
            if int(self.dut.done.value):
                self.ndone += 1
                self.done_cycle.append(self.cycle)
                self.log.append([])

    def close(self):
        for p in self.ports:
            p._task.kill()
        self.src._task.kill()
        self._mon.kill()

    async def run(self, program, *, expect_done=None, timeout=200_000):
        self.src.extend([encode(i) for i in program])
        want = len(program) if expect_done is None else expect_done
        for _ in range(timeout):
            await FallingEdge(self.dut.clk)
            if self.ndone >= want and (expect_done is None or int(self.dut.error.value)):
                break
        for _ in range(30):                     # let stray activity show up
            await FallingEdge(self.dut.clk)
        return self.ndone


def check_program(bench, program, ref_act, ref_acc):
    """Compare the write log with the reference, instruction by instruction."""
    for k, ins in enumerate(program):
        exp = reference_writes(ins, ref_act, ref_acc)
        got = bench.log[k]
        if got != exp:
            pairs = enumerate(zip(got, exp, strict=False))
            first = next((n for n, (g, e) in pairs if g != e), min(len(got), len(exp)))
            raise AssertionError(
                f"instruction {k} ({ins}): {len(got)} writes, expected {len(exp)}; first difference at "
                f"write {first}: got {got[first] if first < len(got) else None}, "
                f"expected {exp[first] if first < len(exp) else None}")
        for a, y in exp:
            ref_act[a] = y


def summarize(program):
    kinds = {}
    for i in program:
        key = i.mnemonic + (f".{i.mode.name.lower()}" if i.mnemonic == "mask" else "")
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


@cocotb.test()
async def random_program(dut):
    """Seeded random programs of every vop and mask mode, back to back, under random port timing."""
    rng, nrng, _ = seeded(dut)
    start_clock(dut)
    n_instr = 36 if CFG.name == "small" else 24
    timings = ((0.3, (1, 4), 0.3, 0.3), (0.0, (1, 1), 0.0, 0.0), (0.5, (1, 7), 0.6, 0.0))
    for stall, lat, wr_stall, idle in timings:
        await reset(dut)
        bench = Bench(dut, rng, nrng, stall=stall, latency=lat, wr_stall=wr_stall, idle=idle)
        program = [random_instr(rng) for _ in range(n_instr)]
        program += [random_instr(rng, k) for k in ("requant", "vadd", "maxpool", "avgpool", "mask")]
        program += edge_instrs(rng)
        rng.shuffle(program)
        assert all(in_range(i) for i in program)
        ref_act, ref_acc = [list(x) for x in bench.act0], [list(x) for x in bench.acc]
        done = await bench.run(program)
        assert int(dut.error.value) == 0, f"unexpected error {int(dut.error.value)}"
        assert done == len(program), f"{done} done pulses for {len(program)} instructions"
        check_program(bench, program, ref_act, ref_acc)
        assert bench.act == ref_act, "ACT contents differ from the reference (stray write?)"
        assert int(dut.busy.value) == 0
        dut._log.info(f"stall={stall} latency={lat}: {len(program)} instructions {summarize(program)}, "
                      f"{sum(len(x) for x in bench.log)} lines written, busy_cycles="
                      f"{int(dut.busy_cycles.value)}, stall_cycles={int(dut.stall_cycles.value)}")
        bench.close()


def boundary_cases(rng):
    """(instruction at the last legal line, the same one line further) for every footprint rule."""
    D, AD = CFG.act_depth, CFG.acc_depth
    out = []

    def place(ins, field, target, scratch="ACT"):
        """Move ``field`` until the footprint is exactly ``target - 1`` (ok) / ``target`` (bad)."""
        f = ins.values[field]
        while (cur := footprint(ins.replace(**{field: f}))[scratch]) != target - 1:
            assert cur < target - 1, (ins, field)
            f += target - 1 - cur
        return ins.replace(**{field: f}), ins.replace(**{field: f + 1})

    rq = make("requant", src=10, dst=5, rows=7, dst_stride=3, param=0, lo=-128, hi=127)
    out.append(place(rq, "dst", D))
    out.append(place(rq, "src", AD, "ACC"))
    out.append(place(rq.replace(rows=2), "param", AD, "ACC"))
    va = make("vadd", src_a=3, src_b=40, dst=80, lines=9, mult_a=3, mult_b=-2, shift=1)
    for f in ("src_a", "src_b", "dst"):
        out.append(place(va, f, D))
    for kind in ("maxpool", "avgpool"):
        pl = make(kind, src=0, dst=0, lpp=2, row_stride=11, out_h=2, out_w=2, kh=3, kw=2, stride_h=2,
                  stride_w=2, mult=1 << 8, shift=11)
        n_in = footprint(pl)["ACT"] + 1
        ok, bad = place(pl.replace(dst=n_in), "src", D)        # input footprint at the end
        out.append((ok.replace(dst=0), bad.replace(dst=0)))
        out.append(place(pl.replace(src=0, dst=n_in), "dst", D))
    mk = make("mask", src=0, dst=20, rows=3, row_lines=4, mode="causal", param=1, mask_addr=40, alt=-7)
    out.append(place(mk, "src", D))
    out.append(place(mk.replace(src=100, dst=0), "dst", D))
    mkl = mk.replace(mode="loaded", src=0, dst=40, mask_addr=0, rows=5, row_lines=5)
    out.append(place(mkl, "mask_addr", D))
    return out


@cocotb.test()
async def spad_range_errors(dut):
    """SPAD_RANGE at every footprint rule's boundary: nothing executed, sticky, ready drops."""
    rng, nrng, _ = seeded(dut)
    start_clock(dut)
    for ok, bad in boundary_cases(rng):
        assert in_range(ok) and not in_range(bad), (ok, bad)
        # The legal instruction at the very end of the scratchpad runs and is exact.
        await reset(dut)
        bench = Bench(dut, rng, nrng, stall=0.2, latency=(1, 3), wr_stall=0.2)
        ref_act, ref_acc = [list(x) for x in bench.act0], [list(x) for x in bench.acc]
        first = random_instr(rng, "vadd")
        assert await bench.run([first, ok]) == 2
        assert int(dut.error.value) == 0
        check_program(bench, [first, ok], ref_act, ref_acc)
        # The illegal one: done for the instruction before it, then SPAD_RANGE and nothing else.
        await bench.run([bad, first], expect_done=2)
        assert int(dut.error.value) == ErrorCode.SPAD_RANGE.value, f"{bad}: error {int(dut.error.value)}"
        assert bench.ndone == 2, f"{bad}: done pulses after the error"
        assert bench.log[2] == [], f"{bad}: wrote {bench.log[2][:3]}"
        assert bench.act == ref_act, f"{bad}: ACT changed"
        assert int(dut.instr__ready.value) == 0 and int(dut.busy.value) == 0
        for _ in range(20):
            await FallingEdge(dut.clk)
        assert int(dut.error.value) == ErrorCode.SPAD_RANGE.value, "error not sticky"
        assert bench.src.sent == 3, "an instruction was accepted after the error"
        bench.close()
    # Footprints far beyond any depth (every field at its maximum): no truncation in the check.
    extremes = [
        make("requant", src=16383, dst=16383, rows=4095, dst_stride=255, param=16383),
        make("requant", src=0, dst=0, rows=4095, dst_stride=255, param=0),
        make("vadd", src_a=16383, src_b=16383, dst=16383, lines=4095),
        make("maxpool", src=16383, dst=16383, lpp=63, row_stride=16383, out_h=255, out_w=255, kh=15, kw=15,
             stride_h=7, stride_w=7),
        make("avgpool", src=0, dst=0, lpp=63, row_stride=16383, out_h=255, out_w=255, kh=15, kw=15,
             stride_h=7, stride_w=7),
        make("mask", src=0, dst=0, rows=1023, row_lines=255, mode="loaded", mask_addr=16383),
    ]
    for bad in extremes:
        assert not in_range(bad)
        await reset(dut)
        bench = Bench(dut, rng, nrng)
        await bench.run([bad], expect_done=0, timeout=200)
        assert int(dut.error.value) == ErrorCode.SPAD_RANGE.value, f"{bad}: error {int(dut.error.value)}"
        assert bench.log == [[]] and bench.act == bench.act0, f"{bad}: wrote something"
        bench.close()


@cocotb.test()
async def throughput(dut):
    """Lines per cycle per operation with ideal ports (latency 1, no stalls); results checked too.

    Instructions are queued back to back, so each is accepted and checked while the previous one
    runs: the cycles counted run from the later of its acceptance and the previous done pulse."""
    rng, nrng, _ = seeded(dut)
    start_clock(dut)
    await reset(dut)
    bench = Bench(dut, rng, nrng)
    n = 192
    program = [
        make("requant", src=6, dst=0, rows=n, dst_stride=1, param=0, lo=-128, hi=127),
        make("vadd", src_a=0, src_b=300, dst=600, lines=n, mult_a=100, mult_b=-50, shift=7),
        make("mask", src=0, dst=0, rows=12, row_lines=16, mode="loaded", mask_addr=900, alt=3),
        make("mask", src=0, dst=300, rows=16, row_lines=12, mode="causal", param=5, alt=-1),
        make("maxpool", src=0, dst=600, lpp=1, row_stride=18, out_h=8, out_w=8, kh=3, kw=3,
             stride_h=2, stride_w=2),
        make("avgpool", src=0, dst=600, lpp=2, row_stride=36, out_h=8, out_w=16, kh=2, kw=2,
             stride_h=1, stride_w=1, mult=64, shift=8),
    ]
    ref_act, ref_acc = [list(x) for x in bench.act0], [list(x) for x in bench.acc]
    assert await bench.run(program) == len(program)
    check_program(bench, program, ref_act, ref_acc)
    results = {}
    for k, ins in enumerate(program):
        # From when the engine could start it (accepted, previous one done) to its done pulse.
        begin = max(bench.accept_cycle[k], bench.done_cycle[k - 1] if k else 0)
        cycles = bench.done_cycle[k] - begin
        outs = len(bench.log[k])
        v = ins.values
        reads = {"requant": v.get("rows", 0) + 3, "vadd": v.get("lines"), "mask": outs,
                 "maxpool": outs * v.get("kh", 1) * v.get("kw", 1),
                 "avgpool": outs * v.get("kh", 1) * v.get("kw", 1)}[ins.mnemonic]
        key = ins.mnemonic + (f".{ins.mode.name.lower()}" if ins.mnemonic == "mask" else "")
        results[key] = {"cycles": cycles, "out_lines": outs, "in_lines": reads,
                        "out_lines_per_cycle": round(outs / cycles, 3),
                        "in_lines_per_cycle": round(reads / cycles, 3)}
        dut._log.info(f"{key}: {outs} lines out, {reads} lines in, {cycles} cycles to done: "
                      f"{outs / cycles:.3f} out/cycle, {reads / cycles:.3f} in/cycle")
    out_path = os.environ.get("SPARROW_VE_THROUGHPUT")
    if out_path:
        with open(out_path, "w") as fh:
            json.dump({"preset": CFG.name, "ops": results, "busy_cycles": int(dut.busy_cycles.value),
                       "stall_cycles": int(dut.stall_cycles.value)}, fh, indent=1)
    bench.close()
