"""ONNX compiler: compiled programs on the golden backend vs onnxruntime.

Two references, both computed by onnxruntime (never by the code under test):

* the float model: outputs within quantization tolerance;
* a QDQ model derived from the compiler's IR and calibrated scales (QuantizeLinear /
  DequantizeLinear around every quantized tensor, per-channel int8 weights, int32 bias): int8
  outputs equal, or within 1 LSB where onnxruntime's float requantization rounds differently from
  the fixed-point multipliers — those cases are counted and bounded.

Models are built with onnx.helper here. Seeded: SPARROW_SEED.
"""


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import sparrow
from sparrow.cli import main
from sparrow.compiler import CompileError, CompiledProgram, InputError
from sparrow.compiler.frontend import frontend
from sparrow.compiler.program import GoldenDevice
from sparrow.compiler.quantize import calibrate, weight_scales

PRESET = "small"


def make_model(nodes, inputs, outputs, inits, opset=13):
    g = h.make_graph(
        nodes,
        "test",
        [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
        [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in outputs],
        [nh.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def qdq_model(model, cal):
    """The quantized model as the compiler means it, written as QDQ ONNX (the test's reference)."""
    g = frontend(model)
    calibrate(g, cal)
    nodes, inits = [], []
    dq = {}

    def const(name, arr):
        inits.append(nh.from_array(arr, name))
        return name

    def qdq(name, scale):
        s = const(name + "_s", np.array(scale, np.float32))
        z = const(name + "_z", np.array(0, np.int8))
        nodes.append(h.make_node("QuantizeLinear", [name, s, z], [name + "_q"]))
        nodes.append(h.make_node("DequantizeLinear", [name + "_q", s, z], [name + "_dq"]))
        return name + "_dq"

    for i in g.inputs:
        dq[i] = qdq(i, g.values[i].scale)
    for n in g.nodes:
        attrs = {k: v for k, v in n.attrs.items() if k != "act"}
        ins = []
        for k, i in enumerate(n.inputs):
            v = g.values.get(i) if i else None
            if v is None or not v.is_const:
                ins.append(dq.get(i, i))
                continue
            if n.op in ("Conv", "Gemm") and k in (1, 2):
                w = g.values[n.inputs[1]].const.astype(np.float64)
                axis = 0 if n.op == "Conv" else 1
                sw = weight_scales(w, axis)
                if k == 1:
                    shp = [-1 if a == axis else 1 for a in range(w.ndim)]
                    wq = np.clip(np.rint(w / sw.reshape(shp)), -127, 127).astype(np.int8)
                    const(i + "_q", wq)
                    const(i + "_qs", sw.astype(np.float32))
                    const(i + "_qz", np.zeros(len(sw), np.int8))
                    nodes.append(
                        h.make_node(
                            "DequantizeLinear", [i + "_q", i + "_qs", i + "_qz"], [i + "_dq"], axis=axis
                        )
                    )
                else:
                    bs = g.values[n.inputs[0]].scale * sw
                    bq = np.rint(v.const.astype(np.float64) / bs).astype(np.int32)
                    const(i + "_q", bq)
                    const(i + "_qs", bs.astype(np.float32))
                    const(i + "_qz", np.zeros(len(bs), np.int32))
                    nodes.append(
                        h.make_node("DequantizeLinear", [i + "_q", i + "_qs", i + "_qz"], [i + "_dq"], axis=0)
                    )
                ins.append(i + "_dq")
            else:
                ins.append(const(i, v.const))
        out = n.outputs[0]
        act = n.attrs.get("act")
        mid = out + "_pre" if act else out
        nodes.append(h.make_node(n.op, ins, [mid] + n.outputs[1:], **attrs))
        if act:
            if act[0] == "relu":
                nodes.append(h.make_node("Relu", [mid], [out]))
            else:
                lo = const(out + "_lo", np.array(act[1], np.float32))
                hi = const(out + "_hi", np.array(act[2], np.float32))
                nodes.append(h.make_node("Clip", [mid, lo, hi], [out]))
        if out in g.outputs and n.op in ("Softmax",):
            dq[out] = out
        else:
            dq[out] = qdq(out, g.values[out].scale)
    outs = [h.make_tensor_value_info(dq[o], T.FLOAT, None) for o in g.outputs]
    gg = h.make_graph(
        nodes, "qdq", [h.make_tensor_value_info(i, T.FLOAT, g.values[i].shape) for i in g.inputs], outs, inits
    )
    m = h.make_model(gg, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m, g


def ort_run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def check_model(model, rng, in_shape, n_cal=16, in_name="x", tol=0.08):
    cal = rng.standard_normal((n_cal * in_shape[0],) + tuple(in_shape[1:])).astype(np.float32)
    prog = sparrow.compile(model, calibration={in_name: cal}, preset=PRESET, accuracy_batches=0)
    qm, g = qdq_model(model, {in_name: cal})
    x = cal[-in_shape[0] :]  # in the calibrated range: the error is rounding, not clipping
    out = prog.run({in_name: x})
    ref_f = ort_run(model, {in_name: x})
    ref_q = ort_run(qm, {in_name: x})
    stats = []
    for k, o in enumerate(g.outputs):
        y, rf, rq = out[o], ref_f[k], ref_q[k]
        assert y.shape == rf.shape
        span = float(np.max(np.abs(rf))) or 1.0
        assert np.max(np.abs(y - rf)) <= tol * span, (o, np.max(np.abs(y - rf)), span)
        if o in prog.last_run["int8"]:
            s = g.values[o].scale
            qi = np.rint(rq / s).astype(np.int64)
            d = np.abs(prog.last_run["int8"][o].astype(np.int64) - qi)
            n1 = int(np.sum(d == 1))
            print(f"{o}: {d.size} values, {n1} differ by 1 LSB, max diff {d.max()}")
            assert d.max() <= 1
            assert n1 <= max(2, d.size // 10)
            stats.append(n1)
        else:  # float output of a host step (softmax, transpose): its int8 input may differ from
            # onnxruntime's by the 1 LSB allowed above, and the reference re-quantizes the host
            # output with its own scale (half an LSB more): 1.5 LSB of the coarsest scale
            scales = [float(np.max(v.scale)) for v in g.values.values() if getattr(v, "scale", None) is not None]
            lsb = max(scales, default=0.0)
            tol_host = max(0.05, 1.5 * 1.001 * lsb)
            assert np.max(np.abs(y - rq)) <= tol_host, (np.max(np.abs(y - rq)), tol_host)
    return prog, stats


def conv_bn_relu(rng, C=3, M=8, H=8, W=8, k=3, stride=1, pad=1, group=1):
    ini = {
        "w": rng.standard_normal((M, C // group, k, k)) * 0.3,
        "b": rng.standard_normal(M) * 0.1,
        "s": rng.uniform(0.5, 1.5, M),
        "bb": rng.standard_normal(M) * 0.1,
        "m": rng.standard_normal(M) * 0.1,
        "v": rng.uniform(0.5, 1.5, M),
    }
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2, group=group),
        h.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["bn"]),
        h.make_node("Relu", ["bn"], ["y"]),
    ]
    OH = (H + 2 * pad - k) // stride + 1
    OW = (W + 2 * pad - k) // stride + 1
    return make_model(nodes, [("x", [1, C, H, W])], [("y", [1, M, OH, OW])], ini)


def test_conv_bn_relu(rng):
    prog, _ = check_model(conv_bn_relu(rng), rng, (1, 3, 8, 8))
    assert [s["kind"] for s in prog.manifest["steps"]] == ["acc"]
    assert prog.manifest["partition"]  # BN folded: one Conv node with fused ReLU
    assert list(prog.manifest["partition"]) == ["Conv_0"]


def test_depthwise_strided_conv(rng):
    check_model(conv_bn_relu(rng, C=6, M=6, H=9, W=7, stride=2, group=6), rng, (1, 6, 9, 7))


def test_grouped_conv_no_pad(rng):
    check_model(conv_bn_relu(rng, C=4, M=8, H=6, W=6, k=3, pad=0, group=2), rng, (1, 4, 6, 6))


def test_mlp_gemm_matmul_softmax(rng):
    ini = {
        "w1": rng.standard_normal((16, 10)) * 0.4,
        "b1": rng.standard_normal(10) * 0.1,
        "w2": rng.standard_normal((3, 10)) * 0.4,
        "b2": rng.standard_normal(3) * 0.1,
    }
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["mm"]),
        h.make_node("Add", ["mm", "b1"], ["h0"]),
        h.make_node("Relu", ["h0"], ["h1"]),
        h.make_node("Gemm", ["h1", "w2", "b2"], ["lg"], transB=1),
        h.make_node("Softmax", ["lg"], ["y"], axis=1),
    ]
    m = make_model(nodes, [("x", [4, 16])], [("lg", [4, 3]), ("y", [4, 3])], ini)
    prog, _ = check_model(m, rng, (4, 16))
    kinds = [(s["kind"], s.get("op")) for s in prog.manifest["steps"]]
    assert kinds == [("acc", None), ("host", "Softmax")]


def test_residual_add_pools_gap_flatten(rng):
    ini = {
        "w1": rng.standard_normal((8, 4, 3, 3)) * 0.3,
        "w2": rng.standard_normal((8, 8, 1, 1)) * 0.3,
        "fw": rng.standard_normal((8, 5)) * 0.5,
    }
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        h.make_node("Conv", ["p1", "w2"], ["c2"]),
        h.make_node("Add", ["c2", "p1"], ["a"]),
        h.make_node("Relu", ["a"], ["r2"]),
        h.make_node("AveragePool", ["r2"], ["ap"], kernel_shape=[2, 2], strides=[1, 1]),
        h.make_node("GlobalAveragePool", ["ap"], ["g"]),
        h.make_node("Flatten", ["g"], ["f"]),
        h.make_node("MatMul", ["f", "fw"], ["y"]),
    ]
    m = make_model(nodes, [("x", [2, 4, 10, 10])], [("y", [2, 5])], ini)
    prog, _ = check_model(m, rng, (2, 4, 10, 10))
    assert [s["kind"] for s in prog.manifest["steps"]] == ["acc"]


def test_flatten_4d_into_gemm(rng):
    """Flatten of a [N, C, H, W] tensor stored NHWC: the Gemm's weight rows are permuted."""
    ini = {"w": rng.standard_normal((3, 2, 3, 3)) * 0.4, "fw": rng.standard_normal((3 * 4 * 4, 6)) * 0.3}
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Flatten", ["c"], ["f"]),
        h.make_node("MatMul", ["f", "fw"], ["y"]),
    ]
    check_model(make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 6])], ini), rng, (1, 2, 4, 4))


