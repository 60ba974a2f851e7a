"""The compiler's intermediate representation: a topologically ordered graph of named tensors.

:class:`Value` is one tensor (shape, dtype, optional constant data, quantization scale once the
quantizer ran); :class:`Node` is one operation (ONNX op type, attributes, input/output value
names; ``""`` marks an omitted optional input). :func:`check` validates the invariants and is run
between passes in debug mode (:func:`run_passes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CompileError", "Value", "Node", "Graph", "check", "run_passes"]


class CompileError(ValueError):
    """A model the compiler cannot handle; the message names the node/tensor and the reason."""


@dataclass
class Value:
    name: str
    shape: tuple
    dtype: str = "float32"
    const: np.ndarray | None = None
    scale: float | None = None  # per-tensor symmetric int8 scale (activations)

    @property
    def is_const(self) -> bool:
        return self.const is not None


@dataclass
class Node:
    name: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)

    def desc(self) -> str:
        return f"node {self.name!r} ({self.op})"


@dataclass
class Graph:
    nodes: list
    values: dict
    inputs: list
    outputs: list
    opset: int = 13
    name: str = "model"
    qscales: dict = field(default_factory=dict)  # activation scales imported from a quantized model

    def producer(self) -> dict:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict:
        out = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def const(self, name):
        v = self.values.get(name)
        return None if v is None else v.const

    def add_const(self, name: str, data) -> str:
        base, k = name, 0
        while name in self.values:
            k += 1
            name = f"{base}_{k}"
        arr = np.asarray(data)
        self.values[name] = Value(name, tuple(arr.shape), str(arr.dtype), const=arr)
        return name


def check(g: Graph, stage: str = "", shapes: bool = True) -> None:
    """Raise :class:`CompileError` if ``g`` breaks an IR invariant (after pass ``stage``)."""
    where = f" (after pass {stage})" if stage else ""
    defined = set(g.inputs) | {n for n, v in g.values.items() if v.is_const}
    names = set()
    for i in g.inputs:
        if i not in g.values:
            raise CompileError(f"graph input {i!r} has no value info{where}")
    for n in g.nodes:
        if n.name in names:
            raise CompileError(f"duplicate node name {n.name!r}{where}")
        names.add(n.name)
        for i in n.inputs:
            if i and i not in defined:
                raise CompileError(f"{n.desc()}: input {i!r} is not defined before use{where}")
        for o in n.outputs:
            if o in defined:
                raise CompileError(f"{n.desc()}: output {o!r} defined twice{where}")
            v = g.values.get(o)
            if v is None or (
                shapes and (v.shape is None or any((not isinstance(d, int)) or d < 1 for d in v.shape))
            ):
                raise CompileError(f"{n.desc()}: output {o!r} has no static shape{where}")
            defined.add(o)
    for o in g.outputs:
        if o not in defined:
            raise CompileError(f"graph output {o!r} is not produced{where}")


def run_passes(g: Graph, passes, debug: bool = True, log=None) -> Graph:
    """Apply ``passes`` (``(name, fn)``; ``fn(graph) -> graph``) in order, checking the IR between."""
    shapes = not any(name == "infer_missing_shapes" for name, _ in passes)
    if debug:
        check(g, "import", shapes)
    for name, fn in passes:
        g = fn(g)
        shapes = shapes or name == "infer_missing_shapes"
        if debug:
            check(g, name, shapes)
        if log is not None:
            log(f"pass {name}: {len(g.nodes)} nodes")
    return g
