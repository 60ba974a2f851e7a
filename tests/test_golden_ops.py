"""Every instruction kind of the golden model against plain NumPy / Python-int references
written here, in both execution modes, on random and edge shapes (``rng``: the per-test seeded fixture of
conftest.py, seed printed)."""

import numpy as np
import pytest

from sparrow import codec
from sparrow.config import preset
from sparrow.golden import Machine
from sparrow.isa import Program, make

MODES = ["program", "concurrent"]
CFG = preset("small").replace(dram_bytes=1 << 16)
CFG8 = preset("default").replace(dram_bytes=1 << 16, act_depth=1024, acc_depth=512)


def fresh(cfg, rng):
    """A machine whose every byte is random, so untouched regions are visible."""
    m = Machine(cfg)
    m.act[:] = rng.integers(-128, 128, m.act.shape)
    m.wgt[:] = rng.integers(-128, 128, m.wgt.shape)
    m.acc[:] = rng.integers(-(1 << 31), 1 << 31, m.acc.shape)
    m.dram[:] = rng.integers(0, 256, m.dram.shape)
    return m


def run(m, instrs, mode, **kw):
    return m.run(Program(list(instrs) + [make("halt")]), mode=mode, **kw)


def spad_bytes(m, spad):
    return {"act": m.act, "wgt": m.wgt, "acc": m.acc}[spad].view(np.uint8)


def wrap(x):
    return ((int(x) + (1 << 31)) % (1 << 32)) - (1 << 31)


def rne(x, s):
    q, r = divmod(int(x), 1 << s)
    if s and (2 * r > (1 << s) or (2 * r == (1 << s) and q & 1)):
        q += 1
    return q


def sat8(x):
    return max(-128, min(127, x))


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


# -- LOAD / STORE --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spad", ["act", "wgt", "acc"])
def test_load_uncompressed(mode, spad, rng):
    cfg = CFG
    full = cfg.spad_line_bytes(spad)
    for _ in range(12):
        m = fresh(cfg, rng)
        rows, rl = pick(rng, [1, 2, 3, 7]), pick(rng, [1, 2, 5])
        line_bytes = pick(rng, [0, 1, full - 1, full, int(rng.integers(1, full + 1))])
        lb = line_bytes or full
        stride = pick(rng, [rl * lb, rl * lb + int(rng.integers(1, 20)), max(0, rl * lb - 3), 0])
        pt, pb, pl, pr = (int(v) for v in rng.integers(0, 3, 4))
        h, w = pt + rows + pb, pl + rl + pr
        base = int(rng.integers(0, cfg.spad_depth(spad) - h * w + 1))
        addr = int(rng.integers(0, cfg.dram_bytes - rows * max(stride, rl * lb) - 64))
        before = spad_bytes(m, spad).copy()
        res = run(m, [make("load", spad=spad, spad_addr=base, dram_addr=addr, rows=rows, row_lines=rl,
                           dram_stride=stride, line_bytes=line_bytes, pad_top=pt, pad_bottom=pb,
                           pad_left=pl, pad_right=pr)], mode)
        exp = before
        exp[base:base + h * w] = 0
        for y in range(rows):
            for x in range(rl):
                line = base + (pt + y) * w + pl + x
                src = addr + y * stride + x * lb
                exp[line, :lb] = m.dram[src:src + lb]
        np.testing.assert_array_equal(spad_bytes(m, spad), exp)
        assert res.counters["load_bytes"] == res.counters["load_bytes_raw"] == rows * rl * lb
        assert res.counters["instructions"] == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spad", ["act", "wgt", "acc"])
