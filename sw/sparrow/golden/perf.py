"""Cycle-estimate model of the golden model (table-driven; the RTL team tunes the constants).

Every instruction gets a *duration* in cycles from the formulas below; the constants live in
:class:`Costs` (one frozen dataclass, ``DEFAULT_COSTS``) so they can be tuned against RTL cycle
counts without touching the formulas. All durations are at least 1 cycle.

Notation: ``B = cfg.mem_bytes`` (external-memory beat width), ``ceil(x/B)`` beats.

Fetch
    ``fetch = ceil(WORD_BYTES / B)`` cycles per instruction word (HALT included). In concurrent
    mode the first word arrives ``fetch_latency + fetch`` cycles after start (the first read's
    round trip through the bus), and an engine is idle for ``issue_gap`` cycles after each
    instruction: its next instruction, and any instruction waiting on its signal, starts no
    earlier than ``end + issue_gap``. Neither is charged to the busy counters.

LOAD
    ``dma_start + sum over data rows (dma_row_setup + max(ceil(bytes_row / B), row_lines * line_cycles))
    + pad_lines * pad_line_cycles`` where ``bytes_row`` is ``row_lines * LB`` uncompressed and
    ``2 + N`` (the group's bus bytes) compressed, and ``pad_lines`` is the number of zero lines
    of the padded region (``H*W - rows*row_lines``). A compressed row costs
    ``load_compressed_row`` more: the engine reads the row's count before it can ask for the group.

STORE
    ``store_start + sum over rows (store_row_setup + max(ceil(bytes_row / B), row_lines * line_cycles))``
    with ``bytes_row`` as for LOAD (compressed: the ``2 + N`` bytes actually written, and
    ``store_compressed_row`` more per row). STORE has
    its own fixed costs: it reads the scratchpad before the first beat and ends when the last
    write is accepted, and its rows stream back to back (the RTL's per-row cost is ~0).

MATMUL
    ``matmul_start + max(makespan, rows * matmul_row_cycles)``. The array has ``cfg.rows``
    zero-skipping lanes. Output row ``m`` costs (:func:`matmul_row_costs`) the number of
    non-zero elements (``j < k``) in its ``ceil(k/cols)`` activation lines, at least 1 for the
    row's last line: an all-zero line that is not the row's last is dropped by the lane on
    arrival and costs nothing. Rows are dealt in order ``m = 0, 1, ...`` to the earliest-free
    lane (ties: lowest lane), and ``makespan`` is when the last lane finishes.
    ``rows * matmul_row_cycles`` is the write-back bound: the RTL's shared writer retires one
    finished output row per cycle (accumulator read-modify-write), which is what limits
    MATMULs with short rows (convolution taps with ``k <= cols``).

VECTOR
    ``vector_start + lines * vector_line_cycles`` where ``lines`` is the number of cycles the
    unit spends consuming scratchpad lines: REQUANT ``rows + 3`` (data + bias/mult/shift), ADD
    ``lines`` (operands ``a`` and ``b`` are read on two ports in the same cycle), MASK
    ``rows*row_lines`` (+ the bitmap lines in LOADED mode), MAXPOOL/AVGPOOL
    ``out_h*out_w*lpp*kh*kw`` (every window read, no reuse).

NOP / DELAY
    NOP ``nop`` cycles; DELAY ``delay_overhead + delay[slot]``.

Tuning (``bench/system.py``, small preset, AXI top on Verilator)
    The constants were fitted to the RTL: first per engine on the busy-cycle counters (least
    squares over the system programs, the durations being linear in the constants), then on
    total cycles. Before (``dma_start=4, dma_row_setup=2, matmul_start=4, vector_start=3``, no
    write-back bound) the model was off by 16 % on average and 48 % at worst (convolutions: the
    per-MATMUL overhead of ~15 cycles and the one-row-per-cycle write-back were missing);
    after, 4 % on average, 8 of 10 kernels within 5 %. Then three gaps closed
    that were outside the constants: VADD charged ``2 * lines`` (the RTL reads both operands in
    one cycle), all-zero non-final activation lines charged a cycle (the RTL drops them), and
    LOAD and STORE sharing one fixed cost; the MATMUL footprint check became four registered
    steps for timing, VECTOR's in eight and LOAD/STORE's in five. Refitted the same way (busy
    counters, least squares, rounded): LOAD 9 + 1/row, STORE 21 + 0/row, MATMUL 18, VECTOR 23;
    total cycles then within 5 % for 9 of 10 kernels, 2.8 % mean, 8.2 % worst (``compress``:
    compressed groups). Figures in ``bench/results/system.json``.
    Then (this version) the fit moved from totals to single instructions: each engine's busy
    trace splits into one run per instruction (the RTL idles a cycle between them), and the
    constants were fitted by least squares to those per-instruction durations, 153 of them,
    instead of to sums in which errors cancel. The same traces showed the two costs the
    schedule had missed: 8 cycles before the first instruction starts (``fetch_latency``) and
    one idle cycle after every instruction (``issue_gap``). Compressed LOAD rows cost about
    1.5 cycles more than raw ones (``load_compressed_row``). Fitted and rounded: LOAD 10 + 1/row
    (+1 per compressed row), STORE 16 + 0/row, MATMUL 17, VECTOR 23. Total cycles are then
    within 5 % for 10 of 10 kernels: 1.1 % mean, 2.2 % worst. MATMUL became 18 when the
    writer gained a register in front of its pending FIFO, and VECTOR 25 when the vector
    engine's FIFOs got registered outputs, and ``fetch_latency`` 9 when fetch registered its
    burst size (all for FPGA timing; re-measured after all three: 10 of 10 within 5 %).
    STORE 22 and VECTOR 27 when every scratchpad read response gained a register (FPGA timing:
    the block RAM's output ran into the engines): one cycle more per instruction in both
    engines' busy traces; 10 of 10 within 5 %, 1.4 % mean, 4.1 % worst (``add``).
    Known gap: LOAD and STORE share the memory bus with each other and with fetch; a transfer
    that overlaps another one takes up to ~12 cycles longer in the RTL, which the model ignores.

Modes
    Program-order mode: ``cycles = sum over executed instructions of (fetch + duration)`` (a machine
    that neither overlaps fetch with execution nor engines with each other). Concurrent mode:
    the makespan of the event-driven schedule (see :mod:`sparrow.golden.concurrent`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ..isa import WORD_BYTES

__all__ = ["Costs", "DEFAULT_COSTS", "fetch_cycles", "dma_cycles", "dma_cycles_uniform", "matmul_row_costs",
           "matmul_cycles",
           "vector_cycles", "nop_cycles", "delay_cycles"]


@dataclass(frozen=True)
class Costs:
    """Tunable constants of the cycle model (cycles)."""
    dma_start: int = 12         #: per LOAD instruction: decode, checks, first read latency
    dma_row_setup: int = 1      #: per LOAD row: address/burst set-up
    store_start: int = 22       #: per STORE instruction: checks, scratchpad read latency, write drain
    store_row_setup: int = 0    #: per STORE row
    load_compressed_row: int = 3  #: per compressed LOAD row: the count bytes are read (and, registered,
                                  #: checked) before the group
    store_compressed_row: int = 0  #: per compressed STORE row
    line_cycles: int = 1        #: scratchpad lines per cycle bound of a DMA (cycles per line)
    pad_line_cycles: int = 1    #: per zero padding line written by LOAD
    matmul_start: int = 21      #: per MATMUL: footprint check, lane fill, MAC latency, write-back drain
    matmul_row_cycles: int = 1  #: per output row: accumulator write-back bound (rows * this)
    vector_start: int = 27      #: per VECTOR: parameter reads, pipeline fill and drain
    vector_line_cycles: int = 1  #: per scratchpad line read by the vector unit
    nop: int = 1                #: NOP
    delay_overhead: int = 1     #: DELAY issue cycle on top of delay[slot]
    fetch_latency: int = 15     #: concurrent mode: cycles from start to the first instruction word
    issue_gap: int = 1          #: concurrent mode: idle cycles after an instruction before its
                                #: engine starts the next one and before its signal is seen
    release_latency: int = 1    #: concurrent mode: cycles from taking a wait to the start of
                                #: its instruction (the sequencer registers the release)
    signal_latency: int = 2     #: concurrent mode: cycles from an instruction's completion to
                                #: its signal reaching the semaphore (the completion and the
                                #: signal are registered)


DEFAULT_COSTS = Costs()


def _ceil_div(a, b):
    return -(-a // b)


def fetch_cycles(cfg, costs: Costs = DEFAULT_COSTS) -> int:
    return max(1, _ceil_div(WORD_BYTES, cfg.mem_bytes))


def _dma_fixed(costs, store, compressed=False):
    if store:
        return costs.store_start, costs.store_row_setup + (costs.store_compressed_row if compressed else 0)
    return costs.dma_start, costs.dma_row_setup + (costs.load_compressed_row if compressed else 0)


def dma_cycles(cfg, row_bytes, row_lines: int, pad_lines: int = 0, costs: Costs = DEFAULT_COSTS, *,
               store: bool = False) -> int:
    """Compressed LOAD (or with ``store``, STORE) duration: ``row_bytes`` holds each row's bus bytes."""
    start, setup = _dma_fixed(costs, store, compressed=True)
    rb = np.asarray(row_bytes, dtype=np.int64).reshape(-1)
    beats = -(-rb // cfg.mem_bytes)
    per_row = setup + np.maximum(beats, row_lines * costs.line_cycles)
    return max(1, start + int(per_row.sum()) + pad_lines * costs.pad_line_cycles)


def dma_cycles_uniform(cfg, rows: int, row_bytes: int, row_lines: int, pad_lines: int = 0,
                       costs: Costs = DEFAULT_COSTS, *, store: bool = False) -> int:
    """:func:`dma_cycles` for ``rows`` rows of ``row_bytes`` each (scalar arithmetic)."""
    start, setup = _dma_fixed(costs, store)
    per_row = setup + max(_ceil_div(row_bytes, cfg.mem_bytes), row_lines * costs.line_cycles)
    return max(1, start + rows * per_row + pad_lines * costs.pad_line_cycles)


def matmul_row_costs(nz_lines) -> np.ndarray:
    """Per-output-row cycles of the zero-skipping lanes from ``nz_lines[row, line]`` (non-zero
    elements within ``k`` per activation line): every non-zero costs a cycle, an all-zero line
    costs nothing (the lane drops it on arrival) except a row's last line, which costs at least
    one cycle (it carries the row's end)."""
    nz = np.asarray(nz_lines, dtype=np.int64)
    if nz.ndim != 2 or nz.shape[1] == 0:
        raise ValueError(f"nz_lines must be a [rows, lines] array with lines >= 1, not shape {nz.shape}")
    return nz[:, :-1].sum(axis=1) + np.maximum(nz[:, -1], 1)


def matmul_cycles(cfg, row_costs, costs: Costs = DEFAULT_COSTS) -> int:
    """MATMUL duration from the per-output-row costs (``sum max(1, nnz(line))``)."""
    rc = np.asarray(row_costs, dtype=np.int64).reshape(-1)
    lanes = cfg.rows
    n = rc.size
    if n == 0:
        span = 0
    elif n <= lanes:
        span = int(rc.max())
    elif np.all(rc == rc[0]):
        span = int(rc[0]) * _ceil_div(n, lanes)
    else:
        free = [(0, lane) for lane in range(lanes)]   # (time free, lane): earliest, then lowest lane
        for c in rc.tolist():
            t, lane = heapq.heappop(free)
            heapq.heappush(free, (t + c, lane))
        span = max(t for t, _ in free)
    return max(1, costs.matmul_start + max(span, n * costs.matmul_row_cycles))


def vector_lines_read(mnemonic: str, v) -> int:
    """Scratchpad lines a VECTOR instruction reads (its fields ``v``): REQUANT its accumulator
    rows and 3 parameter lines, VADD its lines once (both operands in the same cycle), a pool
    every window line, MASK its lines and, in LOADED mode, its bitmap lines."""
    if mnemonic == "requant":
        return v["rows"] + 3
    if mnemonic == "vadd":
        return v["lines"]
    if mnemonic in ("maxpool", "avgpool"):
        return v["out_h"] * v["out_w"] * v["lpp"] * v["kh"] * v["kw"]
    if mnemonic == "mask":
        n = v["rows"] * v["row_lines"]
        return n + (_ceil_div(n, 8) if v["mode"].name == "LOADED" else 0)
    raise ValueError(f"mnemonic: {mnemonic!r} is not a VECTOR instruction")


def vector_cycles(lines_read: int, costs: Costs = DEFAULT_COSTS) -> int:
    return max(1, costs.vector_start + lines_read * costs.vector_line_cycles)


def nop_cycles(costs: Costs = DEFAULT_COSTS) -> int:
    return max(1, costs.nop)


def delay_cycles(delay: int, costs: Costs = DEFAULT_COSTS) -> int:
    return max(1, costs.delay_overhead + int(delay))
