"""Compile-time benchmark: cold vs warm compile cache vs warm after a back-end option change.

Models (built here, seeded):

* ``digits_mlp`` / ``digits_cnn``: examples/train_digits.py trained with seed 0 (Flatten-Gemm-
  Relu-Gemm on 8x8 images; Conv-Relu-MaxPool-MatMul);
* ``conv32``: a residual conv net on a 3x32x32 input (stem conv, two residual blocks of two 3x3
  convs at 32 channels, a stride-2 conv to 64 channels, a 3x3 conv, global average pool, Gemm).

Calibration: 64 training images for the digits models (as ``examples/demo.py``); 16 batches of
seeded standard-normal noise for ``conv32``. Preset ``default``.

Two compile configurations per model:

``acc4``
    ``compile()``'s default ``accuracy_batches=4``: the cold compile includes the accuracy report
    (4 calibration batches through the float reference and the compiled program on the golden
    model), and so does every recompile whose program changed.
``acc0``
    ``accuracy_batches=0`` (what ``examples/demo.py`` does).

Per configuration, wall-clock seconds of the whole ``sparrow.compile`` call, the best of
``REPEATS[model]`` runs, each in a fresh cache directory (the machine is shared; the minimum is
the least disturbed estimate of the work): ``cold`` (empty cache directory), ``warm`` (the same
call again: the ``program`` stage hits), ``backend`` (warm cache, one back-end ``options`` key
changed: ``keep`` = the output of the first accelerator node, so lower and program rebuild with
every optimisation still on, and the other stages are read from the cache). The cold compile's
per-stage times are the exclusive build times recorded by the cache (``prog.cache_stats``) of
the fastest cold run; ``other`` is the rest of the wall time (model serialisation and hashing for
the keys, entry writes). The same split is recorded for the fastest ``backend`` run (a stage read
from the cache counts its read and decode time).

Metrics: ``{model}_{cfg}_{cold,warm,backend}_s``, ``..._backend_ratio`` (backend / cold),
``..._warm_ratio``, ``{model}_{cfg}_stage_{stage}_s`` (cold) and
``{model}_{cfg}_backend_stage_{stage}_s`` (backend); ``backend_ratio_max_{acc4,acc0}`` (worst
model) against the issue's target ``<= 0.10``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PRESET = "default"
# the digits compiles take milliseconds: more repeats for their minimum on a shared machine
REPEATS = {"digits_mlp": 25, "digits_cnn": 25, "conv32": 3}
TARGET = 0.10


def _conv32():
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    nodes, ini = [], {}

    def conv(name, x, cin, cout, stride=1, relu=True):
        ini[f"{name}_w"] = rng.standard_normal((cout, cin, 3, 3)) * (1.5 / np.sqrt(cin * 9))
        ini[f"{name}_b"] = rng.standard_normal(cout) * 0.1
        y = f"{name}_c" if relu else name
        nodes.append(h.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], pads=[1] * 4, strides=[stride] * 2))
        if relu:
            nodes.append(h.make_node("Relu", [y], [name]))
        return name

    C = 32
    x = conv("stem", "x", 3, C)
    for b in range(2):
        a = conv(f"b{b}a", x, C, C)
        c = conv(f"b{b}b", a, C, C, relu=False)
        nodes.append(h.make_node("Add", [c, x], [f"r{b}"]))
        nodes.append(h.make_node("Relu", [f"r{b}"], [f"rr{b}"]))
        x = f"rr{b}"
    x = conv("down", x, C, 2 * C, stride=2)
    x = conv("c2", x, 2 * C, 2 * C)
    ini["fc_w"] = rng.standard_normal((10, 2 * C)) * 0.5
    ini["fc_b"] = rng.standard_normal(10) * 0.1
    nodes += [
        h.make_node("GlobalAveragePool", [x], ["gap"]),
        h.make_node("Flatten", ["gap"], ["flat"]),
        h.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    g = h.make_graph(
        nodes,
        "conv32",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 32, 32])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 10])],
        [nh.from_array(np.asarray(a, np.float32), k) for k, a in ini.items()],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    cal = {"x": np.random.default_rng(1).standard_normal((16, 3, 32, 32))}
    return m, cal


def _models():
    sys.path.insert(0, str(REPO / "examples"))
    import train_digits

    xtr, ytr, _, _ = train_digits.load_data(0)
    cal = {"x": xtr[:64]}
    out = {
        "digits_mlp": (train_digits.mlp_onnx(train_digits.train_mlp(xtr, ytr, seed=0)), cal),
        "digits_cnn": (train_digits.cnn_onnx(train_digits.train_cnn(xtr, ytr, seed=0)), cal),
    }
    out["conv32"] = _conv32()
    return out


def _timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def _keep_option(model, prog) -> dict:
    from sparrow.compiler.frontend import frontend

    g = frontend(model)
    part = prog.manifest["partition"]
    first = next(n for n in g.nodes if part[n.name]["place"] == "acc")
    return {"keep": [first.outputs[0]]}


def run() -> dict:
    import sparrow
    from sparrow.compiler.cache import STAGES

    models = _models()
    metrics, config, lines = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: imports and first-call costs are not charged to the first model's cold compile
        m0, c0 = models["digits_mlp"]
        sparrow.compile(m0, calibration=c0, preset=PRESET, cache_dir=Path(tmp) / "warmup")
        lines.append(
            f"{'model':11} {'cfg':4} {'cold s':>7} {'warm s':>7} {'backend s':>9} {'warm/cold':>9} "
            f"{'backend/cold':>12}  cold stages (s): " + " ".join(STAGES) + " other"
        )
        for name, (model, cal) in models.items():
            for cfg, acc in (("acc4", 4), ("acc0", 0)):
                cold, warm, back, stages, hit_status, back_status = [], [], [], None, None, None
                back_stages = None
                for r in range(REPEATS[name]):
                    d = Path(tmp) / f"{name}-{cfg}-{r}"

                    def comp(options=None, d=d, model=model, cal=cal, acc=acc):
                        return sparrow.compile(
                            model, calibration=cal, preset=PRESET, accuracy_batches=acc, cache_dir=d,
                            options=options,
                        )

                    t, p = _timed(comp)
                    cold.append(t)
                    if stages is None or t <= min(cold):
                        stages = {s: p.cache_stats.stages[s].seconds for s in STAGES}
                        stages["other"] = t - sum(stages.values())
                    t, pw = _timed(comp)
                    warm.append(t)
                    hit_status = pw.cache_stats.status()
                    opts = _keep_option(model, p)
                    t, pb = _timed(lambda opts=opts: comp(opts))
                    back.append(t)
                    back_status = pb.cache_stats.status()
                    if back_stages is None or t <= min(back):
                        back_stages = {s: pb.cache_stats.stages[s].seconds for s in STAGES}
                        back_stages["other"] = t - sum(back_stages.values())
                assert hit_status["program"] == "hit", hit_status
                want = {"frontend": "hit", "partition": "hit", "quantize": "hit", "lower": "miss",
                        "accuracy": "hit" if acc else "unused", "program": "miss"}
                assert back_status == want, back_status
                c, w, b = (min(v) for v in (cold, warm, back))
                key = f"{name}_{cfg}"
                metrics[f"{key}_cold_s"] = round(c, 4)
                metrics[f"{key}_warm_s"] = round(w, 4)
                metrics[f"{key}_backend_s"] = round(b, 4)
                metrics[f"{key}_warm_ratio"] = round(w / c, 4)
                metrics[f"{key}_backend_ratio"] = round(b / c, 4)
                for s, v in stages.items():
                    metrics[f"{key}_stage_{s}_s"] = round(v, 4)
                for s, v in back_stages.items():
                    metrics[f"{key}_backend_stage_{s}_s"] = round(v, 5)
                lines.append(
                    f"{name:11} {cfg:4} {c:7.3f} {w:7.3f} {b:9.3f} {w / c:9.3f} {b / c:12.3f}  "
                    + " ".join(f"{stages[s]:.3f}" for s in (*STAGES, "other"))
                )
        for cfg in ("acc4", "acc0"):
            worst = max(v for k, v in metrics.items() if k.endswith(f"_{cfg}_backend_ratio"))
            metrics[f"backend_ratio_max_{cfg}"] = worst
            lines.append(
                f"worst backend/cold ({cfg}): {worst:.3f} (target <= {TARGET}: "
                f"{'met' if worst <= TARGET else 'NOT met'})"
            )
    config.update(
        preset=PRESET,
        repeats=REPEATS,
        statistic="best-of-repeats wall-clock seconds of sparrow.compile()",
        calibration={"digits_mlp": "64 training images", "digits_cnn": "64 training images",
                     "conv32": "16 batches of N(0,1) noise, seed 1"},
        backend_change="options={'keep': [output of the first accelerator node]}",
        target_backend_ratio=TARGET,
    )
    return {"metrics": metrics, "config": config, "table": "\n".join(lines)}
