"""ONNX -> Sparrow compiler.

``compile(model, calibration=None, preset="default") -> CompiledProgram``: frontend passes
(:mod:`.frontend`), calibration (:mod:`.quantize`), partitioning (:mod:`.partition`), lowering
through the kernel builders (:mod:`.lower`), packaged as a :class:`~.program.CompiledProgram`
(``.save/.load/.run``; the ``.spw`` format is described in :mod:`.program`).

Each stage's output is kept in an on-disk cache (:mod:`.cache`: keys, location, corruption
handling); a recompile resumes from the deepest stage whose inputs, options and code are
unchanged, and ``prog.cache_stats`` reports hits and misses per stage.
"""

from __future__ import annotations

import json
import numbers
import pickle

import numpy as np

from ..config import HwConfig, preset as _preset
from .alloc import measure_sparsity
from .cache import CacheStats, CompileCache, code_versions, digest, salt
from .frontend import frontend
from .ir import CompileError, check
from .lower import lower
from .partition import format_partition, partition
from .program import FORMAT, CompiledProgram, InputError
from .quantize import calibrate, float_run

__all__ = ["compile", "CompiledProgram", "CompileError", "InputError", "load", "CacheStats"]


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
    cache: bool = True,
    cache_dir=None,
) -> CompiledProgram:
    """Compile an ONNX float model for a Sparrow preset.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto (opset >= 9, static shapes)
    calibration : dict {input name: [k*batch, ...] float array}, .npz path, array or None
        Calibration inputs; ``None`` uses 8 batches of standard-normal noise.
    preset : str or HwConfig
    debug : bool
        Run the IR check between passes (and on a graph read from the cache).
    accuracy_batches : int
        Calibration batches run through the compiled program (golden) to report int8 vs float error.
    options : dict, optional
        Back-end options passed to :func:`.lower.lower` (JSON-able).
    save : None, "all" or list of value names
        Saved intermediates: these values (``"all"``: every accelerator node's output) are kept
        in external memory and returned by ``run`` like outputs (``options["keep"]``).
    cache : bool
        Use the on-disk compile cache (:mod:`.cache`): every stage's output is stored under a
        key of its inputs, options and code; a compile resumes from the deepest valid stage.
    cache_dir : path, optional
        Cache root (default: ``SPARROW_CACHE_DIR``, else ``~/.cache/sparrow``).

    Returns
    -------
    CompiledProgram
        With ``cache_stats`` (:class:`.cache.CacheStats`: per stage hit/miss/unused/off,
        seconds, bytes, key; not saved in the ``.spw``).
    """
    cfg = preset if isinstance(preset, HwConfig) else _preset(preset)
    options = dict(options or {})
    try:
        options_json = json.dumps(options, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CompileError(f"options must be JSON-able: {e}") from None
    if not isinstance(accuracy_batches, numbers.Integral) or accuracy_batches < 0:
        raise CompileError(f"accuracy_batches must be an int >= 0, not {accuracy_batches!r}")
    accuracy_batches = int(accuracy_batches)
    store = CompileCache(cache_dir, enabled=cache, log=log)
    src, keys, sched_memo = model, {}, None
    if store.enabled:
        src, model_bytes = _model_source(model)
        if model_bytes is not None:
            cv = code_versions()
            keys = _stage_keys(model_bytes, cfg, calibration, options_json, save, accuracy_batches, cv)
            for name, k in keys.items():
                store.stats.stages[name].key = k
            # what each node's kernels emit, and each program's schedule (see .cache)
            sched_memo = {
                "kernels": store.memo("kernels", salt(), "kernels", cv["lower"], keys["partition"], keys["quantize"]),
                "schedule": store.memo("schedule", salt(), "schedule", cv["lower"], _cfg_key(cfg)),
            }
    memo = {}

    def graph():  # the frontend graph; after quantize() it carries the activation scales
        if "g" not in memo:
            memo["g"] = store.stage(
                "frontend",
                keys.get("frontend"),
                lambda: frontend(src, debug=debug, log=log),
                _pickle,
                pickle.loads,
            )
            if debug and store.stats.stages["frontend"].status == "hit":
                check(memo["g"], "cache read")
        return memo["g"]

    def info():
        if "info" not in memo:
            memo["info"] = store.stage(
                "partition", keys.get("partition"), lambda: partition(graph(), cfg), _pickle, pickle.loads
            )
        return memo["info"]

    def cal():
        if "cal" not in memo:
            memo["cal"] = _calibration(calibration, graph())
        return memo["cal"]

    def quantized():
        if "scales" not in memo:

            def build():
                info()  # rejects unsupported nodes before the (slower) calibration
                g = graph()
                calibrate(g, cal())
                scales = {k: v.scale for k, v in g.values.items()}
                # zero fraction of every activation on the calibration data: the back end's
                # compression decisions (options["sparsity"] overrides)
                return {"scales": scales, "sparsity": measure_sparsity(g, cal())}

            q = store.stage("quantize", keys.get("quantize"), build, _pickle, pickle.loads)
            g = graph()
            for k, s in q["scales"].items():
                g.values[k].scale = s
            memo["scales"] = q["scales"]
            memo["sparsity"] = q["sparsity"]
        return graph()

    def final_options():
        if "options" not in memo:
            opts = dict(options)
            if opts.get("sparsity") is None:
                quantized()
                opts["sparsity"] = memo["sparsity"]
            if save is not None:
                opts["keep"] = sorted(set(opts.get("keep") or ()) | _save_names(graph(), info(), save))
            memo["options"] = dict(sorted(opts.items()))  # canonical order in the manifest
        return memo["options"]

    def plan():
        return store.stage(
            "lower",
            keys.get("lower"),
            lambda: lower(quantized(), info(), cfg, options=final_options(), memo=sched_memo),
            _pickle,
            pickle.loads,
        )

    def program():
        g, inf, pl = quantized(), info(), plan()
        prog = _package(g, inf, pl, cfg, final_options())
        if accuracy_batches:
            # independent of back-end options (they keep outputs bit-identical): see .cache
            prog.manifest["accuracy"] = store.stage(
                "accuracy",
                keys.get("accuracy"),
                lambda: _accuracy(prog, g, cal(), accuracy_batches),
                _pickle,
                pickle.loads,
            )
        return prog

    prog = store.stage("program", keys.get("program"), program, _program_bytes, _program_load)
    prog.cache_stats = store.stats
    return prog


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _program_bytes(prog) -> bytes:
    """The ``program`` stage's payload: a pickle of what :class:`CompiledProgram` is made of,
    tagged with the ``.spw`` format version. Not the ``.spw`` zip: writing and reading that
    (JSON manifest, one ``.npz`` per program) cost more than the whole rest of a warm compile;
    the cache entry's checksum already guards the bytes and its key the code that made them."""
    return _pickle((FORMAT, prog.manifest, prog.programs, prog.consts))


def _program_load(payload: bytes) -> CompiledProgram:
    fmt, manifest, programs, consts = pickle.loads(payload)
    if fmt != FORMAT or manifest.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} program (format {fmt!r})")
    return CompiledProgram(manifest, programs, consts)


