"""The compiled artifact (``.spw``) and its runner.

A ``.spw`` file is a zip archive:

* ``manifest.json`` — format version, hardware config, graph inputs (name, shape, dtype) and
  outputs, per-tensor quantization scales, the ordered step list (``acc`` steps name a program
  and the external-memory placement — address, stored shape, layout — of their inputs and outputs;
  ``host`` steps name an ONNX op, its attributes and tensors), the partition with estimates;
* ``program_K.bin`` — instruction image of accelerator program ``K``;
* ``image_K.npz`` — its constant external-memory segments (``addr_J``/``data_J``);
* ``consts.npz`` — float constants read by host steps.

Running: graph inputs are quantized (per-tensor scale), each ``acc`` step writes its inputs and
constant segments to the device and runs its program, each ``host`` step dequantizes, runs the
NumPy kernel and requantizes (host steps producing a graph output keep float). Outputs are
returned as float32 (dequantized); ``last_run`` keeps the int8 values, cycles and counters.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile

import numpy as np

from ..config import HwConfig
from ..isa import decode_image
from . import hostops
from .ir import CompileError
from .lower import from_dram, to_dram
from .quantize import quantize

__all__ = ["CompiledProgram", "InputError", "GoldenDevice", "make_device", "FORMAT"]

FORMAT = "sparrow-spw-2"


class InputError(ValueError):
    """Inputs of the wrong name, shape or dtype."""


def make_device(backend: str, cfg: HwConfig):
    """A device for :meth:`CompiledProgram.run`.

    ``"golden"``: :class:`GoldenDevice`, the golden model used directly (so the compiler does
    not depend on the driver). Other backends: ``sparrow.runtime.Device``
    (``Device(cfg, backend=...)`` with ``write_dram``, ``read_dram``, ``load_program(image, addr)``,
    ``run()`` and ``counters()``); a clear error when the runtime is not available.
    """
    if backend == "golden":
        return GoldenDevice(cfg)
    if backend in ("verilator", "cocotb"):
        try:
            from ..runtime import Device
        except ImportError:
            raise CompileError(
                f"backend {backend!r}: needs sparrow.runtime.Device, which this checkout "
                f"does not have yet; use backend 'golden'"
            ) from None
        try:
            return Device(cfg, backend=backend)
        except (ValueError, OSError, RuntimeError) as e:
            raise CompileError(f"backend {backend!r}: cannot start the device: {e}") from None
    raise CompileError(f"backend must be 'golden' or 'verilator', not {backend!r}")


class GoldenDevice:
    """The golden :class:`~sparrow.golden.Machine` as a run device: concurrent mode, so cycles
    include engine overlap (``mode="program"`` for the sequential schedule; ``check_races=True``
    to run the race checker)."""

    def __init__(self, cfg: HwConfig, mode: str = "concurrent", check_races: bool = False):
        from ..golden import Machine

        self.machine = Machine(cfg)
        self.mode, self.check_races = mode, check_races
        self.write_dram, self.read_dram = self.machine.write_dram, self.machine.read_dram

    def run(self, image):
        if self.mode == "program":
            return self.machine.run(image)
        return self.machine.run(image, mode=self.mode, check_races=self.check_races)


def _run_on(dev, image: bytes, addr: int):
    """``(cycles, counters)`` of one program on a Machine-like or a runtime Device."""
    if hasattr(dev, "load_program"):  # sparrow.runtime.Device
        dev.load_program(image, addr)
        info = dev.run()
        counters = dict(getattr(info, "counters", None) or dev.counters())
        return int(info.cycles), counters
    res = dev.run(image)
    return int(res.cycles), dict(res.counters)


class _Bar:
    def __init__(self, total, label, enabled):
        self.total, self.label, self.enabled, self.k = total, label, enabled, 0

    def step(self, what=""):
        self.k += 1
        if self.enabled:
            n = 30 * self.k // max(self.total, 1)
            sys.stderr.write(
                f"\r{self.label} [{'#' * n}{'.' * (30 - n)}] {self.k}/{self.total} {what[:30]:30}"
            )
            if self.k == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _placed(st, value) -> bool:
    return any(d["name"] == value for d in st["outputs"])


class BreakState:
    """The device halted after a node (``CompiledProgram.run(break_at=...)``).

    Attributes
    ----------
    node, step, cut : the node, its step index and the program index the engines halted at
        (``None`` for a host node: the state after the host step).
    device : the halted device (``read_dram``, ``pcs``, ``counters``, ``status``...) or ``None``.
    pcs : each engine's next instruction index at the halt; ``halted``: engines at a breakpoint.
    outputs : the node's output value names; ``tensor`` / ``tensor_int8``: its first output.
    int8 : every value complete at the halt (graph inputs, earlier steps, this program's values
        of the node and the nodes before it), int8; :meth:`value` dequantizes one.
    """

    def __init__(self, node, step, cut, device, pcs, cycles, outputs, int8, scales, halted=(), stop="breakpoint"):
        self.node, self.step, self.cut, self.device, self.pcs = node, step, cut, device, pcs
        self.cycles, self.outputs, self.int8, self.scales = cycles, list(outputs), int8, scales
        self.halted, self.stop = tuple(halted), stop
        self.resume_cycles = 0
        self.resumed = False
        self.places = {}
        self._read_out = None

    def value(self, name) -> np.ndarray:
        """Value ``name`` as float32 (dequantized)."""
        if name not in self.int8:
            raise KeyError(f"value {name!r} is not complete at the break after {self.node!r}; have {sorted(self.int8)}")
        return (self.int8[name].astype(np.float64) * self.scales[name]).astype(np.float32)

    @property
    def tensors(self) -> dict:
        return {n: self.value(n) for n in self.int8}

    @property
    def tensor(self) -> np.ndarray:
        return self.value(self.outputs[0])

    @property
    def tensor_int8(self) -> np.ndarray:
        return self.int8[self.outputs[0]]

    def spad(self, name: str) -> np.ndarray:
        """Copy of scratchpad ``name`` ("act", "wgt" or "acc"; lines x columns) at the halt.
        Golden backend only: the RTL scratchpads have no host read port."""
        if name not in ("act", "wgt", "acc"):
            raise ValueError(f"name must be 'act', 'wgt' or 'acc', not {name!r}")
        machine = getattr(getattr(self.device, "_b", None), "m", None)
        if machine is None or self.resumed or self.device.backend_name != "golden":
            raise ValueError("spad: scratchpads are readable while halted on the golden backend only")
        return np.array(getattr(machine, name))

    def read(self, name) -> np.ndarray:
        """Re-read value ``name`` (int8) from the halted device's external memory."""
        if self.device is None or self.resumed or name not in self.places:
            raise ValueError(f"read: {name!r} is not in the halted device's memory")
        return self._read_out(self.device, self.places[name])


