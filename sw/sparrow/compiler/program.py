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


class CompiledProgram:
    """A compiled model: ``run(inputs) -> outputs``, ``save(path)``, ``CompiledProgram.load(path)``."""

    def __init__(self, manifest: dict, programs: list, consts: dict):
        self.manifest = manifest
        self.programs = programs  # list of {"program": bytes, "segments": [(addr, bytes)]}
        self.consts = consts
        self.cfg = HwConfig.from_dict(manifest["cfg"])
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

    def run(self, inputs: dict, backend: str = "golden", progress: bool = False, device=None) -> dict:
        """Run on ``backend`` ("golden" or "verilator"); returns ``{output name: float32 array}``."""
        feeds = self._check_inputs(inputs)
        m = self.manifest
        scales = m["scales"]
        if device is not None:
            dev = device
        else:  # one device per backend, reused across runs (every byte read is written first)
            dev = self._devices.get(backend)
            if dev is None:
                dev = self._devices[backend] = make_device(backend, self.cfg)
        ints, floats = {}, {}
        for name, a in feeds.items():
            ints[name] = quantize(a, scales[name])
        cycles, counters, per_step = 0, {}, []
        bar = _Bar(len(m["steps"]), "run", progress)

        def fval(name):
            if name in floats:
                return floats[name]
            if name in self.consts:
                return self.consts[name].astype(np.float64)
            return ints[name].astype(np.float64) * scales[name]

        for st in m["steps"]:
            if st["kind"] == "acc":
                p = self.programs[st["program"]]
                for addr, data in p["segments"]:
                    dev.write_dram(addr, data)
                for d in st["inputs"]:
                    a = to_dram(ints[d["name"]], d["layout"], d["meta"])
                    dev.write_dram(d["addr"], a.astype(np.int8))
                c, cnt = _run_on(dev, p["program"], st["program_addr"])
                cycles += c
                for k, v in cnt.items():
                    counters[k] = counters.get(k, 0) + int(v)
                per_step.append({"step": f"acc{st['program']}", "cycles": c})
                for d in st["outputs"]:
                    n = int(np.prod(d["shape"]))
                    raw = np.asarray(dev.read_dram(d["addr"], n), np.uint8).view(np.int8).reshape(d["shape"])
                    ints[d["name"]] = from_dram(raw, d["layout"], d["meta"]).reshape(m["shapes"][d["name"]])
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
                bar.step(st["op"])
        result = {}
        for o in m["outputs"]:
            result[o] = (floats[o] if o in floats else ints[o].astype(np.float64) * scales[o]).astype(
                np.float32
            )
        self.last_run = {
            "int8": {o: ints[o] for o in m["outputs"] if o not in floats},
            "cycles": cycles,
            "counters": counters,
            "steps": per_step,
        }
        return result

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
            else:
                lines.append(f"  host {s['op']} ({s['node']})")
        if m.get("accuracy"):
            lines += ["", "int8 vs float on calibration batches: " + json.dumps(m["accuracy"])]
        return "\n".join(lines)
