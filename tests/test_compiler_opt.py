"""Back-end optimisations of the compiler (issue 8): fusion, scheduling, DRAM reuse, sync
necessity, compression decisions, batch grouping.

References are never the optimised output itself: every optimisation is compared with the
compile that has it switched off (bit for bit, golden concurrent model with the race checker),
byte counts with figures computed here from tensor shapes, and each remaining semaphore wait is
shown necessary by deleting it and letting the golden race checker find the race.
Models are built with onnx.helper. Seeded: SPARROW_SEED.
"""

import numpy as np
import pytest
from onnx import helper as h

import sparrow
from sparrow.compiler import CompileError
from sparrow.compiler.lower import DEFAULT_OPTIONS, to_dram
from sparrow.compiler.program import GoldenDevice
from sparrow.compiler.quantize import quantize
from sparrow.config import preset
from sparrow.golden import Machine, RaceError
from sparrow.isa import Program
from sparrow.kernels import ProgramBuilder, Requant, Tensor, conv2d, gemm
from test_compiler import _build, _conv, _head, make_model

OFF = {"fuse": False, "schedule": False, "reuse_dram": False, "compress": False, "batch": False}


def resnet_block(rng, batch=2, hw=8, c=16):
    """stem 3->c, conv c->c (c=16: weights stream through WGT on small), residual add + ReLU,
    2x2 max pool, conv c->8, head. Fusable: the second conv + add + pool."""
    parts = [
        _conv("stem", "x", "s", 3, c, rng, bn=True),
        _conv("b1", "s", "b1", c, c, rng, bn=True, relu=False),
        ([h.make_node("Add", ["b1", "s"], ["r"]), h.make_node("Relu", ["r"], ["rr"])], {}),
        ([h.make_node("MaxPool", ["rr"], ["mp"], kernel_shape=[2, 2], strides=[2, 2])], {}),
        _conv("c2", "mp", "c2", c, 8, rng),
        _head("c2", 8, 5, rng),
    ]
    return _build(parts, (batch, 3, hw, hw))


def mlp(rng, batch=4, k=64, hid=64, n=10):
    ini = {
        "w1": rng.standard_normal((hid, k)) / np.sqrt(k), "b1": rng.standard_normal(hid) * 0.1,
        "w2": rng.standard_normal((hid, hid)) / np.sqrt(hid), "b2": rng.standard_normal(hid) * 0.1,
        "w3": rng.standard_normal((n, hid)) / np.sqrt(hid), "b3": rng.standard_normal(n) * 0.1,
    }
    nodes = [
        h.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1), h.make_node("Relu", ["h1"], ["a1"]),
        h.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], transB=1), h.make_node("Relu", ["h2"], ["a2"]),
        h.make_node("Gemm", ["a2", "w3", "b3"], ["y"], transB=1),
    ]
    return make_model(nodes, [("x", [batch, k])], [("y", [batch, n])], ini)


def compile_run(model, cal, x, preset_name, options, save=None):
    prog = sparrow.compile(model, calibration={"x": cal}, preset=preset_name, accuracy_batches=0,
                           options=options, save=save)
    dev = GoldenDevice(prog.cfg, check_races=True)
    prog.run({"x": x}, device=dev)
    return prog, dev


def acc_steps(prog):
    return [s for s in prog.manifest["steps"] if s["kind"] == "acc"]


# -- every optimisation keeps outputs bit-identical ----------------------------------------------

VARIANTS = [{}] + [{k: False} for k in OFF]


def test_each_option_bit_identical(rng):
    m = resnet_block(rng)
    cal = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    x = cal[:2]
    ref, _ = compile_run(m, cal, x, "small", OFF)
    ref_y = ref.last_run["int8"]["y"]
    assert len(np.unique(ref_y)) > 3
    base_counters = ref.last_run["counters"]
    for v in VARIANTS:
        prog, _ = compile_run(m, cal, x, "small", v)
        np.testing.assert_array_equal(prog.last_run["int8"]["y"], ref_y, err_msg=str(v))
        (st,) = acc_steps(prog)
        if v.get("fuse", True):
            assert [[nm.split("_")[0] for nm in g["nodes"]] for g in st["fusion"]["groups"]] == [
                ["Conv", "Add", "MaxPool"]]
        else:
            assert st["fusion"]["groups"] == []
        if v.get("reuse_dram", True):
            assert st["dram"]["bytes"] < st["dram"]["bytes_without_reuse"]
        else:
            assert st["dram"]["bytes"] == st["dram"]["bytes_without_reuse"]
        ks = st["batch"]["kernels"]
        flags = [k["batch"] > 1 and (k["weights_resident"] or k["batch_group"] >= k["batch"]) for k in ks]
        assert [f for c in st["batch"]["clusters"] for f in [c["batched"]] * len(c["nodes"])] == flags
        if not v.get("batch", True):
            assert all(k["batch_group"] == 1 for k in ks if k["kernel"] == "conv2d")
    assert base_counters["cycles"] > 0


