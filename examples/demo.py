"""Digits demo: compile the MLP and CNN from ``train_digits.py`` and run them on a Sparrow backend.

Usage::

    python examples/demo.py [--backend golden|verilator] [--preset default] [--limit N]

Trains the models first if ``examples/models`` does not have them. Prints, per model, the float
accuracy (onnxruntime), the int8 accuracy on the golden model and (``--backend verilator``) on the
simulated RTL, whether the RTL outputs equal the golden model's, and the cycles per inference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def evaluate(model_path, data, backend="golden", preset="default", limit=None, calib=64, progress=True):
    """Float accuracy (onnxruntime), int8 accuracy on the golden model and, with
    ``backend="verilator"``, on the simulated RTL too (plus how many RTL outputs equal golden's).

    Returns ``{"n", "float_acc", "int8_acc", "cycles_per_inference", "partition"}`` (int8 figures
    of ``backend``) and, for an RTL backend, ``"golden_acc"``, ``"golden_cycles"``, ``"identical"``.
    """
    import onnxruntime as ort

    import sparrow

    xtr, xte, yte = data["x_train"], data["x_test"], data["y_test"]
    if limit:
        xte, yte = xte[:limit], yte[:limit]
    prog = sparrow.compile(str(model_path), calibration={"x": xtr[:calib]}, preset=preset, accuracy_batches=0)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    backends = ["golden"] if backend == "golden" else ["golden", backend]
    pred = {b: [] for b in backends}
    cycles = dict.fromkeys(backends, 0)
    f_pred, identical = [], 0
    for k in range(len(yte)):
        x = xte[k : k + 1]
        f_pred.append(int(np.argmax(sess.run(None, {"x": x})[0])))
        outs = {}
        for b in backends:
            outs[b] = prog.run({"x": x}, backend=b)["logits"]
            pred[b].append(int(np.argmax(outs[b])))
            cycles[b] += prog.last_run["cycles"]
        identical += int(np.array_equal(outs["golden"], outs[backends[-1]]))
        if progress:
            n = 30 * (k + 1) // len(yte)
            sys.stderr.write(f"\r{Path(model_path).stem} [{'#' * n}{'.' * (30 - n)}] {k + 1}/{len(yte)}")
    if progress:
        sys.stderr.write("\n")
    acc = {b: float(np.mean(np.array(pred[b]) == yte)) for b in backends}
    r = {
        "n": len(yte),
        "float_acc": float(np.mean(np.array(f_pred) == yte)),
        "int8_acc": acc[backend],
        "cycles_per_inference": cycles[backend] / len(yte),
        "partition": prog.manifest["partition_text"],
    }
    if backend != "golden":
        r.update(golden_acc=acc["golden"], golden_cycles=cycles["golden"] / len(yte), identical=identical)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description="Sparrow digits demo")
    ap.add_argument("--backend", default="golden", choices=["golden", "verilator"])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    ap.add_argument("--models", default=str(HERE / "models"))
    args = ap.parse_args(argv)
    mdir = Path(args.models)
    if not (mdir / "digits_cnn.onnx").exists():
        import train_digits

        train_digits.main(["--out-dir", str(mdir)])
    data = dict(np.load(mdir / "digits_data.npz"))
    for name in ("mlp", "cnn"):
        t0 = time.time()
        r = evaluate(mdir / f"digits_{name}.onnx", data, args.backend, args.preset, args.limit)
        print(f"\n== digits {name} ({args.backend}, preset {args.preset}) ==")
        print(r["partition"])
        print(f"float accuracy        {100 * r['float_acc']:.2f}%  ({r['n']} images, onnxruntime)")
        if args.backend != "golden":
            g, c = 100 * r["golden_acc"], r["golden_cycles"]
            print(f"int8 accuracy golden  {g:.2f}%  ({c:.0f} cycles/image, model)")
            g, c = 100 * r["int8_acc"], r["cycles_per_inference"]
            print(f"int8 accuracy RTL     {g:.2f}%  ({c:.0f} cycles/image)")
            print(f"RTL output identical to golden: {r['identical']}/{r['n']} images")
        else:
            g, c = 100 * r["int8_acc"], r["cycles_per_inference"]
            print(f"int8 accuracy golden  {g:.2f}%  ({c:.0f} cycles/image)")
        print(f"wall time {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
