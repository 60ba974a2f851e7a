"""NumPy float kernels for ONNX operators: the host side of a partition, constant folding and the
float reference used for calibration.

``run(op, attrs, inputs, opset) -> list of outputs``. ``attrs`` may carry ``"act"`` (a fused
activation ``("relu",)`` or ``("clip", lo, hi)``) that is applied to the first output.
"""

from __future__ import annotations

import numpy as np

__all__ = ["run", "HOST_OPS", "conv_pads", "pool_geometry"]


def conv_pads(attrs, spatial, kernel, strides, dil=(1, 1)):
    """``(top, left, bottom, right)`` from ONNX ``pads``/``auto_pad``."""
    ap = attrs.get("auto_pad", "NOTSET")
    if isinstance(ap, bytes):
        ap = ap.decode()
    if ap in ("NOTSET", ""):
        p = list(attrs.get("pads", [0] * 4))
        return (p[0], p[1], p[2], p[3])
    if ap == "VALID":
        return (0, 0, 0, 0)
    out = []
    for s, k, st, d in zip(spatial, kernel, strides, dil, strict=False):
        o = -(-s // st)
        tot = max(0, (o - 1) * st + (k - 1) * d + 1 - s)
        out.append((tot // 2, tot - tot // 2) if ap == "SAME_UPPER" else (tot - tot // 2, tot // 2))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


def pool_geometry(attrs, x_shape):
    k = tuple(attrs["kernel_shape"])
    st = tuple(attrs.get("strides", [1, 1]))
    pads = conv_pads(attrs, x_shape[2:], k, st)
    return k, st, pads


def _windows(xp, kh, kw, sh, sw, oh, ow, dh=1, dw=1):
    for ky in range(kh):
        for kx in range(kw):
            yield (
                ky,
                kx,
                xp[
                    :,
                    :,
                    ky * dh : ky * dh + sh * (oh - 1) + 1 : sh,
                    kx * dw : kx * dw + sw * (ow - 1) + 1 : sw,
                ],
            )


def conv(x, w, b, attrs):
    N, C, H, W = x.shape
    M, cg, KH, KW = w.shape
    g = int(attrs.get("group", 1))
    st = tuple(attrs.get("strides", [1, 1]))
    dil = tuple(attrs.get("dilations", [1, 1]))
    pt, pl, pb, pr = conv_pads(attrs, (H, W), (KH, KW), st, dil)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    OH = (H + pt + pb - dil[0] * (KH - 1) - 1) // st[0] + 1
    OW = (W + pl + pr - dil[1] * (KW - 1) - 1) // st[1] + 1
    out = np.zeros((N, M, OH, OW))
    og = M // g
    wd = w.astype(np.float64)
    if g == C == M and cg == 1:  # depthwise: vectorised over channels
        for ky, kx, p in _windows(xp, KH, KW, st[0], st[1], OH, OW, *dil):
            out += p * wd[None, :, 0, ky, kx, None, None]
    else:
        for gi in range(g):
            xs = xp[:, gi * cg : (gi + 1) * cg]
            ws = wd[gi * og : (gi + 1) * og]
            for ky, kx, p in _windows(xs, KH, KW, st[0], st[1], OH, OW, *dil):
                out[:, gi * og : (gi + 1) * og] += np.einsum("nchw,mc->nmhw", p, ws[:, :, ky, kx])
    if b is not None:
        out += b.astype(np.float64)[None, :, None, None]
    return out


def _pool(x, attrs, kind):
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = pool_geometry(attrs, x.shape)
    if int(attrs.get("ceil_mode", 0)):
        raise ValueError("ceil_mode=1 is not supported")
    N, C, H, W = x.shape
    OH, OW = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    if kind == "max":
        out = np.full((N, C, OH, OW), -np.inf)
        for _, _, p in _windows(xp, kh, kw, sh, sw, OH, OW):
            out = np.maximum(out, p)
        return out
    s = np.zeros((N, C, OH, OW))
    for _, _, p in _windows(xp, kh, kw, sh, sw, OH, OW):
        s += p
    if int(attrs.get("count_include_pad", 0)) or not any((pt, pl, pb, pr)):
        return s / (kh * kw)
    ones = np.pad(np.ones((1, 1, H, W)), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cnt = np.zeros((1, 1, OH, OW))
    for _, _, p in _windows(ones, kh, kw, sh, sw, OH, OW):
        cnt += p
    return s / cnt


def _softmax(x, axis, opset):
    if opset < 13:
        shp = x.shape
        ax = axis % x.ndim
        x2 = x.reshape(int(np.prod(shp[:ax])), -1)
        e = np.exp(x2 - x2.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).reshape(shp)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _lrn(x, attrs):
    size = int(attrs["size"])
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    C = x.shape[1]
    sq = np.pad(
        x.astype(np.float64) ** 2,
        [(0, 0), ((size - 1) // 2, size - 1 - (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2),
    )
    s = sum(sq[:, i : i + C] for i in range(size))
    return x / (bias + alpha / size * s) ** beta


def _reshape(x, shape, allowzero=0):
    shape = [int(d) for d in shape]
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _gemm(a, b, c, attrs):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if int(attrs.get("transA", 0)):
        a = a.T
    if int(attrs.get("transB", 0)):
        b = b.T
    y = float(attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + float(attrs.get("beta", 1.0)) * c
    return y


def _clip_bounds(attrs, ins):
    lo = attrs.get("min", -np.inf)
    hi = attrs.get("max", np.inf)
    if len(ins) > 1 and ins[1] is not None:
        lo = float(ins[1])
    if len(ins) > 2 and ins[2] is not None:
        hi = float(ins[2])
    return lo, hi


def _squeeze_axes(attrs, ins):
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in np.atleast_1d(ins[1])]
    return attrs.get("axes")


def _impl(op, attrs, ins, opset):
    x = ins[0] if ins else None
    if op == "Conv":
        return [conv(x, ins[1], ins[2] if len(ins) > 2 else None, attrs)]
    if op == "Gemm":
        return [_gemm(x, ins[1], ins[2] if len(ins) > 2 else None, attrs)]
    if op == "MatMul":
        return [np.matmul(x.astype(np.float64), ins[1].astype(np.float64))]
    if op == "Relu":
        return [np.maximum(x, 0)]
    if op == "Clip":
        lo, hi = _clip_bounds(attrs, ins)
        return [np.clip(x, lo, hi)]
    if op == "LeakyRelu":
        a = attrs.get("alpha", 0.01)
        return [np.where(x >= 0, x, a * x)]
    if op == "Sigmoid":
        return [1 / (1 + np.exp(-x))]
    if op == "Tanh":
        return [np.tanh(x)]
    if op == "Exp":
        return [np.exp(x)]
    if op == "Sqrt":
        return [np.sqrt(x)]
    if op == "MaxPool":
        return [_pool(x, attrs, "max")]
    if op == "AveragePool":
        return [_pool(x, attrs, "avg")]
    if op == "GlobalAveragePool":
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)]
    if op == "GlobalMaxPool":
        return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]
    if op in ("Add", "Sum"):
        y = ins[0]
        for z in ins[1:]:
            y = y + z
        return [y]
    if op == "Sub":
        return [ins[0] - ins[1]]
    if op == "Mul":
        return [ins[0] * ins[1]]
    if op == "Div":
        return [ins[0] / ins[1]]
    if op == "Flatten":
        ax = int(attrs.get("axis", 1)) % max(x.ndim, 1)
        return [x.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)]
    if op == "Reshape":
        shape = ins[1] if len(ins) > 1 else attrs["shape"]
        return [_reshape(x, shape, attrs.get("allowzero", 0))]
    if op == "Concat":
        return [np.concatenate(ins, axis=int(attrs["axis"]))]
    if op == "Softmax":
        return [_softmax(x, int(attrs.get("axis", 1 if opset < 13 else -1)), opset)]
    if op == "LogSoftmax":
        return [np.log(_softmax(x, int(attrs.get("axis", 1 if opset < 13 else -1)), opset))]
    if op == "Transpose":
        return [np.transpose(x, attrs.get("perm"))]
    if op == "LRN":
        return [_lrn(x, attrs)]
    if op == "BatchNormalization":
        sc, b, mean, var = (a.astype(np.float64) for a in ins[1:5])
        eps = attrs.get("epsilon", 1e-5)
        shp = (1, -1) + (1,) * (x.ndim - 2)
        return [(x - mean.reshape(shp)) / np.sqrt(var.reshape(shp) + eps) * sc.reshape(shp) + b.reshape(shp)]
    if op in ("Identity", "Dropout"):
        return [x] + ([np.ones(x.shape, bool)] if op == "Dropout" else [])
    if op == "Shape":
        return [np.array(x.shape, np.int64)]
    if op == "Gather":
        return [np.take(x, ins[1], axis=int(attrs.get("axis", 0)))]
    if op == "Unsqueeze":
        y = x
        for a in sorted(
            int(a) % (x.ndim + len(_squeeze_axes(attrs, ins))) for a in _squeeze_axes(attrs, ins)
        ):
            y = np.expand_dims(y, a)
        return [y]
    if op == "Squeeze":
        axes = _squeeze_axes(attrs, ins)
        return [np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))]
    if op == "Cast":
        import onnx

        return [x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"])))]
    if op == "Constant":
        return [attrs["value"]]
    if op in ("DequantizeLinear", "QuantizeLinear"):
        s = np.asarray(ins[1], np.float64)
        zp = np.asarray(ins[2]) if len(ins) > 2 and ins[2] is not None else np.zeros((), np.uint8)
        if s.ndim == 1 and x.ndim > 1:
            shp = [1] * x.ndim
            shp[int(attrs.get("axis", 1)) % x.ndim] = -1
            s, zp = s.reshape(shp), zp.reshape(shp)
        if op == "DequantizeLinear":
            return [(x.astype(np.float64) - zp.astype(np.float64)) * s]
        info = np.iinfo(zp.dtype)
        return [np.clip(np.rint(x / s) + zp, info.min, info.max).astype(zp.dtype)]
    if op == "Pad":
        pads = [int(p) for p in (ins[1] if len(ins) > 1 else attrs["pads"])]
        n = x.ndim
        v = float(ins[2]) if len(ins) > 2 and ins[2] is not None else float(attrs.get("value", 0.0))
        return [np.pad(x, list(zip(pads[:n], pads[n:], strict=False)), constant_values=v)]
    raise KeyError(op)


HOST_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Exp",
        "Sqrt",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Add",
        "Sum",
        "Sub",
        "Mul",
        "Div",
        "Flatten",
        "Reshape",
        "Concat",
        "Softmax",
        "LogSoftmax",
        "Transpose",
        "LRN",
        "BatchNormalization",
        "Identity",
        "Dropout",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Cast",
        "Constant",
        "Pad",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)


def apply_act(y, act):
    if not act:
        return y
    if act[0] == "relu":
        return np.maximum(y, 0)
    return np.clip(y, act[1], act[2])


def run(op, attrs, inputs, opset=13):
    """Float evaluation of one node; raises ``KeyError`` for an op without a host kernel."""
    outs = _impl(op, attrs, inputs, opset)
    if attrs.get("act"):
        outs[0] = apply_act(outs[0], attrs["act"])
    return outs
