"""Program builder: DRAM tensors, scratchpad allocation and automatic semaphore synchronisation.

Kernels never write semaphore fields themselves. They :meth:`ProgramBuilder.emit` plain
instructions; the builder computes each instruction's *footprint* (the scratchpad lines and
external-memory bytes it reads and writes, as bounding intervals) and, for every hazard with an
earlier instruction on *another* engine (read-after-write, write-after-read, write-after-write),
makes the later instruction wait for the earlier one's completion. Instructions on the same
engine are ordered already (each engine runs its queue in order, one at a time).

Synchronisation scheme
----------------------
One semaphore per ordered engine pair ``(producer P, consumer C)`` that is actually used (at most
12). A dependency of instruction ``i`` (on ``C``) on ``j`` (on ``P``) makes ``j`` signal the
``(P, C)`` semaphore and ``i`` wait for count 1 on it with consume. Vector clocks (per engine:
the last instruction known complete) drop dependencies already implied by earlier ones, so every
``(P, C)`` signal is consumed by exactly one wait, in order, and counts never accumulate. Extra
waits or signals of one instruction become NOPs on its engine right before/after it. Double
buffering is then only a matter of scratchpad placement (:class:`Ring`): a LOAD into a buffer
waits (a *credit*) for the MATMUL/STORE that last read it, the consumer waits for the LOAD.

Every dependency points backwards in program order, so the program cannot deadlock for any
``queue_depth`` (the earliest unfinished instruction is always dispatched, at the head of its
queue and released), and each wait matches exactly the signal of the instruction it needs, so
it is race-free by construction; the golden model's concurrent mode checks both.

DRAM tensors
------------
:class:`Tensor` is a row-major (C order) array at a byte address: ``int8`` activations (NHWC
for images, ``[M, K]`` for matrices) and ``int32`` little-endian raw accumulators. Channels are
*not* padded in DRAM; padding to ``cols`` happens in the scratchpad (see ``layout``). Every
allocation is followed by ``slack`` spare bytes (``cfg.cols * 4``) because a LOAD of a partial
last line may read (never use) bytes past the end of a tensor.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..config import HwConfig
from ..isa import KINDS, Engine, Instruction, Opcode, Program, Spad, engine_of, make

__all__ = ["ProgramBuilder", "Tensor", "Ring", "ENGINES", "footprint"]

ENGINES = (Engine.LOAD, Engine.MATMUL, Engine.VECTOR, Engine.STORE)
_E = {e: i for i, e in enumerate(ENGINES)}
_HEADER = ("wait_sem", "wait_count", "wait_consume", "signal_sem", "signal_en")
_HEADER_SET = frozenset(_HEADER)
_DTYPES = {"int8": np.int8, "int32": np.int32, "uint8": np.uint8}


def _cdiv(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class Tensor:
    """A dense row-major array in external memory.

    Attributes: ``addr`` (byte address), ``shape`` (tuple), ``dtype`` (``"int8"``/``"int32"``),
    ``name``.
    """
    addr: int
    shape: tuple
    dtype: str = "int8"
    name: str = ""
    #: 0: dense. > 0: zero-mask compressed int8 activation: every scratchpad line of every
    #: pixel/row (``ceil(C/cols)`` lines of the last axis) is one group in its own slot of
    #: ``slot`` bytes, slot ``row*ceil(C/cols) + line`` (:mod:`sparrow.codec`).
    slot: int = 0
    #: lines per row of a compressed tensor (``ceil(C/cols)``); 0 when dense
    lpp: int = 0

    @property
    def dram_nbytes(self) -> int:
        """Bytes the tensor occupies in external memory (dense or slotted)."""
        if not self.slot:
            return self.nbytes
        return self.size // self.shape[-1] * self.lpp * self.slot

    @property
    def itemsize(self) -> int:
        return np.dtype(_DTYPES[self.dtype]).itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def strides(self) -> tuple:
        """Byte strides of each dimension (row-major)."""
        out, s = [], self.itemsize
        for d in reversed(self.shape):
            out.append(s)
            s *= d
        return tuple(reversed(out))

    def reshape(self, *shape) -> "Tensor":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"shape: cannot view {self.shape} as {shape}")
        if self.slot and tuple(shape)[-1] != self.shape[-1]:
            raise ValueError(f"shape: a compressed tensor keeps its last axis ({self.shape} -> {shape})")
        return Tensor(self.addr, tuple(int(d) for d in shape), self.dtype, self.name, self.slot, self.lpp)

    def read(self, machine) -> np.ndarray:
        """The tensor's contents from a device with ``read_dram`` (golden model / driver)."""
        if self.slot:
            raise ValueError(f"tensor {self.name!r}: compressed in external memory, not readable as an array")
        raw = machine.read_dram(self.addr, self.nbytes)
        return np.asarray(raw, dtype=np.uint8).view(_DTYPES[self.dtype]).reshape(self.shape).copy()

    def write(self, machine, data) -> None:
        arr = np.asarray(data)
        if arr.shape != tuple(self.shape):
            raise ValueError(f"data: shape {arr.shape} != tensor {self.name or ''} shape {self.shape}")
        machine.write_dram(self.addr, arr.astype(_DTYPES[self.dtype]))


