"""Verilator backend of :class:`sparrow.runtime.Device`: the C++ harness (``sim/harness.cpp``)
through ctypes. The library is built once per preset by :mod:`sparrow.sim.verilator_build`."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from .. import regmap
from ..errors import DeviceError, ErrorCode
from .device import ENGINE_NAMES, RunInfo, error_from_status, warn_on_collision

__all__ = ["VerilatorBackend", "Harness", "STOP_DONE", "STOP_ERROR", "STOP_HALTED", "STOP_LIMIT"]

STOP_DONE, STOP_ERROR, STOP_HALTED, STOP_LIMIT = 0, 1, 2, 3
#: cycles after a CTRL start before STATUS reflects the new run (strobe, go, running)
START_CYCLES = regmap.START_CYCLES
_A = regmap.addr
_libs: dict[str, ctypes.CDLL] = {}


def _load(path: Path) -> ctypes.CDLL:
    key = str(path)
    if key in _libs:
        return _libs[key]
    lib = ctypes.CDLL(key)
    vp, u32, u64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64
    lib.sp_create.restype, lib.sp_create.argtypes = vp, [u64, u32]
    lib.sp_destroy.argtypes = [vp]
    lib.sp_mem_write.restype, lib.sp_mem_write.argtypes = ctypes.c_int, [vp, u64, ctypes.c_void_p, u64]
    lib.sp_mem_read.restype, lib.sp_mem_read.argtypes = ctypes.c_int, [vp, u64, ctypes.c_void_p, u64]
    lib.sp_csr_write.argtypes = [vp, u32, u32]
    lib.sp_csr_read.restype, lib.sp_csr_read.argtypes = u32, [vp, u32]
    lib.sp_step.argtypes = [vp, u64]
    lib.sp_run.restype, lib.sp_run.argtypes = ctypes.c_int, [vp, u32, u64, ctypes.POINTER(u64)]
    lib.sp_cycles.restype, lib.sp_cycles.argtypes = u64, [vp]
    lib.sp_bus_stats.argtypes = [vp, ctypes.POINTER(u64), ctypes.POINTER(u64), ctypes.POINTER(u64)]
    lib.sp_trace.restype, lib.sp_trace.argtypes = ctypes.c_int, [vp, ctypes.c_char_p, u64, u64]
    lib.sp_trace_close.argtypes = [vp]
    lib.sp_has_trace.restype = ctypes.c_int
    try:
        lib.sp_one_eval.restype = ctypes.c_int
    except AttributeError:  # a library built before sp_one_eval existed
        pass
    _libs[key] = lib
    return lib


class Harness:
    """Thin object wrapper of the C API (one simulated device).

    ``one_eval``: ``None`` (default) uses the standard build (one model evaluation per cycle when
    the design allows it, see ``sim/harness.cpp``); ``False`` forces the two-eval loop (a
    separate build, for cross-checks). ``trace=True`` builds always use the two-eval loop.
    """

    def __init__(self, cfg, *, read_latency: int = 2, trace: bool = False, mem_bytes: int | None = None,
                 one_eval: bool | None = None):
        from sparrow.sim.verilator_build import build_harness
        if not isinstance(read_latency, int) or read_latency < 1:
            raise ValueError(f"read_latency must be an int >= 1, not {read_latency!r}")
        self.cfg = cfg
        kw = {} if one_eval is None else {"one_eval": one_eval}
        self.lib = _load(build_harness(cfg, trace=trace, **kw))
        self.mem_bytes = cfg.dram_bytes if mem_bytes is None else int(mem_bytes)
        self._h = self.lib.sp_create(self.mem_bytes, read_latency)
        if not self._h:
            raise RuntimeError("sp_create failed")
        ident = self.csr_read("ID")
        if ident != regmap.MAGIC:
            raise RuntimeError(f"harness ID register reads {ident:#x}, expected {regmap.MAGIC:#x}")

    def csr_read(self, reg) -> int:
        return self.lib.sp_csr_read(self.h, reg if isinstance(reg, int) else _A(reg))

    def csr_write(self, reg, value: int) -> None:
        self.lib.sp_csr_write(self.h, reg if isinstance(reg, int) else _A(reg), int(value) & 0xFFFFFFFF)

    def read64(self, name) -> int:
        return self.csr_read(f"{name.upper()}_LO") | (self.csr_read(f"{name.upper()}_HI") << 32)

    def mem_write(self, addr, buf: bytes) -> None:
        if self.lib.sp_mem_write(self.h, addr, buf, len(buf)):
            raise ValueError(f"addr: write of {len(buf)} bytes at {addr:#x} leaves harness memory")

    def mem_read(self, addr, n) -> np.ndarray:
        out = np.zeros(n, np.uint8)
        if self.lib.sp_mem_read(self.h, addr, out.ctypes.data, n):
            raise ValueError(f"addr: read of {n} bytes at {addr:#x} leaves harness memory")
        return out

    def step(self, n: int) -> None:
        self.lib.sp_step(self.h, n)

    def run(self, max_cycles: int) -> tuple[int, int]:
        ran = ctypes.c_uint64()
        reason = self.lib.sp_run(self.h, _A("STATUS"), int(max_cycles), ctypes.byref(ran))
        return reason, ran.value

    @property
    def one_eval(self) -> bool:
        """Whether this library evaluates the model once per cycle (``sim/harness.cpp``)."""
        return bool(getattr(self.lib, "sp_one_eval", lambda: 0)())

    @property
    def cycles(self) -> int:
        return self.lib.sp_cycles(self.h)

    def trace(self, path, start=0, end=(1 << 64) - 1) -> None:
        if self.lib.sp_trace(self.h, str(path).encode(), start, end):
            raise RuntimeError("this harness build has no FST tracing (build with trace=True)")

    @property
    def h(self):
        """The C handle; using a closed harness is an error, not a NULL pointer into C."""
        if getattr(self, "_h", None) is None:
            raise RuntimeError("the Verilator harness is closed")
        return self._h

    def close(self) -> None:
        if getattr(self, "_h", None):
            self.lib.sp_trace_close(self._h)
            self.lib.sp_destroy(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class VerilatorBackend:
    def __init__(self, cfg, *, read_latency: int = 2, waves=None, wave_window=None, mem_bytes=None, one_eval=None):
        self.cfg = cfg
        self.hw = Harness(cfg, read_latency=read_latency, trace=waves is not None, mem_bytes=mem_bytes,
                          one_eval=one_eval)
        if waves is not None:
            start, end = wave_window or (0, (1 << 64) - 1)
            self.hw.trace(waves, start, end)

    def write_dram(self, addr, buf):
        self.hw.mem_write(addr, buf)

    def read_dram(self, addr, n):
        return self.hw.mem_read(addr, n)

    def set_program(self, base, length):
        self.hw.csr_write("PROG_BASE", base)
        self.hw.csr_write("PROG_LEN", length)

    def set_delay(self, slot, cycles):
        self.hw.csr_write(f"DELAY_{slot}", cycles)

    def set_watchdog(self, cycles):
        self.hw.csr_write("WATCHDOG", cycles)

    def set_breakpoint(self, e, index, halt_all):
        self.hw.csr_write(f"BP_INDEX_{ENGINE_NAMES[e].upper()}", index)
        self.hw.csr_write("BP_ENABLE", self.hw.csr_read("BP_ENABLE") | (1 << e))
        self.hw.csr_write("BP_HALT_ALL", int(halt_all))

    def clear_breakpoints(self):
        self.hw.csr_write("BP_ENABLE", 0)

    def start(self) -> int:
        """Write CTRL.start and clock through the start sequence; returns the cycle count before."""
        t0 = self.hw.cycles
        self.hw.csr_write("CTRL", 1)
        self.hw.step(START_CYCLES)
        return t0

    def abort_timeout(self, max_cycles, where: str = "") -> DeviceError:
        """Abort the run (the device is usable again) and return the ``TIMEOUT`` error to raise,
        naming the status and program counters at the limit."""
        st, pcs = self.status(), self.pcs()
        self.hw.csr_write("CTRL", 2)
        self.hw.step(START_CYCLES)
        return DeviceError(ErrorCode.TIMEOUT, None, None,
                           f"cycle limit {max_cycles} reached{where}; status {st}, pcs {pcs}")

    def _go(self, max_cycles, used=0):
        reason, ran = self.hw.run(max_cycles - used)
        ran += used
        st = self.status()
        if reason == STOP_ERROR:
            raise error_from_status(st, self.hw.csr_read("ERR_INDEX"))
        if reason == STOP_LIMIT:
            raise self.abort_timeout(max_cycles)
        warn_on_collision(st)
        if reason == STOP_HALTED:
            halted = tuple(n for i, n in enumerate(ENGINE_NAMES) if st["halted"] >> i & 1)
            return RunInfo("breakpoint", ran, halted, self.counters())
        return RunInfo("done", ran, (), self.counters())

    def run(self, max_cycles):
        self.start()
        return self._go(max_cycles, START_CYCLES)

    def resume(self, mask, max_cycles):
        self.hw.csr_write("RESUME", mask)
        return self._go(max_cycles)

    def step(self, e, max_cycles):
        self.hw.csr_write("STEP", 1 << e)
        return self._go(max_cycles)

    def counters(self):
        return {c: self.hw.read64(c) for c in regmap.COUNTERS}

    def status(self):
        return regmap.status_fields(self.hw.csr_read("STATUS"))

    def pcs(self):
        out = {n: self.hw.csr_read(f"PC_{n.upper()}") for n in ENGINE_NAMES}
        out["fetch"] = self.hw.csr_read("FETCH_PC")
        return out

    def close(self):
        self.hw.close()