def test_host_ops_and_cost_choice(rng):
    """Transpose/LRN run on the host; a small Relu between host ops goes to the host by cost."""
    ini = {"w": rng.standard_normal((4, 3, 3, 3)) * 0.3}
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("LRN", ["c"], ["l"], size=3),
        h.make_node("Relu", ["l"], ["r"]),
        h.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1]),
    ]
    m = make_model(nodes, [("x", [1, 3, 5, 5])], [("y", [1, 5, 5, 4])], ini)
    prog, _ = check_model(m, rng, (1, 3, 5, 5))
    part = prog.manifest["partition"]
    assert part["Conv_0"]["place"] == "acc"
    assert part["LRN_1"]["place"] == "host" and part["Transpose_3"]["place"] == "host"
    assert part["Relu_2"]["place"] == "host" and part["Relu_2"]["why"].startswith("cost")


def test_cost_moves_small_subgraph_to_host(rng):
    """A two-node accelerator subgraph (ReLU + max pool) between host ops runs on the host; a
    large convolution in the same position stays on the accelerator."""

    def model(big):
        ini = {"w": rng.standard_normal((16 if big else 4, 4, 3, 3)) * 0.3}
        mid = [
            h.make_node("Conv", ["l", "w"], ["r"], pads=[1, 1, 1, 1])
            if big
            else h.make_node("Relu", ["l"], ["r"]),
            h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
        ]
        nodes = [
            h.make_node("LRN", ["x"], ["l"], size=3),
            *mid,
            h.make_node("Transpose", ["p"], ["y"], perm=[0, 2, 3, 1]),
        ]
        c = 16 if big else 4
        n = 16 if big else 5
        return make_model(nodes, [("x", [1, 4, n, n])], [("y", [1, n - 1, n - 1, c])], ini), n

    m, n = model(False)
    prog, _ = check_model(m, rng, (1, 4, n, n))
    assert prog.manifest["n_programs"] == 0
    assert (
        _places(prog, "MaxPool") == ["host"]
        and "subgraph of 2" in prog.manifest["partition"]["MaxPool_2"]["why"]
    )
    m, n = model(True)
    prog, _ = check_model(m, rng, (1, 4, n, n))
    assert _places(prog, "Conv") == ["acc"] and _places(prog, "MaxPool") == ["acc"]


