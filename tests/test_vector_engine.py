"""VECTOR engine: arithmetic units under amaranth.sim, the whole engine under cocotb/Verilator.

The references are ``sparrow.golden.numerics`` (arithmetic) and the ``docs/isa.md`` formulas
written out here / in ``tb/tb_vector_engine.py`` (geometry, masks, footprints).
"""

import os
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from sparrow.sim.cocotb_run import default_seed
from sparrow.config import preset
from sparrow.golden import numerics
from sparrow.hdl.mask_unit import MaskUnit
from sparrow.hdl.requant_unit import RequantUnit
from sparrow.hdl.vector_engine import VectorEngine, vector_engine_verilog
from sparrow.errors import ErrorCode
from sparrow.isa import MaskMode
from sparrow.sim.cocotb_run import run_cocotb

SEED = default_seed("test_vector_engine")


def _rng(salt):
    print(f"SPARROW_SEED={SEED}")
    return np.random.default_rng([SEED, salt])


# -- RequantUnit ---------------------------------------------------------------------------------

def _run_unit(cols, batches):
    """Feed ``batches`` of (config, vectors) through a RequantUnit one line per cycle.

    A batch is ``(cfg_dict, [dict(x=..., a=..., b=...), ...])``; the configuration is applied
    while the pipeline is empty. Returns the output lines in order.
    """
    dut = RequantUnit(cols)
    outs = []

    async def tb(ctx):
        for conf, vecs in batches:
            for k, v in conf.items():
                ctx.set(getattr(dut, k), v)
            for v in vecs + [None] * (RequantUnit.LATENCY + 1):
                if v is not None:
                    ctx.set(dut.i_valid, 1)
                    ctx.set(dut.i_x, [int(e) for e in v.get("x", [0] * cols)])
                    ctx.set(dut.i_a, [int(e) for e in v.get("a", [0] * cols)])
                    ctx.set(dut.i_b, [int(e) for e in v.get("b", [0] * cols)])
                else:
                    ctx.set(dut.i_valid, 0)
                await ctx.tick()
                if ctx.get(dut.o_valid):
                    y = ctx.get(dut.o_y)
                    outs.append([int(y[i]) for i in range(cols)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return outs


def _requant_cases(rng, cols):
    """(acc, bias, mult_raw, shift_raw, zp, lo, hi) batches: random, ties at every shift, extremes."""
    i32 = np.iinfo(np.int32)
    cases = []
    for s in range(64):                       # ties (and near ties) at every shift
        a = min(max(s - 1, 0), 30)            # mult = 2**a (bit 31 maybe set: ignored)
        mult = np.full(cols, 1 << a, dtype=np.int64) | rng.choice([0, 1 << 31], cols)
        e = max(s - 1 - a, 0)                 # t = acc + bias = k * 2**e, |t| < 2**32
        kmax = min(300, ((1 << 32) - 2) >> e)
        t = (rng.integers(-kmax, kmax + 1, (6, cols)) << e) + rng.integers(-1, 2, (6, cols)) * (s % 3 == 0)
        t[0, 0] = -(1 << 32) if s == 63 else t[0, 0]      # the one exact tie at shift 63
        bias = t[0] // 2                      # per column; keeps acc and bias inside int32
        acc = np.clip(t - bias, i32.min, i32.max)
        shift = np.full(cols, s) | (rng.integers(0, 1 << 25, cols) << 6)   # bits above 6 ignored
        cases.append((acc, bias, mult, shift, int(rng.integers(-128, 128)), -128, 127))
    for _ in range(24):                       # random, everything random
        acc = rng.integers(i32.min, i32.max, (8, cols), endpoint=True)
        acc[0, :] = i32.max
        acc[1, :] = i32.min
        bias = rng.integers(i32.min, i32.max, cols, endpoint=True)
        bias[0] = i32.max
        mult = rng.integers(0, 1 << 32, cols)
        mult[0] = 0x7FFFFFFF
        mult[-1] = 0xFFFFFFFF
        shift = rng.integers(0, 64, cols)
        shift[0] = 63
        if cols > 1:
            shift[1] = 0
        lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
        if rng.random() < 0.25:
            lo, hi = hi, lo                   # lo > hi: numerics gives hi everywhere
        cases.append((acc, bias, mult, shift, int(rng.integers(-128, 128)), lo, hi))
    for _ in range(8):                        # realistic: small shifts around 2**-k scaling
        acc = rng.integers(-(1 << 20), 1 << 20, (8, cols))
        bias = rng.integers(-(1 << 16), 1 << 16, cols)
        mult = rng.integers(1 << 29, 1 << 31, cols)
        shift = rng.integers(30, 50, cols)
        cases.append((acc, bias, mult, shift, int(rng.integers(-20, 20)), 0, 127))
    return cases


@pytest.mark.parametrize("cols", [4, 2])
def test_requant_unit_matches_numerics(cols):
    rng = _rng(1 + cols)
    cases = _requant_cases(rng, cols)
    batches, expect = [], []
    for acc, bias, mult, shift, zp, lo, hi in cases:
        conf = dict(use_add=0, bias=[int(b) for b in bias], mult=[int(v) & 0x7FFFFFFF for v in mult],
                    shift=[int(v) & 63 for v in shift], zp=zp, lo=lo, hi=hi)
        batches.append((conf, [dict(x=row) for row in acc]))
        expect += numerics.requant(acc, bias, mult, shift, zp, lo, hi).astype(int).tolist()
    got = _run_unit(cols, batches)
    assert len(got) == len(expect)
    bad = [(i, g, e) for i, (g, e) in enumerate(zip(got, expect, strict=True)) if g != e]
    assert not bad, f"{len(bad)} mismatches, first {bad[:3]}"


def test_requant_unit_add_and_avg_paths():
    cols = 4
    rng = _rng(7)
    batches, expect = [], []
    for n in range(40):
        shift = n if n < 40 else int(rng.integers(0, 64))
        ma, mb = (int(v) for v in rng.integers(-(1 << 15), 1 << 15, 2))
        if n % 5 == 0:
            ma, mb = -(1 << 15), -(1 << 15)
        relu = n % 2
        a = rng.integers(-128, 128, (6, cols))
        b = rng.integers(-128, 128, (6, cols))
        a[0], b[0] = -128, -128
        conf = dict(use_add=1, bias=[0] * cols, mult=[0] * cols, shift=[shift] * cols, zp=0,
                    lo=0 if relu else -128, hi=127, mult_a=ma, mult_b=mb)
        batches.append((conf, [dict(a=ra, b=rb) for ra, rb in zip(a, b, strict=True)]))
        expect += numerics.vadd(a, b, ma, mb, shift, relu).astype(int).tolist()
    for n in range(30):                       # avgpool: window sums of up to 15x15 int8
        mult, shift = int(rng.integers(0, 1 << 16)), int(rng.integers(0, 64)) if n > 3 else n
        sums = rng.integers(-128 * 225, 127 * 225, (6, cols), endpoint=True)
        conf = dict(use_add=0, bias=[0] * cols, mult=[mult] * cols, shift=[shift] * cols, zp=0,
                    lo=-128, hi=127)
        batches.append((conf, [dict(x=s) for s in sums]))
        expect += numerics.avgpool_scale(sums, mult, shift).astype(int).tolist()
    got = _run_unit(cols, batches)
    assert got == expect


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_requant_unit_rejects_bad_cols():
    for bad in (0, 3, 128, "4", True):
        with pytest.raises(ValueError, match="cols"):
            RequantUnit(bad)


# -- MaskUnit ------------------------------------------------------------------------------------

def _mask_reference(mode, param, rows, row_lines, cols, bitmaps):
    """docs/isa.md MASK: mask bits per data line, in line order."""
    out = []
    for r in range(rows):
        for j in range(row_lines):
            i = r * row_lines + j
            bits = []
            for e in range(cols):
                col = j * cols + e
                if mode == MaskMode.CAUSAL:
                    bits.append(int(col > r + param))
                elif mode == MaskMode.PADDING:
                    bits.append(int(col >= param))
                else:
                    bits.append((bitmaps[i // 8] >> ((i % 8) * cols + e)) & 1)
            out.append(bits)
    return out


@pytest.mark.parametrize("cols", [4, 8])
def test_mask_unit_matches_isa(cols):
    rng = _rng(11 + cols)
    dut = MaskUnit(cols)
    runs = []
    for n in range(30):
        mode = [MaskMode.CAUSAL, MaskMode.PADDING, MaskMode.LOADED][n % 3]
        rows, row_lines = int(rng.integers(1, 7)), int(rng.integers(1, 6))
        if n == 3:
            rows, row_lines = 2, 255
        param = int(rng.integers(-2048, 2048)) if n % 4 == 0 else int(rng.integers(-8, row_lines * cols + 4))
        bitmaps = [int(v) for v in rng.integers(0, 1 << 62, (rows * row_lines + 7) // 8)]
        bitmaps = [(b << 2 | 3) & ((1 << 8 * cols) - 1) for b in bitmaps]
        runs.append((mode, param, rows, row_lines, bitmaps))
    got_all = []

    async def tb(ctx):
        for mode, param, rows, row_lines, bitmaps in runs:
            ctx.set(dut.mode, mode)
            ctx.set(dut.param, param)
            ctx.set(dut.row_lines, row_lines)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            got, need = [], []
            for i in range(rows * row_lines):
                ctx.set(dut.bitmap, bitmaps[i // 8] if i % 8 == 0 else 0)   # only valid on need
                need.append(ctx.get(dut.need_bitmap))
                if not need[-1] and mode == MaskMode.LOADED:
                    ctx.set(dut.bitmap, bitmaps[i // 8])                    # owner holds it
                mask = ctx.get(dut.mask)
                got.append([(mask >> e) & 1 for e in range(cols)])
                ctx.set(dut.step, 1)
                await ctx.tick()
                ctx.set(dut.step, 0)
                if rng.random() < 0.3:
                    await ctx.tick()          # idle cycles do not advance the unit
            got_all.append((got, need))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    for (mode, param, rows, row_lines, bitmaps), (got, need) in zip(runs, got_all, strict=True):
        expect = _mask_reference(mode, param, rows, row_lines, cols, bitmaps)
        assert got == expect, (mode, param, rows, row_lines)
        exp_need = [int(mode == MaskMode.LOADED and i % 8 == 0) for i in range(rows * row_lines)]
        assert need == exp_need


# -- VectorEngine --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_vector_engine_rejects_bad_parameters():
    with pytest.raises(ValueError, match="cfg"):
        VectorEngine("small")
    with pytest.raises(ValueError, match="rd_depth"):
        VectorEngine(preset("small"), rd_depth=1)
    with pytest.raises(ValueError, match="wr_depth"):
        VectorEngine(preset("small"), wr_depth=0)


@pytest.mark.verilator
@pytest.mark.parametrize("preset_name", ["small", "default"])
def test_vector_engine_cocotb(preset_name):
    cfg = preset(preset_name)
    name = f"vector_engine_{preset_name}"
    testcase = None if preset_name == "small" else ["random_program", "spad_range_errors"]
    run_cocotb(None, name=name, verilog_text=vector_engine_verilog(cfg, name), test_module="tb_vector_engine",
               testcase=testcase, seed=SEED, extra_env={"SPARROW_PRESET": preset_name})


def _tb_module():
    """The cocotb testbench's reference model and generators (plain Python; preset ``small``)."""
    import importlib.util
    from pathlib import Path
    os.environ.setdefault("SPARROW_PRESET", "small")
    path = Path(__file__).resolve().parent.parent / "tb" / "tb_vector_engine.py"
    spec = importlib.util.spec_from_file_location("tb_vector_engine_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("rd_depth, wr_depth", [(2, 2), (8, 2)])
def test_vector_engine_minimal_credits_amaranth_sim(rd_depth, wr_depth):
    """Tiny credit budgets (they bind all the time) with random port timing, in amaranth.sim."""
    tbm = _tb_module()
    cfg = tbm.CFG
    rng = random.Random(SEED)
    nrng = np.random.default_rng(SEED)
    act, acc = tbm.random_memories(rng, nrng)
    program = [tbm.random_instr(rng, k) for k in ("requant", "vadd", "maxpool", "avgpool", "mask") * 3]
    program += tbm.edge_instrs(rng)[:4]
    ref_act, ref_acc = [list(x) for x in act], [list(x) for x in acc]
    expect = []
    for ins in program:
        exp = tbm.reference_writes(ins, ref_act, ref_acc)
        for a, y in exp:
            ref_act[a] = y
        expect.append(exp)

    dut = VectorEngine(cfg, rd_depth=rd_depth, wr_depth=wr_depth)
    log = [[]]
    from sparrow.isa import encode

    async def tb(ctx):
        ports = [(dut.acc_rd, acc), (dut.act_rd_a, act), (dut.act_rd_b, act)]
        pending = [[] for _ in ports]
        queue = [encode(i) for i in program]
        for cycle in range(20000):
            for (port, mem), pend in zip(ports, pending, strict=True):
                if pend and pend[0][0] <= cycle:
                    ctx.set(port.rsp.valid, 1)
                    ctx.set(port.rsp.payload, pend.pop(0)[1])
                else:
                    ctx.set(port.rsp.valid, 0)
                rdy = rng.random() > 0.3
                ctx.set(port.cmd.ready, rdy)
                if rdy and ctx.get(port.cmd.valid):
                    due = max(cycle + rng.randint(1, 3), pend[-1][0] + 1 if pend else 0)
                    pend.append((due, mem[ctx.get(port.cmd.payload)]))
            wrdy = rng.random() > 0.5
            ctx.set(dut.act_wr.cmd.ready, wrdy)
            if wrdy and ctx.get(dut.act_wr.cmd.valid):
                cmd = ctx.get(dut.act_wr.cmd.payload)
                line = [int(cmd.data[e]) for e in range(cfg.cols)]
                act[int(cmd.addr)] = line
                log[-1].append((int(cmd.addr), line))
            ctx.set(dut.instr.valid, bool(queue))
            if queue:
                ctx.set(dut.instr.payload.as_value(), queue[0])
                if ctx.get(dut.instr.ready):
                    queue.pop(0)
            if ctx.get(dut.done):
                log.append([])
            assert ctx.get(dut.error) == ErrorCode.NONE
            if len(log) == len(program) + 1:
                break
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert len(log) == len(program) + 1, f"{len(log) - 1} of {len(program)} instructions done"
    for k, ins in enumerate(program):
        assert log[k] == expect[k], f"instruction {k}: {ins}"
    assert act == ref_act
