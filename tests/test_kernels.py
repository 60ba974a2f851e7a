"""Kernel builders vs plain NumPy integer math, on the golden model in both modes.

References here are written independently of the builders: integer matmul/convolution loops in
NumPy plus the datapath's rounding functions from ``sparrow.golden.numerics`` (the spec).
Seeded: set SPARROW_SEED to reproduce a printed seed.
"""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sparrow.config import preset
from sparrow.errors import DeviceError, ErrorCode
from sparrow.golden import Machine, RaceError
from sparrow.golden import numerics as nm
from sparrow.isa import Program, assemble
from sparrow.kernels import (ProgramBuilder, Requant, add, add_multipliers, avgpool, avgpool_multiplier,
                             conv2d, from_lines, gemm, mask, maxpool, pad_channels, quantize_multiplier,
                             requant_relu, to_lines)

MODES = ("program", "concurrent")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def i8(rng, shape, lo=-128, hi=128):
    return rng.integers(lo, hi, shape).astype(np.int8)


def run_both(cfg, b, inputs):
    """Run the builder's program in both golden modes; yield each finished machine."""
    prog = b.finish()
    for mode in MODES:
        m = Machine(cfg)
        b.write_segments(m)
        for t, a in inputs:
            t.write(m, a)
        m.run(prog, mode=mode)
        yield mode, m


def random_requant(rng, n, relu=None, scale=(1e-4, 1e-3)):
    """(Requant for the kernel, the test's own description of it)."""
    relu = bool(rng.integers(2)) if relu is None else relu
    ref = dict(bias=rng.integers(-3000, 3000, n), zp=int(rng.integers(-20, 20)), relu=relu,
               scale=rng.uniform(*scale, n))
    return Requant.from_scale(ref["scale"], bias=ref["bias"], zp=ref["zp"], relu=relu), ref


def ref_multiplier(scale):
    """31-bit multiplier in [2**30, 2**31) and shift, nearest to ``scale`` (exact rational math)."""
    s = Fraction(float(scale))
    shift = 0
    while s * 2 ** (shift + 1) < 2 ** 31 - Fraction(1, 2):
        shift += 1
    return round(s * 2 ** shift), shift


def ref_requant(acc, ref):
    ms = [ref_multiplier(s) for s in ref["scale"]]
    mult = np.array([m for m, _ in ms])
    shift = np.array([s for _, s in ms])
    lo = ref["zp"] if ref["relu"] else -128
    return nm.requant(acc, ref["bias"], mult, shift, ref["zp"], lo, 127)


# -- fixed-point helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 0.5, 1 - 2 ** -40, 3.7e-3, 1.234e-9, 2 ** -40, 12345.678,
                                   2 ** 31 - 1, 0.9999999])
def test_quantize_multiplier_nearest(scale):
    mult, shift = quantize_multiplier(scale)
    assert 0 <= mult < 2 ** 31 and 0 <= shift <= 63
    exact = Fraction(scale)
    # nearest representable at this shift, and this shift is the most precise that fits
    assert abs(Fraction(mult, 2 ** shift) - exact) <= Fraction(1, 2 ** (shift + 1))
    if shift < 63:
        assert round(exact * 2 ** (shift + 1)) >= 2 ** 31
    assert abs(mult / 2 ** shift - scale) <= scale * 2 ** -29


def test_quantize_multiplier_edges():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1e-30) == (0, 0)
    for bad in (-1.0, float("inf"), float("nan"), 2.0 ** 31):
        with pytest.raises(ValueError, match="scale"):
            quantize_multiplier(bad)


def test_add_and_avg_multipliers():
    for sa, sb in [(0.5, 0.25), (1.7, -0.3), (100.0, 0.001), (0.0, 2.0)]:
        ma, mb, s = add_multipliers(sa, sb)
        assert max(abs(ma), abs(mb)) <= 32767
        assert max(abs(ma), abs(mb)) * 2 > 32767 or s == 63
        assert abs(ma / 2 ** s - sa) <= 2 ** -(s + 1) and abs(mb / 2 ** s - sb) <= 2 ** -(s + 1)
    with pytest.raises(ValueError, match="scale"):
        add_multipliers(40000.0, 1.0)
    for n in (1, 4, 9, 49, 225):
        mult, shift = avgpool_multiplier(n)
        assert mult <= 0xFFFF and abs(mult / 2 ** shift - 1 / n) <= 2 ** -(shift + 1)
    with pytest.raises(ValueError, match="n"):
        avgpool_multiplier(0)