def test_save_load_cli(rng, tmp_path, capsys):
    m = conv_bn_relu(rng)
    mp = tmp_path / "m.onnx"
    onnx.save(m, mp)
    cal = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=cal)
    assert (
        main(
            [
                "compile",
                str(mp),
                "-o",
                str(tmp_path / "m.spw"),
                "--calibration",
                str(tmp_path / "cal.npz"),
                "--preset",
                PRESET,
                "-q",
            ]
        )
        == 0
    )
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "run",
                str(tmp_path / "m.spw"),
                "--backend",
                "golden",
                "--input",
                f"x={tmp_path / 'x.npy'}",
                "--output-dir",
                str(tmp_path / "out"),
                "-q",
            ]
        )
        == 0
    )
    outtxt = capsys.readouterr().out
    assert "cycles:" in outtxt
    y = np.load(tmp_path / "out" / "y.npy")
    prog = CompiledProgram.load(tmp_path / "m.spw")
    api = sparrow.compile(m, calibration={"x": cal}, preset=PRESET, accuracy_batches=0)
    np.testing.assert_array_equal(y, api.run({"x": x})["y"])
    np.testing.assert_array_equal(y, prog.run({"x": x})["y"])
    ref = ort_run(m, {"x": x})[0]
    assert np.max(np.abs(y - ref)) <= 0.08 * np.max(np.abs(ref))
    assert main(["inspect", str(tmp_path / "m.spw")]) == 0
    assert "Conv_0" in capsys.readouterr().out
    assert (
        main(
            [
                "run",
                str(tmp_path / "m.spw"),
                "--backend",
                "golden",
                "--input",
                f"q={tmp_path / 'x.npy'}",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "input 'q'" in capsys.readouterr().err


def test_bad_inputs_rejected(rng):
    prog = sparrow.compile(conv_bn_relu(rng), preset=PRESET, accuracy_batches=0)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"input 'z': no such graph input"):
        prog.run({"x": x, "z": x})
    with pytest.raises(InputError, match=r"input 'x': shape \[1, 3, 8, 7\], expected \[1, 3, 8, 8\]"):
        prog.run({"x": x[..., :7]})
    with pytest.raises(InputError, match=r"input 'x': dtype int8, expected float32"):
        prog.run({"x": x.astype(np.int8)})
    with pytest.raises(InputError, match=r"input 'x': missing"):
        prog.run({})
    with pytest.raises(CompileError, match="backend"):
        prog.run({"x": x}, backend="fpga")


def test_bad_models():
    with pytest.raises(CompileError, match="not a readable ONNX model"):
        sparrow.compile(b"\x00garbage\xff" * 10)
    dyn = make_model([h.make_node("Relu", ["x"], ["y"])], [("x", ["N", 4])], [("y", ["N", 4])], {})
    with pytest.raises(CompileError, match=r"graph input 'x': dynamic or unknown shape"):
        sparrow.compile(dyn)
    unsup = make_model(
        [h.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")], [("x", [2, 2])], [("y", [2, 2])], {}
    )
    with pytest.raises(CompileError, match=r"node 'Einsum_0' \(Einsum\): unsupported operator"):
        sparrow.compile(unsup)
    bad = make_model([h.make_node("Relu", ["x"], ["y"])], [("x", [2, 2])], [("y", [2, 2])], {})
    bad.graph.node[0].input[0] = "missing"
    with pytest.raises(CompileError, match="malformed ONNX model"):
        sparrow.compile(bad)


def test_too_large_tensor():
    rng = np.random.default_rng(0)
    w = {"w": rng.standard_normal((4, 64, 3, 3))}
    m = make_model(
        [h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [("x", [1, 64, 3, 600])],
        [("y", [1, 4, 3, 600])],
        w,
    )
    with pytest.raises(CompileError, match=r"node 'Conv_0' \(Conv\): cannot be lowered for preset 'small'"):
        sparrow.compile(m, preset=PRESET, accuracy_batches=0)


def _conv(name, x, y, cin, cout, rng, k=3, stride=1, group=1, relu=True, bn=False):
    """Conv (+BN) (+Relu) nodes and initializers (test model-building helper)."""
    ini = {
        f"{name}_w": rng.standard_normal((cout, cin // group, k, k)) * (1.5 / np.sqrt(cin // group * k * k)),
        f"{name}_b": rng.standard_normal(cout) * 0.1,
    }
    p = k // 2
    out = y if not (relu or bn) else f"{name}_c"
    nodes = [
        h.make_node(
            "Conv", [x, f"{name}_w", f"{name}_b"], [out], pads=[p] * 4, strides=[stride] * 2, group=group
        )
    ]
    cur = out
    if bn:
        for s, v in (
            ("s", rng.uniform(0.5, 1.5, cout)),
            ("bb", rng.standard_normal(cout) * 0.1),
            ("m", rng.standard_normal(cout) * 0.1),
            ("v", rng.uniform(0.5, 1.5, cout)),
        ):
            ini[f"{name}_{s}"] = v
        nxt = y if not relu else f"{name}_bn"
        nodes.append(
            h.make_node("BatchNormalization", [cur] + [f"{name}_{s}" for s in ("s", "bb", "m", "v")], [nxt])
        )
        cur = nxt
    if relu:
        nodes.append(h.make_node("Relu", [cur], [y]))
    return nodes, ini


def _head(x, c, n_cls, rng):
    ini = {"fc_w": rng.standard_normal((n_cls, c)) * 0.5, "fc_b": rng.standard_normal(n_cls) * 0.1}
    nodes = [
        h.make_node("GlobalAveragePool", [x], ["gap"]),
        h.make_node("Flatten", ["gap"], ["flat"]),
        h.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    return nodes, ini


def _build(parts, shape, n_cls=5):
    nodes, ini = [], {}
    for nd, it in parts:
        nodes += nd
        ini.update(it)
    return make_model(nodes, [("x", list(shape))], [("y", [shape[0], n_cls])], ini)


def _places(prog, op):
    return [v["place"] for k, v in prog.manifest["partition"].items() if k.split("_")[0] == op]


def test_resnet_like(rng):
    parts = [
        _conv("stem", "x", "s", 3, 8, rng, bn=True),
        _conv("b1a", "s", "b1a", 8, 8, rng, bn=True),
        _conv("b1b", "b1a", "b1b", 8, 8, rng, bn=True, relu=False),
        ([h.make_node("Add", ["b1b", "s"], ["r1"]), h.make_node("Relu", ["r1"], ["r1r"])], {}),
        _conv("down", "r1r", "d", 8, 12, rng, stride=2, bn=True),
        _head("d", 12, 5, rng),
    ]
    prog, _ = check_model(_build(parts, (1, 3, 8, 8)), rng, (1, 3, 8, 8))
    assert prog.manifest["n_programs"] == 1


def test_squeezenet_like_concat(rng):
    parts = [
        _conv("sq", "x", "sq", 6, 4, rng, k=1),
        _conv("e1", "sq", "e1", 4, 6, rng, k=1),
        _conv("e3", "sq", "e3", 4, 6, rng, k=3),
        ([h.make_node("Concat", ["e1", "e3"], ["cat"], axis=1)], {}),
        ([h.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2])], {}),
        _head("mp", 12, 4, rng),
    ]
    prog, _ = check_model(_build(parts, (1, 6, 6, 6), 4), rng, (1, 6, 6, 6))
    assert _places(prog, "Concat") == ["acc"]
    assert prog.manifest["n_programs"] == 1


def test_inception_densenet_vgg_like(rng):
    # inception: 1x1 / 3x3 / pool branches concatenated (5 + 6 + 3 channels: odd widths, lpp > 1)
    parts = [
        _conv("i1", "x", "i1", 3, 5, rng, k=1),
        _conv("i3", "x", "i3", 3, 6, rng, k=3),
        ([h.make_node("MaxPool", ["x"], ["ip"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])], {}),
        ([h.make_node("Concat", ["i1", "i3", "ip"], ["inc"], axis=1)], {}),
        # densenet: concat of the block input and a new feature map
        _conv("d1", "inc", "d1", 14, 4, rng, bn=True),
        ([h.make_node("Concat", ["inc", "d1"], ["dn"], axis=1)], {}),
        # vgg: conv conv pool
        _conv("v1", "dn", "v1", 18, 8, rng),
        _conv("v2", "v1", "v2", 8, 8, rng),
        ([h.make_node("MaxPool", ["v2"], ["vp"], kernel_shape=[2, 2], strides=[2, 2])], {}),
        _head("vp", 8, 3, rng),
    ]
    prog, _ = check_model(_build(parts, (1, 3, 6, 6), 3), rng, (1, 3, 6, 6))
    # the first max pool pads a possibly negative input: host; the rest on the accelerator
    assert _places(prog, "MaxPool") == ["host", "acc"]
    assert _places(prog, "Concat") == ["acc", "acc"]
    assert {v["place"] for k, v in prog.manifest["partition"].items() if not k.startswith("MaxPool")} == {
        "acc"
    }


def _ort_quantize(model, cal, tmp_path, fmt="QDQ"):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": cal[i : i + 1]} for i in range(len(cal))])

        def get_next(self):
            return next(self.it, None)

    onnx.save(model, tmp_path / "f.onnx")
    quantize_static(
        str(tmp_path / "f.onnx"),
        str(tmp_path / "q.onnx"),
        Reader(),
        quant_format=getattr(QuantFormat, fmt),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return onnx.load(tmp_path / "q.onnx")


def test_import_ort_qdq_model(rng, tmp_path):
    """A model quantized by onnxruntime.quantization (QDQ, symmetric int8): its scales are used,
    and the result matches onnxruntime running the QDQ model within 1 LSB.

    No ReLU here: with symmetric activations onnxruntime quantizes a Conv's output both before
    and after a separate ReLU (two roundings) while Sparrow fuses the ReLU into the requantization
    (one rounding), so such models differ by more than 1 LSB by construction."""
    parts = [
        _conv("stem", "x", "s", 3, 8, rng, relu=False),
        _conv("b1a", "s", "b1a", 8, 8, rng, relu=False),
        ([h.make_node("Add", ["b1a", "s"], ["r1"])], {}),
        ([h.make_node("MaxPool", ["r1"], ["mp"], kernel_shape=[2, 2], strides=[2, 2])], {}),
        _head("mp", 8, 5, rng),
    ]
    m = _build(parts, (1, 3, 8, 8))
    cal = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    qm = _ort_quantize(m, cal, tmp_path)
    assert sum(n.op_type == "QuantizeLinear" for n in qm.graph.node) >= 5
    prog = sparrow.compile(qm, preset=PRESET, accuracy_batches=0)
    assert all(v["place"] == "acc" for v in prog.manifest["partition"].values())
    s_y = [float(nh.to_array(t)) for t in qm.graph.initializer if t.name == "y_scale"]
    assert s_y and prog.scales["y"] == pytest.approx(s_y[0])
    total = ones = 0
    for k in range(4):
        x = cal[k : k + 1]
        y = prog.run({"x": x})["y"]
        rq = ort_run(qm, {"x": x})[0]
        d = np.abs(np.rint(y / s_y[0]) - np.rint(rq / s_y[0]))
        assert d.max() <= 1
        total += d.size
        ones += int(np.sum(d == 1))
    print(f"QDQ import: {total} outputs, {ones} differ by 1 LSB")
    assert ones <= total // 4


def test_import_ort_qoperator_model(rng, tmp_path):
    """QOperator format (QLinearConv, QLinearMatMul): same comparison against onnxruntime."""
    ini = {"fw": rng.standard_normal((8 * 4 * 4, 5)) * 0.3}
    nodes = [
        h.make_node("MaxPool", ["s"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Flatten", ["mp"], ["f"]),
        h.make_node("MatMul", ["f", "fw"], ["y"]),
    ]
    m = _build([_conv("stem", "x", "s", 3, 8, rng), (nodes, ini)], (1, 3, 8, 8))
    cal = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    qm = _ort_quantize(m, cal, tmp_path, fmt="QOperator")
    ops = {n.op_type for n in qm.graph.node}
    assert {"QLinearConv", "QLinearMatMul"} <= ops
    prog = sparrow.compile(qm, preset=PRESET, accuracy_batches=0)
    assert all(v["place"] == "acc" for v in prog.manifest["partition"].values())
    s_y = prog.scales["y"]
    total = ones = 0
    for k in range(4):
        x = cal[k : k + 1]
        d = np.abs(np.rint(prog.run({"x": x})["y"] / s_y) - np.rint(ort_run(qm, {"x": x})[0] / s_y))
        assert d.max() <= 1
        total += d.size
        ones += int(np.sum(d == 1))
    print(f"QOperator import: {total} outputs, {ones} differ by 1 LSB")
    assert ones <= total // 4


def test_concurrent_mode_matches_program_mode(rng):
    """The chained kernels of one compiled program are race-free and deadlock-free: the
    concurrent golden model (race checker on) gives the same outputs as program order."""
    parts = [
        _conv("a", "x", "a", 3, 6, rng, bn=True),
        _conv("b", "a", "b", 6, 6, rng, k=1, relu=False),
        ([h.make_node("Add", ["a", "b"], ["s"]), h.make_node("Relu", ["s"], ["sr"])], {}),
        _conv("c", "sr", "c", 6, 5, rng, stride=2),
        ([h.make_node("Concat", ["c", "c"], ["cc"], axis=1)], {}),
        _head("cc", 10, 4, rng),
    ]
    m = _build(parts, (1, 3, 8, 8), 4)
    cal = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    prog = sparrow.compile(m, calibration={"x": cal}, preset=PRESET, accuracy_batches=0)
    x = cal[:1]
    y0 = prog.run({"x": x}, device=GoldenDevice(prog.cfg, mode="program"))["y"]
    c0 = prog.last_run["cycles"]
    y1 = prog.run({"x": x}, device=GoldenDevice(prog.cfg, check_races=True))["y"]
    np.testing.assert_array_equal(y0, y1)
    assert 0 < prog.last_run["cycles"] < c0  # engines overlap


def test_runtime_backend(rng):
    """Through sparrow.runtime.Device when the driver is present (its golden backend: concurrent
    model, program loaded into DRAM at the artifact's address); else a clear error."""
    from sparrow import runtime

    prog = sparrow.compile(conv_bn_relu(rng), preset=PRESET, accuracy_batches=0)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    if not hasattr(runtime, "Device"):
        with pytest.raises(CompileError, match="backend 'verilator': needs sparrow.runtime.Device"):
            prog.run({"x": x}, backend="verilator")
        return
    y0 = prog.run({"x": x})["y"]
    y1 = prog.run({"x": x}, device=runtime.Device(prog.cfg, backend="golden"))["y"]
    np.testing.assert_array_equal(y0, y1)
    assert prog.last_run["cycles"] > 0 and prog.last_run["counters"]


def test_frontend_folds_shape_subgraph_and_removes_identity(rng):
    """PyTorch-style flatten (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) is constant-folded,
    Identity/Dropout disappear (the graph output keeps its name), and the IR check runs."""
    ini = {
        "w": rng.standard_normal((4, 2, 3, 3)) * 0.4,
        "fw": rng.standard_normal((6, 4 * 4 * 4)) * 0.3,
        "fb": rng.standard_normal(6) * 0.1,
        "idx": np.array(0),
        "minus1": np.array([-1]),
        "ax0": np.array([0]),
    }
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Identity", ["c"], ["ci"]),
        h.make_node("Shape", ["ci"], ["shp"]),
        h.make_node("Gather", ["shp", "idx"], ["n"], axis=0),
        h.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        h.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        h.make_node("Reshape", ["ci", "newshape"], ["f"]),
        h.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1),
        h.make_node("Dropout", ["g"], ["y"]),
    ]
    m = make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 6])], ini)
    for t in m.graph.initializer:  # shape arithmetic is int64
        if t.name in ("idx", "minus1", "ax0"):
            t.CopyFrom(nh.from_array(nh.to_array(t).astype(np.int64), t.name))
    g = frontend(m)
    assert [n.op for n in g.nodes] == ["Conv", "Reshape", "Gemm"]
    assert g.outputs == ["y"] and g.nodes[-1].outputs == ["y"]
    check_model(m, rng, (1, 2, 4, 4))


def test_ir_check_reports_broken_graph(rng):
    from sparrow.compiler.ir import check

    g = frontend(conv_bn_relu(rng))
    g.nodes[0].inputs[0] = "nowhere"
    msg = r"node 'Conv_0' \(Conv\): input 'nowhere' is not defined before use \(after pass test\)"
    with pytest.raises(CompileError, match=msg):
        check(g, "test")


def test_host_output_also_feeds_accelerator(rng):
    """A host step's result that is a graph output and also an accelerator input."""
    ini = {"w": rng.standard_normal((4, 3, 3, 3)) * 0.3, "w2": rng.standard_normal((5, 4, 1, 1)) * 0.4}
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("LRN", ["c"], ["l"], size=3),
        h.make_node("Conv", ["l", "w2"], ["y"]),
    ]
    m = make_model(nodes, [("x", [1, 3, 5, 5])], [("l", [1, 4, 5, 5]), ("y", [1, 5, 5, 5])], ini)
    prog, _ = check_model(m, rng, (1, 3, 5, 5))
    assert [s["kind"] for s in prog.manifest["steps"]] == ["acc", "host", "acc"]


@pytest.mark.parametrize("opset", [9, 13])
def test_relu6_clip_and_opset(rng, opset):
    """Clip(0, 6) fused into Conv and Gemm (min/max as attributes at opset 9, inputs at 13)."""
    ini = {
        "w": rng.standard_normal((6, 3, 3, 3)) * 1.5,
        "fw": rng.standard_normal((4, 6 * 3 * 3)) * 0.5,
        "fb": rng.standard_normal(4),
    }

    def clip(x, y):
        if opset < 11:
            return [h.make_node("Clip", [x], [y], min=0.0, max=6.0)], {}
        return [h.make_node("Clip", [x, "lo", "hi"], [y])], {"lo": np.array(0.0), "hi": np.array(6.0)}

    c1, i1 = clip("c", "r")
    c2, i2 = clip("g", "y")
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
        *c1,
        h.make_node("Flatten", ["r"], ["f"]),
        h.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1),
        *c2,
    ]
    m = make_model(nodes, [("x", [1, 3, 7, 7])], [("y", [1, 4])], {**ini, **i1, **i2}, opset=opset)
    # 54-term dot products of ReLU6 outputs at scale 6/127: rounding error up to ~10% of the span
    prog, _ = check_model(m, rng, (1, 3, 7, 7), tol=0.12)
    assert [v["place"] for v in prog.manifest["partition"].values()] == ["acc"] * 3
    assert "Conv+clip" in prog.manifest["partition_text"] and "Gemm+clip" in prog.manifest["partition_text"]
