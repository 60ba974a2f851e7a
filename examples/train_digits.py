"""Train a small MLP and a small CNN on scikit-learn's digits (8x8 images) with NumPy; export ONNX.

Usage::

    python examples/train_digits.py [--out-dir examples/models] [--seed 0]

Writes ``digits_mlp.onnx``, ``digits_cnn.onnx`` (input ``x``: float32 ``[1, 1, 8, 8]``, pixel/16;
output ``logits`` ``[1, 10]``) and ``digits_data.npz`` (``x_train``, ``y_train``, ``x_test``,
``y_test``; images ``[n, 1, 8, 8]``). Training is plain NumPy (softmax cross-entropy, Adam,
full-batch for the MLP, minibatches for the CNN); no other framework is used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["load_data", "train_mlp", "train_cnn", "mlp_onnx", "cnn_onnx", "main"]


def load_data(seed=0):
    """Digits split 80/20 (stratified by a seeded permutation): images ``[n, 1, 8, 8]`` in 0..1."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    p = np.random.default_rng(seed).permutation(len(y))
    n = int(0.8 * len(y))
    return x[p[:n]], y[p[:n]], x[p[n:]], y[p[n:]]


class _Adam:
    def __init__(self, params, lr):
        self.p, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(a) for a in params]
        self.v = [np.zeros_like(a) for a in params]

    def step(self, grads):
        self.t += 1
        for a, g, m, v in zip(self.p, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            a -= self.lr * (m / (1 - 0.9**self.t)) / (np.sqrt(v / (1 - 0.999**self.t)) + 1e-8)


def _xent_grad(logits, y):
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p / len(y)


def train_mlp(x, y, seed=0, hidden=32, epochs=300):
    """64 -> hidden (ReLU) -> 10. Returns ``(w1 [64,h], b1, w2 [h,10], b2)``."""
    rng = np.random.default_rng(seed)
    X = x.reshape(len(x), -1).astype(np.float64)
    w1 = rng.standard_normal((64, hidden)) * np.sqrt(2 / 64)
    b1 = np.zeros(hidden)
    w2 = rng.standard_normal((hidden, 10)) * np.sqrt(1 / hidden)
    b2 = np.zeros(10)
    opt = _Adam([w1, b1, w2, b2], 0.01)
    for _ in range(epochs):
        h = np.maximum(X @ w1 + b1, 0)
        g = _xent_grad(h @ w2 + b2, y)
        gh = (g @ w2.T) * (h > 0)
        opt.step([X.T @ gh, gh.sum(0), h.T @ g, g.sum(0)])
    return w1, b1, w2, b2


def _im2col(x):
    """[n, C, 8, 8] -> [n, 8, 8, C*9] patches of a 3x3 pad-1 convolution."""
    n, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = [xp[:, :, ky : ky + H, kx : kx + W] for ky in range(3) for kx in range(3)]
    return np.stack(cols, axis=2).reshape(n, C * 9, H, W).transpose(0, 2, 3, 1)


def train_cnn(x, y, seed=0, ch=8, epochs=30, batch=64):
    """conv3x3(1->ch, pad 1) + ReLU -> maxpool 2 -> flatten (ch*16) -> dense 10.

    Returns ``(wc [ch,1,3,3], bc, wd [ch*16, 10], bd)`` with the dense rows in ONNX Flatten (NCHW) order.
    """
    rng = np.random.default_rng(seed)
    wc = rng.standard_normal((ch, 9)) * np.sqrt(2 / 9)
    bc = np.zeros(ch)
    wd = rng.standard_normal((ch * 16, 10)) * np.sqrt(1 / (ch * 16))
    bd = np.zeros(10)
    opt = _Adam([wc, bc, wd, bd], 0.005)
    P = _im2col(x.astype(np.float64))  # [n, 8, 8, 9]
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        for s in range(0, len(y), batch):
            idx = perm[s : s + batch]
            p = P[idx]
            a = p @ wc.T + bc  # [b, 8, 8, ch]
            r = np.maximum(a, 0)
            blocks = r.reshape(len(idx), 4, 2, 4, 2, ch)
            m = blocks.max(axis=(2, 4))  # [b, 4, 4, ch]
            f = m.transpose(0, 3, 1, 2).reshape(len(idx), -1)  # NCHW flatten
            g = _xent_grad(f @ wd + bd, y[idx])
            gf = g @ wd.T
            gm = gf.reshape(len(idx), ch, 4, 4).transpose(0, 2, 3, 1)
            mask = blocks == m[:, :, None, :, None, :]
            gr = (mask * gm[:, :, None, :, None, :]).reshape(len(idx), 8, 8, ch) * (a > 0)
            opt.step([np.einsum("bhwc,bhwk->ck", gr, p), gr.sum((0, 1, 2)), f.T @ g, g.sum(0)])
    return wc.reshape(ch, 1, 3, 3), bc, wd, bd


def _model(nodes, inits, batch):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="sparrow-examples")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def mlp_onnx(params, batch=1):
    from onnx import helper

    w1, b1, w2, b2 = params
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
    ]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, batch)


def cnn_onnx(params, batch=1):
    from onnx import helper

    wc, bc, wd, bd = params
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "wd"], ["mm"]),
        helper.make_node("Add", ["mm", "bd"], ["logits"]),
    ]
    return _model(nodes, {"wc": wc, "bc": bc, "wd": wd, "bd": bd}, batch)


def main(argv=None):
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "models"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_data(args.seed)
    np.savez(out / "digits_data.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    for name, train, export in (("mlp", train_mlp, mlp_onnx), ("cnn", train_cnn, cnn_onnx)):
        m = export(train(xtr, ytr, seed=args.seed))
        onnx.save(m, out / f"digits_{name}.onnx")
        print(f"wrote {out / f'digits_{name}.onnx'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
