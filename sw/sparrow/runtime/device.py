"""``Device``: one driver API over the golden model, the Verilator harness and cocotb.

::

    from sparrow.runtime import Device
    dev = Device(preset("small"), backend="verilator")      # or "golden", "cocotb"
    dev.write_dram(0x1000, a)
    dev.load_program(program, 0x8000)
    info = dev.run(max_cycles=1_000_000)                     # DeviceError on a fault / timeout
    y = dev.read_dram(0x2000, 64)
    dev.counters()["macs"]

Breakpoints: ``dev.set_breakpoint(engine, index, halt_all=False)`` then ``run()`` returns with
``info.stop == "breakpoint"``; ``dev.pcs()``, ``dev.read_dram`` inspect the state; ``dev.resume()``
(or ``dev.step(engine)``) continues. ``dev.run_to(cut)`` runs until every instruction before
program index ``cut`` has completed and none at or after it has issued (one breakpoint per
engine at its first instruction at or after ``cut``; the cut must be dependency-closed, see
:func:`closed_cut`), then ``clear_breakpoints()`` + ``resume()`` finish the program.
Errors raise :class:`sparrow.errors.DeviceError` naming the code, the engine
(``sparrow.isa.Engine`` or ``None`` for fetch/decode/watchdog-less faults) and the instruction
index; a cycle limit raises ``DeviceError(ErrorCode.TIMEOUT)`` (and aborts the
run on RTL backends, so the device is usable again).

Backends
--------
``golden``
    :class:`sparrow.golden.Machine`. ``run`` uses the concurrent model (cycle estimate, deadlock
    -> ``WATCHDOG``). With breakpoints set it runs in *program order*: instructions before the
    first enabled breakpoint (the smallest ``index`` whose instruction belongs to that engine)
    execute, then it stops; ``resume`` runs the rest (program order, semaphores restart from 0,
    so ``SEM_OVERFLOW`` is only checked within a segment); ``step`` executes the engine's next
    instruction and everything before it in program order. The watchdog CSR has no effect.
``verilator``
    The fast C++ harness (:mod:`sparrow.runtime.verilator`).
``cocotb``
    Records the calls and replays them in a cocotb test on Verilator
    (:mod:`sparrow.runtime.cocotb`); every read replays the whole script in a new simulation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import isa, regmap
from ..config import HwConfig
from ..errors import CollisionWarning, DeviceError, ErrorCode

__all__ = ["Device", "RunInfo", "BACKENDS", "ENGINE_NAMES", "as_bytes", "closed_cut", "CutError"]

BACKENDS = ("golden", "verilator", "cocotb")
ENGINE_NAMES = regmap.ENGINES  # load, matmul, vector, store (= sparrow.isa.Engine values)
DEFAULT_MAX_CYCLES = 50_000_000


@dataclass
class RunInfo:
    """How a ``run``/``resume``/``step`` call ended: ``stop`` is ``"done"`` or ``"breakpoint"``,
    ``cycles`` the cycles that call simulated (golden: the model's estimate), ``halted`` the
    halted engines' names."""
    stop: str
    cycles: int
    halted: tuple = ()
    counters: dict = field(default_factory=dict)


def as_bytes(data) -> bytes:
    """Raw little-endian bytes of ``data`` (bytes-like, Program or NumPy array)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, isa.Program):
        return bytes(data)
    arr = np.ascontiguousarray(np.asarray(data))
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.reshape(-1).view(np.uint8).tobytes()


def engine_index(engine) -> int:
    """``engine`` as 0..3 from an ``isa.Engine``, its name or an int."""
    if isinstance(engine, str):
        name = engine.lower()
        if name not in ENGINE_NAMES:
            raise ValueError(f"engine must be one of {ENGINE_NAMES}, not {engine!r}")
        return ENGINE_NAMES.index(name)
    v = getattr(engine, "value", engine)
    if not isinstance(v, (int, np.integer)) or not 0 <= int(v) < 4:
        raise ValueError(f"engine must be an isa.Engine, a name or 0..3, not {engine!r}")
    return int(v)


def engine_mask(engines) -> int:
    if engines is None:
        return 0xF
    if isinstance(engines, (str, int, isa.Engine)):
        engines = [engines]
    m = 0
    for e in engines:
        m |= 1 << engine_index(e)
    return m


class CutError(ValueError):
    """A program cut that cannot be reached by halting the engines (see :func:`closed_cut`)."""


def _headers(decoded):
    """Per instruction: (engine 0..3 or -1 for HALT, wait_sem, wait_count, wait_consume, signal_sem,
    signal_en); ``None`` for an undecodable word."""
    out = []
    for ins in decoded:
        if not isinstance(ins, isa.Instruction):
            out.append(None)
            continue
        e = isa.engine_of(ins)
        out.append((-1 if e is None else e.value, ins.wait_sem, ins.wait_count, ins.wait_consume,
                    ins.signal_sem, ins.signal_en))
    return out


def _halt_index(hdr) -> int:
    for i, h in enumerate(hdr):
        if h is not None and h[0] < 0:
            return i
    return len(hdr)


def _prefix_blocked(hdr, cut: int, n_sem: int):
    """``None`` if instructions ``[0, cut)`` complete on their own (each engine runs its part in
    order, a wait satisfied only by signals of that prefix), else ``(index, sem)`` of the first
    blocked instruction."""
    from collections import deque

    queues = [deque() for _ in range(4)]
    for i in range(cut):
        h = hdr[i]
        if h is None:
            raise CutError(f"cut: instruction {i} before the cut does not decode")
        if h[0] >= 0:
            queues[h[0]].append(i)
    sems = [0] * n_sem
    moved = True
    while moved:
        moved = False
        for q in queues:
            while q:
                _, ws, wc, wcons, ss, sen = hdr[q[0]]
                if wc and sems[ws] < wc:
                    break
                if wc and wcons:
                    sems[ws] -= wc
                if sen:
                    sems[ss] += 1
                q.popleft()
                moved = True
    blocked = [q[0] for q in queues if q]
    if not blocked:
        return None
    i = min(blocked)
    return i, hdr[i][1]


def closed_cut(decoded, cut: int, n_semaphores: int) -> int:
    """The smallest cut ``>= cut`` whose prefix completes without any instruction after it.

    Halting every engine at its first instruction at or after ``cut`` only stops at a consistent
    state if no instruction before the cut waits on a signal of one after it (the compiler's
    scheduler may interleave nodes). Returns the program's HALT index when no earlier cut works.
    """
    hdr = _headers(decoded)
    end = _halt_index(hdr)
    if not isinstance(cut, (int, np.integer)) or cut < 0:
        raise ValueError(f"cut must be a non-negative int, not {cut!r}")
    c = min(int(cut), end)
    while c < end and _prefix_blocked(hdr, c, n_semaphores) is not None:
        c += 1
    return c


class Device:
    """A Sparrow device on one of :data:`BACKENDS`.

    Parameters
    ----------
    cfg : HwConfig
    backend : {"golden", "verilator", "cocotb"}
    **options
        Backend options: verilator ``read_latency`` (cycles, default 2), ``waves`` (FST path;
        builds the ``--trace-fst`` variant), ``wave_window`` (``(start, end)`` harness
        cycles, default everything) and ``mem_bytes`` (memory-model size, default
        ``cfg.dram_bytes``; accesses beyond it answer ``err``); cocotb ``work_dir``.
    """

    def __init__(self, cfg: HwConfig, backend: str = "golden", **options):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.cfg, self.backend_name = cfg, backend
        if backend == "golden":
            from .golden import GoldenBackend
            self._b = GoldenBackend(cfg, **options)
        elif backend == "verilator":
            from .verilator import VerilatorBackend
            self._b = VerilatorBackend(cfg, **options)
        else:
            from .cocotb import CocotbBackend
            self._b = CocotbBackend(cfg, **options)
        self.prog_base = 0
        self.prog_len = 0

    # -- memory ----------------------------------------------------------------------------------
    def _check_range(self, addr, n, what):
        if not isinstance(addr, (int, np.integer)) or addr < 0 or addr + n > self.cfg.dram_bytes:
            raise ValueError(f"addr: {what} of {n} bytes at {addr!r} leaves the "
                             f"{self.cfg.dram_bytes:#x}-byte external memory")

    def write_dram(self, addr: int, data) -> None:
        buf = as_bytes(data)
        self._check_range(addr, len(buf), "write")
        self._b.write_dram(int(addr), buf)

    def read_dram(self, addr: int, n: int) -> np.ndarray:
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, not {n!r}")
        self._check_range(addr, n, "read")
        return self._b.read_dram(int(addr), int(n))

    def load_program(self, program, addr: int) -> int:
        """Write ``program`` (``isa.Program``, list of Instructions or bytes) at ``addr`` and
        make it the program ``run`` starts; returns its length in instructions."""
        if isinstance(program, (list, tuple)):
            program = isa.Program(program)
        buf = as_bytes(program)
        if len(buf) % isa.WORD_BYTES:
            raise ValueError(f"program: {len(buf)} bytes is not a multiple of {isa.WORD_BYTES}")
        align = max(isa.WORD_BYTES, self.cfg.mem_bytes)
        if not isinstance(addr, (int, np.integer)) or addr % align:
            raise ValueError(f"addr: program address {addr!r} must be a multiple of {align}")
        self.write_dram(addr, buf)
        self.prog_base, self.prog_len = int(addr), len(buf) // isa.WORD_BYTES
        self._b.set_program(self.prog_base, self.prog_len)
        return self.prog_len

    # -- control ---------------------------------------------------------------------------------
    def set_delay(self, slot: int, cycles: int) -> None:
        if not isinstance(slot, int) or not 0 <= slot < self.cfg.delay_slots:
            raise ValueError(f"slot must be in 0..{self.cfg.delay_slots - 1}, not {slot!r}")
        if not isinstance(cycles, int) or not 0 <= cycles < 1 << 32:
            raise ValueError(f"cycles must be a 32-bit unsigned int, not {cycles!r}")
        self._b.set_delay(slot, cycles)

    def set_watchdog(self, cycles: int) -> None:
        """Deadlock watchdog period in cycles (0: off). RTL backends only; golden ignores it."""
        if not isinstance(cycles, int) or not 0 <= cycles < 1 << 32:
            raise ValueError(f"cycles must be a 32-bit unsigned int, not {cycles!r}")
        self._b.set_watchdog(cycles)

    def set_breakpoint(self, engine, index: int, *, halt_all: bool = False) -> None:
        """Stop ``engine`` before it issues instruction ``index``; ``halt_all`` stops every
        engine when any breakpoint is hit."""
        e = engine_index(engine)
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative int, not {index!r}")
        self._b.set_breakpoint(e, index, bool(halt_all))

    def clear_breakpoints(self) -> None:
        self._b.clear_breakpoints()

    def run(self, max_cycles: int = DEFAULT_MAX_CYCLES) -> RunInfo:
        """Start the loaded program; returns at done or a breakpoint; raises DeviceError."""
        if self.prog_len == 0:
            raise ValueError("no program: call load_program first")
        self._check_cycles(max_cycles)
        return self._b.run(max_cycles)

    def resume(self, engines=None, max_cycles: int = DEFAULT_MAX_CYCLES) -> RunInfo:
        """Release halted ``engines`` (default all) past their breakpoint and continue."""
        self._check_cycles(max_cycles)
        return self._b.resume(engine_mask(engines), max_cycles)

    def decoded_program(self) -> list:
        """The loaded program's instructions (an undecodable word becomes ``None``)."""
        if self.prog_len == 0:
            raise ValueError("no program: call load_program first")
        return isa.decode_image(bytes(self.read_dram(self.prog_base, self.prog_len * isa.WORD_BYTES)), self.cfg)

    def run_to(self, cut: int, max_cycles: int = DEFAULT_MAX_CYCLES) -> RunInfo:
        """Start the loaded program and stop once instructions ``[0, cut)`` have completed and
        nothing at or after ``cut`` has issued: a breakpoint on each engine at its first
        instruction at or after ``cut``. Returns ``RunInfo("breakpoint", ...)`` (``halted``: the
        engines holding a breakpoint), or ``"done"`` when ``cut`` is at or past the HALT. Then
        ``clear_breakpoints()`` and ``resume()`` run the rest.

        Raises :class:`CutError` when the prefix cannot complete on its own (an instruction
        before ``cut`` waits on a signal from one after it; :func:`closed_cut` finds a cut that
        works), :class:`~sparrow.errors.DeviceError` on a fault or the cycle limit.
        """
        self._check_cycles(max_cycles)
        decoded = self.decoded_program()
        hdr = _headers(decoded)
        end = _halt_index(hdr)
        if not isinstance(cut, (int, np.integer)) or cut < 0:
            raise ValueError(f"cut must be a non-negative int, not {cut!r}")
        if cut >= end:
            self.clear_breakpoints()
            return self.run(max_cycles)
        blocked = _prefix_blocked(hdr, int(cut), self.cfg.n_semaphores)
        if blocked is not None:
            raise CutError(f"cut: instruction {blocked[0]} (before the cut at {cut}) waits on semaphore "
                           f"{blocked[1]}, which only an instruction at or after the cut signals; "
                           f"use closed_cut() for a reachable cut")
        bps, last = {}, [-1] * 4
        for i in range(end):
            e = hdr[i][0]
            if e < 0:
                continue
            if i < cut:
                last[e] = i
            elif e not in bps:
                bps[e] = i
        self.clear_breakpoints()
        for e, i in bps.items():
            self.set_breakpoint(e, i, halt_all=False)
        if hasattr(self._b, "run_to"):
            return self._b.run_to(int(cut), bps, max_cycles)
        if self.backend_name != "verilator":
            raise ValueError(f"run_to: not available on the {self.backend_name} backend")
        return self._rtl_run_to(bps, last, max_cycles)

    def _rtl_run_to(self, bps, last, max_cycles, chunk: int = 64) -> RunInfo:
        """Harness backend: start, then poll PCs and busy counters until every engine has issued
        its part of the prefix and none was busy over a whole polling chunk."""
        b = self._b
        hw = b.hw
        t0 = b.start()
        prev = None
        while True:
            st = b.status()
            if st["error"]:
                raise error_from_status(st, hw.csr_read("ERR_INDEX"))
            if st["done"] and not st["busy"]:
                warn_on_collision(st)
                return RunInfo("done", hw.cycles - t0, (), b.counters())
            pcs = [hw.csr_read(f"PC_{n.upper()}") for n in ENGINE_NAMES]
            busy = [hw.csr_read(f"{n.upper()}_BUSY_LO") for n in ENGINE_NAMES]
            if busy == prev and all(pcs[e] > last[e] for e in range(4)):
                halted = tuple(ENGINE_NAMES[e] for e in sorted(bps))
                warn_on_collision(st)
                return RunInfo("breakpoint", hw.cycles - t0, halted, b.counters())
            prev = busy
            if hw.cycles - t0 > max_cycles:
                raise b.abort_timeout(max_cycles, " before the cut")
            hw.step(chunk)

    def step(self, engine, max_cycles: int = DEFAULT_MAX_CYCLES) -> RunInfo:
        """Let ``engine`` issue one instruction, then halt it again."""
        self._check_cycles(max_cycles)
        return self._b.step(engine_index(engine), max_cycles)

    @staticmethod
    def _check_cycles(max_cycles):
        if not isinstance(max_cycles, (int, np.integer)) or max_cycles < 1:
            raise ValueError(f"max_cycles must be a positive int, not {max_cycles!r}")

    # -- state -----------------------------------------------------------------------------------
    def counters(self) -> dict:
        """Performance counters (names of ``sparrow.regmap.COUNTERS``) of the last run."""
        return self._b.counters()

    def status(self) -> dict:
        """STATUS fields (``sparrow.regmap.STATUS_FIELDS``)."""
        return self._b.status()

    def pcs(self) -> dict:
        """Next instruction index of each engine (``load``...``store``) and ``fetch``."""
        return self._b.pcs()

    def close(self) -> None:
        self._b.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def warn_on_collision(st: dict) -> None:
    """Warn (:class:`~sparrow.errors.CollisionWarning`) when STATUS says the run read and wrote one
    scratchpad line in one cycle: simulation's result is then not what FPGA block RAM gives."""
    if st.get("collision"):
        warnings.warn(CollisionWarning(
            "a scratchpad line was read and written in the same cycle (STATUS.collision): two engines "
            "touched it without a semaphore between them; FPGA block RAM returns undefined data then, "
            "so results on an FPGA may differ from this simulation"), stacklevel=3)


def error_from_status(st: dict, err_index: int, detail: str = "") -> DeviceError:
    """DeviceError from STATUS fields and ERR_INDEX (engine 4 = fetch/decode, 7 = none)."""
    code = ErrorCode(st["error"])
    eng = st["error_engine"]
    engine = isa.Engine(eng) if eng < 4 else None
    index = err_index if (eng != 7 or code == ErrorCode.WATCHDOG) else None
    if eng == 4 and not detail:
        detail = "fault at fetch/decode"
    return DeviceError(code, engine, index, detail)