def test_default_preset_all_on_vs_off_with_compression(rng):
    """default preset (cols 8): post-ReLU hidden layers compress; outputs stay identical and
    the bus moves fewer bytes than raw for the compressed tensors."""
    m = mlp(rng)
    cal = rng.standard_normal((32, 64)).astype(np.float32)
    x = cal[:4]
    off, _ = compile_run(m, cal, x, "default", OFF)
    # (GEMM-chain fusion would keep a1/a2 on chip: off here so they go through DRAM)
    on, _ = compile_run(m, cal, x, "default", {"fuse": False, "sparsity": {"a1": 0.8, "a2": 0.8}})
    np.testing.assert_array_equal(on.last_run["int8"]["y"], off.last_run["int8"]["y"])
    (st,) = acc_steps(on)
    assert st["compression"]["a1"]["compressed"] and st["compression"]["a2"]["compressed"]
    c = on.last_run["counters"]
    assert c["store_bytes"] < c["store_bytes_raw"] and c["load_bytes"] < c["load_bytes_raw"]
    c0 = off.last_run["counters"]
    assert c0["store_bytes"] == c0["store_bytes_raw"]


def test_batch_weights_loaded_once(rng):
    """1x1 conv 64->64 on 2x2 maps, batch 4 (small preset): 4 KiB of weights stream through the
    1 KiB weight scratchpad and dominate; with batch grouping all four images run under each
    loaded chunk: one weight pass instead of four, fewer bus bytes and cycles, same outputs."""
    ini = {"w": rng.standard_normal((64, 64, 1, 1)) / 8, "b": rng.standard_normal(64) * 0.1}
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"]), h.make_node("Relu", ["c"], ["y"])],
                   [("x", [4, 64, 2, 2])], [("y", [4, 64, 2, 2])], ini)
    cal = rng.standard_normal((8, 64, 2, 2)).astype(np.float32)
    x = cal[:4]
    off, _ = compile_run(m, cal, x, "small", {"batch": False})
    on, _ = compile_run(m, cal, x, "small", {})
    np.testing.assert_array_equal(on.last_run["int8"]["y"], off.last_run["int8"]["y"])
    (k_on,) = acc_steps(on)[0]["batch"]["kernels"]
    (k_off,) = acc_steps(off)[0]["batch"]["kernels"]
    assert (k_on["batch_group"], k_on["weight_loads"]) == (4, 1)
    assert (k_off["batch_group"], k_off["weight_loads"]) == (1, 4)
    assert acc_steps(on)[0]["batch"]["clusters"] == [{"batched": True, "nodes": ["Conv_0"]}]
    weights = 64 * 64  # int8 bytes, loaded once instead of four times
    c_on, c_off = on.last_run["counters"], off.last_run["counters"]
    assert c_off["load_bytes"] - c_on["load_bytes"] >= 3 * weights
    assert c_on["cycles"] < c_off["cycles"]