_CFGS: dict = {}


def _cfg_from_dict(d: dict) -> HwConfig:
    """``HwConfig.from_dict(d)``, made once per distinct dict (HwConfig is frozen; validating a
    config is a noticeable part of loading a program from the compile cache)."""
    try:
        k = tuple(d.items())
        got = _CFGS.get(k)
    except (TypeError, AttributeError):  # unhashable values: from_dict reports what is wrong
        return HwConfig.from_dict(d)
    if got is None:
        got = _CFGS[k] = HwConfig.from_dict(d)
    return got


class CompiledProgram:
    """A compiled model: ``run(inputs) -> outputs``, ``save(path)``, ``CompiledProgram.load(path)``."""

    def __init__(self, manifest: dict, programs: list, consts: dict, cfg: HwConfig | None = None):
        self.manifest = manifest
        self.programs = programs  # list of {"program": bytes, "segments": [(addr, bytes)]}
        self.consts = consts
        # cfg: the compiler passes the config it compiled for (equal to the manifest's)
        self.cfg = cfg if cfg is not None else _cfg_from_dict(manifest["cfg"])
        self.last_run = None
        self._devices = {}

    # -- properties ---------------------------------------------------------------------------
    @property
    def inputs(self) -> dict:
        return {d["name"]: tuple(d["shape"]) for d in self.manifest["inputs"]}

    @property
    def outputs(self) -> list:
        return list(self.manifest["outputs"])

    @property
    def scales(self) -> dict:
        return self.manifest["scales"]

    # -- persistence --------------------------------------------------------------------------
    def save(self, path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(self.manifest, indent=1))
            for k, p in enumerate(self.programs):
                z.writestr(f"program_{k}.bin", p["program"])
                buf = io.BytesIO()
                arrs = {}
                for j, (addr, data) in enumerate(p["segments"]):
                    arrs[f"addr_{j}"] = np.array(addr, np.int64)
                    arrs[f"data_{j}"] = np.frombuffer(bytes(data), np.uint8)
                np.savez(buf, **arrs)
                z.writestr(f"image_{k}.npz", buf.getvalue())
            buf = io.BytesIO()
            np.savez(buf, **self.consts)
            z.writestr("consts.npz", buf.getvalue())

    @classmethod
    def load(cls, path) -> "CompiledProgram":
        try:
            with zipfile.ZipFile(path) as z:
                manifest = json.loads(z.read("manifest.json"))
                if manifest.get("format") != FORMAT:
                    raise CompileError(f"{path}: not a {FORMAT} file (format {manifest.get('format')!r})")
                programs = []
                for k in range(manifest["n_programs"]):
                    img = np.load(io.BytesIO(z.read(f"image_{k}.npz")))
                    segs = [
                        (int(img[f"addr_{j}"]), img[f"data_{j}"].tobytes())
                        for j in range(len(img.files) // 2)
                    ]
                    programs.append({"program": z.read(f"program_{k}.bin"), "segments": segs})
                cz = np.load(io.BytesIO(z.read("consts.npz")))
                consts = {k: cz[k] for k in cz.files}
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise CompileError(f"{path}: not a readable .spw file ({type(e).__name__}: {e})") from None
        return cls(manifest, programs, consts)

    # -- running ------------------------------------------------------------------------------
    def _check_inputs(self, inputs: dict) -> dict:
        if not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict {{name: array}}, expected names {list(self.inputs)}")
        for k in inputs:
            if k not in self.inputs:
                raise InputError(f"input {k!r}: no such graph input; expected {list(self.inputs)}")
        out = {}
        for name, shape in self.inputs.items():
            if name not in inputs:
                raise InputError(f"input {name!r}: missing (expected float32 array of shape {list(shape)})")
            a = np.asarray(inputs[name])
            if a.dtype.kind != "f":
                raise InputError(f"input {name!r}: dtype {a.dtype}, expected float32")
            if tuple(a.shape) != shape:
                raise InputError(f"input {name!r}: shape {list(a.shape)}, expected {list(shape)}")
            out[name] = a.astype(np.float64)
        return out

    def _device(self, backend, device, debug=False):
        if device is not None:
            return device
        key = backend + ("-debug" if debug else "")
        dev = self._devices.get(key)  # one device per backend, reused (every byte read is written first)
        if dev is None:
            if debug and backend == "golden":  # breakpoints need the runtime Device API
                from ..runtime import Device

                dev = Device(self.cfg, backend="golden")
            else:
                dev = make_device(backend, self.cfg)
            self._devices[key] = dev
        return dev

    def node_step(self, node: str) -> int:
        """Index in ``manifest["steps"]`` of the step that runs graph node ``node``."""
        for k, st in enumerate(self.manifest["steps"]):
            if (st["kind"] == "acc" and node in st["nodes"]) or (st["kind"] == "host" and st["node"] == node):
                return k
        raise ValueError(f"break_at: {node!r} is not a node of this program; nodes: {self.nodes}")

    @property
    def nodes(self) -> list:
        """Graph nodes in execution order."""
        out = []
        for st in self.manifest["steps"]:
            out += st["nodes"] if st["kind"] == "acc" else [st["node"]]
        return out

    def node_outputs(self, node: str) -> list:
        """Value names produced by ``node`` (``manifest["node_outputs"]``; host steps list theirs)."""
        st = self.manifest["steps"][self.node_step(node)]
        if st["kind"] == "host":
            return [o for o in st["outputs"] if o]
        return list(self._node_outputs().get(node, []))

    def _node_outputs(self) -> dict:
        if "node_outputs" not in self.manifest:
            raise ValueError("this program records no node outputs (compiled by an older sparrow): recompile it")
        return self.manifest["node_outputs"]

    def _producer(self, value):
        """The graph node that produces ``value``."""
        cache = self.__dict__.get("_producers")
        if cache is None:
            cache = self._producers = {v: n for n, vs in self._node_outputs().items() for v in vs}
        return cache.get(value)

    def break_cut(self, node: str) -> tuple:
        """``(step index, cut)``: the program index at which every engine halts so that ``node``
        and every node before it in its program have completed (``len`` of the program's
        instructions up to HALT if the cut reaches the end). See :func:`sparrow.runtime.device.closed_cut`."""
        from ..runtime.device import closed_cut

        k = self.node_step(node)
        st = self.manifest["steps"][k]
        if st["kind"] == "host":
            return k, None
        upto = set(st["nodes"][: st["nodes"].index(node) + 1])
        tags = st["tags"]
        idx = [i for i, t in enumerate(tags) if t in upto]
        cut = max(idx) + 1 if idx else 0
        decoded = decode_image(self.programs[st["program"]]["program"], self.cfg)
        return k, closed_cut(decoded, cut, self.cfg.n_semaphores)

    def run(
        self,
        inputs: dict,
        backend: str = "golden",
        progress: bool = False,
        device=None,
        *,
        break_at: str | None = None,
        on_break=None,
        before_step=None,
        timeline=False,
    ) -> dict:
        """Run on ``backend`` ("golden" or "verilator"); returns ``{output name: float32 array}``.

        ``last_run`` afterwards holds ``int8`` (outputs), ``values`` (every int8 tensor the run
        produced or read, by value name), ``saved`` / ``saved_int8`` (the saved intermediates,
        ``compile(save=...)``, dequantized / int8), ``cycles``, ``counters`` and ``steps``.

        Debugging (see README "Debugging"):

        break_at : str, optional
            Graph node: the engines of its program halt at the cut after it (breakpoints, see
            :meth:`break_cut`), ``on_break(state)`` is called with a :class:`BreakState` (device,
            the node's tensor, every tensor complete at that point), then the run resumes to the
            end. ``last_run["break"]`` keeps the state. Its output must be in external memory
            (compile with ``save=[node]`` or ``"all"``) unless it is an output of the program.
        before_step : callable(device, step: dict), optional
            Called after an accelerator step's inputs and constants are written, before it runs
            (fault injection, inspection).
        timeline : bool
            Record each engine's activity (:class:`sparrow.timeline.Timeline`) in
            ``last_run["timeline"]``; golden: the concurrent model's events, verilator: sampled.
        """
        feeds = self._check_inputs(inputs)
        m = self.manifest
        scales = m["scales"]
        brk_step, cut = (None, None) if break_at is None else self.break_cut(break_at)
        if break_at is not None and timeline:
            raise ValueError("timeline: cannot be recorded in a run with break_at")
        if brk_step is not None and m["steps"][brk_step]["kind"] == "acc":
            missing = [v for v in self.node_outputs(break_at) if not _placed(m["steps"][brk_step], v)]
            if not self.node_outputs(break_at) or missing:
                raise ValueError(
                    f"break_at: the output of node {break_at!r} is not kept in external memory; "
                    f"compile with save=[{break_at!r}] (or save='all')"
                )
        ints, floats = {}, {}
        for name, a in feeds.items():
            ints[name] = quantize(a, scales[name])
        cycles, counters, per_step = 0, {}, []
        bar = _Bar(len(m["steps"]), "run", progress)
        tl = None
        if timeline:
            from ..timeline import Timeline

            tl = Timeline()
        brk = None

        def fval(name):
            if name in floats:
                return floats[name]
            if name in self.consts:
                return self.consts[name].astype(np.float64)
            return ints[name].astype(np.float64) * scales[name]

        def read_out(dev, d):
            n = int(np.prod(d["shape"]))
            raw = np.asarray(dev.read_dram(d["addr"], n), np.uint8).view(np.int8).reshape(d["shape"])
            return from_dram(raw, d["layout"], d["meta"]).reshape(m["shapes"][d["name"]])

        for k, st in enumerate(m["steps"]):
            if st["kind"] == "acc":
                p = self.programs[st["program"]]
                dev = self._device(backend, device, debug=k == brk_step)
                for addr, data in p["segments"]:
                    dev.write_dram(addr, data)
                for d in st["inputs"]:
                    a = to_dram(ints[d["name"]], d["layout"], d["meta"])
                    dev.write_dram(d["addr"], a.astype(np.int8))
                if before_step is not None:
                    before_step(dev, st)
                if k == brk_step:
                    brk = self._run_break(dev, st, break_at, cut, ints, scales, read_out, on_break)
                    c = brk.cycles + brk.resume_cycles
                    cnt = dict(dev.counters())
                elif tl is not None:
                    from ..timeline import trace_program

                    c, cnt, t = trace_program(dev, p["program"], st["program_addr"], st.get("tags"))
                    tl.append(t, offset=cycles, step=k)
                else:
                    c, cnt = _run_on(dev, p["program"], st["program_addr"])
                cycles += c
                for kk, v in cnt.items():
                    counters[kk] = counters.get(kk, 0) + int(v)
                per_step.append({"step": f"acc{st['program']}", "cycles": c})
                for d in st["outputs"]:
                    ints[d["name"]] = read_out(dev, d)
                bar.step(f"acc{st['program']}")
            else:
                ins = [fval(i) if i else None for i in st["inputs"]]
                outs = hostops.run(st["op"], st["attrs"], ins, m["opset"])
                for o, a in zip(st["outputs"], outs, strict=False):
                    if not o:
                        continue
                    ints[o] = quantize(a, scales[o])  # what a later accelerator step reads
                    if o in m["outputs"]:  # returned (and read by later host steps) unrounded
                        floats[o] = np.asarray(a, np.float64)
                per_step.append({"step": f"host {st['op']}", "cycles": 0})
                if k == brk_step:
                    brk = BreakState(
                        node=break_at, step=k, cut=None, device=None, pcs={}, cycles=0,
                        outputs=[o for o in st["outputs"] if o], int8=dict(ints), scales=scales,
                    )
                    if on_break is not None:
                        on_break(brk)
                bar.step(st["op"])
        result = {}
        for o in m["outputs"]:
            result[o] = (floats[o] if o in floats else ints[o].astype(np.float64) * scales[o]).astype(
                np.float32
            )
        debug_names = [d["name"] for st in m["steps"] if st["kind"] == "acc" for d in st["outputs"] if d.get("debug")]
        self.last_run = {
            "int8": {o: ints[o] for o in m["outputs"] if o not in floats},
            "values": dict(ints),
            "saved_int8": {n: ints[n] for n in debug_names},
            "saved": {n: (ints[n].astype(np.float64) * scales[n]).astype(np.float32) for n in debug_names},
            "cycles": cycles,
            "counters": counters,
            "steps": per_step,
        }
        if brk is not None:
            self.last_run["break"] = brk
        if tl is not None:
            self.last_run["timeline"] = tl
        return result

    def _run_break(self, dev, st, node, cut, ints, scales, read_out, on_break):
        if not hasattr(dev, "run_to"):
            raise ValueError("break_at: the device has no breakpoint API (use a sparrow.runtime.Device)")
        dev.load_program(self.programs[st["program"]]["program"], st["program_addr"])
        info = dev.run_to(cut)
        upto = set(st["nodes"][: st["nodes"].index(node) + 1])
        vals = dict(ints)
        for d in st["outputs"]:
            if self._producer(d["name"]) in upto:
                vals[d["name"]] = read_out(dev, d)
        brk = BreakState(
            node=node, step=self.manifest["steps"].index(st), cut=cut, device=dev, pcs=dev.pcs(),
            cycles=int(info.cycles), outputs=self.node_outputs(node), int8=vals, scales=scales,
            halted=info.halted, stop=info.stop,
        )
        brk.places = {d["name"]: d for d in st["inputs"] + st["outputs"]}
        brk._read_out = read_out
        if on_break is not None:
            on_break(brk)
        if info.stop == "breakpoint":
            dev.clear_breakpoints()
            r = dev.resume()
            brk.resume_cycles = int(r.cycles)
        brk.resumed = True
        return brk

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> str:
        m = self.manifest
        lines = [
            f"model {m['name']!r}, preset {self.cfg.name}, {m['n_programs']} accelerator program(s), "
            f"{sum(1 for s in m['steps'] if s['kind'] == 'host')} host step(s)",
            "inputs:  "
            + ", ".join(
                f"{d['name']} {d['shape']} float32 (scale {m['scales'][d['name']]:.4g})" for d in m["inputs"]
            ),
            "outputs: " + ", ".join(m["outputs"]),
            "",
            "partition:",
            m["partition_text"],
            "",
            "steps:",
        ]
        for s in m["steps"]:
            if s["kind"] == "acc":
                p = self.programs[s["program"]]
                lines.append(
                    f"  acc program {s['program']}: {len(p['program']) // 16} instructions, "
                    f"{sum(len(d) for _, d in p['segments'])} constant bytes, nodes {', '.join(s['nodes'])}"
                )
                lines += [f"    {t}" for t in _backend_report(s)]
            else:
                lines.append(f"  host {s['op']} ({s['node']})")
        if m.get("accuracy"):
            lines += ["", "int8 vs float on calibration batches: " + json.dumps(m["accuracy"])]
        return "\n".join(lines)


def _backend_report(step: dict) -> list:
    """One line per back-end report of an ``acc`` step (fusion, schedule, sync, memory, compression)."""
    out = []
    fu = step.get("fusion")
    if fu and fu.get("groups"):
        groups = "; ".join("+".join(g["nodes"]) for g in fu["groups"])
        out.append(f"fusion: {groups} ({fu.get('dram_bytes_saved', 0)} DRAM bytes saved)")
    sc = step.get("schedule")
    if sc and sc.get("enabled"):
        out.append(f"schedule: estimated {sc.get('est_cycles_before')} -> {sc.get('est_cycles')} cycles"
                   f"{'' if sc.get('reordered') else ' (program order kept)'}")
    sy = step.get("sync")
    if sy:
        out.append(f"sync edges: {sy.get('edges_before')} hazards -> {sy.get('edges_after')} semaphore waits")
    dr = step.get("dram")
    if dr:
        out.append(f"external memory: {dr.get('bytes')} bytes ({dr.get('bytes_without_reuse')} without reuse)")
    co = step.get("compression")
    if co:
        on = [k for k, v in co.items() if v.get("compressed")]
        out.append(f"compressed activations: {', '.join(on) if on else 'none'} of {len(co)} candidates")
    return out
