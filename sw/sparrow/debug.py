"""Automatic bisection: which node of a compiled network first goes wrong on a backend.

::

    from sparrow import debug
    rep = debug.bisect("model.onnx", backend="verilator", inputs={"x": x})
    print(rep.format())            # first diverging node, by how much, per-node table

How it works
------------
1. The model is compiled with every accelerator node's output kept in external memory
   (``compile(save="all")``); the manifest records the node -> output value map.
2. Reference: the same program on the golden model (the specification, bit exact); and the float
   graph in onnxruntime (or the NumPy float reference without it), compared per node within a
   quantization tolerance (``float_tol`` of the node's range plus 2 quantization steps) — a
   node beyond it points at the compiler/quantization rather than the backend.
3. Target: progressively shorter prefixes of the network on ``backend``: a run with a breakpoint
   after node ``k`` (:meth:`CompiledProgram.run` ``break_at``) compares every value of nodes
   ``0..k`` with the reference; binary search finds the smallest ``k`` with a difference (a
   device fault in the prefix counts as one), i.e. the first diverging node.
4. That node is run again on the target with a breakpoint after it; its inputs, its output
   (got / expected / difference) and its constant segments as read back from the device's memory
   (vs the compiled image) are reported and, with ``dump_dir``, written as ``.npy`` files.

Fault injection (tests, demos): :func:`corrupt_constants` returns a ``before_step`` hook that
flips bytes of a constant segment (weights) belonging to a node in the device image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compiler import compile as _compile
from .compiler.program import CompiledProgram
from .isa import decode_image
from .errors import DeviceError

__all__ = ["bisect", "BisectReport", "compile_debug", "corrupt_constants", "node_segments", "float_reference"]


def compile_debug(model, preset="small", calibration=None, save="all", **kw) -> CompiledProgram:
    """``compile(model, save=save)``: by default every node's output is kept in external memory
    (the manifest records each node's output values)."""
    return _compile(model, calibration=calibration, preset=preset, save=save, **kw)


def node_segments(prog: CompiledProgram, node: str) -> list:
    """``[(segment index, addr, nbytes)]`` of the constant segments of ``node``'s program that
    only ``node``'s LOAD instructions read (its weights, bias/requant parameters)."""
    from .kernels.builder import footprint

    st = prog.manifest["steps"][prog.node_step(node)]
    if st["kind"] != "acc":
        raise ValueError(f"node: {node!r} runs on the host; it has no device constants")
    p = prog.programs[st["program"]]
    reads = []
    for ins, tag in zip(decode_image(p["program"], prog.cfg), st["tags"], strict=False):
        if ins is None or ins.mnemonic != "load":
            continue
        for space, write, lo, hi in footprint(ins, prog.cfg):
            if space == "DRAM" and not write:
                reads.append((lo, hi, tag))
    out = []
    for j, (addr, data) in enumerate(p["segments"]):
        lo, hi = addr, addr + len(data) - 1
        users = {t for a, b, t in reads if a <= hi and b >= lo}
        if users == {node}:
            out.append((j, addr, len(data)))
    return out


def corrupt_constants(prog: CompiledProgram, node: str, nbytes: int = 8, seed: int = 0):
    """A ``before_step(device, step)`` hook that XORs ``nbytes`` bytes (spread over the largest
    constant segment only ``node`` reads — normally its weights) with 0x5A in the device's memory
    before ``node``'s program runs. Fault injection for :func:`bisect` tests."""
    segs = node_segments(prog, node)
    if not segs:
        raise ValueError(f"node: {node!r} has no constant segment of its own to corrupt")
    if not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"nbytes must be a positive int, not {nbytes!r}")
    _, addr, n = max(segs, key=lambda s: s[2])
    rng = np.random.default_rng(seed)
    offs = np.sort(rng.choice(n, size=min(nbytes, n), replace=False))
    step = prog.manifest["steps"][prog.node_step(node)]

    def hook(dev, st):
        if st is not step and st.get("program") != step["program"]:
            return
        for o in offs:
            b = np.asarray(dev.read_dram(addr + int(o), 1), np.uint8)
            dev.write_dram(addr + int(o), (b ^ 0x5A).astype(np.uint8))

    hook.node, hook.addr, hook.offsets = node, addr, offs
    return hook


def float_reference(model, prog: CompiledProgram, inputs: dict) -> dict:
    """Float value of every node output for ``inputs``: onnxruntime on the model (extra graph
    outputs), falling back to the compiler's NumPy float reference when unavailable."""
    names = [v for vs in prog.manifest.get("node_outputs", {}).values() for v in vs]
    try:
        import onnx
        import onnxruntime as ort

        m = model if isinstance(model, onnx.ModelProto) else onnx.load(model) if not isinstance(
            model, (bytes, bytearray)) else onnx.load_from_string(bytes(model))
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        have = {o.name for o in m2.graph.output}
        produced = {o for n in m2.graph.node for o in n.output}
        for v in names:
            if v not in have and v in produced:
                m2.graph.output.append(onnx.helper.make_empty_tensor_value_info(v))  # type inferred
        sess = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {k: np.asarray(a, np.float32) for k, a in inputs.items()})
        return {o.name: np.asarray(a, np.float64) for o, a in zip(sess.get_outputs(), outs, strict=True)}
    except ImportError:  # pragma: no cover - onnxruntime is a test dependency
        from .compiler.frontend import frontend
        from .compiler.quantize import float_run

        return float_run(frontend(model), inputs)


