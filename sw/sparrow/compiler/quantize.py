"""Post-training quantization: float reference run, calibration ranges -> per-tensor scales.

Activations: per-tensor symmetric int8 (zero point 0), ``scale = max|x| / 127`` over the
calibration set. Weights (at lowering): per-output-channel symmetric int8; bias int32 with scale
``input_scale * weight_scale``. Ops that move values without arithmetic on the accelerator
(max pool, flatten/reshape views, standalone ReLU) keep their input's scale (average pools
rescale: their multiplier includes input scale / output scale); the inputs and output of
a Concat share one scale (the concat is a copy). Shared scales take the largest calibrated range.
"""

from __future__ import annotations

import numpy as np

from . import hostops
from .ir import CompileError, Graph

__all__ = ["float_run", "calibrate", "SCALE_PRESERVING", "weight_scales", "quantize"]

SCALE_PRESERVING = {"MaxPool", "Flatten", "Reshape", "Relu"}


def float_run(g: Graph, feeds: dict) -> dict:
    """Every tensor of ``g`` (float64) for one batch of ``feeds`` (NumPy reference of the IR)."""
    env = {k: v.const for k, v in g.values.items() if v.is_const}
    env.update({k: np.asarray(feeds[k], np.float64) for k in g.inputs})
    for n in g.nodes:
        try:
            outs = hostops.run(n.op, n.attrs, [env[i] if i else None for i in n.inputs], g.opset)
        except KeyError:
            raise CompileError(f"{n.desc()}: no float reference kernel for op {n.op!r}") from None
        for o, a in zip(n.outputs, outs, strict=False):
            if o:
                env[o] = a
    return env


def _batches(g: Graph, calibration: dict):
    name0 = g.inputs[0]
    batch = g.values[name0].shape[0]
    for name in g.inputs:
        if name not in calibration:
            raise CompileError(f"calibration: no data for graph input {name!r} (have {sorted(calibration)})")
    total = None
    for name in g.inputs:
        shp = g.values[name].shape
        a = np.asarray(calibration[name])
        if a.shape[1:] != tuple(shp[1:]) or a.shape[0] % shp[0]:
            raise CompileError(
                f"calibration: input {name!r} has shape {a.shape}, expected "
                f"[k*{shp[0]}, {', '.join(map(str, shp[1:]))}]"
            )
        total = a.shape[0] if total is None else min(total, a.shape[0])
    for s in range(0, total, batch):
        yield {name: np.asarray(calibration[name])[s : s + batch] for name in g.inputs}


def calibrate(g: Graph, calibration: dict | None, seed: int = 0) -> dict:
    """Set ``Value.scale`` of every activation from calibration ranges; returns ``{name: max|x|}``."""
    if calibration is None:
        rng = np.random.default_rng(seed)
        calibration = {
            n: rng.standard_normal((8 * g.values[n].shape[0],) + tuple(g.values[n].shape[1:]))
            for n in g.inputs
        }
    rng_max = {}
    for feeds in _batches(g, calibration):
        env = float_run(g, feeds)
        for k, a in env.items():
            if k in g.values and not g.values[k].is_const:
                rng_max[k] = max(rng_max.get(k, 0.0), float(np.max(np.abs(a))) if np.size(a) else 0.0)
    for k, sc in g.qscales.items():  # scales of an imported quantized model replace the ranges
        if k in rng_max:
            rng_max[k] = sc * 127.0
    # Tensors that must share one scale: input and output of a data-moving op, all inputs and the
    # output of a Concat (a copy into channel slices). Each class takes the largest range.
    parent = {k: k for k in rng_max}

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for n in g.nodes:
        if n.op in SCALE_PRESERVING or n.op == "Concat":
            for i in n.inputs:
                if i in parent and n.outputs[0] in parent:
                    parent[find(i)] = find(n.outputs[0])
    top, imported = {}, {}
    for k, m in rng_max.items():
        top[find(k)] = max(top.get(find(k), 0.0), m)
        if k in g.qscales:
            imported[find(k)] = max(imported.get(find(k), 0.0), m)
    top.update(imported)  # a class with imported scales uses only those
    for k in rng_max:
        m = top[find(k)]
        g.values[k].scale = (m / 127.0) if m > 0 else 1.0 / 127.0
    return rng_max


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel symmetric scales of ``w`` along ``axis`` (``max|w| / 127``; 1 for all-zero)."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    m = np.max(np.abs(w), axis=red).astype(np.float64)
    return np.where(m > 0, m / 127.0, 1.0)


def quantize(x, scale, lo=-128, hi=127):
    """Round-half-even ``x / scale`` saturated to int8 (QuantizeLinear with zero point 0)."""
    return np.clip(np.rint(np.asarray(x, np.float64) / scale), lo, hi).astype(np.int8)
