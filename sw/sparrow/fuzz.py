"""Differential fuzzing: random programs on the golden model and on the Verilator harness.

::

    python -m sparrow.fuzz -n 1000 --seed 1 --preset small            # golden vs Verilator
    python -m sparrow.fuzz -n 200 --seed 1 --backend golden            # generator self-check only
    python -m sparrow.fuzz --replay tests/fuzz_cases/x.json            # re-run one saved case

Every case is a pure function of ``(seed, index)`` (:func:`generate`), so a failure reproduces
from the printed pair. Kinds of case:

``valid``
    a random program built with :class:`sparrow.kernels.ProgramBuilder` (automatic race-free
    semaphores): a prologue of random LOADs filling the scratchpad windows, then random LOAD /
    STORE / MATMUL / REQUANT / ADD / MAXPOOL / AVGPOOL / MASK / NOP / DELAY instructions with
    random shapes, strides, paddings, partial lines, compression, in-place operands, random
    data sparsity (0 to 100 %), random DELAY slot values and bursts of NOP/DELAY that fill
    queues (queue pressure);
``handsync``
    the same instructions synchronised by hand-made barrier semaphores (counts > 1, waits
    with and without consume, several waiters on one count); race freedom is checked by the
    golden model's race checker on every run;
``bad_word``, ``spad_range``, ``dram_range``, ``corrupt``, ``slot``, ``sem_overflow``, ``deadlock``
    a valid program with exactly one fault injected (undecodable word; footprint outside a
    scratchpad; access beyond external memory; corrupt compressed group; too-small compressed
    STORE slot; a semaphore signalled past its maximum; a wait that can never be met, or a
    fetch blocked on a full queue). The golden model defines the error code and index; the
    RTL must report the same and must never hang (cycle limit).

Comparison (:func:`compare`): the error code and, on an error, the instruction index; all of
external memory (``cfg.dram_bytes``) — after an error every STORE's destination footprint is
excluded, as ``docs/isa.md`` leaves it unspecified; on success also the counters ``macs``,
``macs_skipped``, ``load_bytes``, ``store_bytes`` and ``instructions``.

Before each case the Verilator device (one, reused) gets its external memory zeroed and runs a
*scrub* program that zero-fills the scratchpad windows the fuzz programs use, so it starts from
the golden model's state (a fresh :class:`~sparrow.golden.Machine`): no state leaks from one
case (or from a faulted run) into the next.

A mismatch is shrunk (:func:`shrink`: drop instructions, shrink shape fields, drop semaphore
fields, while the candidate stays race-free and the mismatch persists) and saved as a
regression case in ``tests/fuzz_cases/*.json`` (replayed by ``tests/test_fuzz.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import codec, isa
from .config import HwConfig, preset
from .errors import DeviceError, ErrorCode
from .isa import Engine, IsaError, MaskMode, Opcode, Spad

__all__ = ["Case", "Outcome", "generate", "run_golden", "VerilatorRunner", "compare", "shrink",
           "run_batch", "save_case", "load_case", "FeatureCounter", "FEATURES", "KINDS", "main",
           "CASES_DIR"]

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "fuzz_cases"

# -- external-memory layout of a fuzz case (bytes) -------------------------------------------------
DATA, DATA_SIZE = 0x0000, 0x2000          # random int8 data (LOAD sources)
ACCD, ACCD_SIZE = 0x2000, 0x0800          # random int32 data (ACC LOAD sources)
PARAMS = 0x2800                           # requant parameter triples (bias, mult, shift lines)
N_TRIPLES = 4
COMP, COMP_SIZE = 0x3000, 0x3000          # compressed groups (compressed LOAD sources)
OUT, OUT_SIZE = 0x8000, 0x4000            # STORE destinations (LOADs may read them back)
PROG_BASE = 0x10000
SCRUB_BASE = 0x30000                      # the Verilator-side scrub program (zeroed afterwards)
ZERO_SRC = 0x38000                        # always-zero bytes the scrub program loads

WATCHDOG = 4000                           # RTL watchdog period for fuzz runs (cycles)
MAX_CYCLES = 400_000                      # cycle limit of every run: a hang is a TIMEOUT mismatch
CHECKED_COUNTERS = ("macs", "macs_skipped", "load_bytes", "store_bytes", "instructions")

#: Case kinds and their share of a batch.
#: ``remap`` (a valid program with its semaphore ids permuted, so that every id is exercised) is
#: only generated when asked for (weight 0 keeps the draws of the other kinds unchanged).
KINDS = {"valid": 0.55, "handsync": 0.17, "bad_word": 0.06, "spad_range": 0.05, "dram_range": 0.05,
         "corrupt": 0.04, "slot": 0.02, "sem_overflow": 0.02, "deadlock": 0.04, "remap": 0.0}


def windows(cfg: HwConfig) -> dict:
    """Scratchpad lines ``[0, n)`` the fuzz programs use (and the scrub program clears)."""
    return {Spad.ACT: min(cfg.act_depth, 192), Spad.WGT: min(cfg.wgt_depth, 96),
            Spad.ACC: min(cfg.acc_depth, 96)}


# -- cases -----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One fuzz program with everything needed to run it on any backend."""
    kind: str
    seed: int
    index: int
    words: list                           # 128-bit instruction words (ints)
    segments: list                        # [(addr, bytes)] written before the run
    delays: dict = field(default_factory=dict)   # slot -> cycles
    watchdog: int = WATCHDOG
    note: str = ""

    def image(self) -> bytes:
        return b"".join(w.to_bytes(isa.WORD_BYTES, "little") for w in self.words)

    def decoded(self, cfg):
        """Instructions (``None`` for a word that does not decode)."""
        return isa.decode_image(self.image(), cfg)

    def asm(self, cfg) -> str:
        lines = []
        for i, (w, ins) in enumerate(zip(self.words, self.decoded(cfg))):
            text = isa.disassemble_one(ins) if ins is not None else f"<bad word {w:#034x}>"
            lines.append(f"{i:4d}: {text}")
        return "\n".join(lines)

    def replace_words(self, words) -> "Case":
        return Case(self.kind, self.seed, self.index, list(words), self.segments, dict(self.delays),
                    self.watchdog, self.note)

    def to_dict(self, cfg) -> dict:
        return {"kind": self.kind, "seed": self.seed, "index": self.index, "preset": cfg.name,
                "words": [f"{w:#034x}" for w in self.words],
                "segments": [[a, bytes(d).hex()] for a, d in self.segments],
                "delays": {str(k): v for k, v in self.delays.items()}, "watchdog": self.watchdog,
                "note": self.note, "asm": self.asm(cfg).splitlines()}

    @classmethod
    def from_dict(cls, d) -> "Case":
        return cls(d["kind"], int(d["seed"]), int(d["index"]), [int(w, 16) for w in d["words"]],
                   [(int(a), bytes.fromhex(h)) for a, h in d["segments"]],
                   {int(k): int(v) for k, v in d.get("delays", {}).items()},
                   int(d.get("watchdog", WATCHDOG)), d.get("note", ""))


@dataclass
class Outcome:
    """How one backend ended a case."""
    code: ErrorCode
    index: int | None
    engine: object
    dram: np.ndarray
    counters: dict
    cycles: int = 0
    detail: str = ""


# -- generator ---------------------------------------------------------------------------------------

def _i8(rng, shape, sparsity):
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    if sparsity > 0:
        x[rng.random(shape) < sparsity] = 0
    return x