@dataclass
class NodeDiff:
    node: str
    value: str
    n_diff: int
    size: int
    max_abs_int8: int
    max_abs: float
    first_index: tuple | None

    def __str__(self):
        return (f"{self.node} -> {self.value}: {self.n_diff}/{self.size} elements differ, max |diff| "
                f"{self.max_abs_int8} LSB = {self.max_abs:.4g}, first at {self.first_index}")


@dataclass
class BisectReport:
    backend: str
    nodes: list
    first: NodeDiff | None = None
    fault: str | None = None            # a DeviceError in the first failing prefix
    probes: list = field(default_factory=list)      # (node index, diverged?)
    float_errors: dict = field(default_factory=dict)  # node -> (max abs err, tolerance)
    float_first: str | None = None      # first node beyond the float tolerance
    dump: dict = field(default_factory=dict)
    dump_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.first is None and self.fault is None

    def format(self) -> str:
        probes = ", ".join(f"{self.nodes[k]}:{'diverges' if d else 'ok'}" for k, d in self.probes)
        lines = [f"backend {self.backend}: {len(self.nodes)} nodes, {len(self.probes)} prefix runs ({probes})"]
        if self.ok:
            lines.append(f"no divergence: every node's output equals the golden model on {self.backend}")
        elif self.first is not None:
            lines.append(f"first diverging node: {self.first}")
        if self.fault:
            lines.append(f"device fault in the failing prefix: {self.fault}")
        if self.dump:
            d = self.dump
            for seg in d.get("segments", []):
                lines.append(f"  constant segment @{seg['addr']:#x} ({seg['nbytes']} bytes): "
                             f"{seg['n_diff']} bytes differ from the compiled image on the device")
            if self.dump_dir:
                lines.append(f"  tensors dumped to {self.dump_dir}")
        if self.float_errors:
            lines.append("golden model vs float reference (per node, max |error| / tolerance):")
            for n, (e, tol) in self.float_errors.items():
                flag = "  <-- beyond tolerance" if e > tol else ""
                lines.append(f"  {n:20s} {e:10.4g} / {tol:.4g}{flag}")
        return "\n".join(lines)


def _compare(node, value, got, exp, scale) -> NodeDiff | None:
    got, exp = np.asarray(got), np.asarray(exp)
    if got.shape != exp.shape:
        return NodeDiff(node, value, int(exp.size), int(exp.size), 255, float("inf"), None)
    d = np.abs(got.astype(np.int64) - exp.astype(np.int64))
    n = int(np.count_nonzero(d))
    if not n:
        return None
    first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(d)[0]), d.shape))
    return NodeDiff(node, value, n, int(d.size), int(d.max()), float(d.max() * scale), first)


