"""ONNX frontend: load and validate a model, import it into the IR and simplify it.

Passes (in order, :data:`PASSES`): ``fold_constants`` (evaluate constant subgraphs with the host
kernels), ``remove_identity`` (Identity/Dropout), ``infer_missing_shapes``, ``fold_batchnorm``
(into the preceding Conv), ``normalize_gemm`` (MatMul/Gemm with constant weights -> Gemm with a
[K, N] weight and a length-N bias; MatMul + constant Add merged), ``sum_to_add``,
``fuse_activation`` (Relu/Clip into Conv/Gemm, Relu into Add, as the ``act`` attribute).
"""

from __future__ import annotations

import numpy as np

from . import hostops
from .ir import CompileError, Graph, Node, Value, run_passes

__all__ = ["load_onnx", "import_model", "PASSES", "frontend"]


def load_onnx(model):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto; checked and shape-inferred."""
    import onnx

    try:
        if isinstance(model, onnx.ModelProto):
            m = model
        elif isinstance(model, (bytes, bytearray)):
            m = onnx.load_from_string(bytes(model))
        else:
            m = onnx.load(str(model))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise CompileError(
            f"{model if isinstance(model, str) else 'model'}: not a readable ONNX model "
            f"({type(e).__name__}: {e})"
        ) from None
    try:
        onnx.checker.check_model(m)
    except Exception as e:  # noqa: BLE001
        raise CompileError(
            f"malformed ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    opset = max([o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] or [0])
    if opset < 9:
        raise CompileError(f"ONNX opset {opset} is not supported (need opset >= 9)")
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"ONNX shape inference failed: {e}") from None
    return m


def _shape(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


def _attrs(node):
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = onnx.numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def import_model(m) -> Graph:
    """IR graph of a (shape-inferred) ModelProto. Dynamic or unknown input shapes are an error."""
    import onnx

    g = m.graph
    opset = max([o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] or [13])
    values = {}
    for t in g.initializer:
        arr = onnx.numpy_helper.to_array(t)
        values[t.name] = Value(t.name, tuple(arr.shape), str(arr.dtype), const=arr)
    elem = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    inputs = []
    for vi in g.input:
        if vi.name in values:
            continue
        shp = _shape(vi)
        if shp is None or any(not isinstance(d, int) for d in shp):
            raise CompileError(
                f"graph input {vi.name!r}: dynamic or unknown shape {shp}; the compiler "
                f"needs static shapes (fix the dimensions, e.g. batch size 1)"
            )
        et = vi.type.tensor_type.elem_type
        if et != onnx.TensorProto.FLOAT:
            raise CompileError(
                f"graph input {vi.name!r}: element type {onnx.TensorProto.DataType.Name(et)}, expected FLOAT"
            )
        values[vi.name] = Value(vi.name, shp, "float32")
        inputs.append(vi.name)
    nodes, used = [], set()
    for k, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx"):
            raise CompileError(
                f"node {n.name or k!r} ({n.domain}.{n.op_type}): custom-domain operators are not supported"
            )
        name = n.name or f"{n.op_type}_{k}"
        while name in used:
            name += "_"
        used.add(name)
        for o in n.output:
            if not o:
                continue
            shp = _shape(elem[o]) if o in elem else None
            if shp is not None and any(not isinstance(d, int) for d in shp):
                shp = None
            values[o] = Value(o, shp, "float32")
        nodes.append(Node(name, n.op_type, list(n.input), [o for o in n.output], _attrs(n)))
    return Graph(nodes, values, inputs, [o.name for o in g.output], opset, g.name or "model")


# -- passes ---------------------------------------------------------------------------------------


def fold_constants(g: Graph) -> Graph:
    keep = []
    for n in g.nodes:
        v = g.values.get(n.inputs[0]) if n.inputs else None
        if n.op == "Shape" and v is not None and v.shape and all(isinstance(d, int) for d in v.shape):
            a = np.array(v.shape, np.int64)[n.attrs.get("start", 0) : n.attrs.get("end", None)]
            g.values[n.outputs[0]] = Value(n.outputs[0], a.shape, "int64", const=a)
            continue
        ins = [g.const(i) if i else None for i in n.inputs]
        if (
            all(a is not None for i, a in zip(n.inputs, ins, strict=False) if i)
            and n.op in hostops.HOST_OPS
            and not any(o in g.outputs for o in n.outputs)
        ):
            try:
                outs = hostops.run(n.op, n.attrs, ins, g.opset)
            except Exception as e:  # noqa: BLE001
                raise CompileError(f"{n.desc()}: constant folding failed: {e}") from None
            for o, a in zip(n.outputs, outs, strict=False):
                if o:
                    a = np.asarray(a)
                    if a.dtype == np.float64:
                        a = a.astype(np.float32)
                    g.values[o] = Value(o, tuple(a.shape), str(a.dtype), const=a)
            continue
        keep.append(n)
    g.nodes = keep
    return g


def _rename_input(g: Graph, old: str, new: str):
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    g.outputs = [new if o == old else o for o in g.outputs]


def _bypass(g: Graph, src: str, dst: str) -> bool:
    """Make tensor ``dst`` (output of a node being removed) the same as ``src``.

    Graph output names are kept: if ``dst`` is a graph output, ``src`` is renamed to ``dst``
    everywhere instead. Returns False when neither is possible (``src`` is a graph input or
    output and ``dst`` a graph output): the node must stay.
    """
    if dst not in g.outputs:
        _rename_input(g, dst, src)
        return True
    if src in g.inputs or src in g.outputs:
        return False
    for n in g.nodes:
        n.inputs = [dst if i == src else i for i in n.inputs]
        n.outputs = [dst if o == src else o for o in n.outputs]
    v = g.values.pop(src)
    if dst in g.values and g.values[dst].shape is not None and v.shape is None:
        v.shape = g.values[dst].shape
    v.name = dst
    g.values[dst] = v
    if src in g.qscales:
        g.qscales[dst] = g.qscales.pop(src)
    return True


def remove_identity(g: Graph) -> Graph:
    keep = []
    for n in g.nodes:
        if n.op in ("Identity", "Dropout") and _bypass(g, n.inputs[0], n.outputs[0]):
            continue
        keep.append(n)
    g.nodes = [n for n in g.nodes if n in keep]
    return g


def _fresh(g: Graph, base: str) -> str:
    name, k = base, 0
    while name in g.values:
        k += 1
        name = f"{base}_{k}"
    g.values[name] = Value(name, None, "float32")
    return name


def import_qoperator(g: Graph) -> Graph:
    """QOperator models (onnxruntime.quantization): QLinearConv / QLinearMatMul become
    DequantizeLinear -> Conv/MatMul (float weights = dequantized int8 weights, float bias =
    int32 bias * x_scale * w_scale) -> QuantizeLinear, and ConvInteger / MatMulInteger become
    the float op on ``x - x_zero_point`` and ``w - w_zero_point`` (exact integers); the Q/DQ pairs
    this leaves are then handled by :func:`import_qdq`."""
    out = []
    for n in g.nodes:
        if n.op not in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
            out.append(n)
            continue
        ins = list(n.inputs) + [""] * 9
        if n.op in ("QLinearConv", "QLinearMatMul"):
            x, xs, xz, w, ws, wz, ys, yz = ins[:8]
            bias = ins[8] if n.op == "QLinearConv" else ""
        else:
            x, w, xz, wz = ins[:4]
            xs = ws = ys = yz = bias = ""
        wq = g.const(w)
        if wq is None:
            raise CompileError(f"{n.desc()}: weights must be constant initializers")
        w_scale = np.asarray(g.const(ws), np.float64) if ws else np.ones(1)
        w_zp = np.asarray(g.const(wz), np.float64) if wz else np.zeros(1)
        axis = 0 if "Conv" in n.op else 1
        shp = [1] * wq.ndim
        shp[axis] = -1
        wf = (wq.astype(np.float64) - w_zp.reshape(shp if w_zp.size > 1 else [1] * wq.ndim)) * (
            w_scale.reshape(shp if w_scale.size > 1 else [1] * wq.ndim)
        )
        wn = g.add_const(n.name + "_wf", wf.astype(np.float32))
        xf = _fresh(g, x + "_dq")
        dq_in = [x, xs] if xs else [x, g.add_const(n.name + "_one", np.array(1.0, np.float32))]
        if xz:
            dq_in.append(xz)
        out.append(Node(n.name + "_dq", "DequantizeLinear", dq_in, [xf]))
        new_in = [xf, wn]
        if bias:
            x_scale = float(np.asarray(g.const(xs)).reshape(-1)[0])
            bf = g.const(bias).astype(np.float64) * x_scale * w_scale.reshape(-1)
            new_in.append(g.add_const(n.name + "_bf", bf.astype(np.float32)))
        attrs = {k: v for k, v in n.attrs.items()}
        op = "Conv" if "Conv" in n.op else "MatMul"
        if ys:
            yf = _fresh(g, n.outputs[0] + "_f")
            out.append(Node(n.name, op, new_in, [yf], attrs))
            out.append(Node(n.name + "_q", "QuantizeLinear", [yf, ys] + ([yz] if yz else []), [n.outputs[0]]))
        else:
            out.append(Node(n.name, op, new_in, list(n.outputs), attrs))
    g.nodes = out
    return g


def import_qdq(g: Graph) -> Graph:
    """Quantized models (onnxruntime.quantization QDQ format): QuantizeLinear -> DequantizeLinear
    pairs on activations are removed and their scale kept in ``g.qscales`` (it replaces the
    calibrated range of that tensor); constant DequantizeLinear (weights, bias) were folded to
    float by ``fold_constants`` and are re-quantized per channel at lowering.

    Sparrow's activations are symmetric int8: a non-zero zero point is converted to the symmetric
    scale covering the same range (``max(|qmin - zp|, |qmax - zp|) * scale / 127``).
    """
    cons = g.consumers()
    drop = set()
    for q in g.nodes:
        if q.op != "QuantizeLinear":
            continue
        users = cons.get(q.outputs[0], [])
        if not users or q.outputs[0] in g.outputs or any(u.op != "DequantizeLinear" for u in users):
            continue
        s = g.const(q.inputs[1])
        zp = g.const(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        if s is None or np.size(s) != 1 or (len(q.inputs) > 2 and q.inputs[2] and zp is None):
            continue
        s = float(np.asarray(s).reshape(-1)[0])
        if zp is None:
            zpv, lo, hi = 0, 0, 255
        else:
            zpv = int(np.asarray(zp).reshape(-1)[0])
            info = np.iinfo(np.asarray(zp).dtype)
            lo, hi = int(info.min), int(info.max)
        sym = s if (zpv == 0 and lo == -128) else max(abs(lo - zpv), abs(hi - zpv)) * s / 127.0
        x = q.inputs[0]
        ok = True
        for d in users:
            ok = ok and _bypass(g, x, d.outputs[0])
            if ok:
                x = d.outputs[0] if d.outputs[0] in g.outputs else x
                drop.add(d.name)
        if ok:
            g.qscales[x] = sym
            drop.add(q.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


def infer_missing_shapes(g: Graph) -> Graph:
    """Shapes ONNX inference left unknown: evaluate the node on zeros of its input shapes."""
    for n in g.nodes:
        if all(g.values[o].shape is not None for o in n.outputs if o):
            continue
        ins = []
        for i in n.inputs:
            if not i:
                ins.append(None)
                continue
            v = g.values[i]
            if v.shape is None:
                raise CompileError(f"{n.desc()}: input {i!r} has an unknown shape")
            ins.append(v.const if v.is_const else np.zeros(v.shape, np.float32))
        try:
            outs = hostops.run(n.op, n.attrs, ins, g.opset)
        except KeyError:
            raise CompileError(
                f"{n.desc()}: unsupported operator (no shape for output {n.outputs[0]!r})"
            ) from None
        except Exception as e:  # noqa: BLE001
            raise CompileError(f"{n.desc()}: cannot infer the output shape: {e}") from None
        for o, a in zip(n.outputs, outs, strict=False):
            if o:
                g.values[o].shape = tuple(int(d) for d in np.shape(a))
    return g


def _single_consumer(g: Graph, name: str):
    cons = g.consumers().get(name, [])
    if len(cons) != 1 or name in g.outputs:
        return None
    return cons[0]


def fold_batchnorm(g: Graph) -> Graph:
    prod = g.producer()
    drop = set()
    for n in g.nodes:
        if n.op != "BatchNormalization" or not all(g.const(i) is not None for i in n.inputs[1:5]):
            continue
        c = prod.get(n.inputs[0])
        if (
            c is None
            or c.op != "Conv"
            or g.const(c.inputs[1]) is None
            or _single_consumer(g, c.outputs[0]) is not n
        ):
            continue
        if len(c.inputs) > 2 and c.inputs[2] and g.const(c.inputs[2]) is None:
            continue
        sc, b, mean, var = (g.const(i).astype(np.float64) for i in n.inputs[1:5])
        k = sc / np.sqrt(var + n.attrs.get("epsilon", 1e-5))
        w = g.const(c.inputs[1]).astype(np.float64)
        bias = g.const(c.inputs[2]).astype(np.float64) if len(c.inputs) > 2 and c.inputs[2] else 0.0
        wn = g.add_const(c.name + "_wbn", (w * k[:, None, None, None]).astype(np.float32))
        bn = g.add_const(c.name + "_bbn", ((bias - mean) * k + b).astype(np.float32))
        c.inputs = [c.inputs[0], wn, bn]
        old = c.outputs[0]
        c.outputs = [n.outputs[0]]
        del g.values[old]
        drop.add(n.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


def normalize_gemm(g: Graph) -> Graph:
    """Gemm/MatMul with a constant 2-D weight -> ``Gemm`` with attrs {} , inputs (A, W[K,N], bias[N])."""
    cons = g.consumers()
    drop = set()
    for n in g.nodes:
        if n.op not in ("Gemm", "MatMul") or g.const(n.inputs[1]) is None:
            continue
        a = g.values[n.inputs[0]]
        if a.shape is None or len(a.shape) != 2:
            continue
        w = g.const(n.inputs[1]).astype(np.float64)
        if w.ndim != 2:
            continue
        bias = np.zeros(w.shape[1] if n.op == "MatMul" or not n.attrs.get("transB") else w.shape[0])
        if n.op == "Gemm":
            if int(n.attrs.get("transA", 0)):
                continue
            if int(n.attrs.get("transB", 0)):
                w = w.T
            w = w * float(n.attrs.get("alpha", 1.0))
            if len(n.inputs) > 2 and n.inputs[2]:
                c = g.const(n.inputs[2])
                if c is None:
                    continue
                c = np.asarray(c, np.float64) * float(n.attrs.get("beta", 1.0))
                if c.size not in (1, w.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
                    continue
                bias = np.broadcast_to(c.reshape(-1), (w.shape[1],)).astype(np.float64)
        out = n.outputs[0]
        nxt = cons.get(out, [])
        if n.op == "MatMul" and len(nxt) == 1 and nxt[0].op == "Add" and out not in g.outputs:
            add = nxt[0]
            other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
            c = g.const(other)
            if c is not None and c.size == w.shape[1] and (c.ndim == 1 or c.shape[0] == 1):
                bias = bias + c.reshape(-1)
                del g.values[out]
                n.outputs = [add.outputs[0]]
                drop.add(add.name)
        wn = g.add_const(n.name + "_w", w.astype(np.float32))
        bn = g.add_const(n.name + "_b", bias.astype(np.float32))
        n.op, n.inputs, n.attrs = "Gemm", [n.inputs[0], wn, bn], {}
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


def sum_to_add(g: Graph) -> Graph:
    for n in g.nodes:
        if n.op == "Sum" and len(n.inputs) == 2:
            n.op = "Add"
        if n.op == "Sum" and len(n.inputs) == 1:
            n.op = "Identity"
    return remove_identity(g)


def fuse_activation(g: Graph) -> Graph:
    prod = g.producer()
    drop = set()
    for n in g.nodes:
        if n.op not in ("Relu", "Clip"):
            continue
        p = prod.get(n.inputs[0])
        if p is None or p.name in drop or p.attrs.get("act") or _single_consumer(g, p.outputs[0]) is not n:
            continue
        if n.op == "Relu" and p.op in ("Conv", "Gemm", "Add"):
            act = ("relu",)
        elif n.op == "Clip" and p.op in ("Conv", "Gemm"):
            lo, hi = hostops._clip_bounds(n.attrs, [None] + [g.const(i) if i else None for i in n.inputs[1:]])
            if any(i and g.const(i) is None for i in n.inputs[1:]):
                continue
            act = ("clip", float(lo), float(hi))
        else:
            continue
        p.attrs = {**p.attrs, "act": act}
        del g.values[p.outputs[0]]
        p.outputs = [n.outputs[0]]
        drop.add(n.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


def drop_unused(g: Graph) -> Graph:
    used = set(g.outputs) | {i for n in g.nodes for i in n.inputs}
    g.values = {k: v for k, v in g.values.items() if k in used or not v.is_const}
    return g


PASSES = [
    ("import_qoperator", import_qoperator),
    ("fold_constants", fold_constants),
    ("import_qdq", import_qdq),
    ("remove_identity", remove_identity),
    ("infer_missing_shapes", infer_missing_shapes),
    ("fold_batchnorm", fold_batchnorm),
    ("normalize_gemm", normalize_gemm),
    ("sum_to_add", sum_to_add),
    ("fuse_activation", fuse_activation),
    ("drop_unused", drop_unused),
]


def frontend(model, debug: bool = True, log=None) -> Graph:
    """Load ``model`` (path, bytes or ModelProto) and run :data:`PASSES`."""
    g = import_model(load_onnx(model))
    return run_passes(g, PASSES, debug=debug, log=log)