class _Gen:
    """Random instruction fields that keep every access inside the scratchpad windows."""

    def __init__(self, cfg: HwConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.win = windows(cfg)
        self.acc_body = self.win[Spad.ACC] - 3 * N_TRIPLES     # params live above this line
        self.cols = cfg.cols
        self.segments = []
        self.comp_next = COMP
        self.sparsity = float(rng.choice([0.0, 0.0, 0.3, 0.5, 0.8, 0.95, 1.0]))
        data = _i8(rng, DATA_SIZE, self.sparsity)
        self.segments.append((DATA, data.tobytes()))
        accd = rng.integers(-(1 << 20), 1 << 20, ACCD_SIZE // 4).astype("<i4")
        self.segments.append((ACCD, accd.tobytes()))
        cols = self.cols
        trip = np.zeros((N_TRIPLES, 3, cols), np.int64)
        trip[:, 0] = rng.integers(-2000, 2000, (N_TRIPLES, cols))
        trip[:, 1] = rng.integers(1 << 12, 1 << 30, (N_TRIPLES, cols))
        trip[:, 2] = rng.integers(12, 40, (N_TRIPLES, cols))
        trip[0, 1, 0] = -1                   # a multiplier with the sign bit set (masked to 31 bits)
        trip[1, 2, 0] = 64 + 20              # a shift with bits above 63 (masked to 6 bits)
        self.segments.append((PARAMS, trip.astype("<i4").tobytes()))
        self.delays = {int(s): int(rng.choice([0, 1, 2, 5, 17, 40]))
                       for s in rng.choice(cfg.delay_slots, size=min(4, cfg.delay_slots), replace=False)}

    def ri(self, lo, hi):
        """Random int in [lo, hi] (inclusive)."""
        return int(self.rng.integers(lo, hi + 1))

    def p(self, prob):
        return bool(self.rng.random() < prob)

    def place(self, span, limit):
        """First line of a span of ``span`` lines inside ``[0, limit)``, or None."""
        return None if span > limit else self.ri(0, limit - span)

    def spad(self, compressible=False):
        choices = [Spad.ACT, Spad.WGT] if compressible else [Spad.ACT, Spad.WGT, Spad.ACC]
        return choices[self.ri(0, len(choices) - 1)]

    def limit(self, spad, write):
        return self.acc_body if (spad == Spad.ACC and write) else self.win[spad]

    # -- one instruction of each kind: (mnemonic, fields) or None ---------------------------------
    def load(self, spad=None, at=None, max_total=None, compressed=None):
        cfg, cols = self.cfg, self.cols
        spad = spad if spad is not None else self.spad()
        if compressed is None:
            compressed = spad != Spad.ACC and self.p(0.3)
        for _ in range(20):
            rows, rl = self.ri(1, 6), self.ri(1, 4)
            pads = [0 if self.p(0.6) else self.ri(1, 3) for _ in range(4)]
            if self.p(0.03):
                pads[self.ri(0, 3)] = 15
            total = (pads[0] + rows + pads[1]) * (pads[2] + rl + pads[3])
            lim = self.limit(spad, True) if max_total is None else max_total
            if total <= lim:
                break
        else:
            return None
        addr = at if at is not None else self.place(total, self.limit(spad, True))
        f = dict(spad=spad, spad_addr=addr, rows=rows, row_lines=rl, pad_top=pads[0], pad_bottom=pads[1],
                 pad_left=pads[2], pad_right=pads[3])
        if compressed:
            data = _i8(self.rng, (rows, rl, cols), float(self.rng.choice([0.0, 0.5, 0.9, 1.0, self.sparsity])))
            groups = [codec.compress_group(r) for r in data]
            slot = max(len(g) for g in groups) + (0 if self.p(0.5) else self.ri(1, 9))
            base = self.comp_alloc(rows * slot)
            if base is None:
                return self.load(spad, at, max_total, compressed=False)
            for y, g in enumerate(groups):
                self.segments.append((base + y * slot, g))
            f.update(dram_addr=base, dram_stride=slot, compressed=1)
            return "load", f
        full = cfg.spad_line_bytes(spad)
        lb = 0 if self.p(0.7) else self.ri(1, full)
        rb = rl * (lb or full)
        r = self.rng.random()
        stride = rb if r < 0.5 else (rb + self.ri(1, 16) if r < 0.85 else self.ri(0, rb))
        if spad == Spad.ACC and self.p(0.85):
            lo, size = ACCD, ACCD_SIZE
        elif self.p(0.2):
            lo, size = OUT, OUT_SIZE
        else:
            lo, size = DATA, DATA_SIZE
        span = (rows - 1) * stride + rb
        if span > size:
            stride = rb
            span = rows * rb
        f.update(dram_addr=lo + self.ri(0, size - span), dram_stride=stride, line_bytes=lb)
        return "load", f

    def comp_alloc(self, n):
        if self.comp_next + n > COMP + COMP_SIZE:
            return None
        a = self.comp_next
        self.comp_next += n + self.ri(0, 3)
        return a

    def store(self):
        cfg = self.cfg
        comp = self.p(0.3)
        spad = self.spad(compressible=comp)
        rows, rl = self.ri(1, 6), self.ri(1, 4)
        ss = 0 if self.p(0.6) else self.ri(0, 6)
        s = ss or rl
        span = (rows - 1) * s + rl
        addr = self.place(span, self.win[spad])
        if addr is None:
            return None
        f = dict(spad=spad, spad_addr=addr, rows=rows, row_lines=rl, spad_stride=ss)
        if comp:
            worst = codec.COUNT_BYTES + codec.group_capacity(rl, cfg.cols)
            stride = worst + (0 if self.p(0.5) else self.ri(1, 7))
            f.update(compressed=1, dram_stride=stride)
            dspan = (rows - 1) * stride + worst
        else:
            lb = 0 if self.p(0.7) else self.ri(1, cfg.spad_line_bytes(spad))
            rb = rl * (lb or cfg.spad_line_bytes(spad))
            r = self.rng.random()
            stride = rb if r < 0.55 else (rb + self.ri(1, 16) if r < 0.9 else self.ri(0, rb))
            f.update(line_bytes=lb, dram_stride=stride)
            dspan = (rows - 1) * stride + rb
        f["dram_addr"] = OUT + self.ri(0, OUT_SIZE - dspan)
        return "store", f

    def matmul(self):
        cols = self.cols
        k = self.ri(1, min(self.win[Spad.WGT], 3 * cols + 3)) if self.p(0.8) else self.ri(1, cols)
        nl = -(-k // cols)
        mi, mo = self.ri(1, 5), (1 if self.p(0.5) else self.ri(2, 3))
        a_stride = nl if self.p(0.6) else self.ri(0, nl + 2)
        aos = mi * a_stride if (self.p(0.6) and mi * a_stride) else self.ri(0, 12)
        a_span = (mo - 1) * aos + (mi - 1) * a_stride + nl
        a = self.place(a_span, self.win[Spad.ACT])
        w = self.place(k, self.win[Spad.WGT])
        c = self.place(mo * mi, self.acc_body)
        if None in (a, w, c):
            return None
        return "matmul", dict(a_addr=a, w_addr=w, acc_addr=c, k=k, m_inner=mi, m_outer=mo, a_stride=a_stride,
                              a_outer_stride=aos, accumulate=int(self.p(0.4)))

    def requant(self):
        rows = self.ri(1, 8)
        ds = 1 if self.p(0.6) else (0 if self.p(0.3) else self.ri(2, 3))
        dst = self.place((rows - 1) * ds + 1, self.win[Spad.ACT])
        src = self.place(rows, self.win[Spad.ACC])
        if None in (dst, src):
            return None
        if self.p(0.85):
            param = self.acc_body + 3 * self.ri(0, N_TRIPLES - 1)
        else:
            param = self.ri(0, self.win[Spad.ACC] - 3)
        r = self.rng.random()
        if r < 0.4:
            lo, hi = 0, 127
        elif r < 0.8:
            lo, hi = -128, 127
        else:
            lo, hi = self.ri(-128, 127), self.ri(-128, 127)
        return "requant", dict(src=src, dst=dst, rows=rows, dst_stride=ds, param=param, lo=lo, hi=hi,
                               zp=0 if self.p(0.5) else self.ri(-20, 20))

    def _dst_for(self, n, srcs, limit, inplace_prob=0.35):
        """A destination of ``n`` lines equal to one of ``srcs`` or disjoint from all of them."""
        if self.p(inplace_prob) and srcs:
            return srcs[self.ri(0, len(srcs) - 1)][0]
        for _ in range(30):
            d = self.place(n, limit)
            if d is None:
                return None
            if all(d + n <= s or s + sn <= d for s, sn in srcs):
                return d
        return None

    def vadd(self):
        n = self.ri(1, 8)
        lim = self.win[Spad.ACT]
        a, b = self.place(n, lim), self.place(n, lim)
        if self.p(0.2):
            b = a
        dst = self._dst_for(n, [(a, n), (b, n)], lim)
        if dst is None:
            return None
        if self.p(0.5):
            ma, mb, sh = self.ri(-32768, 32767), self.ri(-32768, 32767), self.ri(0, 63)
        else:
            sh = self.ri(0, 16)
            ma, mb = self.ri(0, 1 << min(sh + 1, 15)), self.ri(-(1 << min(sh + 1, 15)), 1 << min(sh + 1, 15))
        return "vadd", dict(src_a=a, src_b=b, dst=dst, lines=n, mult_a=ma, mult_b=mb, shift=sh,
                            relu=int(self.p(0.4)))

    def pool(self, mnemonic):
        lpp = self.ri(1, 2) if self.p(0.8) else 3
        kh, kw = self.ri(1, 3), self.ri(1, 3)
        sh, sw = self.ri(1, 3), self.ri(1, 3)
        oh, ow = self.ri(1, 3), self.ri(1, 3)
        iw = (ow - 1) * sw + kw
        rs = iw * lpp + (0 if self.p(0.7) else self.ri(1, 2) * lpp)
        in_span = ((oh - 1) * sh + kh - 1) * rs + (iw - 1) * lpp + lpp
        lim = self.win[Spad.ACT]
        src = self.place(in_span, lim)
        if src is None:
            return None
        n_out = oh * ow * lpp
        dst = self._dst_for(n_out, [(src, in_span)], lim, inplace_prob=0.0)
        if dst is None:
            return None
        area = kh * kw
        if self.p(0.6):
            sh_ = 16
            mult = min(65535, max(1, round((1 << sh_) / area)))
        else:
            sh_, mult = self.ri(0, 63), self.ri(0, 65535)
        return mnemonic, dict(src=src, dst=dst, lpp=lpp, row_stride=rs, out_h=oh, out_w=ow, kh=kh, kw=kw,
                              stride_h=sh, stride_w=sw, mult=mult, shift=sh_)

    def mask(self):
        cols = self.cols
        rows, rl = self.ri(1, 5), self.ri(1, 3)
        n = rows * rl
        lim = self.win[Spad.ACT]
        mode = [MaskMode.CAUSAL, MaskMode.PADDING, MaskMode.LOADED][self.ri(0, 2)]
        src = self.place(n, lim)
        if src is None:
            return None
        f = dict(src=src, rows=rows, row_lines=rl, mode=mode, alt=self.ri(-128, 127))
        srcs = [(src, n)]
        if mode == MaskMode.CAUSAL:
            f["param"] = self.ri(-3, rl * cols)
        elif mode == MaskMode.PADDING:
            f["param"] = self.ri(-2, rl * cols + 1)
        else:
            nm = (n - 1) // 8 + 1
            f["mask_addr"] = self.place(nm, lim)
            srcs.append((f["mask_addr"], nm))
        dst = src if self.p(0.35) else self._dst_for(n, srcs, lim, 0.0)
        if dst is None or (mode == MaskMode.LOADED and not
                           (dst + n <= f["mask_addr"] or f["mask_addr"] + srcs[1][1] <= dst)):
            return None
        f["dst"] = dst
        return "mask", f

    def nop(self):
        return "nop", dict(engine=Engine(self.ri(0, 3)))

    def delay(self):
        return "delay", dict(engine=Engine(self.ri(0, 3)), slot=self.ri(0, self.cfg.delay_slots - 1))

    OPS = (("load", 0.16), ("store", 0.14), ("matmul", 0.16), ("requant", 0.1), ("vadd", 0.1),
           ("maxpool", 0.06), ("avgpool", 0.06), ("mask", 0.1), ("nop", 0.06), ("delay", 0.06))

    def op(self):
        names = [n for n, _ in self.OPS]
        probs = np.array([w for _, w in self.OPS])
        for _ in range(20):
            name = names[int(self.rng.choice(len(names), p=probs / probs.sum()))]
            fn = {"maxpool": lambda: self.pool("maxpool"), "avgpool": lambda: self.pool("avgpool")}.get(name)
            r = fn() if fn else getattr(self, name)()
            if r is not None:
                return r
        return self.nop()

    def body(self, n_ops):
        """Prologue (fill the windows with random LOADs) + ``n_ops`` random instructions."""
        ops = []
        for spad in (Spad.ACT, Spad.WGT, Spad.ACC):
            if not self.p(0.9):
                continue
            pos, lim = 0, self.limit(spad, True) if spad != Spad.ACC else self.win[Spad.ACC]
            while pos < lim:
                if spad == Spad.ACC and pos >= self.acc_body:       # requant parameters
                    ops.append(("load", dict(spad=spad, spad_addr=pos, dram_addr=PARAMS,
                                             rows=lim - pos, row_lines=1, dram_stride=4 * self.cols)))
                    break
                cap = (self.acc_body if spad == Spad.ACC else lim) - pos
                r = self.load(spad, at=pos, max_total=cap)
                if r is None:
                    r = ("load", dict(spad=spad, spad_addr=pos, dram_addr=DATA if spad != Spad.ACC else ACCD,
                                      rows=cap, row_lines=1, dram_stride=self.cfg.spad_line_bytes(spad)))
                ops.append(r)
                _, f = r
                pos += ((f["pad_top"] if "pad_top" in f else 0) + f["rows"] + f.get("pad_bottom", 0)) * \
                       (f.get("pad_left", 0) + f["row_lines"] + f.get("pad_right", 0))
        for _ in range(n_ops):
            if self.p(0.06):      # queue pressure: a burst of NOP/DELAY on one engine
                e = Engine(self.ri(0, 3))
                for _ in range(self.ri(self.cfg.queue_depth, 2 * self.cfg.queue_depth + 1)):
                    ops.append(("nop", dict(engine=e)) if self.p(0.5) else
                               ("delay", dict(engine=e, slot=self.ri(0, self.cfg.delay_slots - 1))))
            ops.append(self.op())
        return ops


def _builder_program(cfg, ops, inject=None):
    """Program of ``ops`` with the ProgramBuilder's semaphores. ``inject(b, i)`` may emit extra
    instructions before op ``i`` (``i == len(ops)``: at the end)."""
    from .kernels import ProgramBuilder
    b = ProgramBuilder(cfg)
    for i, (m, f) in enumerate(ops):
        if inject:
            inject(b, i)
        b.emit(m, **f)
    if inject:
        inject(b, len(ops))
    return list(b.finish())


def _handsync_program(cfg, ops, rng):
    """``ops`` in barrier phases synchronised by hand: the last instruction of every engine in
    phase ``p`` signals semaphore ``p``; the first instruction of every engine in phase ``p+1``
    waits for the count of phase ``p``'s signallers (consuming it when it is the only waiter)."""
    from .kernels.builder import _conflict, footprint
    phases = []
    cur = []
    for m, f in ops:
        ins = isa.make(m, cfg=cfg, **f)
        fp = footprint(ins, cfg)
        e = isa.engine_of(ins)
        clash = any(e2 != e and _conflict(fp2, fp) for _, e2, fp2 in cur)
        if clash or (cur and rng.random() < 0.1):
            phases.append(cur)
            cur = []
            if len(phases) >= cfg.n_semaphores - 1:
                break
        cur.append((ins, e, fp))
    if cur and len(phases) < cfg.n_semaphores - 1:
        phases.append(cur)
    prog = []
    prev_signallers = 0
    for p, ph in enumerate(phases):
        engines = []
        for _, e, _ in ph:
            if e not in engines:
                engines.append(e)
        first = {e: next(i for i, (_, e2, _) in enumerate(ph) if e2 == e) for e in engines}
        last = {e: max(i for i, (_, e2, _) in enumerate(ph) if e2 == e) for e in engines}
        consume = len(engines) == 1 and rng.random() < 0.5
        for i, (ins, e, _) in enumerate(ph):
            hdr = {}
            if p > 0 and first[e] == i:
                hdr.update(wait_sem=p - 1, wait_count=prev_signallers, wait_consume=int(consume))
            if last[e] == i and p + 1 < len(phases):
                hdr.update(signal_sem=p, signal_en=1)
            prog.append(ins.replace(**hdr) if hdr else ins)
        prev_signallers = len(engines)
    prog.append(isa.make("halt"))
    return prog


def _corrupt_group(g, rl, cols, rng):
    """A corrupted copy of a valid compressed group (and which corruption it is)."""
    g = bytearray(g)
    n = int.from_bytes(g[:2], "little")
    cap = codec.group_capacity(rl, cols)
    how = ["count_overflow", "mask_overrun", "trailing"][int(rng.integers(0, 3))]
    if how == "count_overflow":
        g[:2] = int(rng.integers(cap + 1, min(cap + 40, 0xFFFF) + 1)).to_bytes(2, "little")
    elif how == "trailing":
        extra = int(rng.integers(1, 4))
        if n + extra > cap:
            g[:2] = (cap + 1).to_bytes(2, "little")
            how = "count_overflow"
        else:
            g[:2] = (n + extra).to_bytes(2, "little")
            g += bytes(int(x) for x in rng.integers(0, 256, extra))
    else:   # set mask bits of the last line so it claims more bytes than the group holds
        mb = codec.mask_bytes(cols)
        g2 = bytearray(g[:2])
        pos = 2
        body = bytearray()
        lines = []
        for _ in range(rl):
            m = g[pos:pos + mb]
            k = sum(bin(x).count("1") for x in m)
            lines.append((bytearray(m), g[pos + mb:pos + mb + k]))
            pos += mb + k
        m, d = lines[-1]
        if all(x == 0xFF for x in m) or cols < 8 and m[0] == (1 << cols) - 1:
            g2[:2] = (n + 1).to_bytes(2, "little")   # can't claim more: trailing byte instead
            how = "trailing"
            return bytes(g2 + g[2:] + b"\x01"), how
        m[0] |= (1 << cols) - 1 if cols < 8 else 0xFF
        lines[-1] = (m, d)
        for m, d in lines:
            body += m + d
        g = g2 + body
    return bytes(g), how


def generate(cfg: HwConfig, seed: int, index: int, kind: str | None = None) -> Case:
    """The fuzz case ``(seed, index)`` (its kind drawn from :data:`KINDS` unless given)."""
    rng = np.random.default_rng([seed, index])
    if kind is None:
        names = list(KINDS)
        probs = np.array([KINDS[k] for k in names])
        kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    g = _Gen(cfg, rng)
    note = ""
    if kind == "valid":
        words = [isa.encode(i) for i in _builder_program(cfg, g.body(g.ri(2, 22)))]
    elif kind == "remap":
        perm = [int(x) for x in rng.permutation(cfg.n_semaphores)]
        prog = _builder_program(cfg, g.body(g.ri(2, 22)))
        prog = [i.replace(wait_sem=perm[i.wait_sem] if i.wait_count else 0,
                          signal_sem=perm[i.signal_sem] if i.signal_en else 0)
                if i.opcode != Opcode.HALT else i for i in prog]
        words = [isa.encode(i) for i in prog]
        note = f"semaphore ids permuted {perm}"
    elif kind == "handsync":
        words = [isa.encode(i) for i in _handsync_program(cfg, g.body(g.ri(3, 22)), rng)]
    else:
        ops = g.body(g.ri(1, 8))
        words, note = _inject_fault(cfg, g, ops, kind)
    return Case(kind, seed, index, words, g.segments, g.delays, WATCHDOG, note)


def _inject_fault(cfg, g, ops, kind):
    pos = g.ri(0, len(ops))
    if kind == "bad_word":
        prog = _builder_program(cfg, ops)
        words = [isa.encode(i) for i in prog]
        w, note = _bad_word(cfg, g)
        at = g.ri(0, len(words))
        words.insert(at, w)
        return words, f"{note} at {at}"
    if kind == "sem_overflow":
        e = Engine(g.ri(0, 3))
        sem = cfg.n_semaphores - 1

        def inject(b, i):
            if i == pos:
                for _ in range(cfg.sem_max + 1):
                    b.emit("nop", engine=e)
        prog = _builder_program(cfg, ops, inject)
        # the injected NOPs signal a semaphore nobody waits on (the builder uses the low ones)
        out, n = [], 0
        for ins in prog:
            if ins.opcode == Opcode.NOP and not ins.signal_en and not ins.wait_count and n <= cfg.sem_max \
                    and ins.engine == e:
                ins = ins.replace(signal_sem=sem, signal_en=1)
                n += 1
            out.append(ins)
        return [isa.encode(i) for i in out], f"{n} signals on semaphore {sem} from engine {e.name}"
    if kind == "deadlock":
        sem = cfg.n_semaphores - 1
        if g.p(0.5):
            # one instruction waits for a count that never comes
            e = Engine(g.ri(0, 3))
            cnt = g.ri(1, 3)

            def inject(b, i):
                if i == pos:
                    b.emit("nop", engine=e)
            prog = _builder_program(cfg, ops, inject)
            idx = next(j for j, ins in enumerate(prog) if ins.opcode == Opcode.NOP and not ins.wait_count
                       and not ins.signal_en and ins.engine == e)
            prog[idx] = prog[idx].replace(wait_sem=sem, wait_count=cnt, wait_consume=int(g.p(0.5)))
            if g.p(0.4):     # the signal exists but comes later on the same engine: still stuck
                prog.insert(idx + 1, isa.make("nop", engine=e, signal_sem=sem, signal_en=1))
            return [isa.encode(i) for i in prog], f"instruction {idx} waits for {cnt} on semaphore {sem}"
        # fetch blocked: a full queue of waiters whose signal comes after them in program order
        e = Engine(g.ri(0, 3))
        e2 = Engine((e.value + g.ri(1, 3)) % 4)
        n = cfg.queue_depth + 1 + g.ri(0, 2)
        blk = [isa.make("nop", engine=e, wait_sem=sem, wait_count=1) for _ in range(n)]
        blk.append(isa.make("nop", engine=e2, signal_sem=sem, signal_en=1))
        prog = _builder_program(cfg, ops)
        at = len(prog) - 1
        prog[at:at] = blk
        return [isa.encode(i) for i in prog], f"fetch blocked: {n} waiters on engine {e.name} at {at}"
    # one faulting instruction emitted through the builder (synchronised like the others)
    bad = _bad_instruction(cfg, g, kind)
    ops = ops[:pos] + [bad] + ops[pos:]
    prog = _builder_program(cfg, ops)
    return [isa.encode(i) for i in prog], f"{kind}: {bad[0]} {bad[1].get('note', '')}".strip()


def _bad_word(cfg, g):
    """A 128-bit word that ``isa.decode`` rejects, and what is wrong with it."""
    rng = g.rng
    r = g.ri(0, 7)
    if r == 0:
        return (int(rng.integers(0, 1 << 62)) << 64 | int(rng.integers(0, 1 << 60)) << 4
                | g.ri(7, 15)), "illegal opcode"
    if r == 1:
        base = isa.encode(isa.make("maxpool", src=1, dst=9))
        return (base & ~(0xF << isa.HEADER_BITS)) | (g.ri(5, 15) << isa.HEADER_BITS), "illegal vop"
    m, f = g.op()
    ins = isa.make(m, cfg=cfg, **f)
    w = isa.encode(ins)
    end = isa.HEADER_BITS + sum(fl.width for fl in ins.kind.body)
    if r == 2 and end < isa.WORD_BITS:
        return w | (1 << g.ri(end, isa.WORD_BITS - 1)), f"reserved bit set on {m}"
    # field-level faults, on a LOAD/STORE/MATMUL/MASK word built from scratch
    kind = ["load_spad", "rows0", "line_bytes", "comp_lb", "comp_acc", "fmt", "mask_mode", "k0"][g.ri(0, 7)]
    if kind in ("load_spad", "rows0", "line_bytes", "comp_lb", "comp_acc"):
        m = "load" if g.p(0.5) else "store"
        ins = isa.make(m, spad="act", spad_addr=g.ri(0, 8), dram_addr=DATA, rows=2, row_lines=1,
                       dram_stride=cfg.cols)
    elif kind in ("fmt", "k0"):
        ins = isa.make("matmul", k=cfg.cols, m_inner=1, m_outer=1)
    else:
        ins = isa.make("mask", rows=1, row_lines=1)
    w = isa.encode(ins)
    pos = {}
    p = 0
    for fl in ins.kind.all_fields:
        pos[fl.name] = (p, fl.width)
        p += fl.width

    def setf(word, name, value):
        lo, width = pos[name]
        return (word & ~(((1 << width) - 1) << lo)) | ((value & ((1 << width) - 1)) << lo)
    if kind == "load_spad":
        w = setf(w, "spad", 3)
    elif kind == "rows0":
        w = setf(w, "rows", 0)
    elif kind == "line_bytes":
        w = setf(w, "line_bytes", g.ri(cfg.line_bytes + 1, 127))
    elif kind == "comp_lb":
        w = setf(setf(w, "compressed", 1), "line_bytes", g.ri(1, cfg.line_bytes))
    elif kind == "comp_acc":
        w = setf(setf(w, "compressed", 1), "spad", Spad.ACC.value)
    elif kind == "fmt":
        w = setf(w, "fmt", g.ri(1, 3))
    elif kind == "k0":
        w = setf(w, "k", 0)
    else:
        w = setf(w, "mode", 3)
    return w, kind


def _bad_instruction(cfg, g, kind):
    """``(mnemonic, fields)`` of one decodable instruction that faults when it starts."""
    cols = cfg.cols
    if kind == "spad_range":
        for _ in range(50):
            r = g.op()
            m, f = r
            if m in ("nop", "delay"):
                continue
            f = dict(f)
            # move the first address to (or past) the end of its scratchpad: the footprint leaves it
            def out(depth):
                return depth + g.ri(0, 2) if g.p(0.8) else (1 << 14) - 1
            if m in ("load", "store"):
                f["spad_addr"] = out(cfg.spad_depth(f["spad"]))
            elif m == "matmul":
                key, depth = [("a_addr", cfg.act_depth), ("w_addr", cfg.wgt_depth),
                              ("acc_addr", cfg.acc_depth)][g.ri(0, 2)]
                f[key] = out(depth)
            elif m == "requant":
                key, depth = [("src", cfg.acc_depth), ("param", cfg.acc_depth), ("dst", cfg.act_depth)][g.ri(0, 2)]
                f[key] = depth - g.ri(0, 2) if key == "param" else out(depth)
            elif m == "vadd":
                f[["src_a", "src_b", "dst"][g.ri(0, 2)]] = out(cfg.act_depth)
            elif m in ("maxpool", "avgpool"):
                f[["src", "dst"][g.ri(0, 1)]] = out(cfg.act_depth)
            elif m == "mask":
                key = "mask_addr" if f["mode"] == MaskMode.LOADED and g.p(0.5) else ["src", "dst"][g.ri(0, 1)]
                f[key] = out(cfg.act_depth)
            try:
                isa.make(m, cfg=cfg, **f)
            except IsaError:
                continue
            return m, f
        return "vadd", dict(src_a=cfg.act_depth - 1, src_b=0, dst=0, lines=2)
    if kind == "dram_range":
        r = None
        while r is None:
            r = g.load() if g.p(0.5) else g.store()
        m, f = r
        f = dict(f)
        if g.p(0.2):
            f["dram_addr"] = g.ri(cfg.dram_bytes, (1 << 28) - 1)
        elif f.get("compressed") and m == "load":
            # the first row's count bytes lie (partly) beyond the end of memory
            f["dram_addr"] = cfg.dram_bytes - g.ri(0, 1)
        else:
            # the last byte of the footprint is beyond the end of memory
            lb = f.get("line_bytes") or cfg.spad_line_bytes(f["spad"])
            if f.get("compressed"):
                span = (f["rows"] - 1) * f["dram_stride"] + 2 + codec.group_capacity(f["row_lines"], cols)
            else:
                span = (f["rows"] - 1) * f["dram_stride"] + f["row_lines"] * lb
            f["dram_addr"] = cfg.dram_bytes - g.ri(0, span - 1)
        return m, f
    if kind == "corrupt":
        spad = g.spad(compressible=True)
        rows, rl = g.ri(1, 4), g.ri(1, 3)
        data = _i8(g.rng, (rows, rl, cols), float(g.rng.choice([0.0, 0.5, 0.9])))
        groups = [codec.compress_group(r) for r in data]
        bad_row = g.ri(0, rows - 1)
        groups[bad_row], how = _corrupt_group(groups[bad_row], rl, cols, g.rng)
        slot = max(len(x) for x in groups) + 8
        base = g.comp_alloc(rows * slot)
        if base is None:
            base = COMP
        for y, grp in enumerate(groups):
            g.segments.append((base + y * slot, grp))
        pads = [g.ri(0, 1) for _ in range(4)]
        total = (pads[0] + rows + pads[1]) * (pads[2] + rl + pads[3])
        return "load", dict(spad=spad, spad_addr=g.place(total, g.win[spad]), dram_addr=base, rows=rows,
                            row_lines=rl, dram_stride=slot, compressed=1, pad_top=pads[0], pad_bottom=pads[1],
                            pad_left=pads[2], pad_right=pads[3])
    if kind == "slot":
        r = None
        while r is None:
            r = g.store()
        m, f = r
        rl = f["row_lines"]
        worst = codec.COUNT_BYTES + codec.group_capacity(rl, cols)
        f = dict(f, compressed=1, line_bytes=0, dram_stride=g.ri(0, worst - 1),
                 spad=Spad.ACT if f["spad"] == Spad.ACC else f["spad"])
        return "store", f
    raise ValueError(f"kind: no fault injection for {kind!r}")


# -- backends ----------------------------------------------------------------------------------------

def run_golden(case: Case, cfg: HwConfig, machine_cls=None, check_races: bool = True) -> Outcome:
    """Run ``case`` on a fresh golden model (concurrent mode). Raises
    :class:`~sparrow.golden.RaceError` when the program is racy and ``check_races``."""
    from .golden import Machine
    m = (machine_cls or Machine)(cfg)
    for a, d in case.segments:
        m.write_dram(a, d)
    img = case.image()
    m.write_dram(PROG_BASE, img)
    for s, v in case.delays.items():
        m.delays[s] = v
    res = m.run(img, mode="concurrent", raise_on_error=False, max_cycles=MAX_CYCLES, check_races=check_races)
    res.timeline_indices = [t[0] for t in res.timeline]
    out = Outcome(res.error, res.error_index if res.error != ErrorCode.NONE else None, res.error_engine,
                  m.dram, {k: int(res.counters.get(k, 0)) for k in CHECKED_COUNTERS}, res.cycles, res.detail)
    out.executed = res.timeline_indices
    return out


def _scrub_program(cfg):
    prog = []
    for spad, n in windows(cfg).items():
        prog.append(isa.make("load", spad=spad, spad_addr=0, dram_addr=ZERO_SRC, rows=n, row_lines=1,
                             dram_stride=0))
    prog.append(isa.make("halt"))
    return isa.Program(prog)


class VerilatorRunner:
    """One Verilator harness device, reset to the golden model's initial state before each case."""

    def __init__(self, cfg: HwConfig, device=None):
        from .runtime import Device
        self.cfg = cfg
        self.dev = device if device is not None else Device(cfg, "verilator")
        self.zero = bytes(cfg.dram_bytes)
        self.scrub = bytes(_scrub_program(cfg))
        self.renewed = 0

    def _renew(self):
        """Replace a hung device with a fresh one (counted in :attr:`renewed`)."""
        from .runtime import Device
        self.dev.close()
        self.dev = Device(self.cfg, "verilator")
        self.renewed += 1

    def _reset(self):
        for attempt in range(2):
            dev = self.dev
            dev.write_dram(0, self.zero)
            dev.set_watchdog(1 << 20)
            dev.load_program(self.scrub, SCRUB_BASE)
            try:
                dev.run(max_cycles=MAX_CYCLES)
            except DeviceError:
                if attempt:
                    raise
                self._renew()
                continue
            dev.write_dram(SCRUB_BASE, bytes(len(self.scrub)))
            return

    def run(self, case: Case) -> Outcome:
        self._reset()                   # may replace a hung device: read self.dev after it
        dev, cfg = self.dev, self.cfg
        for a, d in case.segments:
            dev.write_dram(a, d)
        dev.load_program(case.image(), PROG_BASE)
        for s in range(cfg.delay_slots):
            dev.set_delay(s, int(case.delays.get(s, 0)))
        dev.set_watchdog(case.watchdog)
        code, index, engine, detail = ErrorCode.NONE, None, None, ""
        try:
            info = dev.run(max_cycles=MAX_CYCLES)
            cycles = info.cycles
        except DeviceError as e:
            code, index, engine, detail = e.code, e.index, e.engine, str(e)
            cycles = 0
        counters = dev.counters()
        dram = dev.read_dram(0, cfg.dram_bytes)
        if code == ErrorCode.TIMEOUT:
            self._renew()
        return Outcome(code, index, engine, dram, {k: int(counters.get(k, 0)) for k in CHECKED_COUNTERS},
                       cycles, detail)

    def close(self):
        self.dev.close()


# -- comparison --------------------------------------------------------------------------------------

def _store_footprints(case, cfg):
    """``[(lo, hi)]`` inclusive byte ranges every STORE of ``case`` may write."""
    from .kernels.builder import footprint
    out = []
    for ins in case.decoded(cfg):
        if ins is not None and ins.opcode == Opcode.STORE:
            for space, write, lo, hi in footprint(ins, cfg):
                if space == "DRAM" and write:
                    out.append((lo, hi))
    return out


def compare(case: Case, cfg: HwConfig, ref: Outcome, dut: Outcome) -> list[str]:
    """Differences between the golden outcome ``ref`` and ``dut`` (empty: they agree)."""
    diffs = []
    if ref.code != dut.code or (ref.code != ErrorCode.NONE and ref.index != dut.index):
        diffs.append(f"status: golden {ref.code.name} at {ref.index}, dut {dut.code.name} at {dut.index}"
                     f" ({dut.detail[:200]})")
    bad = np.flatnonzero(ref.dram != dut.dram)
    if bad.size and ref.code != ErrorCode.NONE:
        keep = np.ones(bad.size, bool)
        for lo, hi in _store_footprints(case, cfg):
            keep &= ~((bad >= lo) & (bad <= hi))
        bad = bad[keep]
    if bad.size:
        diffs.append(f"memory: {bad.size} bytes differ, first at {int(bad[0]):#x} "
                     f"(golden {int(ref.dram[bad[0]]):#04x}, dut {int(dut.dram[bad[0]]):#04x})")
    if ref.code == ErrorCode.NONE == dut.code:
        for k in CHECKED_COUNTERS:
            if ref.counters.get(k) != dut.counters.get(k):
                diffs.append(f"counter {k}: golden {ref.counters.get(k)}, dut {dut.counters.get(k)}")
    return diffs


def check_case(case, cfg, dut_run, machine_cls=None):
    """``(golden outcome, diffs)``; diffs is None when the case is racy (not comparable)."""
    from .golden import RaceError
    try:
        ref = run_golden(case, cfg, machine_cls)
    except RaceError:
        return None, None
    dut = dut_run(case)
    return ref, compare(case, cfg, ref, dut)


# -- shrinking ---------------------------------------------------------------------------------------

#: fields shrunk toward their minimum (in this order)
SHRINK_FIELDS = ("rows", "row_lines", "k", "m_outer", "m_inner", "lines", "out_h", "out_w", "kh", "kw",
                 "lpp", "pad_top", "pad_bottom", "pad_left", "pad_right", "stride_h", "stride_w",
                 "spad_stride", "a_stride", "a_outer_stride", "dst_stride", "line_bytes")


def shrink(case: Case, cfg: HwConfig, fails, budget: int = 400, log=None) -> Case:
    """A smaller case for which ``fails(case)`` still holds (``fails`` must reject racy candidates).

    Drops instructions (halves, quarters, ... single ones), then shrinks shape fields and drops
    semaphore fields instruction by instruction. At most ``budget`` calls of ``fails``.
    """
    tries = [0]

    def ok(words):
        if tries[0] >= budget:
            return False
        tries[0] += 1
        return bool(fails(case.replace_words(words)))

    words = list(case.words)
    while True:
        before = list(words)
        words = _shrink_pass(words, cfg, ok)
        if words == before or tries[0] >= budget:
            break
    if log:
        log(f"shrunk {len(case.words)} -> {len(words)} instructions in {tries[0]} runs")
    return case.replace_words(words)


def _shrink_pass(words, cfg, ok):
    chunk = max(1, len(words) // 2)
    while chunk >= 1:
        i = 0
        progress = False
        while i < len(words):
            cand = words[:i] + words[i + chunk:]
            if cand and ok(cand):
                words = cand
                progress = True
            else:
                i += chunk
        if not progress:
            chunk //= 2
    for i in range(len(words)):
        try:
            ins = isa.decode(words[i], cfg=cfg)
        except IsaError:
            continue
        for name in SHRINK_FIELDS + ("wait", "signal"):
            if name == "wait":
                if not ins.wait_count:
                    continue
                changes = [dict(wait_sem=0, wait_count=0, wait_consume=0)]
            elif name == "signal":
                if not ins.signal_en:
                    continue
                changes = [dict(signal_sem=0, signal_en=0)]
            else:
                if name not in ins.values:
                    continue
                v = ins.values[name]
                fmin = next(f.min or 0 for f in ins.kind.all_fields if f.name == name)
                changes = [{name: c} for c in dict.fromkeys((fmin, v // 2, v - 1)) if fmin <= c < v]
            for ch in changes:
                try:
                    cand_ins = ins.replace(**ch)
                except IsaError:
                    continue
                cand = words[:i] + [isa.encode(cand_ins)] + words[i + 1:]
                if ok(cand):
                    words, ins = cand, cand_ins
                    break
    return words


def save_case(case: Case, cfg: HwConfig, diffs, directory=CASES_DIR, xfail: str | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    d = case.to_dict(cfg)
    d["mismatch"] = list(diffs)
    d["xfail"] = xfail
    path = directory / f"{cfg.name}-{case.kind}-s{case.seed}-i{case.index}.json"
    path.write_text(json.dumps(d, indent=1) + "\n")
    return path


def load_case(path) -> tuple[Case, dict]:
    d = json.loads(Path(path).read_text())
    return Case.from_dict(d), d


# -- functional coverage -----------------------------------------------------------------------------

def _features_of(ins, cfg) -> list[str]:
    m = ins.mnemonic
    v = ins.values
    out = []
    if m in ("load", "store"):
        sp = v["spad"].name.lower()
        comp = v["compressed"]
        out.append(f"{m}:{sp}:{'compressed' if comp else 'raw'}")
        lb = v["line_bytes"] or cfg.spad_line_bytes(v["spad"])
        if v["line_bytes"]:
            out.append(f"{m}:partial_line")
        if not comp and v["rows"] > 1 and v["dram_stride"] < v["row_lines"] * lb:
            out.append(f"{m}:overlapping_rows")
        if m == "load" and (v["pad_top"] or v["pad_bottom"] or v["pad_left"] or v["pad_right"]):
            out.append(f"load:padded{':compressed' if comp else ''}")
        if m == "store" and v["spad_stride"]:
            out.append("store:spad_stride")
    elif m == "matmul":
        out.append(f"matmul:{'accumulate' if v['accumulate'] else 'overwrite'}:"
                   f"{'multi_line_k' if v['k'] > cfg.cols else 'one_line_k'}")
        if v["k"] % cfg.cols:
            out.append("matmul:partial_last_line")
        if v["m_outer"] > 1:
            out.append("matmul:m_outer")
    elif m == "requant":
        ds = v["dst_stride"]
        out.append(f"requant:{'relu' if v['lo'] == 0 else 'clamp'}:dst_stride_{min(ds, 2)}")
        if v["zp"]:
            out.append("requant:zero_point")
    elif m == "vadd":
        out.append(f"vadd:{'relu' if v['relu'] else 'linear'}:{'shift' if v['shift'] else 'no_shift'}")
        if v["dst"] in (v["src_a"], v["src_b"]):
            out.append("vadd:in_place")
    elif m in ("maxpool", "avgpool"):
        out.append(f"{m}:{'window' if v['kh'] * v['kw'] > 1 else 'window_1x1'}:"
                   f"{'strided' if max(v['stride_h'], v['stride_w']) > 1 else 'stride_1'}")
        if v["lpp"] > 1:
            out.append(f"{m}:multi_line_pixel")
    elif m == "mask":
        out.append(f"mask:{v['mode'].name.lower()}:{'in_place' if v['src'] == v['dst'] else 'copy'}")
    elif m in ("nop", "delay"):
        out.append(f"{m}:{v['engine'].name.lower()}")
    if v["wait_count"]:
        out.append(f"{m}:wait_{'consume' if v['wait_consume'] else 'keep'}")
        if v["wait_count"] > 1:
            out.append(f"{m}:wait_count_gt_1")
    if v["signal_en"]:
        out.append(f"{m}:signal")
    return out


def _all_features() -> list[str]:
    f = []
    for m in ("load", "store"):
        for sp in ("act", "wgt", "acc"):
            for c in ("raw", "compressed"):
                if not (sp == "acc" and c == "compressed"):
                    f.append(f"{m}:{sp}:{c}")
        f += [f"{m}:partial_line", f"{m}:overlapping_rows"]
    f += ["load:padded", "load:padded:compressed", "store:spad_stride"]
    f += [f"matmul:{a}:{k}" for a in ("accumulate", "overwrite") for k in ("multi_line_k", "one_line_k")]
    f += ["matmul:partial_last_line", "matmul:m_outer"]
    f += [f"requant:{r}:dst_stride_{d}" for r in ("relu", "clamp") for d in (0, 1, 2)] + ["requant:zero_point"]
    f += [f"vadd:{r}:{s}" for r in ("relu", "linear") for s in ("shift", "no_shift")] + ["vadd:in_place"]
    for p in ("maxpool", "avgpool"):
        f += [f"{p}:{w}:{s}" for w in ("window", "window_1x1") for s in ("strided", "stride_1")]
        f.append(f"{p}:multi_line_pixel")
    f += [f"mask:{mo}:{ip}" for mo in ("causal", "padding", "loaded") for ip in ("in_place", "copy")]
    f += [f"{m}:{e}" for m in ("nop", "delay") for e in ("load", "matmul", "vector", "store")]
    for m in ("load", "store", "matmul", "requant", "vadd", "maxpool", "avgpool", "mask", "nop", "delay"):
        f += [f"{m}:wait_consume", f"{m}:wait_keep", f"{m}:wait_count_gt_1", f"{m}:signal"]
    f += [f"error:{c.name}" for c in ErrorCode if c not in (ErrorCode.NONE, ErrorCode.ABORTED, ErrorCode.TIMEOUT)]
    return f


FEATURES = tuple(_all_features())


class FeatureCounter:
    """Functional ISA coverage: how often each :data:`FEATURES` entry was *executed* (started by
    an engine in the golden run) or, for ``error:*``, reported."""

    def __init__(self):
        self.counts = dict.fromkeys(FEATURES, 0)

    def add(self, case: Case, cfg: HwConfig, outcome: Outcome):
        decoded = case.decoded(cfg)
        for i in getattr(outcome, "executed", []):
            ins = decoded[i]
            if ins is None:
                continue
            for f in _features_of(ins, cfg):
                self.counts[f] = self.counts.get(f, 0) + 1
        if outcome.code != ErrorCode.NONE:
            key = f"error:{outcome.code.name}"
            self.counts[key] = self.counts.get(key, 0) + 1

    def holes(self) -> list[str]:
        return [f for f in FEATURES if not self.counts.get(f)]

    def merge(self, other: "FeatureCounter"):
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def table(self) -> str:
        lines = [f"{'feature':40s} {'executed':>9s}"]
        for f in FEATURES:
            lines.append(f"{f:40s} {self.counts.get(f, 0):9d}")
        h = self.holes()
        lines.append(f"\n{len(FEATURES) - len(h)}/{len(FEATURES)} features covered; holes: "
                     f"{', '.join(h) if h else 'none'}")
        return "\n".join(lines)


# -- batches -----------------------------------------------------------------------------------------

@dataclass
class BatchResult:
    seed: int
    first: int
    last: int
    programs: int = 0
    by_kind: dict = field(default_factory=dict)
    by_code: dict = field(default_factory=dict)
    racy: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)   # (index, kind, diffs, saved path)
    seconds: float = 0.0
    features: FeatureCounter = field(default_factory=FeatureCounter)

    @property
    def rate(self):
        return self.programs / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
        codes = ", ".join(f"{k} {v}" for k, v in sorted(self.by_code.items()))
        out = [f"fuzz: {self.programs} programs, seed {self.seed}, indices {self.first}..{self.last}, "
               f"{self.seconds:.1f} s ({self.rate:.1f} programs/s)",
               f"  by kind: {kinds}", f"  golden outcome: {codes}",
               f"  mismatches: {len(self.mismatches)}; racy (generator bug, skipped): {len(self.racy)}"]
        for idx, kind, diffs, path in self.mismatches:
            out.append(f"  MISMATCH seed {self.seed} index {idx} ({kind}): {'; '.join(diffs)}"
                       + (f" -> {path}" if path else ""))
        h = self.features.holes()
        out.append(f"  functional coverage: {len(FEATURES) - len(h)}/{len(FEATURES)} features"
                   + (f"; holes: {', '.join(h)}" if h else ""))
        return "\n".join(out)


def run_batch(cfg: HwConfig, n: int, seed: int, start: int = 0, backend: str = "verilator", runner=None,
              save_dir=CASES_DIR, do_shrink: bool = True, time_budget: float | None = None,
              log=print, kinds=None, progress_every: int = 0) -> BatchResult:
    """Generate and run cases ``(seed, start .. start+n-1)``; shrink and save mismatches.

    ``backend``: ``"verilator"`` (compare with the harness) or ``"golden"`` (generate, check race
    freedom and count functional coverage only). ``runner`` overrides the device under test: any
    object with ``run(case) -> Outcome``. ``time_budget`` (s) stops early. ``kinds`` restricts the
    case kinds (round robin).
    """
    if backend not in ("verilator", "golden"):
        raise ValueError(f"backend must be 'verilator' or 'golden', not {backend!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, not {n!r}")
    own = None
    if runner is None and backend == "verilator":
        runner = own = VerilatorRunner(cfg)
    res = BatchResult(seed, start, start + n - 1)
    t0 = time.perf_counter()
    try:
        for i in range(start, start + n):
            if time_budget is not None and time.perf_counter() - t0 > time_budget:
                break
            kind = kinds[(i - start) % len(kinds)] if kinds else None
            if progress_every and res.programs and res.programs % progress_every == 0:
                log(f"... {res.programs} programs, {len(res.mismatches)} mismatches, "
                    f"{time.perf_counter() - t0:.0f} s")
            case = generate(cfg, seed, i, kind)
            res.by_kind[case.kind] = res.by_kind.get(case.kind, 0) + 1
            res.programs += 1
            res.last = i
            from .golden import RaceError
            try:
                ref = run_golden(case, cfg)
            except RaceError as e:
                res.racy.append(i)
                log(f"RACY seed {seed} index {i} ({case.kind}): {e}")
                continue
            res.by_code[ref.code.name] = res.by_code.get(ref.code.name, 0) + 1
            res.features.add(case, cfg, ref)
            if runner is None:
                continue
            diffs = compare(case, cfg, ref, runner.run(case))
            if not diffs:
                continue
            log(f"MISMATCH seed {seed} index {i} ({case.kind}): {'; '.join(diffs)}")
            path = None
            small = case
            if do_shrink:
                like = (ref.code, diffs[0].split(":")[0])
                small = shrink(case, cfg, lambda c, like=like: _still_fails(c, cfg, runner, like=like), log=log)
                diffs = _still_fails(small, cfg, runner, like=like) or diffs
            if save_dir is not None:
                path = save_case(small, cfg, diffs, save_dir)
                log(f"  saved {path}\n" + small.asm(cfg))
            res.mismatches.append((i, case.kind, diffs, path))
    finally:
        res.seconds = time.perf_counter() - t0
        if own is not None:
            own.close()
    return res


def merge_batches(parts: list[BatchResult], seconds: float) -> BatchResult:
    """One :class:`BatchResult` from batches over consecutive index ranges of one seed
    (``seconds``: the wall time of the whole, parallel, run)."""
    if not parts:
        raise ValueError("parts: no batches to merge")
    out = BatchResult(parts[0].seed, parts[0].first, parts[-1].last, seconds=seconds)
    for p in parts:
        if p.seed != out.seed:
            raise ValueError(f"parts: seeds {out.seed} and {p.seed} differ")
        out.programs += p.programs
        for mine, theirs in ((out.by_kind, p.by_kind), (out.by_code, p.by_code)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        out.racy += p.racy
        out.mismatches += p.mismatches
        out.features.merge(p.features)
    # with a time budget a part may stop early: the last index any part reached
    out.last = max(p.last for p in parts)
    return out


def _batch_worker(args):
    """One process of :func:`run_parallel`: ``(BatchResult, device renewals)``."""
    from .config import preset
    cfg_name, n, seed, start, budget, progress_every = args
    cfg = preset(cfg_name)
    runner = VerilatorRunner(cfg)
    try:
        res = run_batch(cfg, n, seed, start, "verilator", runner=runner, time_budget=budget,
                        log=lambda s: print(f"[{start}..] {s}", flush=True), progress_every=progress_every)
    finally:
        runner.close()
    return res, runner.renewed


def run_parallel(cfg: HwConfig, n: int, seed: int, jobs: int, time_budget: float | None = None,
                 progress_every: int = 0) -> tuple[BatchResult, int]:
    """Cases ``(seed, 0 .. n-1)`` split into ``jobs`` consecutive ranges, one process (and one
    simulated device) each; returns the merged result and the total device renewals."""
    import concurrent.futures
    import multiprocessing
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, not {jobs!r}")
    from .sim.verilator_build import build_harness
    build_harness(cfg)                      # once, before the workers look it up in the cache
    bounds = [n * j // jobs for j in range(jobs + 1)]
    args = [(cfg.name, bounds[j + 1] - bounds[j], seed, bounds[j], time_budget, progress_every)
            for j in range(jobs) if bounds[j + 1] > bounds[j]]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(args), mp_context=ctx) as ex:
        done = list(ex.map(_batch_worker, args))
    res = merge_batches([r for r, _ in done], time.perf_counter() - t0)
    return res, sum(k for _, k in done)


def _still_fails(case, cfg, runner, machine_cls=None, like=None):
    """Diffs of ``case`` (empty when it agrees or is racy). With ``like = (golden code, diff kind)``
    only a mismatch of the same kind counts, so that shrinking does not wander to another bug."""
    from .golden import RaceError
    try:
        ref = run_golden(case, cfg, machine_cls)
    except RaceError:
        return []
    if like is not None and ref.code != like[0]:
        return []
    diffs = compare(case, cfg, ref, runner.run(case))
    if like is not None and not any(d.startswith(like[1]) for d in diffs):
        return []
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparrow.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="programs to run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--backend", default="verilator", choices=("verilator", "golden"))
    ap.add_argument("--kind", action="append", choices=sorted(KINDS), help="only these kinds (repeatable)")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--save-dir", default=str(CASES_DIR))
    ap.add_argument("--features", action="store_true", help="print the functional coverage table")
    ap.add_argument("--show", type=int, metavar="INDEX", help="print case (seed, INDEX) and exit")
    ap.add_argument("--replay", metavar="JSON", help="run one saved case and compare")
    a = ap.parse_args(argv)
    cfg = preset(a.preset)
    if a.show is not None:
        c = generate(cfg, a.seed, a.show)
        print(f"# seed {a.seed} index {a.show}: {c.kind} {c.note}\n{c.asm(cfg)}")
        return 0
    if a.replay:
        case, d = load_case(a.replay)
        cfg = preset(d["preset"])
        runner = VerilatorRunner(cfg)
        diffs = _still_fails(case, cfg, runner)
        print(case.asm(cfg))
        print("agree" if not diffs else "MISMATCH: " + "; ".join(diffs))
        return 1 if diffs else 0
    print(f"fuzz: preset {cfg.name}, seed {a.seed}, indices {a.start}..{a.start + a.n - 1}, "
          f"backend {a.backend}", flush=True)
    res = run_batch(cfg, a.n, a.seed, a.start, a.backend, do_shrink=not a.no_shrink, save_dir=a.save_dir,
                    kinds=a.kind, log=lambda s: print(s, flush=True))
    if a.features:
        print(res.features.table())
    print(res.summary())
    return 1 if (res.mismatches or res.racy) else 0


if __name__ == "__main__":
    sys.exit(main())
