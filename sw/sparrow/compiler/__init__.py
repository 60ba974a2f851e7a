"""ONNX -> Sparrow compiler.

``compile(model, calibration=None, preset="default") -> CompiledProgram``: frontend passes
(:mod:`.frontend`), calibration (:mod:`.quantize`), partitioning (:mod:`.partition`), lowering
through the kernel builders (:mod:`.lower`), packaged as a :class:`~.program.CompiledProgram`
(``.save/.load/.run``; the ``.spw`` format is described in :mod:`.program`).
"""

from __future__ import annotations

import numpy as np

from ..config import HwConfig, preset as _preset
from .frontend import frontend
from .ir import CompileError
from .lower import lower
from .partition import format_partition, partition
from .program import FORMAT, CompiledProgram, InputError
from .quantize import calibrate, float_run

__all__ = ["compile", "CompiledProgram", "CompileError", "InputError", "load"]


def _calibration(calibration, g):
    if calibration is None:
        return None
    if isinstance(calibration, (str, bytes)) or hasattr(calibration, "__fspath__"):
        try:
            z = np.load(calibration)
        except (OSError, ValueError) as e:
            raise CompileError(f"calibration: cannot read {calibration}: {e}") from None
        calibration = {k: z[k] for k in z.files}
    if isinstance(calibration, np.ndarray):
        if len(g.inputs) != 1:
            raise CompileError(f"calibration: the model has inputs {g.inputs}; pass a dict")
        calibration = {g.inputs[0]: calibration}
    if not isinstance(calibration, dict):
        raise CompileError("calibration must be None, an .npz path, an array or a dict {input name: array}")
    return calibration


def compile(
    model,
    calibration=None,
    preset="default",
    debug: bool = True,
    log=None,  # noqa: A001
    accuracy_batches: int = 4,
    options: dict | None = None,
    save=None,
) -> CompiledProgram:
    """Compile an ONNX float model for a Sparrow preset.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto (opset >= 9, static shapes)
    calibration : dict {input name: [k*batch, ...] float array}, .npz path, array or None
        Calibration inputs; ``None`` uses 8 batches of standard-normal noise.
    preset : str or HwConfig
    debug : bool
        Run the IR check between passes.
    accuracy_batches : int
        Calibration batches run through the compiled program (golden) to report int8 vs float error.
    options : dict, optional
        Back-end options passed to :func:`.lower.lower` (JSON-able).
    save : None, "all" or list of value names
        Saved intermediates: these values (``"all"``: every accelerator node's output) are kept
        in external memory and returned by ``run`` like outputs (``options["keep"]``).
    """
    cfg = preset if isinstance(preset, HwConfig) else _preset(preset)
    g = frontend(model, debug=debug, log=log)
    info = partition(g, cfg)  # rejects unsupported nodes before the (slower) calibration
    cal = _calibration(calibration, g)
    calibrate(g, cal)
    options = dict(options or {})
    if save is not None:
        options["keep"] = sorted(set(options.get("keep") or ()) | _save_names(g, info, save))
    plan = lower(g, info, cfg, options=options)
    consts = {}
    for st in plan["steps"]:
        if st["kind"] == "host":
            for i in st["inputs"]:
                if i and g.values[i].is_const:
                    consts[i] = np.asarray(g.values[i].const)
    manifest = {
        "format": FORMAT,
        "name": g.name,
        "opset": g.opset,
        "cfg": cfg.to_dict(),
        "inputs": [{"name": n, "shape": list(g.values[n].shape), "dtype": "float32"} for n in g.inputs],
        "outputs": list(g.outputs),
        "scales": {k: float(v.scale) for k, v in g.values.items() if v.scale is not None},
        "shapes": {k: list(v.shape) for k, v in g.values.items() if v.shape is not None},
        "steps": plan["steps"],
        "n_programs": len(plan["programs"]),
        "partition": {k: {kk: vv for kk, vv in v.items()} for k, v in info.items()},
        "partition_text": format_partition(g, info),
        "options": options,
    }
    prog = CompiledProgram(manifest, plan["programs"], consts)
    if accuracy_batches:
        manifest["accuracy"] = _accuracy(prog, g, cal, accuracy_batches)
    return prog


def _save_names(g, info, save) -> set:
    acc_outputs = [o for n in g.nodes if info[n.name]["place"] != "host" for o in n.outputs]
    if save == "all":
        return set(acc_outputs)
    names = [save] if isinstance(save, str) else list(save)
    by_node = {n.name: n.outputs[0] for n in g.nodes}
    out = set()
    for nm in names:
        v = by_node.get(nm, nm)
        if v not in g.values:
            raise CompileError(f"save: {nm!r} is neither a node nor a value of the graph")
        out.add(v)
    return out


def _accuracy(prog, g, cal, nb):
    """Float reference vs the compiled program (golden) on calibration batches."""
    if cal is None:
        rng = np.random.default_rng(1)
        cal = {
            n: rng.standard_normal((nb * g.values[n].shape[0],) + tuple(g.values[n].shape[1:]))
            for n in g.inputs
        }
    from .quantize import _batches

    err, ref_max, agree, total = 0.0, 0.0, 0, 0
    for k, feeds in enumerate(_batches(g, cal)):
        if k >= nb:
            break
        env = float_run(g, feeds)
        out = prog.run({n: a.astype(np.float32) for n, a in feeds.items()})
        for o in g.outputs:
            r = env[o]
            err = max(err, float(np.max(np.abs(out[o] - r))))
            ref_max = max(ref_max, float(np.max(np.abs(r))))
            if r.ndim == 2 and r.shape[1] > 1:
                agree += int(np.sum(np.argmax(r, 1) == np.argmax(out[o], 1)))
                total += r.shape[0]
    res = {"batches": min(nb, k + 1), "max_abs_error": err, "output_max_abs": ref_max}
    if total:
        res["top1_agreement"] = agree / total
    return res


def load(path) -> CompiledProgram:
    """Load a ``.spw`` file."""
    return CompiledProgram.load(path)