def bisect(model, inputs=None, backend: str = "verilator", preset: str = "small", calibration=None,
           before_step=None, prog: CompiledProgram | None = None, dump_dir=None, float_tol: float = 0.15,
           seed: int = 0, log=None) -> BisectReport:
    """Find the first node whose output on ``backend`` differs from the golden model.

    Parameters
    ----------
    model : ONNX path / bytes / ModelProto (the float graph; also the float reference)
    inputs : dict {name: float32 array}, an array (single input) or None (seeded normal noise)
    backend : "golden" or "verilator" (the target)
    before_step : hook ``(device, step)`` run before each target program (fault injection:
        :func:`corrupt_constants`); the reference never runs it
    prog : an already compiled :func:`compile_debug` program (else compiled here)
    dump_dir : directory for the diverging node's tensors (``.npy``)
    float_tol : relative tolerance (of the node's float range) of golden vs float per node
    """
    say = log or (lambda s: None)
    if prog is None:
        prog = compile_debug(model, preset=preset, calibration=calibration)
    if "node_outputs" not in prog.manifest:
        raise ValueError("prog: compile it with sparrow.debug.compile_debug (needs every node's output kept)")
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = {n: rng.standard_normal(s).astype(np.float32) for n, s in prog.inputs.items()}
    elif isinstance(inputs, np.ndarray):
        if len(prog.inputs) != 1:
            raise ValueError(f"inputs: the model has inputs {list(prog.inputs)}; pass a dict")
        inputs = {next(iter(prog.inputs)): inputs}
    nodes = prog.nodes
    outs_of = prog.manifest["node_outputs"]
    scales = prog.scales

    # reference: golden model, every value
    prog.run(inputs, backend="golden")
    ref = dict(prog.last_run["values"])
    rep = BisectReport(backend, nodes)

    # float reference per node
    try:
        fl = float_reference(model, prog, inputs)
    except Exception as e:  # noqa: BLE001 - informational part of the report
        say(f"float reference unavailable: {e}")
        fl = {}
    for n in nodes:
        for v in outs_of.get(n, [])[:1]:
            if v in fl and v in ref and fl[v].shape == ref[v].shape:
                err = float(np.max(np.abs(ref[v] * scales[v] - fl[v])))
                tol = float_tol * float(np.max(np.abs(fl[v])) or 1.0) + 2 * scales[v]
                rep.float_errors[n] = (err, tol)
                if err > tol and rep.float_first is None:
                    rep.float_first = n

    def probe(k):
        """Diverged values of nodes 0..k after running the prefix up to node k on the target."""
        got = {}
        try:
            prog.run(inputs, backend=backend, break_at=nodes[k], before_step=before_step,
                     on_break=lambda s: got.update(s.int8))
        except DeviceError as e:
            return [], str(e)
        diffs = []
        for n in nodes[: k + 1]:
            for v in outs_of.get(n, []):
                if v in got and v in ref:
                    d = _compare(n, v, got[v], ref[v], scales[v])
                    if d is not None:
                        diffs.append(d)
        return diffs, None

    last = len(nodes) - 1
    diffs, fault = probe(last)
    rep.probes.append((last, bool(diffs or fault)))
    if not diffs and not fault:
        return rep
    lo, hi = 0, last  # invariant: the prefix up to hi diverges
    best = (diffs, fault)
    while lo < hi:
        mid = (lo + hi) // 2
        d, f = probe(mid)
        rep.probes.append((mid, bool(d or f)))
        say(f"prefix up to {nodes[mid]}: {'diverges' if d or f else 'ok'}")
        if d or f:
            hi, best = mid, (d, f)
        else:
            lo = mid + 1
    diffs, fault = best
    rep.fault = fault
    rep.first = min(diffs, key=lambda d: nodes.index(d.node)) if diffs else None
    node = rep.first.node if rep.first else nodes[hi]
    rep.dump = _dump_node(prog, node, inputs, backend, before_step, ref, dump_dir)
    rep.dump_dir = str(dump_dir) if dump_dir else None
    return rep


def _dump_node(prog, node, inputs, backend, before_step, ref, dump_dir) -> dict:
    """Re-run up to ``node`` on the target; its inputs, output (got/expected/diff) and its own
    constant segments read back from the device."""
    outs_of = prog.manifest["node_outputs"]
    st = prog.manifest["steps"][prog.node_step(node)]
    out = {"node": node, "segments": [], "tensors": {}}
    segs = node_segments(prog, node) if st["kind"] == "acc" else []
    state = {}

    def grab(s):
        state["int8"] = dict(s.int8)
        if s.device is not None:
            p = prog.programs[st["program"]]
            for j, addr, n in segs:
                dev_bytes = np.asarray(s.device.read_dram(addr, n), np.uint8)
                img = np.frombuffer(bytes(p["segments"][j][1]), np.uint8)
                out["segments"].append({"index": j, "addr": addr, "nbytes": n,
                                        "n_diff": int(np.count_nonzero(dev_bytes != img)),
                                        "device": dev_bytes, "image": img})

    try:
        prog.run(inputs, backend=backend, break_at=node, before_step=before_step, on_break=grab)
    except DeviceError as e:
        out["fault"] = str(e)
    vals = state.get("int8", {})
    producers = {v: n for n, vs in outs_of.items() for v in vs}
    ins = _node_inputs(prog, node, producers)
    for v in ins:
        if v in vals:
            out["tensors"][f"input_{v}"] = vals[v]
    for v in outs_of.get(node, []):
        if v in vals:
            out["tensors"][f"got_{v}"] = vals[v]
        if v in ref:
            out["tensors"][f"expected_{v}"] = ref[v]
        if v in vals and v in ref and vals[v].shape == ref[v].shape:
            out["tensors"][f"diff_{v}"] = vals[v].astype(np.int16) - ref[v].astype(np.int16)
    if dump_dir:
        d = Path(dump_dir) / node
        d.mkdir(parents=True, exist_ok=True)
        for k, a in out["tensors"].items():
            np.save(d / f"{k}.npy", a)
        for seg in out["segments"]:
            np.save(d / f"const{seg['index']}_device.npy", seg["device"])
            np.save(d / f"const{seg['index']}_image.npy", seg["image"])
    return out


def _node_inputs(prog, node, producers) -> list:
    """Value names ``node`` reads (non-constant), from :func:`compile_debug`'s graph record."""
    return list(prog.manifest.get("node_inputs", {}).get(node, []))