def _model_source(model):
    """``(what frontend reads, serialized model bytes for the key or None)``.

    A path is loaded once here (external data included, so its bytes are part of the key) and the
    ModelProto handed to the frontend; an unreadable model returns ``None`` bytes and the frontend
    reports the error.
    """
    try:
        import onnx

        if isinstance(model, onnx.ModelProto):
            return model, model.SerializeToString(deterministic=True)
        if isinstance(model, (bytes, bytearray)):
            return model, bytes(model)
        m = onnx.load(str(model))
        return m, m.SerializeToString(deterministic=True)
    except Exception:  # noqa: BLE001 - the frontend produces the user-facing error
        return model, None


def _calibration_key(calibration):
    if calibration is None:
        return None
    if isinstance(calibration, (str, bytes)) or hasattr(calibration, "__fspath__"):
        try:
            with open(calibration, "rb") as f:
                return ("npz", f.read())
        except OSError:
            return ("unreadable", str(calibration))  # _calibration reports it
    if isinstance(calibration, np.ndarray):
        return ("array", calibration)
    if isinstance(calibration, dict):
        return ("dict", {str(k): np.asarray(v) for k, v in calibration.items()})
    return ("other", repr(type(calibration)))  # rejected by _calibration


def _stage_keys(model_bytes, cfg, calibration, options_json, save, accuracy_batches, cv=None) -> dict:
    import onnx

    base = salt()
    cv = cv or code_versions()
    k = {}
    k["frontend"] = digest(base, "frontend", cv["frontend"], onnx.__version__, model_bytes)
    k["partition"] = digest(base, "partition", cv["partition"], k["frontend"], _cfg_key(cfg))
    k["quantize"] = digest(base, "quantize", cv["quantize"], k["frontend"], _calibration_key(calibration))
    save_key = None if save is None else (save if isinstance(save, str) else [str(x) for x in save])
    k["lower"] = digest(base, "lower", cv["lower"], k["partition"], k["quantize"], options_json, save_key)
    k["accuracy"] = digest(
        base, "accuracy", cv["accuracy"], k["partition"], k["quantize"], accuracy_batches
    )
    k["program"] = digest(base, "program", cv["program"], k["lower"], k["accuracy"])
    return k


_CFG_DICTS: dict = {}


def _cfg_dict(cfg) -> dict:
    """``cfg.to_dict()`` (a flat dict of scalars; a fresh copy each call), computed once per
    configuration: ``dataclasses.asdict`` is a noticeable part of a warm compile."""
    return dict(_cfg_entry(cfg)[0])


def _cfg_key(cfg) -> str:
    """:func:`.cache.digest` of ``cfg.to_dict()`` (every field, the preset name included)."""
    return _cfg_entry(cfg)[1]


def _cfg_entry(cfg):
    k = (cfg, cfg.name)  # name is not part of HwConfig equality
    got = _CFG_DICTS.get(k)
    if got is None:
        d = cfg.to_dict()
        got = _CFG_DICTS[k] = (d, digest(d))
    return got


def _package(g, info, plan, cfg, options) -> CompiledProgram:
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
        "cfg": _cfg_dict(cfg),
        "inputs": [{"name": n, "shape": list(g.values[n].shape), "dtype": "float32"} for n in g.inputs],
        "outputs": list(g.outputs),
        "scales": {k: float(v.scale) for k, v in g.values.items() if v.scale is not None},
        "shapes": {k: list(v.shape) for k, v in g.values.items() if v.shape is not None},
        "steps": plan["steps"],
        "n_programs": len(plan["programs"]),
        "partition": {k: {kk: vv for kk, vv in v.items()} for k, v in info.items()},
        "partition_text": format_partition(g, info),
        "options": options,
        # exact node -> value names, for breakpoints at layers and bisection (sparrow.debug)
        "node_outputs": {n.name: [o for o in n.outputs if o] for n in g.nodes},
        "node_inputs": {n.name: [i for i in n.inputs if i and not g.values[i].is_const] for n in g.nodes},
        "node_ops": {
            n.name: n.op + ("+" + n.attrs["act"][0] if n.attrs.get("act") else "") for n in g.nodes
        },
    }
    return CompiledProgram(manifest, plan["programs"], consts, cfg)


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
