"""Compiled models on the golden model: cycles and utilization before/after each back-end
optimisation, sync edges before/after vector-clock pruning, DRAM bytes with/without fusion,
compression and reuse.

Every model is an ONNX graph built here with ``onnx.helper`` (or the digits models of
``examples/models``), compiled for the ``default`` preset (8x8 PEs) with the back-end options of
:func:`sparrow.compiler.lower.lower` and run once on the golden model in concurrent mode (the
race checker off: the tests prove race freedom). Variants: ``off`` (every optimisation off),
``on`` (all on, the default) and ``no_<opt>`` (all on but one).

Figures per model and variant:

* ``cycles``: the golden cycle model's estimate (``perf.py``, concurrent engines), summed over
  accelerator programs (host steps cost 0 here);
* ``util``: useful MACs / (rows * cols PEs * cycles), useful = the non-zero products the array
  performs (``macs`` counter; zero operands are skipped); ``eff_util``: the model's dense MAC
  count / (PEs * cycles) (above 1 means zero skipping beats a dense array);
* ``bus_bytes``: bytes moved on the external bus (LOAD + STORE counters, compressed as moved),
  ``bus_bytes_raw``: the same transfers uncompressed;
* ``dram_bytes``: external memory allocated by the programs (constants, tensors);
* ``sync_before``/``sync_after``: cross-engine hazard edges of the dependency graph vs the
  semaphore waits kept after vector-clock pruning;
* ``est_cycles_before``/``est_cycles``: the scheduler's own estimate of the program-order and the
  list-scheduled program;
* ``compile_s``: wall-clock compile time with the compile cache off.

Metrics: ``<model>.<variant>.<figure>``, plus ``<model>.util`` / ``<model>.eff_util`` (all on).
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import sparrow
from sparrow.bench import REPO
from sparrow.compiler.program import GoldenDevice

PRESET = "default"
SEED = 0
OPTS = ("fuse", "schedule", "reuse_dram", "compress", "batch")
VARIANTS = {"off": {k: False for k in OPTS}, "on": {}, **{f"no_{k}": {k: False} for k in OPTS}}


def _model(nodes, inputs, outputs, inits):
    g = h.make_graph(nodes, "bench", [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in outputs],
                     [nh.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _conv(rng, name, x, y, cin, cout, k, relu=True):
    ini = {f"{name}_w": rng.standard_normal((cout, cin, k, k)) * (1.5 / np.sqrt(cin * k * k)),
           f"{name}_b": rng.standard_normal(cout) * 0.1}
    out = f"{name}_c" if relu else y
    nodes = [h.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], pads=[k // 2] * 4)]
    if relu:
        nodes.append(h.make_node("Relu", [out], [y]))
    return nodes, ini, cin * cout * k * k


def gemm_model(rng, m, k, n):
    ini = {"w": rng.standard_normal((n, k)) / np.sqrt(k), "b": rng.standard_normal(n) * 0.1}
    model = _model([h.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [("x", [m, k])], [("y", [m, n])], ini)
    return model, (m, k), m * k * n


def conv_stack(rng, batch=1, hw=28, c=64):
    """ResNet basic block on 28x28x64: conv3x3-relu, conv3x3 + residual add + relu, 2x2 max pool."""
    nodes, ini, macs = [], {}, 0
    for nd, it, mm in (_conv(rng, "a", "x", "a", c, c, 3), _conv(rng, "b", "a", "b", c, c, 3, relu=False)):
        nodes += nd
        ini.update(it)
        macs += mm * hw * hw * batch
    nodes += [h.make_node("Add", ["b", "x"], ["s"]), h.make_node("Relu", ["s"], ["sr"]),
              h.make_node("MaxPool", ["sr"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    model = _model(nodes, [("x", [batch, c, hw, hw])], [("y", [batch, c, hw // 2, hw // 2])], ini)
    return model, (batch, c, hw, hw), macs


def late_layers(rng, batch=8, hw=2, c=256):
    """Two 1x1 convs 256->256 on 2x2 maps, batch 8: streamed weights (64 KiB each) dominate unless
    the batch shares each weight load (batch-level parallelism)."""
    nodes, ini, macs = [], {}, 0
    for nd, it, mm in (_conv(rng, "l1", "x", "l1", c, c, 1), _conv(rng, "l2", "l1", "y", c, c, 1)):
        nodes += nd
        ini.update(it)
        macs += mm * hw * hw * batch
    model = _model(nodes, [("x", [batch, c, hw, hw])], [("y", [batch, c, hw, hw])], ini)
    return model, (batch, c, hw, hw), macs


def fire_module(rng, batch=1, hw=28, c=64):
    """SqueezeNet fire module: squeeze 1x1 c->16, expand 1x1 16->64 and 3x3 16->64, concat, then a
    3x3 conv 128->64 reading the concat (a conv->conv edge that may be compressed)."""
    nodes, ini, macs = [], {}, 0
    for nd, it, mm in (_conv(rng, "sq", "x", "sq", c, 16, 1), _conv(rng, "e1", "sq", "e1", 16, 64, 1),
                       _conv(rng, "e3", "sq", "e3", 16, 64, 3)):
        nodes += nd
        ini.update(it)
        macs += mm * hw * hw * batch
    nodes.append(h.make_node("Concat", ["e1", "e3"], ["cat"], axis=1))
    nd, it, mm = _conv(rng, "post", "cat", "y", 128, 64, 3)
    nodes += nd
    ini.update(it)
    macs += mm * hw * hw * batch
    model = _model(nodes, [("x", [batch, c, hw, hw])], [("y", [batch, 64, hw, hw])], ini)
    return model, (batch, c, hw, hw), macs


def digits(name):
    """A digits model of examples/models (trained by examples/train_digits.py), or None."""
    path = REPO / "examples" / "models" / f"digits_{name}.onnx"
    if not path.exists():
        return None
    data = np.load(REPO / "examples" / "models" / "digits_data.npz")
    return onnx.load(str(path)), (1, 1, 8, 8), data["x_train"][:64].astype(np.float32)


def run_variant(model, cal, x, options):
    t0 = time.perf_counter()
    prog = sparrow.compile(model, calibration={"x": cal}, preset=PRESET, accuracy_batches=0, options=options,
                           cache=False)
    t_compile = time.perf_counter() - t0
    prog.run({"x": x}, device=GoldenDevice(prog.cfg, check_races=False))
    c = prog.last_run["counters"]
    acc = [s for s in prog.manifest["steps"] if s["kind"] == "acc"]
    return {
        "cycles": int(prog.last_run["cycles"]),
        "macs": int(c.get("macs", 0)),
        "macs_skipped": int(c.get("macs_skipped", 0)),
        "bus_bytes": int(c["load_bytes"] + c["store_bytes"]),
        "bus_bytes_raw": int(c["load_bytes_raw"] + c["store_bytes_raw"]),
        "dram_bytes": int(sum(s["dram"]["bytes"] for s in acc)),
        "sync_before": int(sum(s["sync"]["edges_before"] for s in acc)),
        "sync_after": int(sum(s["sync"]["edges_after"] for s in acc)),
        "est_cycles_before": int(sum(s["schedule"]["est_cycles_before"] for s in acc)),
        "est_cycles": int(sum(s["schedule"]["est_cycles"] for s in acc)),
        "fusion_saved": int(sum(s["fusion"]["dram_bytes_saved"] for s in acc)),
        "compressed": sorted(k for s in acc for k, v in s["compression"].items() if v["compressed"]),
        "instructions": int(sum(s["schedule"]["instructions"] for s in acc)),
        "compile_s": round(t_compile, 2),
    }


def run():
    rng = np.random.default_rng(SEED)
    cfg = sparrow.config.preset(PRESET)
    pes = cfg.rows * cfg.cols
    models = {}
    m, shp, macs = gemm_model(rng, 512, 512, 512)
    models["gemm512"] = (m, shp, macs, None)
    m, shp, macs = conv_stack(rng)
    models["resnet_block28"] = (m, shp, macs, None)
    m, shp, macs = conv_stack(rng, batch=4, hw=14)
    models["resnet_block14_b4"] = (m, shp, macs, None)
    m, shp, macs = late_layers(rng)
    models["late1x1_b8"] = (m, shp, macs, None)
    m, shp, macs = fire_module(rng)
    models["fire28"] = (m, shp, macs, None)
    for name in ("mlp", "cnn"):
        d = digits(name)
        if d is not None:
            models[f"digits_{name}"] = (d[0], d[1], None, d[2])
    metrics, rows, config_models = {}, [], {}
    for name, (model, shp, macs, cal) in models.items():
        if cal is None:
            cal = rng.standard_normal((2 * shp[0],) + tuple(shp[1:])).astype(np.float32)
        x = cal[:shp[0]]
        res = {}
        for vname, opts in VARIANTS.items():
            r = run_variant(model, cal, x, opts)
            if macs is None:   # dense MAC count from the array's own counters (performed + skipped)
                macs = r["macs"] + r["macs_skipped"]
            r["util"] = round(r["macs"] / (pes * r["cycles"]), 4)
            r["eff_util"] = round(macs / (pes * r["cycles"]), 4)
            res[vname] = r
            for k, v in r.items():
                if not isinstance(v, list):
                    metrics[f"{name}.{vname}.{k}"] = v
            rows.append(f"{name:18} {vname:14} {r['cycles']:>9} {r['util']:6.3f} {r['eff_util']:6.3f} "
                        f"{r['bus_bytes']:>9} {r['bus_bytes_raw']:>9} {r['dram_bytes']:>9} "
                        f"{r['sync_before']:>6}/{r['sync_after']:<5} {r['est_cycles_before']:>9}->{r['est_cycles']:<9} "
                        f"{','.join(r['compressed']) or '-'}")
        metrics[f"{name}.util"] = res["on"]["util"]
        metrics[f"{name}.eff_util"] = res["on"]["eff_util"]
        metrics[f"{name}.speedup_on_vs_off"] = round(res["off"]["cycles"] / res["on"]["cycles"], 4)
        config_models[name] = {"input": list(shp), "dense_macs": int(macs)}
        rows.append("")
    head = (f"{'model':18} {'variant':14} {'cycles':>9} {'util':>6} {'eff':>6} {'bus B':>9} {'bus raw':>9} "
            f"{'dram B':>9} {'sync b/a':>12} {'sched est':>19} compressed")
    config = {"preset": PRESET, "pes": pes, "seed": SEED, "models": config_models,
              "variants": {k: v for k, v in VARIANTS.items()},
              "engine": "golden model, concurrent mode, perf.DEFAULT_COSTS",
              "inputs": "standard-normal noise (digits: training images); calibration on the same"}
    return {"metrics": metrics, "config": config, "table": "\n".join([head, *rows])}