def test_store_uncompressed(mode, spad, rng):
    cfg = CFG
    full = cfg.spad_line_bytes(spad)
    for _ in range(12):
        m = fresh(cfg, rng)
        rows, rl = pick(rng, [1, 2, 3, 7]), pick(rng, [1, 2, 5])
        line_bytes = pick(rng, [0, 1, full - 1, full, int(rng.integers(1, full + 1))])
        lb = line_bytes or full
        stride = pick(rng, [rl * lb, rl * lb + int(rng.integers(1, 20)), max(0, rl * lb - 3), 0])
        sstride = pick(rng, [0, rl, rl + 2, 1])
        s = sstride or rl
        base = int(rng.integers(0, cfg.spad_depth(spad) - ((rows - 1) * s + rl) + 1))
        addr = int(rng.integers(0, cfg.dram_bytes - rows * max(stride, rl * lb) - 64))
        exp = m.dram.copy()
        src = spad_bytes(m, spad)
        for y in range(rows):                      # rows in order: a later row wins an overlap
            for x in range(rl):
                d = addr + y * stride + x * lb
                exp[d:d + lb] = src[base + y * s + x, :lb]
        res = run(m, [make("store", spad=spad, spad_addr=base, dram_addr=addr, rows=rows, row_lines=rl,
                           dram_stride=stride, line_bytes=line_bytes, spad_stride=sstride)], mode)
        np.testing.assert_array_equal(m.dram, exp)
        assert res.counters["store_bytes"] == res.counters["store_bytes_raw"] == rows * rl * lb


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spad", ["act", "wgt"])
@pytest.mark.parametrize("cfg", [CFG, CFG8], ids=["cols4", "cols8"])
def test_compressed_store_then_load(mode, spad, cfg, rng):
    cols = cfg.cols
    for density in (0.0, 0.3, 0.7, 1.0):
        m = fresh(cfg, rng)
        rows, rl = pick(rng, [1, 3, 5]), pick(rng, [1, 2, 4])
        sstride = pick(rng, [0, rl + 1])
        s = sstride or rl
        worst = 2 + rl * ((cols + 7) // 8 + cols)
        dstride = worst + int(rng.integers(0, 5))
        vals = rng.integers(-128, 128, (rows, rl, cols))
        data = np.where(rng.random((rows, rl, cols)) < density, vals, 0).astype(np.int8)
        mem = {"act": m.act, "wgt": m.wgt}[spad]
        for y in range(rows):
            mem[10 + y * s:10 + y * s + rl] = data[y]
        addr = 1000
        before = m.dram.copy()
        res = run(m, [make("store", spad=spad, spad_addr=10, dram_addr=addr, rows=rows, row_lines=rl,
                           dram_stride=dstride, spad_stride=sstride, compressed=1)], mode)
        exp = before
        total = 0
        for y in range(rows):                      # reference: the codec's own encoder per row
            g = np.frombuffer(codec.compress_group(data[y]), np.uint8)
            exp[addr + y * dstride:addr + y * dstride + g.size] = g
            total += g.size
        np.testing.assert_array_equal(m.dram, exp)       # only 2 + N bytes of each slot written
        assert res.counters["store_bytes"] == total
        assert total == rows * (2 + rl * ((cols + 7) // 8)) + np.count_nonzero(data)
        assert res.counters["store_bytes_raw"] == rows * rl * cols
        # load it back with padding into another place
        pt, pb, pl, pr = 1, 2, 1, 1
        w = pl + rl + pr
        base = 150
        before = mem.copy()
        res = run(m, [make("load", spad=spad, spad_addr=base, dram_addr=addr, rows=rows, row_lines=rl,
                           dram_stride=dstride, compressed=1, pad_top=pt, pad_bottom=pb, pad_left=pl,
                           pad_right=pr)], mode)
        exp = before
        exp[base:base + (pt + rows + pb) * w] = 0
        for y in range(rows):
            exp[base + (pt + y) * w + pl:base + (pt + y) * w + pl + rl] = data[y]
        np.testing.assert_array_equal(mem, exp)
        assert res.counters["load_bytes"] == total
        assert res.counters["load_bytes_raw"] == rows * rl * cols


# -- MATMUL --------------------------------------------------------------------------------

def matmul_ref(act, wgt, acc, cols, a_addr, w_addr, acc_addr, k, mi, a_stride, mo, aos, accumulate):
    exp = acc.astype(np.int64).copy()
    nz = 0
    for o in range(mo):
        for i in range(mi):
            mrow = o * mi + i
            a = a_addr + o * aos + i * a_stride
            n_lines = -(-k // cols)
            vec = act[a:a + n_lines].reshape(-1)[:k].astype(np.int64)
            nz += int(np.count_nonzero(vec))
            r = vec @ wgt[w_addr:w_addr + k].astype(np.int64)
            if accumulate:
                r = r + acc[acc_addr + mrow].astype(np.int64)
            exp[acc_addr + mrow] = [wrap(v) for v in r]
    return exp.astype(np.int32), nz


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", [CFG, CFG8], ids=["cols4", "cols8"])
def test_matmul(mode, cfg, rng):
    cols = cfg.cols
    ks = [1, cols - 1, cols, cols + 1, 7, 13, 31, 2 * cols + 3, 97]
    for trial in range(16):
        m = fresh(cfg, rng)
        m.act[rng.random(m.act.shape) < 0.4] = 0               # sparsity for the skip counters
        if trial % 4 == 0:
            m.acc[:] = rng.choice([(1 << 31) - 1, -(1 << 31), (1 << 31) - 5000], size=m.acc.shape)
            m.act[:] = -128
            m.wgt[:] = -128                                     # big positive products: force a wrap
        k = pick(rng, ks)
        mi, mo = pick(rng, [1, 2, 3, 5, 7]), pick(rng, [1, 2, 3])
        a_stride = pick(rng, [0, 1, -(-k // cols), -(-k // cols) + 2])
        aos = pick(rng, [0, mi * a_stride, mi * a_stride + 3])
        accumulate = int(rng.integers(2))
        a_addr = int(rng.integers(0, 100))
        w_addr = int(rng.integers(0, cfg.wgt_depth - k + 1))
        acc_addr = int(rng.integers(0, cfg.acc_depth - mi * mo + 1))
        exp, nz = matmul_ref(m.act, m.wgt, m.acc, cols, a_addr, w_addr, acc_addr, k, mi, a_stride, mo, aos,
                             accumulate)
        act0, wgt0 = m.act.copy(), m.wgt.copy()
        res = run(m, [make("matmul", a_addr=a_addr, w_addr=w_addr, acc_addr=acc_addr, k=k, m_inner=mi,
                           a_stride=a_stride, m_outer=mo, a_outer_stride=aos, accumulate=accumulate)], mode)
        np.testing.assert_array_equal(m.acc, exp)
        np.testing.assert_array_equal(m.act, act0)
        np.testing.assert_array_equal(m.wgt, wgt0)
        assert res.counters["macs"] == nz * cols
        assert res.counters["macs_skipped"] == (mi * mo * k - nz) * cols


def test_matmul_wraps_exactly():
    """acc = 2**31 - 1 plus k = 4 products of 128*128 wraps to a negative number."""
    m = Machine(CFG)
    m.act[0] = -128
    m.wgt[:4] = -128
    m.acc[0] = (1 << 31) - 1
    m.run([make("matmul", k=4, accumulate=1)])
    assert m.acc[0].tolist() == [wrap((1 << 31) - 1 + 4 * 16384)] * 4
    assert m.acc[0, 0] < 0


# -- VECTOR --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_requant_per_channel(mode, rng):
    cfg = CFG8
    cols = cfg.cols
    for _ in range(8):
        m = fresh(cfg, rng)
        rows = pick(rng, [1, 2, 5, 13])
        ds = pick(rng, [0, 1, 3])
        src, par, dst = 20, 5, int(rng.integers(0, 50))
        m.acc[src:src + rows] = rng.integers(-(1 << 20), 1 << 20, (rows, cols))
        m.acc[par] = rng.integers(-(1 << 12), 1 << 12, cols)              # bias
        m.acc[par + 1] = rng.integers(-(1 << 31), 1 << 31, cols)          # mult (bit 31 ignored)
        m.acc[par + 2] = rng.integers(0, 64, cols)                         # shift
        m.acc[par + 2, 0] = 64 + 20                                        # only the low 6 bits count
        zp, lo, hi = (int(v) for v in rng.integers(-20, 20, 3))
        lo, hi = min(lo, hi) - 60, max(lo, hi) + 60
        exp = m.act.copy()
        for r in range(rows):
            for c in range(cols):
                t = int(m.acc[src + r, c]) + int(m.acc[par, c])
                p = t * (int(m.acc[par + 1, c]) & 0x7FFFFFFF)
                y = rne(p, int(m.acc[par + 2, c]) & 63) + zp
                exp[dst + r * ds, c] = min(max(y, lo), hi)
        res = run(m, [make("requant", src=src, dst=dst, rows=rows, dst_stride=ds, param=par, zp=zp,
                           lo=lo, hi=hi)], mode)
        np.testing.assert_array_equal(m.act, exp)
        assert res.counters["vector_busy"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_vadd(mode, rng):
    cfg = CFG
    for in_place in (False, True, False):
        m = fresh(cfg, rng)
        n = pick(rng, [1, 3, 17])
        sa, sb = 10, 40
        dst = sa if in_place else 80
        ma, mb = (int(v) for v in rng.integers(-(1 << 15), 1 << 15, 2))
        shift, relu = int(rng.integers(0, 20)), int(rng.integers(2))
        exp = m.act.copy()
        for i in range(n):
            for c in range(cfg.cols):
                v = sat8(rne(int(m.act[sa + i, c]) * ma + int(m.act[sb + i, c]) * mb, shift))
                exp[dst + i, c] = max(v, 0) if relu else v
        run(m, [make("vadd", src_a=sa, src_b=sb, dst=dst, lines=n, mult_a=ma, mult_b=mb, shift=shift,
                     relu=relu)], mode)
        np.testing.assert_array_equal(m.act, exp)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_pools(mode, kind, rng):
    cfg = CFG
    for _ in range(8):
        m = fresh(cfg, rng)
        lpp = pick(rng, [1, 2, 3])
        kh, kw = pick(rng, [1, 2, 3]), pick(rng, [1, 2, 3])
        sh, sw = pick(rng, [1, 2, 3]), pick(rng, [1, 2])
        oh, ow = pick(rng, [1, 2, 5]), pick(rng, [1, 3, 4])
        in_w = (ow - 1) * sw + kw
        rs = in_w * lpp + pick(rng, [0, 2])
        src, dst = 0, 600
        mult, shift = int(rng.integers(0, 1 << 16)), int(rng.integers(0, 20))
        exp = m.act.copy()
        for oy in range(oh):
            for ox in range(ow):
                for blk in range(lpp):
                    for c in range(cfg.cols):
                        win = [int(m.act[src + (oy * sh + dy) * rs + (ox * sw + dx) * lpp + blk, c])
                               for dy in range(kh) for dx in range(kw)]
                        v = max(win) if kind == "maxpool" else sat8(rne(sum(win) * mult, shift))
                        exp[dst + (oy * ow + ox) * lpp + blk, c] = v
        run(m, [make(kind, src=src, dst=dst, lpp=lpp, row_stride=rs, out_h=oh, out_w=ow, kh=kh, kw=kw,
                     stride_h=sh, stride_w=sw, mult=mult, shift=shift)], mode)
        np.testing.assert_array_equal(m.act, exp)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask_mode", ["causal", "padding", "loaded"])
def test_mask(mode, mask_mode, rng):
    cfg = CFG
    cols = cfg.cols
    for trial in range(6):
        m = fresh(cfg, rng)
        rows, rl = pick(rng, [1, 3, 9]), pick(rng, [1, 2, 3])
        src = 100
        dst = src if trial % 2 else 300
        param = int(rng.integers(-4, rows + rl * cols + 2))
        alt = int(rng.integers(-128, 128))
        mask_addr = 700
        exp = m.act.copy()
        for r in range(rows):
            for j in range(rl):
                for e in range(cols):
                    col = j * cols + e
                    if mask_mode == "causal":
                        masked = col > r + param
                    elif mask_mode == "padding":
                        masked = col >= param
                    else:
                        i = r * rl + j
                        bit = (i % 8) * cols + e
                        byte = int(m.act[mask_addr + i // 8, bit // 8]) & 0xFF
                        masked = (byte >> (bit % 8)) & 1
                    exp[dst + r * rl + j, e] = alt if masked else m.act[src + r * rl + j, e]
        run(m, [make("mask", src=src, dst=dst, rows=rows, row_lines=rl, mode=mask_mode, param=param,
                     mask_addr=mask_addr, alt=alt)], mode)
        np.testing.assert_array_equal(m.act, exp)


# -- NOP / DELAY / program forms ---------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_delay_uses_slot(mode):
    m = Machine(CFG)
    prog = [make("nop", engine="vector"), make("delay", engine="matmul", slot=3)]
    base = run(m, prog, mode)
    m.delays[3] = 1000
    res = run(m, prog, mode)
    (_, _, s0, e0), (_, _, s1, e1) = base.timeline[1], res.timeline[1]
    assert (e1 - s1) - (e0 - s0) == 1000                 # the DELAY's own duration
    assert res.cycles >= base.cycles + 999
    assert res.counters["matmul_busy"] >= 1000
    assert res.counters["instructions"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_bytes_program_and_state_persists(mode, rng):
    m = fresh(CFG, rng)
    before = m.act.copy()
    prog = Program([make("vadd", src_a=0, src_b=0, dst=50, lines=2, mult_a=1, mult_b=0), make("halt"),
                    make("vadd", src_a=0, src_b=0, dst=60, lines=2, mult_a=1, mult_b=0)])
    res = m.run(bytes(prog), mode=mode)
    exp = before.copy()
    exp[50:52] = before[0:2]
    np.testing.assert_array_equal(m.act, exp)            # the word after HALT never runs
    assert res.counters["instructions"] == 1
    res2 = m.run(prog, mode=mode)                          # state persists across runs
    np.testing.assert_array_equal(m.act, exp)
    assert res2.cycles == res.cycles


def test_host_access_round_trip():
    m = Machine(CFG)
    m.write_dram(10, np.array([1, -2], dtype=np.int32))
    assert m.read_dram(10, 8).tolist() == [1, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF]
    m.write_dram(0, b"\x07\x08")
    assert m.read_dram(0, 2).tolist() == [7, 8]
    with pytest.raises(ValueError, match="addr"):
        m.write_dram(CFG.dram_bytes - 1, b"ab")
    with pytest.raises(ValueError, match="addr"):
        m.read_dram(CFG.dram_bytes, 1)
    with pytest.raises(ValueError, match="mode"):
        m.run([], mode="fast")
    with pytest.raises(ValueError, match="cfg"):
        Machine("small")
