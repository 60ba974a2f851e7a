"""MatrixEngine: amaranth.sim unit tests (fast) and cocotb on Verilator (tb/tb_matrix_engine.py)."""

import random

import numpy as np
import pytest
from amaranth import Elaboratable, Module

from sparrow.sim.cocotb_run import default_seed
from sparrow import isa
from sparrow.config import HwConfig, preset
from sparrow.errors import ErrorCode
from sparrow.golden.numerics import matmul_acc
from sparrow.hdl.matrix_engine import LaneOutput, MatrixEngine, MatrixLane, connect_lane_output, verilog_text
from sparrow.sim.cocotb_run import run_cocotb
from sparrow.sim.amsim import run_testbench

TINY = HwConfig(rows=2, cols=4, act_depth=64, wgt_depth=32, acc_depth=32, act_banks=1, acc_banks=1,
                name="tiny")
SEED = default_seed("test_matrix_engine")


def _ceil_div(a, b):
    return -(-a // b)


def _reference(cols, f, act, wgt, acc):
    k, L = f["k"], _ceil_div(f["k"], cols)
    for mo in range(f["m_outer"]):
        for mi in range(f["m_inner"]):
            m = mo * f["m_inner"] + mi
            a = f["a_addr"] + mo * f["a_outer_stride"] + mi * f["a_stride"]
            row = act[a:a + L].reshape(-1)[:k]
            old = acc[f["acc_addr"] + m][None, :] if f["accumulate"] else None
            acc[f["acc_addr"] + m] = matmul_acc(row[None, :], wgt[f["w_addr"]:f["w_addr"] + k], old)[0]


async def _read_port(ctx, port, mem, ebits, cols, rng, stall, pending, cycle):
    """One cycle of a read-port model: present due response, accept a command maybe."""
    if pending and pending[0][0] <= cycle:
        ctx.set(port.rsp.valid, 1)
        ctx.set(port.rsp.payload.as_value(), pending.pop(0)[1])
    else:
        ctx.set(port.rsp.valid, 0)
    rdy = rng.random() >= stall
    ctx.set(port.cmd.ready, rdy)
    if rdy and ctx.get(port.cmd.valid):
        addr = ctx.get(port.cmd.payload)
        mask = (1 << ebits) - 1
        word = sum((int(v) & mask) << (ebits * e) for e, v in enumerate(mem[addr]))
        due = max(cycle + rng.randint(1, 3), pending[-1][0] + 1 if pending else 0)
        pending.append((due, word))


def _run_engine(cfg, zero_skip, instrs, act, wgt, acc, *, seed, stall=0.3, max_cycles=20000, wr_lag=0):
    """Simulate ``instrs`` (field dicts) back to back with random port stalls; returns
    (acc memory, counters, done count, error). ``wr_lag`` > 0 models a sliced write port: an
    accepted write reaches memory ``wr_lag`` cycles later, with ``acc_wr_pending`` high meanwhile."""
    dut = MatrixEngine(cfg, zero_skip=zero_skip)
    rng = random.Random(seed)
    acc = acc.copy()
    out = {}

    async def tb(ctx):
        pend = {}
        words = [isa.encode(isa.make("matmul", **f)) for f in instrs]
        dones = 0
        cycle = 0
        landing = []                     # (cycle due, addr, values) of writes not yet in memory
        while dones < len(instrs) and cycle < max_cycles:
            cycle += 1
            while landing and landing[0][0] <= cycle:
                _, addr, vals = landing.pop(0)
                acc[addr] = vals
            ctx.set(dut.acc_wr_pending, bool(landing))
            for i in range(cfg.rows):
                for key, port, mem in (("a", dut.act_rd[i], act), ("w", dut.wgt_rd[i], wgt)):
                    q = pend.setdefault((key, i), [])
                    await _read_port(ctx, port, mem, 8, cfg.cols, rng, stall, q, cycle)
            q = pend.setdefault("acc", [])
            await _read_port(ctx, dut.acc_rd, acc, 32, cfg.cols, rng, stall, q, cycle)
            wr = rng.random() >= stall
            ctx.set(dut.acc_wr.cmd.ready, wr)
            if wr and ctx.get(dut.acc_wr.cmd.valid):
                raw = ctx.get(dut.acc_wr.cmd.payload.as_value())
                ab = cfg.acc_addr_bits
                addr, dat = raw & ((1 << ab) - 1), raw >> ab
                vals = [(dat >> (32 * c)) & 0xFFFFFFFF for c in range(cfg.cols)]
                vals = np.array(vals, dtype=np.uint32).view(np.int32)
                if wr_lag:
                    landing.append((cycle + wr_lag, addr, vals))
                else:
                    acc[addr] = vals
            ctx.set(dut.instr.valid, bool(words))
            if words:
                ctx.set(dut.instr.payload.as_value(), words[0])
                if ctx.get(dut.instr.ready):
                    words.pop(0)
            dones += ctx.get(dut.done)
            # ready is a register of its own: it must say exactly "idle and no error"
            assert ctx.get(dut.instr.ready) == (not ctx.get(dut.busy) and ctx.get(dut.error.as_value()) == 0), cycle
            await ctx.tick()
        for _, addr, vals in landing:
            acc[addr] = vals
        out.update(dones=dones, error=ctx.get(dut.error), macs=ctx.get(dut.macs),
                   skipped=ctx.get(dut.macs_skipped), busy=ctx.get(dut.busy))

    run_testbench(dut, tb)
    return acc, out


def _rand_instr(rng, cfg):
    cols = cfg.cols
    k = rng.choice([1, cols - 1, cols, cols + 1, rng.randint(1, 12)])
    L = _ceil_div(k, cols)
    mi, mo = rng.randint(1, 3), rng.randint(1, 2)
    f = dict(k=k, m_inner=mi, m_outer=mo, a_stride=rng.choice([0, L]), a_outer_stride=rng.randint(0, 4),
             accumulate=rng.randint(0, 1))
    amax = (mo - 1) * f["a_outer_stride"] + (mi - 1) * f["a_stride"] + L - 1
    f.update(a_addr=rng.randint(0, cfg.act_depth - 1 - amax), w_addr=rng.randint(0, cfg.wgt_depth - k),
             acc_addr=rng.randint(0, cfg.acc_depth - mi * mo))
    return f


@pytest.mark.parametrize("zero_skip", [True, False])
def test_engine_amaranth_sim(zero_skip):
    """Whole engine (2 lanes x 4 MACs) in amaranth.sim: random MATMULs, sparse activations with
    whole zero lines, random stalls on every port; ACC compared with matmul_acc."""
    rng = random.Random(SEED)
    nrng = np.random.default_rng(SEED)
    print(f"SPARROW_SEED={SEED}")
    cfg = TINY
    act = nrng.integers(-128, 128, size=(cfg.act_depth, cfg.cols)).astype(np.int8)
    act[nrng.random(act.shape) < 0.6] = 0
    act[nrng.random(cfg.act_depth) < 0.3] = 0
    wgt = nrng.integers(-128, 128, size=(cfg.wgt_depth, cfg.cols)).astype(np.int8)
    acc = nrng.integers(-(1 << 31), 1 << 31, size=(cfg.acc_depth, cfg.cols)).astype(np.int32)
    instrs = [_rand_instr(rng, cfg) for _ in range(5)]
    want = acc.copy()
    macs = skipped = 0
    for f in instrs:
        _reference(cfg.cols, f, act, wgt, want)
        for mo in range(f["m_outer"]):
            for mi in range(f["m_inner"]):
                a = f["a_addr"] + mo * f["a_outer_stride"] + mi * f["a_stride"]
                row = act[a:a + _ceil_div(f["k"], cfg.cols)].reshape(-1)[:f["k"]]
                macs += cfg.cols * int(np.count_nonzero(row))
                skipped += cfg.cols * (f["k"] - int(np.count_nonzero(row)))
    got, out = _run_engine(cfg, zero_skip, instrs, act, wgt, acc, seed=SEED)
    assert out["error"] == ErrorCode.NONE
    assert out["dones"] == len(instrs)
    assert np.array_equal(got, want), np.argwhere(np.any(got != want, axis=1)).ravel()
    assert (out["macs"], out["skipped"]) == (macs, skipped)


def test_engine_waits_for_sliced_writes_to_land():
    """Accumulating MATMULs into the same rows back to back, through a write port whose writes
    land 40 cycles after acceptance (``acc_wr_pending``): each instruction's first accumulator
    read waits for the previous one's writes, so every sum includes them."""
    rng = random.Random(SEED)
    nrng = np.random.default_rng(SEED)
    print(f"SPARROW_SEED={SEED}")
    cfg = TINY
    act = nrng.integers(-128, 128, size=(cfg.act_depth, cfg.cols)).astype(np.int8)
    wgt = nrng.integers(-128, 128, size=(cfg.wgt_depth, cfg.cols)).astype(np.int8)
    acc = nrng.integers(-(1 << 20), 1 << 20, size=(cfg.acc_depth, cfg.cols)).astype(np.int32)
    first = _rand_instr(rng, cfg)
    instrs = [dict(first, accumulate=1, k=1, m_inner=1, m_outer=1, a_addr=a) for a in range(4)]
    want = acc.copy()
    for f in instrs:
        _reference(cfg.cols, f, act, wgt, want)
    got, out = _run_engine(cfg, True, instrs, act, wgt, acc, seed=SEED, stall=0.0, wr_lag=40)
    assert out["error"] == ErrorCode.NONE and out["dones"] == len(instrs)
    assert np.array_equal(got, want), np.argwhere(np.any(got != want, axis=1)).ravel()


def test_engine_spad_range_amaranth_sim():
    """ACC footprint one line too far: SPAD_RANGE, no write, no done."""
    cfg = TINY
    act = np.ones((cfg.act_depth, cfg.cols), np.int8)
    wgt = np.ones((cfg.wgt_depth, cfg.cols), np.int8)
    acc = np.zeros((cfg.acc_depth, cfg.cols), np.int32)
    f = dict(a_addr=0, w_addr=0, acc_addr=cfg.acc_depth - 3, k=3, m_inner=2, m_outer=2, a_stride=1,
             a_outer_stride=1, accumulate=0)
    got, out = _run_engine(cfg, True, [f], act, wgt, acc, seed=1, max_cycles=300)
    assert out["error"] == ErrorCode.SPAD_RANGE
    assert out["dones"] == 0 and out["busy"] == 1
    assert not got.any()


def test_bad_parameters():
    with pytest.raises(ValueError, match="cfg"):
        MatrixEngine("small")
    with pytest.raises(ValueError, match="line_depth"):
        MatrixEngine(TINY, line_depth=1)
    with pytest.raises(ValueError, match="out_depth"):
        MatrixLane(TINY, out_depth=0)
    with pytest.raises(ValueError, match="write_depth"):
        MatrixEngine(TINY, write_depth=0)


def _cocotb(preset_name, zero_skip, testcase=None):
    cfg = preset(preset_name)
    name = f"matrix_engine_{preset_name}_{'skip' if zero_skip else 'dense'}"
    text = verilog_text(MatrixEngine(cfg, zero_skip=zero_skip), name)
    run_cocotb(None, name=name, test_module="tb_matrix_engine", verilog_text=text, testcase=testcase,
               extra_env={"SPARROW_PRESET": preset_name, "SPARROW_ZERO_SKIP": str(int(zero_skip))})


@pytest.mark.verilator
@pytest.mark.parametrize("zero_skip", [True, False])
def test_cocotb_small(zero_skip):
    _cocotb("small", zero_skip, ["random_matmuls_at_sparsities", "edge_tiles", "spad_range"])


@pytest.mark.verilator
def test_cocotb_default():
    _cocotb("default", True, ["random_matmuls_at_sparsities", "edge_tiles"])


class _LaneWithOutput(Elaboratable):
    """A lane and its output buffer, as the engine wires them."""

    def __init__(self, cfg, **kw):
        self.lane = MatrixLane(cfg, **kw)
        self.out = LaneOutput(cfg, self.lane.out_depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lane, m.submodules.out = self.lane, self.out
        connect_lane_output(m, self.lane, self.out)
        return m


@pytest.mark.parametrize("zero_skip", [True, False])
def test_lane_amaranth_sim(zero_skip):
    """One lane on its own (with its output buffer): rows granted whenever it asks, random port
    stalls and output back-pressure. Checks every finished row against matmul_acc, and that the lane issues exactly
    one weight read per non-zero activation (plus one for a row whose last line has none), or
    one per element within k for the dense variant: all-zero lines cost no weight read."""
    rng = random.Random(SEED + 1)
    nrng = np.random.default_rng(SEED + 1)
    cfg = TINY
    cols = cfg.cols
    top = _LaneWithOutput(cfg, zero_skip=zero_skip)
    dut, res = top.lane, top.out.res
    act = nrng.integers(-128, 128, size=(cfg.act_depth, cols)).astype(np.int8)
    act[nrng.random(act.shape) < 0.5] = 0
    act[nrng.random(cfg.act_depth) < 0.3] = 0
    wgt = nrng.integers(-128, 128, size=(cfg.wgt_depth, cols)).astype(np.int8)
    k = rng.choice([cols + 1, 2 * cols - 1, 3 * cols + 2])
    L = _ceil_div(k, cols)
    w_addr = rng.randint(0, cfg.wgt_depth - k)
    rows = [(rng.randint(0, cfg.act_depth - L), i) for i in range(12)]
    want, want_ops = {}, 0
    for a, acc_addr in rows:
        row = act[a:a + L].reshape(-1)[:k]
        want[acc_addr] = matmul_acc(row[None, :], wgt[w_addr:w_addr + k])[0].tolist()
        if zero_skip:
            want_ops += int(np.count_nonzero(row)) + (not row[(L - 1) * cols:].any())
        else:
            want_ops += k
    got, ops = {}, [0]

    async def tb(ctx):
        ctx.set(dut.n_lines, L)
        ctx.set(dut.last_mask, (1 << (k - (L - 1) * cols)) - 1)
        ctx.set(dut.w_addr, w_addr)
        pend = {"a": [], "w": []}
        todo = list(rows)
        cycle = 0
        while len(got) < len(rows) and cycle < 5000:
            cycle += 1
            await _read_port(ctx, dut.act_rd, act, 8, cols, rng, 0.3, pend["a"], cycle)
            if ctx.get(dut.wgt_rd.cmd.valid) and rng.random() >= 0.3:
                ops[0] += 1
                ctx.set(dut.wgt_rd.cmd.ready, 1)
                addr = ctx.get(dut.wgt_rd.cmd.payload)
                word = sum((int(v) & 0xFF) << (8 * e) for e, v in enumerate(wgt[addr]))
                due = max(cycle + rng.randint(1, 3), pend["w"][-1][0] + 1 if pend["w"] else 0)
                pend["w"].append((due, word))
            else:
                ctx.set(dut.wgt_rd.cmd.ready, 0)
            if pend["w"] and pend["w"][0][0] <= cycle:
                ctx.set(dut.wgt_rd.rsp.valid, 1)
                ctx.set(dut.wgt_rd.rsp.payload.as_value(), pend["w"].pop(0)[1])
            else:
                ctx.set(dut.wgt_rd.rsp.valid, 0)
            grant = bool(todo) and ctx.get(dut.row_req)
            ctx.set(dut.row_grant, grant)
            if grant:
                ctx.set(dut.row_a, todo[0][0])
                ctx.set(dut.row_acc, todo.pop(0)[1])
            rdy = rng.random() < 0.5
            ctx.set(res.ready, rdy)
            if rdy and ctx.get(res.valid):
                r = ctx.get(res.payload)
                got[int(r.addr)] = [int(x) for x in r.data]
            await ctx.tick()

    run_testbench(top, tb)
    assert got == want
    assert ops[0] == want_ops



@pytest.mark.parametrize("depth", [1, 2, 3])
def test_lane_output_matches_fifo(depth):
    """LaneOutput against the buffer it replaces, cycle by cycle: a SyncFIFO(depth) written in
    the cycle of a row's last product (``fin_next``) while the lane reserves a place per row
    (``row_fired``) and may only do so while fewer than ``depth`` rows are reserved. Random
    rows and read back-pressure; checks valid, payload, the one-cycle-ahead res_keep/res_pop
    and the room flags the lane sees."""
    from amaranth.lib.fifo import SyncFIFO

    from sparrow.hdl.matrix_engine import result_layout

    cfg = TINY
    lay = result_layout(cfg)

    class Pair(Elaboratable):
        def __init__(self):
            self.ref, self.dut = SyncFIFO(width=lay.size, depth=depth), LaneOutput(cfg, depth)

        def elaborate(self, platform):
            m = Module()
            m.submodules.ref, m.submodules.dut = self.ref, self.dut
            return m

    top = Pair()
    ref, dut = top.ref, top.dut
    rng = random.Random(SEED + 10 * depth)

    async def tb(ctx):
        resv, fired, pipe = 0, 0, []      # rows reserved; row_fired now; rows in the MAC pipeline
        fin_v, fin_word = 0, 0
        expect_next = None
        for cycle in range(800):
            # the lane: reserve (fire) a row when it sees room, finish it a few cycles later
            room = ctx.get(dut.room_fired) if fired else ctx.get(dut.room)
            assert room == (resv < depth), cycle
            fire = room and rng.random() < 0.4
            finish = bool(pipe) and pipe[0] <= cycle
            if finish:
                pipe.pop(0)
            word = rng.getrandbits(lay.size)
            ctx.set(dut.row_fired, fired)
            ctx.set(dut.fin_v, fin_v)
            ctx.set(dut.fin_addr, fin_word & ((1 << cfg.acc_addr_bits) - 1))
            ctx.set(dut.fin_data.as_value(), fin_word >> cfg.acc_addr_bits)
            ctx.set(dut.fin_next, finish)
            ctx.set(ref.w_en, finish)
            ctx.set(ref.w_data, word)
            rdy = rng.random() < 0.5
            ctx.set(dut.res.ready, rdy)
            ctx.set(ref.r_en, rdy)
            valid = ctx.get(dut.res.valid)
            assert valid == ctx.get(ref.r_rdy), cycle
            if expect_next is not None:
                assert valid == expect_next, cycle
            if valid:
                assert ctx.get(dut.res.payload.as_value()) == ctx.get(ref.r_data), cycle
            if finish:
                assert ctx.get(ref.w_rdy), cycle
            taken = valid and rdy
            expect_next = ctx.get(dut.res_pop) if taken else ctx.get(dut.res_keep)
            resv += fire - taken
            if fire:
                pipe.append(cycle + rng.randint(1, 4))
                pipe.sort()
            fired, fin_v, fin_word = int(fire), int(finish), word
            await ctx.tick()

    run_testbench(top, tb)