def test_layout_helpers(rng):
    x = i8(rng, (2, 3, 5, 6))
    lines = to_lines(x, 4)
    assert lines.shape == (2 * 3 * 5 * 2, 4)
    assert np.array_equal(lines[1], np.r_[x[0, 0, 0, 4:6], 0, 0])
    assert np.array_equal(from_lines(lines, x.shape, 4), x)
    assert pad_channels(x, 2).shape == x.shape
    with pytest.raises(ValueError, match="lines"):
        from_lines(lines[:-1], x.shape, 4)


# -- GEMM ----------------------------------------------------------------------------------------

GEMM_CASES = [
    ("small", 1, 1, 1),
    ("small", 7, 13, 5),          # primes, nothing a multiple of cols
    ("small", 4, 8, 4),           # exactly one tile
    ("small", 37, 300, 9),        # K > half the weight scratchpad: K chunks accumulate
    ("small", 131, 1031, 6),      # K > the whole weight scratchpad, M > one ACT tile
    ("default", 67, 70, 41),
    ("default", 300, 8, 9),       # more than 255 rows in a tile: several MATMULs per tile
]


@pytest.mark.parametrize("name,M,K,N", GEMM_CASES)
def test_gemm_requant(rng, name, M, K, N):
    cfg = preset(name)
    A, W = i8(rng, (M, K)), i8(rng, (K, N))
    rq, ref = random_requant(rng, N, scale=(2e-3 / np.sqrt(K), 1e-2 / np.sqrt(K)))
    b = ProgramBuilder(cfg)
    a = b.tensor((M, K), name="a")
    out = gemm(b, a, W, requant=rq)
    acc = A.astype(np.int64) @ W.astype(np.int64)
    exp = ref_requant(acc, ref)
    if exp.size >= 16:
        assert len(np.unique(exp)) > 3      # the scale range exercises the requant, not a clamp
    prog = b.finish()
    matmuls = [i for i in prog if i.mnemonic == "matmul"]
    if K > cfg.wgt_depth // 2:           # K was split: later chunks accumulate
        assert any(i.accumulate for i in matmuls) and max(i.k for i in matmuls) < K
    if M * -(-K // cfg.cols) > cfg.act_depth:   # A does not fit ACT: several M tiles
        assert len({i.a_addr for i in matmuls}) > 1
    for mode, m in run_both(cfg, b, [(a, A)]):
        assert np.array_equal(out.read(m), exp), mode


@pytest.mark.parametrize("name,M,K,N", [("small", 5, 3, 7), ("small", 20, 600, 10), ("default", 9, 33, 17)])
def test_gemm_raw_int32(rng, name, M, K, N):
    cfg = preset(name)
    A, W = i8(rng, (M, K)), i8(rng, (K, N))
    b = ProgramBuilder(cfg)
    a, w = b.tensor((M, K)), b.tensor((K, N))       # W as a runtime tensor too
    out = gemm(b, a, w)
    assert out.dtype == "int32"
    exp = (A.astype(np.int64) @ W.astype(np.int64)).astype(np.int32)
    for mode, m in run_both(cfg, b, [(a, A), (w, W)]):
        assert np.array_equal(out.read(m), exp), mode


@pytest.mark.parametrize("mode", MODES)
def test_gemm_zero_skipping_counts(rng, mode):
    """Every activation element is used once per column tile: MAC counters follow A's zeros."""
    cfg = preset("small")
    A = i8(rng, (9, 16))
    A[:, ::2] = 0
    W = i8(rng, (16, 7))
    b = ProgramBuilder(cfg)
    a = b.tensor(A.shape)
    out = gemm(b, a, W)
    m = Machine(cfg)
    b.write_segments(m)
    a.write(m, A)
    res = m.run(b.finish(), mode=mode)
    assert np.array_equal(out.read(m), (A.astype(np.int64) @ W).astype(np.int32))
    tiles = 2
    assert res.counters["macs_skipped"] == int((A == 0).sum()) * cfg.cols * tiles
    assert res.counters["macs"] == int((A != 0).sum()) * cfg.cols * tiles


def test_gemm_errors(rng):
    b = ProgramBuilder(preset("small"))
    a = b.tensor((4, 5))
    with pytest.raises(ValueError, match="W"):
        gemm(b, a, np.zeros((6, 3), np.int8))
    with pytest.raises(ValueError, match="out"):
        gemm(b, a, np.zeros((5, 3), np.int8), out=b.tensor((4, 3)))      # raw needs int32
    with pytest.raises(ValueError, match="requant.mult"):
        gemm(b, a, np.zeros((5, 3), np.int8), requant=Requant(0, -1, 0))
    with pytest.raises(ValueError, match="W"):
        gemm(b, a, np.full((5, 3), 300))


# -- convolution ---------------------------------------------------------------------------------

def ref_conv(x, w, stride, pads, groups):
    N, H, W, C = x.shape
    KH, KW, cpg, Co = w.shape
    pt, pl, pb, pr = pads
    xp = np.zeros((N, H + pt + pb, W + pl + pr, C), np.int64)
    xp[:, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - KH) // stride + 1
    OW = (W + pl + pr - KW) // stride + 1
    opg = Co // groups
    out = np.zeros((N, OH, OW, Co), np.int64)
    for oc in range(Co):
        g = oc // opg
        for ky in range(KH):
            for kx in range(KW):
                patch = xp[:, ky:ky + stride * (OH - 1) + 1:stride, kx:kx + stride * (OW - 1) + 1:stride,
                           g * cpg:(g + 1) * cpg]
                out[..., oc] += patch @ w[ky, kx, :, oc].astype(np.int64)
    return out


CONV_CASES = [
    # preset, x shape, (KH, KW, Cout), stride, pads (t, l, b, r), groups
    ("small", (1, 5, 5, 3), (3, 3, 4), 1, (1, 1, 1, 1), 1),
    ("small", (2, 9, 7, 5), (3, 3, 6), 2, (1, 0, 2, 1), 1),      # Cin not a multiple of cols, batch 2
    ("small", (1, 8, 8, 8), (3, 3, 8), 1, (1, 1, 1, 1), 8),      # depthwise
    ("small", (1, 6, 7, 6), (3, 2, 9), 1, (0, 1, 2, 0), 3),      # grouped, 2 in / 3 out per group
    ("small", (1, 40, 30, 3), (3, 3, 8), 1, (1, 1, 1, 1), 1),    # feature map larger than ACT
    ("small", (1, 7, 7, 40), (3, 3, 5), 1, (1, 1, 1, 1), 1),     # weights stream (> WGT)
    ("small", (1, 5, 6, 17), (1, 1, 3), 1, (0, 0, 0, 0), 1),     # 1x1
    ("small", (1, 11, 11, 4), (5, 5, 4), 3, (2, 2, 2, 2), 1),    # stride 3
    ("small", (1, 4, 4, 6), (3, 3, 2), 1, (0, 20, 0, 1), 1),     # padding wider than the LOAD field
    ("default", (1, 12, 12, 16), (3, 3, 20), 1, (1, 1, 1, 1), 1),
    ("default", (1, 9, 9, 24), (3, 3, 24), 2, (1, 1, 1, 1), 24),  # depthwise stride 2
    ("default", (1, 3, 300, 3), (2, 3, 5), 1, (0, 1, 0, 1), 1),   # output wider than m_inner (255)
]


@pytest.mark.parametrize("name,xs,wk,stride,pads,groups", CONV_CASES)
def test_conv2d(rng, name, xs, wk, stride, pads, groups):
    cfg = preset(name)
    KH, KW, Co = wk
    X = i8(rng, xs)
    Wt = i8(rng, (KH, KW, xs[3] // groups, Co))
    kk = np.sqrt(KH * KW * xs[3] / groups)
    rq, ref = random_requant(rng, Co, scale=(2e-3 / kk, 1e-2 / kk))
    b = ProgramBuilder(cfg)
    x = b.tensor(xs)
    out = conv2d(b, x, Wt, rq, stride=stride, padding=pads, groups=groups)
    exp = ref_requant(ref_conv(X, Wt, stride, pads, groups), ref)
    assert out.shape == exp.shape
    assert len(np.unique(exp)) > 3
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(out.read(m), exp), mode


@pytest.mark.parametrize("trial", range(4))
def test_random_shapes_gemm_conv(rng, trial):
    """Seeded random geometry (shapes, stride, padding, groups) for GEMM and conv on `small`."""
    cfg = preset("small")
    rng = np.random.default_rng([int(rng.integers(1 << 62)), trial])     # distinct per trial
    M, K, N = (int(v) for v in rng.integers(1, 80, 3))
    A, W = i8(rng, (M, K)), i8(rng, (K, N))
    rq, ref = random_requant(rng, N, scale=(2e-3 / np.sqrt(K), 1e-2 / np.sqrt(K)))
    groups = int(rng.choice([1, 2, 3]))
    C = groups * int(rng.integers(1, 5))
    Co = groups * int(rng.integers(1, 4))
    KH, KW = (int(v) for v in rng.integers(1, 4, 2))
    H, Wd = int(rng.integers(KH, 14)), int(rng.integers(KW, 14))
    stride = int(rng.integers(1, 3))
    pads = tuple(int(v) for v in rng.integers(0, 3, 4))
    X, Wc = i8(rng, (1, H, Wd, C)), i8(rng, (KH, KW, C // groups, Co))
    kk = np.sqrt(KH * KW * C / groups)
    rq2, ref2 = random_requant(rng, Co, scale=(2e-3 / kk, 1e-2 / kk))
    print(f"gemm {M}x{K}x{N}; conv x={X.shape} w={Wc.shape} stride={stride} pads={pads} groups={groups}")
    b = ProgramBuilder(cfg)
    a, x = b.tensor((M, K)), b.tensor(X.shape)
    y = gemm(b, a, W, requant=rq)
    z = conv2d(b, x, Wc, rq2, stride=stride, padding=pads, groups=groups)
    y_ref = ref_requant(A.astype(np.int64) @ W.astype(np.int64), ref)
    z_ref = ref_requant(ref_conv(X, Wc, stride, pads, groups), ref2)
    for mode, m in run_both(cfg, b, [(a, A), (x, X)]):
        assert np.array_equal(y.read(m), y_ref), mode
        assert np.array_equal(z.read(m), z_ref), mode


def test_conv2d_errors():
    b = ProgramBuilder(preset("small"))
    x = b.tensor((1, 5, 5, 4))
    rq = Requant(0, 1 << 20, 20)
    with pytest.raises(ValueError, match="groups"):
        conv2d(b, x, np.zeros((3, 3, 2, 3), np.int8), rq, groups=2)
    with pytest.raises(ValueError, match="weights"):
        conv2d(b, x, np.zeros((3, 3, 3, 4), np.int8), rq)
    with pytest.raises(ValueError, match="padding"):
        conv2d(b, x, np.zeros((3, 3, 4, 4), np.int8), rq, padding=(1, -1))
    with pytest.raises(ValueError, match="weights"):
        conv2d(b, x, np.zeros((7, 7, 4, 4), np.int8), rq)


# -- vector kernels ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,M,N", [("small", 13, 7), ("small", 600, 5), ("default", 3, 19)])
def test_requant_relu(rng, name, M, N):
    cfg = preset(name)
    X = rng.integers(-2 ** 24, 2 ** 24, (M, N)).astype(np.int32)
    rq, ref = random_requant(rng, N, scale=(1e-6, 1e-5))
    b = ProgramBuilder(cfg)
    x = b.tensor((M, N), "int32")
    out = requant_relu(b, x, rq)
    exp = ref_requant(X, ref)
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(out.read(m), exp), mode


def ref_window(xp, kh, kw, sh, sw, fn):
    N, Hp, Wp, C = xp.shape
    OH, OW = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    views = [xp[:, dy:dy + sh * (OH - 1) + 1:sh, dx:dx + sw * (OW - 1) + 1:sw] for dy in range(kh)
             for dx in range(kw)]
    return fn(np.stack(views).astype(np.int64), axis=0)


@pytest.mark.parametrize("name,xs,k,s", [("small", (2, 9, 8, 3), (3, 2), (2, 2)),
                                          ("small", (1, 7, 7, 6), 3, 1),
                                          ("small", (1, 60, 20, 4), 2, 2),
                                          ("default", (1, 6, 6, 20), 2, 1)])
def test_maxpool(rng, name, xs, k, s):
    cfg = preset(name)
    X = i8(rng, xs)
    b = ProgramBuilder(cfg)
    x = b.tensor(xs)
    out = maxpool(b, x, k, s)
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    exp = ref_window(X, kh, kw, sh, sw, np.max)
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(out.read(m), exp), mode


def test_maxpool_padding_nonnegative(rng):
    cfg = preset("small")
    X = i8(rng, (1, 7, 6, 5), 0, 128)
    b = ProgramBuilder(cfg)
    x = b.tensor(X.shape)
    with pytest.raises(ValueError, match="padding.*non-negative"):
        maxpool(b, x, 3, 2, padding=1)
    out = maxpool(b, x, 3, 2, padding=1, nonnegative=True)
    xp = np.full((1, 9, 8, 5), -128, np.int64)      # -inf padding: the ONNX definition
    xp[:, 1:8, 1:7] = X
    exp = ref_window(xp, 3, 3, 2, 2, np.max)
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(out.read(m), exp), mode


@pytest.mark.parametrize("name,xs,k,s,p", [("small", (1, 9, 9, 3), 3, 1, 1), ("small", (2, 8, 6, 6), 2, 2, 0),
                                            ("default", (1, 7, 7, 8), 7, 1, 0)])
def test_avgpool(rng, name, xs, k, s, p):
    cfg = preset(name)
    X = i8(rng, xs)
    b = ProgramBuilder(cfg)
    x = b.tensor(xs)
    out = avgpool(b, x, k, s, padding=p)
    xp = np.zeros((xs[0], xs[1] + 2 * p, xs[2] + 2 * p, xs[3]), np.int64)
    xp[:, p:p + xs[1], p:p + xs[2]] = X
    sums = ref_window(xp, k, k, s, s, np.sum)
    # the average is round-half-even(sum * mult / 2**shift) with mult/2**shift nearest to 1/(k*k)
    mult, shift = avgpool_multiplier(k * k)
    exp = nm.avgpool_scale(sums, mult, shift)
    # and that is within one step of the true mean
    assert np.all(np.abs(exp - np.clip(sums / (k * k), -128, 127)) <= 1)
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(out.read(m), exp), mode
    with pytest.raises(ValueError, match="count_include_pad"):
        avgpool(b, x, 3, 1, padding=1, count_include_pad=False)


@pytest.mark.parametrize("name,shape", [("small", (5, 7, 3)), ("small", (4097,)), ("default", (2, 3, 8, 8))])
def test_add(rng, name, shape):
    cfg = preset(name)
    X, Y = i8(rng, shape), i8(rng, shape)
    sx, sy = rng.uniform(0.2, 1.5), rng.uniform(-1.5, 1.5)
    relu = bool(rng.integers(2))
    b = ProgramBuilder(cfg)
    x, y = b.tensor(shape), b.tensor(shape)
    out = add(b, x, y, sx, sy, relu=relu)
    ma, mb, sh = add_multipliers(sx, sy)
    exp = nm.vadd(X, Y, ma, mb, sh, relu)
    # independent sanity: within one step of the float result
    flt = np.clip(X * sx + Y * sy, -128, 127)
    if relu:
        flt = np.maximum(flt, 0)
    assert np.all(np.abs(exp - flt) <= 1.01)
    for mode, m in run_both(cfg, b, [(x, X), (y, Y)]):
        assert np.array_equal(out.read(m), exp), mode


@pytest.mark.parametrize("name,R,L", [("small", 19, 8), ("small", 19, 11), ("small", 700, 9),
                                      ("small", 150, 123), ("default", 33, 40)])
def test_mask(rng, name, R, L):
    cfg = preset(name)
    X = i8(rng, (R, L))
    MK = rng.random((R, L)) < 0.3
    b = ProgramBuilder(cfg)
    x = b.tensor((R, L))
    o1 = mask(b, x, "causal", param=-1, alt=-100)
    o2 = mask(b, x, "padding", param=5, alt=7)
    o3 = mask(b, x, "loaded", masked=MK, alt=0)
    r, c = np.arange(R)[:, None], np.arange(L)[None, :]
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(o1.read(m), np.where(c > r - 1, -100, X)), mode
        assert np.array_equal(o2.read(m), np.where(c >= 5, 7, X)), mode
        assert np.array_equal(o3.read(m), np.where(MK, 0, X)), mode
    with pytest.raises(ValueError, match="masked"):
        mask(b, x, "loaded")
    with pytest.raises(ValueError, match="mode"):
        mask(b, x, "random")


# -- chained kernels, synchronisation --------------------------------------------------------------

def test_chain_conv_pool_gemm(rng):
    """Kernels reuse scratchpads and read each other's DRAM outputs: the builder orders them."""
    cfg = preset("small")
    X = i8(rng, (1, 8, 8, 3))
    W1 = i8(rng, (3, 3, 3, 6))
    rq1, b1 = random_requant(rng, 6, relu=True, scale=(5e-4, 2e-3))
    W2 = i8(rng, (4 * 4 * 6, 5))
    rq2, b2 = random_requant(rng, 5, scale=(1e-4, 1e-3))
    b = ProgramBuilder(cfg)
    x = b.tensor(X.shape)
    h = conv2d(b, x, W1, rq1, padding=1)
    p = maxpool(b, h, 2, 2)
    y = gemm(b, p.reshape(1, 96), W2, requant=rq2)
    h_ref = ref_requant(ref_conv(X, W1, 1, (1, 1, 1, 1), 1), b1)
    p_ref = ref_window(h_ref, 2, 2, 2, 2, np.max)
    y_ref = ref_requant(p_ref.reshape(1, 96).astype(np.int64) @ W2.astype(np.int64), b2)
    for mode, m in run_both(cfg, b, [(x, X)]):
        assert np.array_equal(y.read(m), y_ref), mode


def test_sync_is_load_bearing(rng):
    """Without the builder's waits the same program races (the checker is a real referee)."""
    cfg = preset("small")
    b = ProgramBuilder(cfg)
    a = b.tensor((9, 20))
    gemm(b, a, i8(rng, (20, 6)), requant=Requant(0, 1 << 20, 20))
    prog = b.finish()
    assert any(i.wait_count for i in prog) and any(i.signal_en for i in prog)
    stripped = Program([i.replace(wait_count=0, wait_consume=0, wait_sem=0, signal_en=0, signal_sem=0)
                        for i in prog if not (i.mnemonic == "nop")])
    m = Machine(cfg)
    b.write_segments(m)
    with pytest.raises(RaceError):
        m.run(stripped, mode="concurrent")


@pytest.mark.parametrize("queue_depth", [1, 2])
def test_shallow_queues_no_deadlock(rng, queue_depth):
    cfg = preset("small").replace(queue_depth=queue_depth)
    X = i8(rng, (1, 9, 9, 5))
    Wt = i8(rng, (3, 3, 5, 6))
    rq, ref = random_requant(rng, 6)
    b = ProgramBuilder(cfg)
    x = b.tensor(X.shape)
    out = conv2d(b, x, Wt, rq, padding=1)
    prog = b.finish()
    m = Machine(cfg)
    b.write_segments(m)
    x.write(m, X)
    res = m.run(prog, mode="concurrent")
    assert res.error == ErrorCode.NONE
    assert np.array_equal(out.read(m), ref_requant(ref_conv(X, Wt, 1, (1, 1, 1, 1), 1), ref))


def test_builder_rejects_manual_sync_and_halt():
    b = ProgramBuilder(preset("small"))
    with pytest.raises(ValueError, match="wait_sem"):
        b.emit("nop", engine="load", wait_sem=1)
    with pytest.raises(ValueError, match="HALT"):
        b.emit("halt")
    with pytest.raises(ValueError, match="lines"):
        b.spad_alloc("act", 5000)
    with pytest.raises(ValueError, match="nbytes"):
        b.alloc(1 << 30)
    prog = b.finish()
    assert [i.mnemonic for i in prog] == ["halt"]


def test_builder_device_error_reported(rng):
    """A program that leaves memory raises DeviceError naming the instruction (not a silent pass)."""
    cfg = preset("small")
    b = ProgramBuilder(cfg)
    b.emit("load", spad="act", spad_addr=0, dram_addr=cfg.dram_bytes - 2, rows=1, row_lines=1)
    m = Machine(cfg)
    with pytest.raises(DeviceError) as ei:
        m.run(b.finish())
    assert ei.value.code == ErrorCode.DRAM_RANGE and ei.value.index == 0


# -- the example program -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_example_gemm_small(rng, mode):
    cfg = preset("small")
    prog = assemble((EXAMPLES / "gemm_small.s").read_text(), cfg=cfg)
    A, W = i8(rng, (4, 8)), i8(rng, (8, 4))
    bias = rng.integers(-500, 500, 4).astype(np.int32)
    mult = rng.integers(1 << 29, 1 << 30, 4).astype(np.int32)
    shift = rng.integers(36, 40, 4).astype(np.int32)
    m = Machine(cfg)
    m.write_dram(0x000, A)
    m.write_dram(0x100, W)
    m.write_dram(0x200, np.stack([bias, mult, shift]))
    m.write_dram(0x300, np.full(16, 0x55, np.uint8))
    m.run(prog, mode=mode)
    acc = A.astype(np.int64) @ W.astype(np.int64)
    t = (acc + bias) * mult.astype(np.int64)
    # round half to even of t / 2**shift, written out with Python integers
    exp = np.array([[_rne(int(t[i, j]), int(shift[j])) for j in range(4)] for i in range(4)])
    exp = np.clip(exp, 0, 127)
    got = m.read_dram(0x300, 16).view(np.int8).reshape(4, 4)
    assert np.array_equal(got, exp)
    assert len(np.unique(exp)) > 2


def _rne(x, s):
    q, r = divmod(x, 1 << s)
    half = 1 << (s - 1)
    return q + (r > half or (r == half and q & 1))


def test_builder_semaphore_overflow_detected():
    """A producer that can run more than sem_max signals ahead of its consumer is refused."""
    cfg = preset("small").replace(sem_bits=2)          # sem_max = 3
    b = ProgramBuilder(cfg)
    for i in range(6):                                   # 6 LOADs into distinct lines, never reused
        b.emit("load", spad="act", spad_addr=i, dram_addr=0, rows=1, row_lines=1)
        b.emit("matmul", a_addr=i, w_addr=0, acc_addr=i, k=1)
    with pytest.raises(ValueError, match="sem_max"):
        b.finish()
    # with reuse of one buffer the LOAD waits for the MATMUL (a credit) and stays within range
    b = ProgramBuilder(cfg)
    for i in range(6):
        b.emit("load", spad="act", spad_addr=i % 2, dram_addr=0, rows=1, row_lines=1)
        b.emit("matmul", a_addr=i % 2, w_addr=0, acc_addr=i, k=1)
    prog = b.finish()
    Machine(cfg).run(prog, mode="concurrent")


def test_builder_sync_structure():
    """Each cross-engine dependency is one signal and one consuming wait of count 1."""
    cfg = preset("small")
    b = ProgramBuilder(cfg)
    b.emit("load", spad="act", spad_addr=0, dram_addr=0, rows=1, row_lines=1)      # 0
    b.emit("load", spad="wgt", spad_addr=0, dram_addr=0, rows=1, row_lines=1)      # 1
    b.emit("matmul", a_addr=0, w_addr=0, acc_addr=0, k=1)                          # needs 0 and 1
    b.emit("store", spad="acc", spad_addr=0, dram_addr=64, rows=1, row_lines=1)    # needs matmul
    b.emit("load", spad="act", spad_addr=0, dram_addr=64, rows=1, row_lines=1)     # WAR + RAW(DRAM)
    prog = b.finish()
    text = [i.mnemonic for i in prog]
    assert text == ["load", "load", "matmul", "store", "load", "halt"]
    ld0, ld1, mm, st, ld2 = prog[:5]
    assert not ld0.signal_en and ld1.signal_en        # the later LOAD implies the earlier one
    assert (mm.wait_sem, mm.wait_count, mm.wait_consume) == (ld1.signal_sem, 1, 1)
    assert mm.signal_en and (st.wait_sem, st.wait_count) == (mm.signal_sem, 1)
    assert st.signal_en and (ld2.wait_sem, ld2.wait_count, ld2.wait_consume) == (st.signal_sem, 1, 1)
    assert len({ld1.signal_sem, mm.signal_sem, st.signal_sem}) == 3
    for mode in MODES:
        Machine(cfg).run(prog, mode=mode)
