"""The bit-exact golden model of a Sparrow device.

:class:`Machine` holds the architectural state (external memory, the three scratchpads,
semaphores, delay slots) and runs programs in one of two modes (``docs/isa.md``):

``mode="program"``
    Instructions execute one after another in program order. Semaphore signals and consumes are
    applied (so ``SEM_OVERFLOW`` is detected) but waits are not enforced. In this mode a
    semaphore may go *below zero* when a consume precedes, in program order, the signals it
    would wait for in a concurrent execution; this keeps the net count (signals - consumes)
    equal to the concurrent mode's, so a signal overflows here exactly when the net count is at
    the maximum.
``mode="concurrent"``
    The event-driven model of fetch, queues, engines and semaphores in
    :mod:`sparrow.golden.concurrent`, with deadlock detection and a race checker.

Every instruction's effect is computed at once with NumPy (vectorised per instruction) when it
*starts*; its duration comes from :mod:`sparrow.golden.perf`.

Where ``docs/isa.md`` is silent the model decides as follows (the RTL must match):

* Start-time checks run in this order, the first failing one is reported: compressed-STORE slot
  rule (``ILLEGAL_FIELD``, also for ``rows == 1``), then ``SPAD_RANGE`` (MATMUL: ACT, WGT, ACC;
  REQUANT: ACC, ACT; pools: input, output; MASK: data, bitmap), then ``DRAM_RANGE``.
* Compressed LOAD works row by row in the padded region's row-major order: top padding, then for
  each data row its left padding, then the count bytes' range check, the count-overflow check
  (``CORRUPT_DATA``), the payload's range check (``DRAM_RANGE``), the line-by-line decode, the
  right padding. On a fault every line before it in that order has been written (including the
  faulting row's left padding and its decoded lines before the faulting line), nothing after.
* Uncompressed STORE rows whose external-memory ranges overlap (``dram_stride < row_lines*LB``)
  are written in row order, a later row overwriting an earlier one. REQUANT with
  ``dst_stride == 0`` writes every row to line ``dst``: the last row remains.
* VECTOR reads all its input lines before writing any output (identical in-place regions work;
  partially overlapping ones are outside the spec).
* Mask bits beyond ``cols`` in a compressed line's mask byte are ignored (as the codec does).
* Decode faults report engine ``None`` (fetch); ``WATCHDOG`` reports the blocked queue head with
  the lowest instruction index. ``SEM_OVERFLOW`` is charged to the signalling instruction.
* Counter ``instructions`` counts instructions executed by engines (NOP and DELAY included, HALT
  not). ``{engine}_wait``: cycles the engine is idle with a head instruction whose wait is unmet.
  ``{engine}_stall``: cycles fetch is blocked because that engine's queue is full.

Example::

    m = Machine(cfg)
    m.write_dram(0x1000, a.astype(np.int8))
    res = m.run(program)                 # DeviceError on a device fault
    out = m.read_dram(0x2000, 64)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import codec, isa
from ..config import HwConfig
from ..errors import CorruptDataError, DeviceError, ErrorCode, SparrowError
from ..isa import Engine, IsaError, MaskMode, Opcode, Spad, VectorOp
from . import numerics, perf

__all__ = ["Machine", "RunResult", "RaceError", "ENGINES"]

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("the golden model views int32 accumulators as little-endian bytes")

#: Engines in the fixed order the model visits them (also the priority order in concurrent mode).
ENGINES = (Engine.LOAD, Engine.MATMUL, Engine.VECTOR, Engine.STORE)

COUNTER_NAMES = ("cycles", "instructions", "macs", "macs_skipped", "load_bytes", "load_bytes_raw",
                 "store_bytes", "store_bytes_raw") + tuple(
    f"{e.name.lower()}_{k}" for e in ENGINES for k in ("busy", "wait", "stall"))


class RaceError(SparrowError):
    """Two accesses to the same location from different engines, at least one a write, that the
    semaphores do not order (concurrent mode's race checker).

    Attributes: ``first`` and ``second`` (``(index, engine)`` of the two instructions, ``first``
    the one that started earlier), ``space`` (``"ACT"``, ``"WGT"``, ``"ACC"`` or ``"DRAM"``),
    ``location`` (first conflicting line / byte address), ``first_write``, ``second_write``.
    """

    def __init__(self, first, second, space, location, first_write, second_write):
        self.first, self.second, self.space, self.location = first, second, space, location
        self.first_write, self.second_write = first_write, second_write
        unit = "byte" if space == "DRAM" else "line"

        def who(x, w):
            return f"instruction {x[0]} ({x[1].name}) {'writes' if w else 'reads'}"
        super().__init__(f"race on {space} {unit} {location:#x}: {who(first, first_write)}, "
                         f"{who(second, second_write)}; no semaphore orders them")


@dataclass
class RunResult:
    """Outcome of :meth:`Machine.run`.

    ``cycles`` is the estimate of :mod:`sparrow.golden.perf`; ``counters`` per ``docs/isa.md``;
    ``error`` is ``ErrorCode.NONE`` on success, else the code with ``error_index`` /
    ``error_engine`` (``None`` when not tied to one) and ``detail``; ``timeline`` lists
    ``(index, engine, start, end)`` per executed instruction (both modes; program mode's times
    are the sequential schedule).
    """
    cycles: int
    counters: dict
    error: ErrorCode = ErrorCode.NONE
    error_index: int | None = None
    error_engine: Engine | None = None
    detail: str = ""
    timeline: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE


class _Fault(Exception):
    """Internal: an instruction faulted (code, detail); the caller adds index and engine."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code, self.detail = code, detail


class _BadWord:
    """A program word that fails ``isa.decode``; faults when fetch reaches it."""
    __slots__ = ("code", "detail")

    def __init__(self, code, detail):
        self.code, self.detail = code, detail


@dataclass
class Exec:
    """Result of starting one instruction: its duration, counter increments and (when tracked)
    its accesses ``[(space, is_write, lo[], hi[])]`` as sorted disjoint half-open intervals."""
    duration: int
    counts: dict
    accesses: list


def _ceil_div(a, b):
    return -(-a // b)


def _intervals(starts, length):
    """Merge ``[s, s+length)`` for every ``s`` in ``starts`` (``length`` scalar or array) into
    sorted, disjoint, non-adjacent half-open intervals ``(lo, hi)`` (int64 arrays)."""
    if isinstance(starts, list) and len(starts) == 1 and isinstance(length, int):   # fast path
        lo = int(starts[0])
        return (np.array([lo], np.int64), np.array([lo + length], np.int64)) if length > 0 else \
            (np.zeros(0, np.int64), np.zeros(0, np.int64))
    s = np.asarray(starts, dtype=np.int64).reshape(-1)
    e = s + np.asarray(length, dtype=np.int64).reshape(-1)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size <= 1:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    run_end = np.maximum.accumulate(e)
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > run_end[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], s.size) - 1
    return s[first], run_end[last]


def _strided(first, stride, n, length):
    """Intervals of ``[first + i*stride, ... + length)`` for ``i < n`` (``stride >= 0``)."""
    if length <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n == 1 or stride <= length:
        return np.array([first], np.int64), np.array([first + (n - 1) * stride + length], np.int64)
    lo = first + stride * np.arange(n, dtype=np.int64)
    return lo, lo + length


def _runs(lines):
    """Intervals of a set of line indices."""
    u = np.unique(np.asarray(lines, dtype=np.int64).reshape(-1))
    return _intervals(u, 1)


_SPACE = {Spad.ACT: "ACT", Spad.WGT: "WGT", Spad.ACC: "ACC"}


def _isa_error_code(err: IsaError) -> ErrorCode:
    return ErrorCode.ILLEGAL_OPCODE if err.field in ("opcode", "vop") else ErrorCode.ILLEGAL_FIELD


class Machine:
    """Golden model of one Sparrow device with configuration ``cfg``.

    Parameters
    ----------
    cfg : HwConfig
        Hardware configuration.
    costs : perf.Costs, optional
        Cycle-model constants (default :data:`sparrow.golden.perf.DEFAULT_COSTS`).

    Attributes
    ----------
    dram : ndarray uint8 [cfg.dram_bytes]
    act, wgt : ndarray int8 [depth, cfg.cols]
    acc : ndarray int32 [cfg.acc_depth, cfg.cols]
    sems : list[int]
        Semaphores (reset to 0 at the start of every run).
    delays : list[int]
        Delay slots read by DELAY (host-set; persist across runs).
    """

    def __init__(self, cfg: HwConfig, costs: perf.Costs | None = None):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
        if costs is not None and not isinstance(costs, perf.Costs):
            raise ValueError(f"costs must be a sparrow.golden.perf.Costs, not {type(costs).__name__}")
        self.cfg = cfg
        self.costs = costs or perf.DEFAULT_COSTS
        self.dram = np.zeros(cfg.dram_bytes, dtype=np.uint8)
        self.act = np.zeros((cfg.act_depth, cfg.cols), dtype=np.int8)
        self.wgt = np.zeros((cfg.wgt_depth, cfg.cols), dtype=np.int8)
        self.acc = np.zeros((cfg.acc_depth, cfg.cols), dtype=np.int32)
        self.sems = [0] * cfg.n_semaphores
        self.delays = [0] * cfg.delay_slots
        self._depth = {sp: cfg.spad_depth(sp) for sp in Spad}
        self._line = {sp: cfg.spad_line_bytes(sp) for sp in Spad}

    # -- host access -----------------------------------------------------------------------
    def write_dram(self, addr: int, data) -> None:
        """Write raw bytes (``bytes``/``bytearray``/any NumPy array as its little-endian bytes)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            buf = np.frombuffer(bytes(data), dtype=np.uint8)
        else:
            arr = np.ascontiguousarray(np.asarray(data))
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            buf = arr.reshape(-1).view(np.uint8)
        addr = int(addr)
        if addr < 0 or addr + buf.size > self.cfg.dram_bytes:
            raise ValueError(f"addr: write of {buf.size} bytes at {addr:#x} leaves the "
                             f"{self.cfg.dram_bytes:#x}-byte external memory")
        self.dram[addr:addr + buf.size] = buf

    def read_dram(self, addr: int, n: int) -> np.ndarray:
        """Copy of ``n`` bytes at ``addr`` (uint8)."""
        addr, n = int(addr), int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if addr < 0 or addr + n > self.cfg.dram_bytes:
            raise ValueError(f"addr: read of {n} bytes at {addr:#x} leaves the "
                             f"{self.cfg.dram_bytes:#x}-byte external memory")
        return self.dram[addr:addr + n].copy()

    # -- running ---------------------------------------------------------------------------
    def decode_program(self, program) -> list:
        """Instructions (or :class:`_BadWord` markers) of ``program`` as fetch would see them."""
        cfg = self.cfg
        out = []
        if isinstance(program, (bytes, bytearray, memoryview)):
            data = bytes(program)
            if len(data) % isa.WORD_BYTES:
                raise ValueError(f"program: image of {len(data)} bytes is not a multiple of "
                                 f"{isa.WORD_BYTES}")
            for i in range(0, len(data), isa.WORD_BYTES):
                word = int.from_bytes(data[i:i + isa.WORD_BYTES], "little")
                try:
                    out.append(isa.decode(word, index=i // isa.WORD_BYTES, cfg=cfg))
                except IsaError as e:
                    out.append(_BadWord(_isa_error_code(e), str(e)))
            return out
        try:
            items = list(program)
        except TypeError:
            raise ValueError(f"program must be a Program, a list of Instructions or bytes, "
                             f"not {type(program).__name__}") from None
        for i, ins in enumerate(items):
            if not isinstance(ins, isa.Instruction):
                raise ValueError(f"program: item {i} is {type(ins).__name__}, not an Instruction")
            try:
                isa.check(ins, cfg=cfg, index=i)
            except IsaError as e:
                out.append(_BadWord(_isa_error_code(e), str(e)))
                continue
            out.append(ins)
        return out

    def run(self, program, mode: str = "program", raise_on_error: bool = True, max_cycles=None,
            check_races=None) -> RunResult:
        """Run ``program`` (a :class:`~sparrow.isa.Program`, list of Instructions or a bytes image).

        Parameters
        ----------
        mode : {"program", "concurrent"}
        raise_on_error : bool
            Raise :class:`~sparrow.errors.DeviceError` (with the :class:`RunResult` as ``.result``)
            on a device fault instead of only reporting it.
        max_cycles : int, optional
            Stop with ``ErrorCode.TIMEOUT`` when the cycle estimate exceeds this.
        check_races : bool, optional
            Concurrent mode's race checker (default on in concurrent mode; not available in
            program mode). Raises :class:`RaceError`.
        """
        if mode not in ("program", "concurrent"):
            raise ValueError(f"mode must be 'program' or 'concurrent', not {mode!r}")
        if max_cycles is not None and (not isinstance(max_cycles, (int, np.integer)) or max_cycles < 0):
            raise ValueError(f"max_cycles must be a non-negative int or None, not {max_cycles!r}")
        if len(self.delays) != self.cfg.delay_slots:
            raise ValueError(f"delays must have {self.cfg.delay_slots} entries, has {len(self.delays)}")
        decoded = self.decode_program(program)
        self.sems[:] = [0] * self.cfg.n_semaphores
        if mode == "program":
            if check_races:
                raise ValueError("check_races is only available in concurrent mode")
            res = self._run_program(decoded, max_cycles)
        else:
            from .concurrent import run_concurrent
            res = run_concurrent(self, decoded, max_cycles=max_cycles,
                                 check_races=True if check_races is None else bool(check_races))
        if raise_on_error and res.error != ErrorCode.NONE:
            err = DeviceError(res.error, res.error_engine, res.error_index, res.detail)
            err.result = res
            raise err
        return res

    def new_counters(self) -> dict:
        return dict.fromkeys(COUNTER_NAMES, 0)

    def _run_program(self, decoded, max_cycles) -> RunResult:
        cfg, costs = self.cfg, self.costs
        fetch = perf.fetch_cycles(cfg, costs)
        counters = self.new_counters()
        timeline = []
        now = 0
        sems = self.sems

        def finish(code=ErrorCode.NONE, index=None, engine=None, detail=""):
            counters["cycles"] = now
            return RunResult(now, counters, code, index, engine, detail, timeline)

        for i, ins in enumerate(decoded):
            if isinstance(ins, _BadWord):
                return finish(ins.code, i, None, ins.detail)
            now += fetch
            if ins.opcode == Opcode.HALT:
                break
            eng = isa.engine_of(ins)
            if ins.wait_count and ins.wait_consume:
                sems[ins.wait_sem] -= ins.wait_count
            try:
                ex = self.execute(ins, track=False)
            except _Fault as f:
                return finish(f.code, i, eng, f.detail)
            timeline.append((i, eng, now, now + ex.duration))
            now += ex.duration
            counters["instructions"] += 1
            counters[f"{eng.name.lower()}_busy"] += ex.duration
            for k, v in ex.counts.items():
                counters[k] += v
            if ins.signal_en:
                s = ins.signal_sem
                if sems[s] >= cfg.sem_max:
                    return finish(ErrorCode.SEM_OVERFLOW, i, eng,
                                  f"signal on semaphore {s} at its maximum {cfg.sem_max}")
                sems[s] += 1
            if max_cycles is not None and now > max_cycles:
                return finish(ErrorCode.TIMEOUT, i, eng, f"cycle limit {max_cycles} exceeded")
        return finish()

    # -- instruction execution -------------------------------------------------------------
    def _spad(self, spad):
        return {Spad.ACT: self.act, Spad.WGT: self.wgt, Spad.ACC: self.acc}[spad]

    def _spad_bytes(self, spad):
        """Byte view ``[depth, line_bytes]`` of a scratchpad (ACC: little-endian int32)."""
        return self._spad(spad).view(np.uint8)

    def _dram_rows(self, addr, rows, stride, row_bytes):
        """View ``[rows, row_bytes]`` of external memory rows ``stride`` bytes apart."""
        if stride >= row_bytes and addr + rows * stride <= self.cfg.dram_bytes:
            return self.dram[addr:addr + rows * stride].reshape(rows, stride)[:, :row_bytes]
        return as_strided(self.dram[addr:], shape=(rows, row_bytes), strides=(stride, 1))

    def _need_spad(self, spad, last, what):
        depth = self._depth[spad]
        if last >= depth:
            raise _Fault(ErrorCode.SPAD_RANGE,
                         f"{what} reaches {spad.name} line {last}, depth is {depth}")

    def _need_dram(self, last, what):
        if last >= self.cfg.dram_bytes:
            raise _Fault(ErrorCode.DRAM_RANGE,
                         f"{what} reaches byte {last:#x}, external memory is {self.cfg.dram_bytes:#x} bytes")

    def execute(self, ins, track=False) -> Exec:
        """Check and perform one instruction (no wait/signal); raises ``_Fault``."""
        op = ins.opcode
        if op == Opcode.LOAD:
            return self._load(ins, track)
        if op == Opcode.STORE:
            return self._store(ins, track)
        if op == Opcode.MATMUL:
            return self._matmul(ins, track)
        if op == Opcode.VECTOR:
            return self._vector(ins, track)
        if op == Opcode.NOP:
            return Exec(perf.nop_cycles(self.costs), {}, [])
        if op == Opcode.DELAY:
            return Exec(perf.delay_cycles(self.delays[ins.slot], self.costs), {}, [])
        raise AssertionError(f"no engine executes {ins.mnemonic}")  # HALT never reaches engines

    def _load(self, ins, track):
        cfg = self.cfg
        spad = ins.spad
        full = self._line[spad]
        lb = ins.line_bytes or full
        rows, rl = ins.rows, ins.row_lines
        pt, pb, pl, pr = ins.pad_top, ins.pad_bottom, ins.pad_left, ins.pad_right
        h, w = pt + rows + pb, pl + rl + pr
        total = h * w
        base = ins.spad_addr
        self._need_spad(spad, base + total - 1, "LOAD region")
        mem = self._spad_bytes(spad)
        addr, stride = ins.dram_addr, ins.dram_stride
        row_starts = addr + stride * np.arange(rows, dtype=np.int64)
        counts = {"load_bytes_raw": rows * rl * lb}
        if not ins.compressed:
            rb = rl * lb
            self._need_dram(addr + (rows - 1) * stride + rb - 1, "LOAD source")
            if lb == full and total == rows * rl and (stride == rb or rows == 1):   # plain copy
                mem[base:base + total] = self.dram[addr:addr + rows * rb].reshape(total, full)
            else:
                src = self._dram_rows(addr, rows, stride, rb).reshape(rows, rl, lb)
                region = np.zeros((h, w, full), dtype=np.uint8)
                region[pt:pt + rows, pl:pl + rl, :lb] = src
                mem[base:base + total] = region.reshape(total, full)
            counts["load_bytes"] = rows * rb
            dur = perf.dma_cycles_uniform(cfg, rows, rb, rl, total - rows * rl, self.costs)
            acc = []
            if track:
                acc = [(_SPACE[spad], True, *_intervals([base], total)),
                       ("DRAM", False, *_strided(addr, stride, rows, rb))]
            return Exec(dur, counts, acc)
        # compressed: row by row, each a zero-mask group in its slot
        cols = cfg.cols
        lines8 = self._spad(spad)                       # int8 [depth, cols]
        lines8[base:base + pt * w] = 0
        group_bytes = np.zeros(rows, dtype=np.int64)
        dram = self.dram
        for y in range(rows):
            row0 = base + (pt + y) * w
            slot = int(row_starts[y])
            lines8[row0:row0 + pl] = 0
            self._need_dram(slot + 1, f"LOAD row {y} count")
            n = int(dram[slot]) | (int(dram[slot + 1]) << 8)
            try:
                if n > codec.group_capacity(rl, cols):
                    codec.decompress_group(dram[slot:slot + 2].tobytes(), rl, cols)  # raises: count overflow
                self._need_dram(slot + 2 + n - 1, f"LOAD row {y} group of {n} bytes")
                data, used = codec.decompress_group(dram[slot:slot + 2 + n].tobytes(), rl, cols)
            except CorruptDataError as e:
                good = getattr(e, "line", 0) or 0
                if good:
                    lines8[row0 + pl:row0 + pl + good] = _decode_prefix(dram[slot:slot + 2 + n], good, cols)
                raise _Fault(ErrorCode.CORRUPT_DATA, f"LOAD row {y} (slot {slot:#x}): {e}") from None
            lines8[row0 + pl:row0 + pl + rl] = data
            lines8[row0 + pl + rl:row0 + w] = 0
            group_bytes[y] = used
        lines8[base + (pt + rows) * w:base + total] = 0
        counts["load_bytes"] = int(group_bytes.sum())
        dur = perf.dma_cycles(cfg, group_bytes, rl, total - rows * rl, self.costs)
        acc = []
        if track:
            acc = [(_SPACE[spad], True, *_intervals([base], total)),
                   ("DRAM", False, *_intervals(row_starts, group_bytes))]
        return Exec(dur, counts, acc)

    def _store(self, ins, track):
        cfg = self.cfg
        spad = ins.spad
        full = self._line[spad]
        lb = ins.line_bytes or full
        rows, rl = ins.rows, ins.row_lines
        s = ins.spad_stride or rl
        addr, stride = ins.dram_addr, ins.dram_stride
        cols = cfg.cols
        worst = codec.COUNT_BYTES + codec.group_capacity(rl, cols)
        if ins.compressed and stride < worst:
            raise _Fault(ErrorCode.ILLEGAL_FIELD,
                         f"field 'dram_stride': compressed STORE slot of {stride} bytes is smaller "
                         f"than the worst-case group of {worst} bytes")
        base = ins.spad_addr
        self._need_spad(spad, base + (rows - 1) * s + rl - 1, "STORE source")
        spad_rows = base + s * np.arange(rows, dtype=np.int64)
        row_starts = addr + stride * np.arange(rows, dtype=np.int64)
        counts = {"store_bytes_raw": rows * rl * lb}
        if not ins.compressed:
            rb = rl * lb
            self._need_dram(addr + (rows - 1) * stride + rb - 1, "STORE destination")
            mem = self._spad_bytes(spad)
            if s == rl or rows == 1:
                data = mem[base:base + rows * rl].reshape(rows, rl, full)
            else:
                data = mem[spad_rows[:, None] + np.arange(rl)]
            data = data[:, :, :lb].reshape(rows, rb)
            if stride == rb or rows == 1:                 # one contiguous range
                self.dram[addr:addr + rows * rb] = data.reshape(-1)
            elif stride > rb:
                self._dram_rows(addr, rows, stride, rb)[...] = data
            else:   # overlapping rows: later rows win, as the DMA writes them in order
                for y in range(rows):
                    a = addr + y * stride
                    self.dram[a:a + rb] = data[y]
            counts["store_bytes"] = rows * rb
            dur = perf.dma_cycles_uniform(cfg, rows, rb, rl, 0, self.costs, store=True)
            acc = []
            if track:
                acc = [(_SPACE[spad], False, *_strided(base, s, rows, rl)),
                       ("DRAM", True, *_strided(addr, stride, rows, rb))]
            return Exec(dur, counts, acc)
        self._need_dram(addr + (rows - 1) * stride + worst - 1, "compressed STORE destination")
        src = self._spad(spad)
        group_bytes = np.zeros(rows, dtype=np.int64)
        for y in range(rows):
            a = int(spad_rows[y])
            g = codec.compress_group(src[a:a + rl])
            d = int(row_starts[y])
            self.dram[d:d + len(g)] = np.frombuffer(g, dtype=np.uint8)
            group_bytes[y] = len(g)
        counts["store_bytes"] = int(group_bytes.sum())
        dur = perf.dma_cycles(cfg, group_bytes, rl, 0, self.costs, store=True)
        acc = []
        if track:
            acc = [(_SPACE[spad], False, *_strided(base, s, rows, rl)),
                   ("DRAM", True, *_intervals(row_starts, group_bytes))]
        return Exec(dur, counts, acc)

    def _matmul(self, ins, track):
        cfg = self.cfg
        cols = cfg.cols
        k = ins.k
        nl = _ceil_div(k, cols)
        mo, mi = ins.m_outer, ins.m_inner
        n_rows = mo * mi
        a0, w0, c0 = ins.a_addr, ins.w_addr, ins.acc_addr
        self._need_spad(Spad.ACT, a0 + (mo - 1) * ins.a_outer_stride + (mi - 1) * ins.a_stride + nl - 1,
                        "MATMUL activations")
        self._need_spad(Spad.WGT, w0 + k - 1, "MATMUL weights")
        self._need_spad(Spad.ACC, c0 + n_rows - 1, "MATMUL accumulators")
        starts = (a0 + np.arange(mo, dtype=np.int64)[:, None] * ins.a_outer_stride
                  + np.arange(mi, dtype=np.int64)[None, :] * ins.a_stride).reshape(-1)
        if ins.a_stride == nl and (mo == 1 or ins.a_outer_stride == mi * nl):   # rows back to back
            a_full = self.act[a0:a0 + n_rows * nl].reshape(n_rows, nl * cols)
        else:
            a_full = self.act[starts[:, None] + np.arange(nl)].reshape(n_rows, nl * cols)
        if nl * cols != k:
            a_full = a_full.copy()
            a_full[:, k:] = 0          # elements beyond k are ignored
        a = a_full[:, :k]
        w = self.wgt[w0:w0 + k]
        # float64 BLAS is exact here: every partial sum is an integer below 4095 * 2**14 < 2**53
        prod = (a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
        if ins.accumulate:
            prod += self.acc[c0:c0 + n_rows]
        self.acc[c0:c0 + n_rows] = numerics.wrap32(prod)
        nz_lines = np.count_nonzero(a_full.reshape(n_rows, nl, cols), axis=2)
        nz = int(nz_lines.sum())
        counts = {"macs": nz * cols, "macs_skipped": (n_rows * k - nz) * cols}
        dur = perf.matmul_cycles(cfg, perf.matmul_row_costs(nz_lines), self.costs)
        acc = []
        if track:
            a_reads = _strided(a0, ins.a_stride, mi, nl) if mo == 1 else _intervals(starts, nl)
            acc = [("ACT", False, *a_reads), ("WGT", False, *_intervals([w0], k)),
                   ("ACC", True, *_intervals([c0], n_rows))]
        return Exec(dur, counts, acc)

    def _vector(self, ins, track):
        vop = ins.kind.vop
        cfg = self.cfg
        act = self.act
        acc_list = []
        if vop == VectorOp.REQUANT:
            rows, src, dst, ds, par = ins.rows, ins.src, ins.dst, ins.dst_stride, ins.param
            self._need_spad(Spad.ACC, max(src + rows - 1, par + 2), "REQUANT accumulators/parameters")
            self._need_spad(Spad.ACT, dst + (rows - 1) * ds, "REQUANT destination")
            p = self.acc[par:par + 3]
            out = numerics.requant(self.acc[src:src + rows], p[0], p[1], p[2], ins.zp, ins.lo, ins.hi)
            if ds == 0:
                act[dst] = out[-1]
            else:
                act[dst:dst + (rows - 1) * ds + 1:ds] = out
            if track:
                acc_list = [("ACC", False, *_intervals([src, par], [rows, 3])),
                            ("ACT", True, *_strided(dst, ds, rows, 1))]
        elif vop == VectorOp.ADD:
            n, sa, sb, dst = ins.lines, ins.src_a, ins.src_b, ins.dst
            self._need_spad(Spad.ACT, max(sa, sb, dst) + n - 1, "ADD operands/destination")
            act[dst:dst + n] = numerics.vadd(act[sa:sa + n], act[sb:sb + n], ins.mult_a, ins.mult_b,
                                             ins.shift, bool(ins.relu))
            if track:
                acc_list = [("ACT", False, *_intervals([sa, sb], n)), ("ACT", True, *_intervals([dst], n))]
        elif vop in (VectorOp.MAXPOOL, VectorOp.AVGPOOL):
            lpp, rs, oh, ow = ins.lpp, ins.row_stride, ins.out_h, ins.out_w
            kh, kw, sh, sw = ins.kh, ins.kw, ins.stride_h, ins.stride_w
            src, dst = ins.src, ins.dst
            self._need_spad(Spad.ACT, src + ((oh - 1) * sh + kh - 1) * rs + ((ow - 1) * sw + kw - 1) * lpp
                            + lpp - 1, "pool input")
            self._need_spad(Spad.ACT, dst + oh * ow * lpp - 1, "pool output")
            iy = (np.arange(oh)[:, None] * sh + np.arange(kh)[None, :])          # [oh, kh]
            ix = (np.arange(ow)[:, None] * sw + np.arange(kw)[None, :])          # [ow, kw]
            idx = (src + iy[:, None, :, None, None] * rs + ix[None, :, None, :, None] * lpp
                   + np.arange(lpp)[None, None, None, None, :])                   # [oh, ow, kh, kw, lpp]
            win = act[idx]                                                        # [..., cols]
            if vop == VectorOp.MAXPOOL:
                out = win.max(axis=(2, 3))
            else:
                out = numerics.avgpool_scale(win.astype(np.int64).sum(axis=(2, 3)), ins.mult, ins.shift)
            act[dst:dst + oh * ow * lpp] = out.reshape(oh * ow * lpp, cfg.cols)
            if track:
                acc_list = [("ACT", False, *_runs(idx)), ("ACT", True, *_intervals([dst], oh * ow * lpp))]
        elif vop == VectorOp.MASK:
            rows, rl, src, dst = ins.rows, ins.row_lines, ins.src, ins.dst
            n = rows * rl
            self._need_spad(Spad.ACT, max(src, dst) + n - 1, "MASK source/destination")
            cols = cfg.cols
            r = np.arange(rows)[:, None, None]
            col = np.arange(rl)[None, :, None] * cols + np.arange(cols)[None, None, :]
            mode = ins.mode
            n_mask = 0
            if mode == MaskMode.CAUSAL:
                masked = col > r + ins.param
            elif mode == MaskMode.PADDING:
                masked = np.broadcast_to(col >= ins.param, (rows, rl, cols))
            else:
                ma = ins.mask_addr
                n_mask = (n - 1) // 8 + 1
                self._need_spad(Spad.ACT, ma + n_mask - 1, "MASK bitmap")
                bits = np.unpackbits(act[ma:ma + n_mask].view(np.uint8), axis=1, bitorder="little")
                masked = bits.reshape(n_mask * 8, cols)[:n].astype(bool).reshape(rows, rl, cols)
            data = act[src:src + n].reshape(rows, rl, cols)
            act[dst:dst + n] = np.where(masked, np.int8(ins.alt), data).reshape(n, cols)
            if track:
                reads = _intervals([src, ins.mask_addr], [n, n_mask])
                acc_list = [("ACT", False, *reads), ("ACT", True, *_intervals([dst], n))]
        else:  # pragma: no cover - decode rejects other vops
            raise AssertionError(vop)
        return Exec(perf.vector_cycles(perf.vector_lines_read(ins.mnemonic, ins.values), self.costs), {},
                    acc_list)


def _decode_prefix(group, n_lines, cols):
    """The first ``n_lines`` lines of a group whose later part is corrupt (those lines are written
    before the engine stops). Each line is re-framed as a one-line group and decoded by the codec."""
    group = np.asarray(group, dtype=np.uint8)
    mb = codec.mask_bytes(cols)
    out = np.zeros((n_lines, cols), dtype=np.int8)
    pos = codec.COUNT_BYTES
    for i in range(n_lines):
        k = int(np.unpackbits(group[pos:pos + mb], bitorder="little")[:cols].sum())
        one = (mb + k).to_bytes(codec.COUNT_BYTES, "little") + group[pos:pos + mb + k].tobytes()
        out[i], used = codec.decompress_group(one, 1, cols)
        pos += used - codec.COUNT_BYTES
    return out