@pytest.mark.parametrize("fuse_res", [False, True])
def test_batch_group_kernel_against_numpy(rng, fuse_res):
    """Kernel level: a weight-bound 2x2 stride-2 conv (4 KiB of weights stream through the 1 KiB
    WGT of small) on a batch of 3 runs the images as one group — one MATMUL per weight piece for
    the whole group — and matches the NumPy reference (with and without a fused residual add)."""
    from test_kernels import i8, random_requant, ref_conv, ref_requant

    cfg = preset("small")
    X, Wc = i8(rng, (3, 4, 4, 32)), i8(rng, (2, 2, 32, 32))
    rq, ref = random_requant(rng, 32, scale=(2e-4, 1e-3))
    b = ProgramBuilder(cfg)
    x = b.tensor(X.shape)
    res = R = None
    if fuse_res:
        R = i8(rng, (3, 2, 2, 32))
        r = b.tensor(R.shape)
        res = (r, 0.75, 0.5, False)
    y = conv2d(b, x, Wc, rq, stride=2, residual=res)
    (note,) = b.notes
    assert note["batch_group"] == 3 and not note["weights_resident"]
    mm = [r for r in b.records if r[0] == "matmul"]
    assert all(r[1]["m_outer"] == 3 * note["row_tile"] for r in mm)
    prog = b.finish()
    m = Machine(cfg)
    b.write_segments(m)
    x.write(m, X)
    if fuse_res:
        r.write(m, R)
    m.run(prog, mode="concurrent", check_races=True)
    exp = ref_requant(ref_conv(X, Wc, 2, (0, 0, 0, 0), 1), ref)
    if fuse_res:  # VECTOR ADD of the requantised conv and the residual, as sparrow.kernels.add
        from sparrow.golden import numerics
        from sparrow.kernels import add_multipliers
        ma, mb, sh = add_multipliers(0.75, 0.5)
        exp = numerics.vadd(exp, R, ma, mb, sh, False)
    np.testing.assert_array_equal(y.read(m), exp)


# -- compression decisions -------------------------------------------------------------------