class Ring:
    """``n`` equal scratchpad buffers used round-robin (double buffering with ``n = 2``).

    ``next()`` returns the first line of the next buffer; the builder's hazard tracking makes
    a producer wait until every earlier user of that buffer has finished with it.
    """

    def __init__(self, base: int, lines: int, n: int):
        self.base, self.lines, self.n, self._i = base, lines, n, 0

    def next(self) -> int:
        addr = self.base + (self._i % self.n) * self.lines
        self._i += 1
        return addr

    def slot(self, i: int) -> int:
        return self.base + (i % self.n) * self.lines


class _Record:
    __slots__ = ("mnemonic", "fields", "engine", "id", "waits", "signals", "vc", "acc", "tag")

    def __init__(self, mnemonic, fields, engine, id_, acc, tag=None):
        self.mnemonic, self.fields, self.engine, self.id, self.acc = mnemonic, fields, engine, id_, acc
        self.tag = tag
        self.waits = []       # producer record ids
        self.signals = []     # consumer engines
        self.vc = None


def footprint(ins, cfg: HwConfig) -> list:
    """Bounding intervals ``(space, write, lo, hi)`` (inclusive) of what ``ins`` accesses.

    ``space`` is ``"ACT"``, ``"WGT"``, ``"ACC"`` or ``"DRAM"`` (bytes). Conservative: strided
    accesses are covered by one interval.
    """
    m, v = ins.mnemonic, ins.values
    cols = cfg.cols
    out = []
    if m in ("load", "store"):
        spad = v["spad"].name
        lb = v["line_bytes"] or cfg.spad_line_bytes(v["spad"])
        rows, rl = v["rows"], v["row_lines"]
        if v["compressed"]:
            dram_hi = v["dram_addr"] + (rows - 1) * v["dram_stride"] + 2 + rl * (cfg.mask_bytes + cols) - 1
        else:
            dram_hi = v["dram_addr"] + (rows - 1) * v["dram_stride"] + rl * lb - 1
        if m == "load":
            total = (v["pad_top"] + rows + v["pad_bottom"]) * (v["pad_left"] + rl + v["pad_right"])
            out.append((spad, True, v["spad_addr"], v["spad_addr"] + total - 1))
            out.append(("DRAM", False, v["dram_addr"], dram_hi))
        else:
            s = v["spad_stride"] or rl
            out.append((spad, False, v["spad_addr"], v["spad_addr"] + (rows - 1) * s + rl - 1))
            out.append(("DRAM", True, v["dram_addr"], dram_hi))
    elif m == "matmul":
        a_hi = (v["a_addr"] + (v["m_outer"] - 1) * v["a_outer_stride"] + (v["m_inner"] - 1) * v["a_stride"]
                + _cdiv(v["k"], cols) - 1)
        out.append(("ACT", False, v["a_addr"], a_hi))
        out.append(("WGT", False, v["w_addr"], v["w_addr"] + v["k"] - 1))
        n = v["m_outer"] * v["m_inner"]
        out.append(("ACC", True, v["acc_addr"], v["acc_addr"] + n - 1))
    elif m == "requant":
        out.append(("ACC", False, v["src"], v["src"] + v["rows"] - 1))
        out.append(("ACC", False, v["param"], v["param"] + 2))
        out.append(("ACT", True, v["dst"], v["dst"] + (v["rows"] - 1) * v["dst_stride"]))
    elif m == "vadd":
        n = v["lines"]
        out.append(("ACT", False, v["src_a"], v["src_a"] + n - 1))
        out.append(("ACT", False, v["src_b"], v["src_b"] + n - 1))
        out.append(("ACT", True, v["dst"], v["dst"] + n - 1))
    elif m in ("maxpool", "avgpool"):
        lpp = v["lpp"]
        hi = (v["src"] + ((v["out_h"] - 1) * v["stride_h"] + v["kh"] - 1) * v["row_stride"]
              + ((v["out_w"] - 1) * v["stride_w"] + v["kw"] - 1) * lpp + lpp - 1)
        out.append(("ACT", False, v["src"], hi))
        out.append(("ACT", True, v["dst"], v["dst"] + v["out_h"] * v["out_w"] * lpp - 1))
    elif m == "mask":
        n = v["rows"] * v["row_lines"]
        out.append(("ACT", False, v["src"], v["src"] + n - 1))
        out.append(("ACT", True, v["dst"], v["dst"] + n - 1))
        if v["mode"].name == "LOADED":
            out.append(("ACT", False, v["mask_addr"], v["mask_addr"] + (n - 1) // 8))
    return out


class ProgramBuilder:
    """Accumulates a synchronised program plus the external-memory image it needs.

    Parameters
    ----------
    cfg : HwConfig
    dram_base : int
        First byte address the DRAM allocator hands out (default 0).
    dram_limit : int, optional
        End of the allocatable region (default ``cfg.dram_bytes``).

    Attributes
    ----------
    segments : list of (addr, bytes)
        Constant data (weights, requant parameters, zero lines) the host writes before a run.
    tensors : dict name -> Tensor
    tag : str or None
        Label given to every instruction emitted while it is set (the compiler sets it to the
        graph node being lowered). After :meth:`finish`, :attr:`tags` holds one label per
        program instruction (inserted NOPs carry their instruction's label, HALT ``None``).
    """

    def __init__(self, cfg: HwConfig, dram_base: int = 0, dram_limit: int | None = None):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a HwConfig, not {type(cfg).__name__}")
        limit = cfg.dram_bytes if dram_limit is None else dram_limit
        if not (isinstance(dram_base, int) and 0 <= dram_base < limit <= cfg.dram_bytes):
            raise ValueError(f"dram_base/dram_limit: need 0 <= dram_base < dram_limit <= {cfg.dram_bytes}")
        self.cfg = cfg
        self._dram_next, self._dram_limit = dram_base, limit
        self._free: list = []               # (addr, bytes) released by free(), sorted
        self.reused_bytes = 0               # bytes of allocations served from freed space
        self.slack = 4 * cfg.cols
        self.segments: list = []
        self.tensors: dict = {}
        self._records: list = []
        self._last = [None] * 4            # last record per engine
        self._hist = [[] for _ in range(4)]  # per engine: records in order
        self._zero = None
        self._spad_free = {s: 0 for s in ("ACT", "WGT", "ACC")}
        self._finished = None
        self.tag = None
        self.tags: list = []
        #: one dict per kernel call that reports its tiling (kernel, tag, ...): see conv2d/gemm
        self.notes: list = []

    # -- external memory ---------------------------------------------------------------------
    def alloc(self, nbytes: int, align: int = 16) -> int:
        """Reserve ``nbytes`` (+ slack) of external memory; returns the address."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        addr = _cdiv(self._dram_next, align) * align
        end = addr + nbytes + self.slack
        if end > self._dram_limit:
            raise ValueError(f"nbytes: external memory exhausted ({nbytes} bytes at {addr:#x}, limit "
                             f"{self._dram_limit:#x})")
        self._dram_next = end
        return addr

    def free(self, t: Tensor) -> None:
        """Return a tensor's external memory (allocated with ``reuse=True``) to the free list.

        Safe at any point of emission: a later writer of the space is ordered after every
        earlier reader by the hazard tracking (the footprints include DRAM bytes).
        """
        size = _cdiv(t.dram_nbytes + self.slack, 16) * 16
        self._free.append((t.addr, size))
        self._free.sort()
        merged = []
        for a, n in self._free:
            if merged and merged[-1][0] + merged[-1][1] >= a:
                la, ln = merged[-1]
                merged[-1] = (la, max(ln, a + n - la))
            else:
                merged.append((a, n))
        self._free = merged

    def _reuse_alloc(self, nbytes: int):
        size = _cdiv(nbytes + self.slack, 16) * 16
        best = None
        for k, (_, n) in enumerate(self._free):   # best fit
            if n >= size and (best is None or n < self._free[best][1]):
                best = k
        if best is None:
            return None
        a, n = self._free[best]
        self.reused_bytes += size
        if n == size:
            del self._free[best]
        else:
            self._free[best] = (a + size, n - size)
        return a

    def tensor(self, shape, dtype: str = "int8", name: str = "", reuse: bool = False,
               compressed: bool = False) -> Tensor:
        """Allocate an uninitialised DRAM tensor (an input the host writes, or an output).

        ``reuse=True``: the tensor is written by the program before it is read (an
        intermediate), so it may take space released by :meth:`free`. ``compressed=True``: an
        int8 activation stored zero-mask compressed (see :attr:`Tensor.slot`), written and read
        only by the program.
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
        shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if any(d < 1 for d in shape):
            raise ValueError(f"shape: every dimension must be >= 1, got {shape}")
        if compressed and dtype != "int8":
            raise ValueError("compressed: only int8 tensors can be stored compressed")
        slot = 2 + (self.cfg.cols + 7) // 8 + self.cfg.cols if compressed else 0
        lpp = _cdiv(shape[-1], self.cfg.cols) if compressed else 0
        t = Tensor(0, shape, dtype, name, slot, lpp)
        addr = self._reuse_alloc(t.dram_nbytes) if reuse else None
        t = Tensor(self.alloc(t.dram_nbytes) if addr is None else addr, shape, dtype, name, slot, lpp)
        if name:
            self.tensors[name] = t
        return t

    def const(self, array, dtype: str | None = None, name: str = "") -> Tensor:
        """Allocate a DRAM tensor initialised with ``array`` (added to :attr:`segments`)."""
        arr = np.asarray(array)
        dtype = dtype or {np.dtype(np.int8): "int8", np.dtype(np.int32): "int32",
                          np.dtype(np.uint8): "uint8"}.get(arr.dtype)
        if dtype is None:
            raise ValueError(f"array: dtype {arr.dtype} needs an explicit dtype= (int8/int32/uint8)")
        data = arr.astype(_DTYPES[dtype])
        if not np.array_equal(data.astype(np.int64), arr.astype(np.int64)):
            raise ValueError(f"array: values do not fit {dtype}")
        t = self.tensor(arr.shape if arr.ndim else (1,), dtype, name)
        self.segments.append((t.addr, np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"))
                              .tobytes()))
        return t

    def zero_line_addr(self) -> int:
        """Address of a 4*cols-byte zero block (source for zero-filling scratchpad lines)."""
        if self._zero is None:
            self._zero = self.const(np.zeros(4 * self.cfg.cols, np.uint8), name="")
        return self._zero.addr

    def write_segments(self, machine) -> None:
        """Write the constant segments into a device's external memory."""
        for addr, data in self.segments:
            machine.write_dram(addr, data)

    # -- scratchpad allocation -----------------------------------------------------------------
    def spad_alloc(self, spad: str, lines: int) -> int:
        """Reserve ``lines`` lines of scratchpad ``spad`` ("ACT"/"WGT"/"ACC"); returns the first.

        Use :meth:`spad_scope` to release them when a kernel ends (reuse is safe: the hazard
        tracker orders the next kernel's writes after this kernel's reads).
        """
        spad = spad.upper()
        depth = self.cfg.spad_depth(spad)
        base = self._spad_free[spad]
        if lines < 1 or base + lines > depth:
            raise ValueError(f"lines: {spad} scratchpad has {depth - base} free lines, {lines} requested")
        self._spad_free[spad] = base + lines
        return base

    def spad_available(self, spad: str) -> int:
        spad = spad.upper()
        return self.cfg.spad_depth(spad) - self._spad_free[spad]

    def spad_scope(self):
        """Context manager restoring the scratchpad allocators on exit."""
        builder = self

        class _Scope:
            def __enter__(self):
                self.saved = dict(builder._spad_free)
                return builder

            def __exit__(self, *exc):
                builder._spad_free = self.saved
                return False
        return _Scope()

    # -- emission ------------------------------------------------------------------------------
    def emit(self, mnemonic: str, **fields):
        """Append an instruction (no header fields: synchronisation is added automatically).

        Returns the builder's internal id of the instruction.
        """
        if self._finished is not None:
            raise ValueError("builder already finished")
        if not _HEADER_SET.isdisjoint(fields):
            for h in _HEADER:
                if h in fields:
                    raise ValueError(f"{h}: semaphore fields are managed by the builder")
        ins = make(mnemonic, cfg=self.cfg, index=len(self._records), **fields)
        op = ins.kind.opcode
        if op == Opcode.HALT:
            raise ValueError("mnemonic: the builder appends HALT itself (finish())")
        e = _E[engine_of(ins)]
        acc = footprint(ins, self.cfg)
        return self._append(_Record(mnemonic, ins.values, e, len(self._records), acc, self.tag))

    def _append(self, rec) -> int:
        """Add ``rec`` (id = its position) after the program so far: its waits on the other
        engines (vector-clock pruned) from the hazards with earlier records."""
        e, acc = rec.engine, rec.acc
        prev = self._last[e]
        if prev is not None:
            vc = list(prev.vc)
            vc[e] = prev.id
        else:
            vc = [-1, -1, -1, -1]
        # latest conflicting record on each other engine not already ordered before us
        # (_conflict inlined: this loop is the builder's hot path)
        cands = {}
        hists = self._hist
        for p in range(4):
            if p == e:
                continue
            hist = hists[p]
            if not hist:
                continue
            floor = vc[p]
            for k in range(len(hist) - 1, -1, -1):
                r = hist[k]
                if r.id <= floor:
                    break
                found = False
                for sa, wa, la, ha in r.acc:
                    for sb, wb, lb, hb in acc:
                        if sa == sb and (wa or wb) and la <= hb and lb <= ha:
                            found = True
                            break
                    if found:
                        break
                if found:
                    cands[p] = r
                    break
        if cands:
            # drop candidates implied by another candidate's clock
            if len(cands) == 1:
                needed = list(cands.values())
            else:
                needed = []
                for p, r in cands.items():
                    implied = any(q != p and (o.vc[p] >= r.id) for q, o in cands.items())
                    if not implied:
                        needed.append(r)
                needed.sort(key=lambda r: r.id)
            for r in needed:
                rec.waits.append(r.id)
                r.signals.append(e)
                rv = r.vc
                for k in range(4):
                    if rv[k] > vc[k]:
                        vc[k] = rv[k]
                if r.id > vc[r.engine]:
                    vc[r.engine] = r.id
        rec.vc = vc
        self._records.append(rec)
        hists[e].append(rec)
        self._last[e] = rec
        return rec.id

    def finish(self) -> Program:
        """The program: semaphores assigned, extra waits/signals as NOPs, HALT appended."""
        if self._finished is not None:
            return self._finished
        cfg = self.cfg
        chans = self._channels()
        recs = self._records
        prog = Program()
        out = prog.instructions
        tags = []
        # every record's fields were validated by make() in emit(); the header values added here
        # are in range by construction (semaphores < n_semaphores, checked by _channels; counts
        # and flags 1), so the instruction is assembled directly instead of re-validated
        kinds = {}
        for r in recs:
            e = r.engine
            waits = [chans[(recs[j].engine, e)] for j in r.waits]
            if len(waits) > 1:
                eng = ENGINES[e]
                for sem in waits[:-1]:
                    out.append(make("nop", engine=eng, wait_sem=sem, wait_count=1, wait_consume=1, cfg=cfg))
                    tags.append(r.tag)
            sigs = [chans[(e, c)] for c in r.signals]
            fields = r.fields
            if waits or sigs:
                fields = dict(fields)
                if waits:
                    fields["wait_sem"], fields["wait_count"], fields["wait_consume"] = waits[-1], 1, 1
                if sigs:
                    fields["signal_sem"], fields["signal_en"] = sigs[0], 1
            kind = kinds.get(r.mnemonic)
            if kind is None:
                kind = kinds[r.mnemonic] = KINDS[r.mnemonic]
            out.append(Instruction(kind, fields))
            tags.append(r.tag)
            if len(sigs) > 1:
                eng = ENGINES[e]
                for sem in sigs[1:]:
                    out.append(make("nop", engine=eng, signal_sem=sem, signal_en=1, cfg=cfg))
                    tags.append(r.tag)
        out.append(make("halt"))
        tags.append(None)
        self.tags = tags
        self._finished = prog
        self.channels = {(ENGINES[p].name, ENGINES[c].name): s for (p, c), s in chans.items()}
        return prog

    def check_sync(self) -> None:
        """Raise ``ValueError`` if :meth:`finish` would (too many semaphores, count overflow)."""
        self._channels()

    def _channels(self) -> dict:
        """``{(producer, consumer engine index): semaphore}``, checked against the hardware's
        semaphore count and ``sem_max``."""
        chans = {}
        for r in self._records:
            for c in r.signals:
                chans.setdefault((r.engine, c), len(chans))
        if len(chans) > self.cfg.n_semaphores:
            raise ValueError(f"cfg: the program needs {len(chans)} semaphores, the hardware has "
                             f"{self.cfg.n_semaphores}")
        self._check_overflow(chans)
        return chans

    def _check_overflow(self, chans):
        """Upper-bound each semaphore's count: signals not provably consumed before a new one."""
        cfg = self.cfg
        recs = self._records
        per = {ch: [] for ch in chans}             # (producer id, consumer id) in order
        for r in recs:
            for j in r.waits:
                per[(recs[j].engine, r.engine)].append((j, r.id))
        for (p, c), pairs in per.items():
            pairs.sort()
            consumers = [i for _, i in pairs]      # increasing: each wait is for a later signal
            for n, (j, _) in enumerate(pairs):
                if n < cfg.sem_max:
                    continue
                # waits known to have released before j starts consumed their signal already
                done = min(n + 1, bisect.bisect_right(consumers, recs[j].vc[c]))
                outstanding = n + 1 - done
                if outstanding > cfg.sem_max:
                    raise ValueError(f"cfg: semaphore {ENGINES[p].name}->{ENGINES[c].name} could exceed "
                                     f"sem_max {cfg.sem_max} at instruction {j}")

    @property
    def dram_used(self) -> int:
        """Bytes of external memory allocated so far (the bump pointer)."""
        return self._dram_next

    @property
    def n_instructions(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list:
        """The emitted instructions as ``(mnemonic, fields, engine index, footprint, tag)`` in
        program order (engine index into :data:`ENGINES`; footprint as :func:`footprint`)."""
        return [(r.mnemonic, r.fields, r.engine, r.acc, r.tag) for r in self._records]

    def sync_edges(self) -> int:
        """Number of cross-engine waits the builder kept (after vector-clock pruning)."""
        return sum(len(r.waits) for r in self._records)

    def reorder(self, order) -> None:
        """Re-emit the instructions in ``order`` (a permutation of instruction indices) and
        recompute all synchronisation from their footprints.

        The caller guarantees that ``order`` keeps the relative order of every pair of
        instructions whose footprints conflict (one writes what the other accesses); the
        hazard tracking then derives the waits of the new order exactly as for a fresh program.
        """
        if self._finished is not None:
            raise ValueError("builder already finished")
        old = self._records
        order = list(order)
        if sorted(order) != list(range(len(old))):
            raise ValueError("order: must be a permutation of the instruction indices")
        self._records = []
        self._last = [None] * 4
        self._hist = [[] for _ in range(4)]
        for i in order:
            r = old[i]
            # the instruction, its engine and footprint do not depend on its position: reuse them
            self._append(_Record(r.mnemonic, r.fields, r.engine, len(self._records), r.acc, r.tag))


def _conflict(a, b):
    for sa, wa, la, ha in a:
        for sb, wb, lb, hb in b:
            if sa == sb and (wa or wb) and la <= hb and lb <= ha:
                return True
    return False


def spad_name(spad) -> str:
    return spad.name if isinstance(spad, Spad) else str(spad).upper()