@pytest.mark.parametrize("preset_name", ["small", "default"])
def test_compression_chosen_only_when_smaller(rng, preset_name):
    m = mlp(rng)
    cal = rng.standard_normal((32, 64)).astype(np.float32)
    cols = preset(preset_name).cols
    for sp in (0.0, 0.3, 0.5, 0.7, 0.9):
        prog = sparrow.compile(m, calibration={"x": cal}, preset=preset_name, accuracy_batches=0,
                               options={"fuse": False, "sparsity": {"a1": sp, "a2": sp}})
        (st,) = acc_steps(prog)
        for name in ("a1", "a2"):
            rec = st["compression"][name]
            rows, c = 4, 64
            lines = rows * -(-c // cols)
            expected = lines * (2 + (cols + 7) // 8) + round(rows * c * (1 - sp))
            assert rec["raw_bytes"] == rows * c
            assert rec["compressed_bytes"] == expected
            assert rec["compressed"] == (expected < rows * c), (sp, rec)
    # y is a graph output (read by the host): never compressed, never a candidate
    assert "y" not in st["compression"]


def test_measured_sparsity_and_unsupported_consumers(rng):
    """Without a sparsity option the compiler measures it (post-ReLU: many zeros); a value read
    by a pool / residual add is not compressed, whatever its sparsity."""
    m = resnet_block(rng, batch=1)
    cal = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    prog = sparrow.compile(m, calibration={"x": cal}, preset="default", accuracy_batches=0)
    (st,) = acc_steps(prog)
    rec = st["compression"]["s"]  # stem output: read by conv b1 and by the fused residual add
    assert rec["sparsity"] > 0.3
    assert not rec["compressed"] and "fused" in rec["reason"]


# -- sync: every remaining wait is necessary --------------------------------------------------

def _assert_every_wait_needed(cfg, program_bytes, fresh_machine):
    P = Program.from_bytes(program_bytes, cfg=cfg)
    fresh_machine().run(P, mode="concurrent", check_races=True)
    waits = [i for i, ins in enumerate(P) if ins.values["wait_count"]]
    assert waits
    for i in waits:
        Q = Program(list(P))
        Q.instructions[i] = Q[i].replace(wait_count=0, wait_consume=0, wait_sem=0)
        with pytest.raises(RaceError):
            fresh_machine().run(Q, mode="concurrent", check_races=True)
    return len(waits)


def test_removing_any_wait_of_a_compiled_program_races(rng):
    m = resnet_block(rng, batch=1, hw=6)
    cal = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    prog = sparrow.compile(m, calibration={"x": cal}, preset="small", accuracy_batches=0)
    (st,) = acc_steps(prog)
    p = prog.programs[st["program"]]

    def fresh():
        mm = Machine(prog.cfg)
        for a, d in p["segments"]:
            mm.write_dram(a, d)
        for d in st["inputs"]:
            q = quantize(cal[:1], prog.scales[d["name"]])
            mm.write_dram(d["addr"], to_dram(q, d["layout"], d["meta"]).astype(np.int8))
        return mm

    n = _assert_every_wait_needed(prog.cfg, p["program"], fresh)
    assert n == st["sync"]["edges_after"]
    assert st["sync"]["edges_before"] > st["sync"]["edges_after"]


def test_removing_any_wait_of_kernel_programs_races(rng):
    cfg = preset("small")
    b = ProgramBuilder(cfg)
    a = b.tensor((12, 40), name="a")
    gemm(b, a, rng.integers(-127, 128, (40, 9)).astype(np.int8), requant=Requant.from_scale(0.01))
    x = b.tensor((1, 6, 6, 8), name="x")
    r = b.tensor((1, 6, 6, 8), name="r")
    conv2d(b, x, rng.integers(-127, 128, (3, 3, 8, 8)).astype(np.int8), Requant.from_scale(0.002, relu=True),
           padding=1, residual=(r, 0.7, 0.4, True), pool=(2, 2))
    # a compressed intermediate between two convs (zero-filled padding, group loads)
    z = b.tensor((1, 6, 6, 8), compressed=True)
    conv2d(b, x, rng.integers(-127, 128, (1, 1, 8, 8)).astype(np.int8), Requant.from_scale(0.004, relu=True),
           out=z)
    conv2d(b, z, rng.integers(-127, 128, (3, 3, 8, 4)).astype(np.int8), Requant.from_scale(0.002), padding=1)
    # a GEMM chain with the hidden layer on chip
    with b.spad_scope():
        buf = b.spad_alloc("ACT", 12 * 3)
        gemm(b, a, rng.integers(-127, 128, (40, 10)).astype(np.int8), requant=Requant.from_scale(0.01, relu=True),
             out_onchip=(buf, 3))
        gemm(b, Tensor(0, (12, 10), "int8"), rng.integers(-127, 128, (10, 6)).astype(np.int8),
             requant=Requant.from_scale(0.02), a_onchip=buf)
    prog = b.finish()
    data = {t: rng.integers(-128, 128, t.shape) for t in (a, x, r)}

    def fresh():
        mm = Machine(cfg)
        b.write_segments(mm)
        for t, v in data.items():
            t.write(mm, v)
        return mm

    _assert_every_wait_needed(cfg, bytes(prog), fresh)


# -- fusion ----------------------------------------------------------------------------------

def test_fusion_reduces_dram_bytes_by_the_intermediates(rng):
    """Weights resident (c=8), so the fused kernel's smaller row tiles cost no weight reloads:
    the bus saves exactly the intermediates' stores and at least their loads."""
    m = resnet_block(rng, batch=2, c=8)
    cal = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    x = cal[:2]
    nofuse = {**OFF, "schedule": True}
    off, _ = compile_run(m, cal, x, "small", nofuse)
    on, _ = compile_run(m, cal, x, "small", {**nofuse, "fuse": True})
    np.testing.assert_array_equal(on.last_run["int8"]["y"], off.last_run["int8"]["y"])
    # intermediates fused away: conv b1's output and the add's output, both [2, 8, 8, 8] int8
    inter = 2 * (2 * 8 * 8 * 8)
    (st,) = acc_steps(on)
    (grp,) = st["fusion"]["groups"]
    assert grp["intermediates"] == ["b1", "rr"]
    assert grp["dram_bytes_saved"] == st["fusion"]["dram_bytes_saved"] == 2 * inter  # written + read once
    c_on, c_off = on.last_run["counters"], off.last_run["counters"]
    assert c_off["store_bytes"] - c_on["store_bytes"] == inter
    assert c_off["load_bytes"] - c_on["load_bytes"] >= inter


def test_keep_blocks_fusion_and_reuse(rng):
    """A kept (saved) value is never fused away nor overwritten: it equals the unoptimised
    compile's value at the end of the program."""
    m = resnet_block(rng, batch=1)
    cal = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    x = cal[:1]
    ref, rdev = compile_run(m, cal, x, "small", OFF, save=["b1", "s"])
    on, odev = compile_run(m, cal, x, "small", {}, save=["b1", "s"])
    (st,) = acc_steps(on)
    assert all("b1" not in g["intermediates"] for g in st["fusion"]["groups"])

    def saved(prog, dev):
        (s,) = acc_steps(prog)
        out = {}
        for d in s["outputs"]:
            if d.get("debug"):
                n = int(np.prod(d["shape"]))
                out[d["name"]] = np.asarray(dev.read_dram(d["addr"], n), np.uint8).copy()
        return out

    a, b_ = saved(ref, rdev), saved(on, odev)
    assert set(a) == set(b_) == {"b1", "s"}
    for k in a:
        np.testing.assert_array_equal(a[k], b_[k], err_msg=k)
    np.testing.assert_array_equal(on.last_run["int8"]["y"], ref.last_run["int8"]["y"])


def test_gemm_chain_fusion(rng):
    """An MLP (3 Gemms with ReLU) runs as one fused group: the hidden activations stay in the
    scratchpad — the bus moves only the input, weights, parameters and the output."""
    m = mlp(rng)
    cal = rng.standard_normal((32, 64)).astype(np.float32)
    x = cal[:4]
    off, _ = compile_run(m, cal, x, "default", OFF)
    on, _ = compile_run(m, cal, x, "default", {})
    np.testing.assert_array_equal(on.last_run["int8"]["y"], off.last_run["int8"]["y"])
    (st,) = acc_steps(on)
    (grp,) = st["fusion"]["groups"]
    assert [nm.split("_")[0] for nm in grp["nodes"]] == ["Gemm"] * 3
    assert grp["intermediates"] == ["a1", "a2"]
    inter = 4 * 64 + 4 * 64  # [4, 64] int8 each
    assert grp["dram_bytes_saved"] == 2 * inter
    c_on, c_off = on.last_run["counters"], off.last_run["counters"]
    assert c_off["store_bytes"] - c_on["store_bytes"] == inter
    assert c_off["load_bytes"] - c_on["load_bytes"] >= inter
    assert c_on["cycles"] < c_off["cycles"]


# -- scheduling report ---------------------------------------------------------------------------

def test_schedule_report_timeline(rng):
    m = resnet_block(rng, batch=1)
    cal = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    prog = sparrow.compile(m, calibration={"x": cal}, preset="small", accuracy_batches=0)
    (st,) = acc_steps(prog)
    sc = st["schedule"]
    assert sc["est_cycles"] <= sc["est_cycles_before"]
    tl = sc["timeline"]
    assert set(tl) <= set(st["nodes"]) and "Conv_0" in tl
    for node, engines in tl.items():
        for eng, (s, e) in engines.items():
            assert eng in ("load", "matmul", "vector", "store") and 0 <= s < e <= sc["est_cycles"], node


def test_scheduler_prefetches_independent_work():
    """Two independent GEMMs: list scheduling moves the second's loads under the first's
    MATMULs; the estimate improves and the golden cycle count does not get worse."""
    from sparrow.compiler.schedule import schedule

    cfg = preset("small")
    rng = np.random.default_rng(5)
    ws = [rng.integers(-127, 128, (24, 12)).astype(np.int8) for _ in range(3)]
    outs = {}
    for enabled in (False, True):
        b = ProgramBuilder(cfg)
        ts = []
        for k in range(3):
            a = b.tensor((64, 24), name=f"a{k}")
            ts.append((a, gemm(b, a, ws[k], requant=Requant.from_scale(0.01))))
        rep = schedule(b, enabled=enabled)
        prog = b.finish()
        mm = Machine(cfg)
        b.write_segments(mm)
        for a, _ in ts:
            a.write(mm, np.full(a.shape, 3))
        res = mm.run(prog, mode="concurrent", check_races=True)
        outs[enabled] = (res.cycles, [y.read(mm) for _, y in ts], rep)
    (c0, y0, _), (c1, y1, r1) = outs[False], outs[True]
    for u, v in zip(y0, y1, strict=True):
        np.testing.assert_array_equal(u, v)
    assert r1["reordered"] and r1["est_cycles"] < r1["est_cycles_before"]
    assert c1 <= c0


# -- errors ------------------------------------------------------------------------------------

def test_option_errors_name_the_option(rng):
    m = mlp(rng)
    with pytest.raises(CompileError, match="'fusion'"):
        sparrow.compile(m, preset="small", accuracy_batches=0, options={"fusion": True})
    with pytest.raises(CompileError, match="'schedule' must be true or false"):
        sparrow.compile(m, preset="small", accuracy_batches=0, options={"schedule": "yes"})
    assert set(OFF) | {"keep", "sparsity", "timeline"} == set(DEFAULT_OPTIONS)


def test_tensor_that_does_not_fit_is_named(rng):
    ini = {"w": rng.standard_normal((64, 64)), "b": np.zeros(64)}
    m = make_model([h.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [("x", [70000, 64])],
                   [("y", [70000, 64])], ini)
    cal = rng.standard_normal((70000, 64)).astype(np.float32)
    with pytest.raises(CompileError, match="tensor '(x|y)'"):
        sparrow.compile(m, calibration={"x": cal}, preset="small", accuracy_batches=0)
    # scratchpad: one output row of a 1x3000 image does not fit the small preset's ACT
    ini = {"w": rng.standard_normal((4, 4, 3, 3)), "b": np.zeros(4)}
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], [("x", [1, 4, 1, 3000])],
                   [("y", [1, 4, 1, 3000])], ini)
    with pytest.raises(CompileError, match="input tensor 'x', output tensor 'y'.*does not fit"):
        sparrow.compile(m, calibration={"x": rng.standard_normal((1, 4, 1, 3000))}, preset="small",
                        accuracy_batches=0)


# -- RTL ---------------------------------------------------------------------------------------

@pytest.mark.verilator
def test_optimised_program_on_verilator(rng):
    """The fully optimised compile gives the same int8 outputs on the Verilator-simulated RTL as
    the unoptimised compile on the golden model."""
    from sparrow import runtime

    if not hasattr(runtime, "Device"):
        pytest.skip("sparrow.runtime.Device is not available in this checkout")
    m = resnet_block(rng, batch=2, hw=6)
    cal = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    x = cal[:2]
    ref, _ = compile_run(m, cal, x, "small", OFF)
    # a high expected sparsity makes the pool output (read by conv c2) compressed: compressed
    # STOREs/LOADs and padding zero-fill run on the RTL too
    on = sparrow.compile(m, calibration={"x": cal}, preset="small", accuracy_batches=0,
                         options={"sparsity": {"mp": 0.95}})
    (st,) = acc_steps(on)
    assert st["compression"]["mp"]["compressed"] and st["fusion"]["groups"]
    on.run({"x": x}, backend="verilator")
    np.testing.assert_array_equal(on.last_run["int8"]["y"], ref.last_run["int8"]["y"])


def test_compression_uses_sparsity_measured_on_calibration_data(rng):
    """compile() measures each activation's zero fraction on the calibration batches (no
    sparsity option given); it agrees with the zeros the compiled program actually produces on
    those batches, and a calibration set that drives a hidden layer to mostly zeros is measured
    as such and turns its compression on."""
    m = mlp(rng)
    cal = rng.standard_normal((32, 64)).astype(np.float32)
    prog = sparrow.compile(m, calibration={"x": cal}, preset="default", accuracy_batches=0,
                           options={"fuse": False}, save=["a1"])
    zeros = total = 0
    for s in range(0, 32, 4):
        prog.run({"x": cal[s:s + 4]}, device=GoldenDevice(prog.cfg))
        a1 = prog.last_run["saved_int8"]["a1"]
        zeros, total = zeros + int(np.count_nonzero(a1 == 0)), total + a1.size
    measured = prog.manifest["options"]["sparsity"]["a1"]
    assert abs(measured - zeros / total) < 0.03, (measured, zeros / total)

    # drive a1 to zeros: inputs along the direction that makes every first-layer pre-activation
    # strongly negative
    from onnx import numpy_helper

    w1 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w1")).reshape(64, 64)
    x_neg = -np.linalg.lstsq(w1, np.ones(64) * 4.0, rcond=None)[0]
    cal_zero = (x_neg[None, :] + 0.01 * rng.standard_normal((32, 64))).astype(np.float32)
    sparse = sparrow.compile(m, calibration={"x": cal_zero}, preset="default", accuracy_batches=0,
                             options={"fuse": False})
    assert sparse.manifest["options"]["sparsity"]["a1"] > 0.9
    (st,) = acc_steps(sparse)
    assert st["compression"]["a1"]["compressed"]


def test_summary_shows_back_end_reports(rng):
    """`sparrow inspect` / prog.summary() print each acc step's fusion, schedule, sync, memory and
    compression reports, with the figures of the manifest."""
    m = resnet_block(rng, batch=1)
    cal = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    prog = sparrow.compile(m, calibration={"x": cal}, preset="small", accuracy_batches=0)
    (st,) = acc_steps(prog)
    text = prog.summary()
    assert f"({st['fusion']['dram_bytes_saved']} DRAM bytes saved)" in text
    assert f"sync edges: {st['sync']['edges_before']} hazards -> {st['sync']['edges_after']} semaphore waits" in text
    assert f"external memory: {st['dram']['bytes']} bytes" in text
    assert "compressed activations:" in text and "schedule: estimated" in text
    off = sparrow.compile(m, calibration={"x": cal}, preset="small", accuracy_batches=0, options=dict(OFF))
    assert "fusion:" not in off.summary()
