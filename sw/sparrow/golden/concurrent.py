"""Concurrent mode of the golden model: fetch, queues, engines, semaphores, deadlock, races.

Event-driven model (times in cycles, all durations from :mod:`sparrow.golden.perf`):

* **Fetch** reads one instruction word every ``fetch`` cycles: word ``i`` is available at
  ``t_dispatch(i-1) + fetch`` (word 0 at ``fetch_latency + fetch``). A word that fails decode faults
  (``ILLEGAL_OPCODE``/``ILLEGAL_FIELD``) when it becomes available. HALT (or the end of the
  program) stops fetch. Any other word is dispatched to its engine's queue if the queue has fewer
  than ``queue_depth`` entries; otherwise fetch *stalls* until that queue has room (in-order
  dispatch: later words wait too). The stall cycles are charged to that engine's ``stall``
  counter.
* **Engines** run their queue in order, one instruction at a time. The head instruction of an
  idle engine is *released* as soon as its wait is satisfied (``sem[wait_sem] >= wait_count``):
  the consume (and the race checker's join) happens then, and it starts ``release_latency``
  cycles later. An engine instruction (not NOP/DELAY) at the head of a busy engine's queue is
  released the same way (not behind a running DELAY) and starts when the engine is idle, but
  not before ``release_latency`` has passed, without waiting again — as the sequencer does.
  Cycles an idle engine's head spends waiting (up to its release) count in ``wait``.
  An instruction's effects are applied when it starts; it is busy for ``duration`` cycles and
  *completes* ``issue_gap`` cycles after that, when its engine becomes idle; its signal (if
  any) increments the semaphore ``signal_latency`` cycles after the completion, and a waiter may
  be released in that same cycle.
  Within one cycle, completions are processed before starts, and engines are visited in the
  order LOAD, MATMUL, VECTOR, STORE (which decides who wins a consume race), fetch last.
* **Done** when fetch has stopped and every queue and engine is idle; ``cycles`` is that time.
* **Deadlock**: nothing is running and nothing can start or dispatch, but the program is not
  done -> ``ErrorCode.WATCHDOG`` with a detail naming each blocked engine's instruction index and
  the semaphore/count it waits on, and fetch's blocked instruction and full queue.

Race checker (``check_races``): each engine has a vector clock; an instruction's clock is its
engine's clock, joined with the clocks of the signals its wait matched, with the engine's own
component incremented. Signals on one semaphore are totally ordered (in simulated completion
order); a wait for count ``c`` joins the clocks of the first ``c`` unconsumed signals and a
consume removes them. Each instruction's reads and writes of scratchpad lines and external
memory bytes are recorded as interval sets; two accesses from different engines to the same
location, at least one a write, whose instructions are not ordered by happens-before raise
:class:`~sparrow.golden.machine.RaceError`.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from ..errors import ErrorCode
from ..isa import Opcode, engine_of
from . import perf
from .machine import ENGINES, RaceError, RunResult, _BadWord, _Fault

__all__ = ["run_concurrent", "RaceChecker"]

_EIDX = {e: i for i, e in enumerate(ENGINES)}
_LOCAL = (Opcode.NOP, Opcode.DELAY)    # run by the sequencer itself, released when they run


class RaceChecker:
    """Vector-clock happens-before race detector over interval access sets."""

    GC_EVERY = 64

    def __init__(self, n_semaphores: int):
        n = len(ENGINES)
        self.n = n
        self.vc = [[0] * n for _ in range(n)]
        self.sigq = [deque() for _ in range(n_semaphores)]
        # space -> per engine: (epochs list, records list); record = (epoch, index, write, lo, hi)
        self.records: dict = {}
        self._starts = 0

    def start(self, e: int, wait_sem: int, wait_count: int, wait_consume: int) -> tuple:
        """Clock of an instruction starting on engine index ``e`` (its wait was just released)."""
        vc = self.vc[e]
        if wait_count:
            q = self.sigq[wait_sem]
            for i in range(wait_count):
                other = q[i]
                for j in range(self.n):
                    if other[j] > vc[j]:
                        vc[j] = other[j]
            if wait_consume:
                for _ in range(wait_count):
                    q.popleft()
        vc[e] += 1
        return tuple(vc)

    def signal(self, sem: int, clock: tuple):
        self.sigq[sem].append(clock)

    def access(self, e: int, index: int, clock: tuple, accesses, engines=ENGINES):
        """Check one instruction's accesses against unordered earlier ones, then record them."""
        epoch = clock[e]
        for space, write, lo, hi in accesses:
            if lo.size == 0:
                continue
            per = self.records.get(space)
            if per is None:
                per = self.records[space] = [([], []) for _ in range(self.n)]
            for e2 in range(self.n):
                if e2 == e:
                    continue
                epochs, recs = per[e2]
                first = bisect.bisect_right(epochs, clock[e2])   # records e's clock does not cover
                for rec in recs[first:]:
                    _, idx2, write2, lo2, hi2 = rec
                    if not (write or write2):
                        continue
                    loc = _overlap(lo2, hi2, lo, hi)
                    if loc is not None:
                        raise RaceError((idx2, engines[e2]), (index, engines[e]), space, loc, write2, write)
            epochs, recs = per[e]
            epochs.append(epoch)
            recs.append((epoch, index, write, lo, hi))
        self._starts += 1
        if self._starts % self.GC_EVERY == 0:
            self._collect()

    def _collect(self):
        """Drop records every other engine's clock already covers (they can never race again)."""
        for e2 in range(self.n):
            bound = min(self.vc[e][e2] for e in range(self.n) if e != e2)
            for per in self.records.values():
                epochs, recs = per[e2]
                cut = bisect.bisect_right(epochs, bound)
                if cut:
                    del epochs[:cut]
                    del recs[:cut]


def _overlap(lo_a, hi_a, lo_b, hi_b):
    """First location shared by two sorted disjoint interval sets, or ``None``."""
    if lo_a.size == 1 and lo_b.size == 1:                 # fast path: two single intervals
        lo, hi = max(lo_a[0], lo_b[0]), min(hi_a[0], hi_b[0])
        return int(lo) if lo < hi else None
    if lo_a.size > lo_b.size:
        lo_a, hi_a, lo_b, hi_b = lo_b, hi_b, lo_a, hi_a
    j = np.searchsorted(hi_b, lo_a, side="right")       # first b interval ending after a.lo
    ok = j < lo_b.size
    if not ok.any():
        return None
    jj = np.minimum(j, lo_b.size - 1)
    hit = ok & (lo_b[jj] < hi_a)
    if not hit.any():
        return None
    i = int(np.flatnonzero(hit)[0])
    return int(max(lo_a[i], lo_b[jj[i]]))


def run_concurrent(m, decoded, *, max_cycles=None, check_races=True, events=None) -> RunResult:
    """Run ``decoded`` on machine ``m`` (see the module docstring).

    ``events``: optional list that receives the idle intervals the counters charge, as
    ``("wait", engine, index, sem, start, end)`` (the head instruction ``index`` of an idle
    engine waiting on semaphore ``sem``) and ``("stall", engine, index, None, start, end)``
    (fetch blocked on that engine's full queue with instruction ``index``); ``engine`` is an
    :class:`~sparrow.isa.Engine`. Busy intervals are :attr:`RunResult.timeline`.
    """
    cfg, costs = m.cfg, m.costs
    fetch_cost = perf.fetch_cycles(cfg, costs)
    depth = cfg.queue_depth
    n_eng = len(ENGINES)
    names = [e.name.lower() for e in ENGINES]
    counters = m.new_counters()
    timeline = []
    sems = m.sems
    races = RaceChecker(cfg.n_semaphores) if check_races else None

    # per word: (engine index or -1 for HALT, wait_sem, wait_count, wait_consume, signal_sem, signal_en)
    hdr = [None if isinstance(it, _BadWord) else
           (-1 if it.opcode == Opcode.HALT else _EIDX[engine_of(it)], it.wait_sem, it.wait_count,
            it.wait_consume, it.signal_sem, it.signal_en) for it in decoded]
    queues = [deque() for _ in range(n_eng)]
    running = [None] * n_eng        # (index, instr, end, clock)
    released = [None] * n_eng       # (clock, start time) of a released head (wait taken), or None
    lat = costs.release_latency
    landing = []                    # signals on their way: (time, engine, index, sem, clock)

    def take_wait(e, wsem, wcount, wconsume):
        """Release engine ``e``'s head: consume its count; its race-checker clock (or None)."""
        if wcount and wconsume:
            sems[wsem] -= wcount
        return races.start(e, wsem, wcount, wconsume) if races is not None else None
    wait_since = [None] * n_eng
    pc = 0
    n_words = len(decoded)
    fetch_ready = fetch_cost + costs.fetch_latency
    gap = costs.issue_gap
    fetch_done = n_words == 0
    stall_since = None
    stall_eng = None
    now = 0 if fetch_done else fetch_ready

    def result(code=ErrorCode.NONE, index=None, engine=None, detail=""):
        counters["cycles"] = now
        for e in range(n_eng):          # close open wait / stall intervals at the stop time
            if wait_since[e] is not None:
                counters[f"{names[e]}_wait"] += now - wait_since[e]
                if events is not None:
                    idx = queues[e][0][0]
                    events.append(("wait", ENGINES[e], idx, hdr[idx][1], wait_since[e], now))
        if stall_since is not None:
            counters[f"{names[stall_eng]}_stall"] += now - stall_since
            if events is not None:
                events.append(("stall", ENGINES[stall_eng], pc, None, stall_since, now))
        return RunResult(now, counters, code, index, engine, detail, timeline)

    while True:
        # 1. completions at `now`; their signals land `signal_latency` later
        for e in range(n_eng):
            r = running[e]
            if r is not None and r[2] == now:
                idx, ins, _, clock = r
                running[e] = None
                h = hdr[idx]
                if h[5]:
                    landing.append((now + costs.signal_latency, e, idx, h[4], clock))
        while landing and landing[0][0] <= now:
            _, e, idx, s, clock = landing.pop(0)
            if sems[s] >= cfg.sem_max:
                return result(ErrorCode.SEM_OVERFLOW, idx, ENGINES[e],
                              f"signal on semaphore {s} at its maximum {cfg.sem_max}")
            sems[s] += 1
            if races is not None:
                races.signal(s, clock)
        # 2. starts and dispatches until nothing changes
        changed = True
        while changed:
            changed = False
            for e in range(n_eng):
                if not queues[e]:
                    continue
                idx, ins = queues[e][0]
                _, wsem, wcount, wconsume, _, _ = hdr[idx]
                met = not wcount or sems[wsem] >= wcount
                if running[e] is not None:
                    # early release: an engine instruction whose count is reached takes its wait
                    # while the engine is still busy (not behind a DELAY, which the sequencer runs)
                    if (released[e] is None and met and ins.opcode not in _LOCAL
                            and running[e][1].opcode != Opcode.DELAY):
                        released[e] = (take_wait(e, wsem, wcount, wconsume), now + lat)
                        changed = True
                    continue
                if released[e] is None and met:
                    # the wait is taken now; the instruction starts `release_latency` later
                    released[e] = (take_wait(e, wsem, wcount, wconsume), now + lat)
                    changed = True
                elif released[e] is None:
                    if wait_since[e] is None:
                        wait_since[e] = now
                    continue
                if wait_since[e] is not None:
                    counters[f"{names[e]}_wait"] += now - wait_since[e]
                    if events is not None:
                        events.append(("wait", ENGINES[e], idx, wsem, wait_since[e], now))
                    wait_since[e] = None
                if released[e][1] > now:
                    continue
                clock, _ = released[e]
                released[e] = None
                queues[e].popleft()
                try:
                    ex = m.execute(ins, track=races is not None)
                except _Fault as f:
                    return result(f.code, idx, ENGINES[e], f.detail)
                if races is not None:
                    races.access(e, idx, clock, ex.accesses)
                end = now + ex.duration
                running[e] = (idx, ins, end + gap, clock)
                timeline.append((idx, ENGINES[e], now, end))
                counters["instructions"] += 1
                counters[f"{names[e]}_busy"] += ex.duration
                for k, v in ex.counts.items():
                    counters[k] += v
                changed = True
            if not fetch_done and fetch_ready <= now:
                item = decoded[pc]
                if isinstance(item, _BadWord):
                    return result(item.code, pc, None, item.detail)
                e = hdr[pc][0]
                if e < 0:                               # HALT
                    fetch_done = True
                    pc += 1
                    changed = True
                else:
                    if len(queues[e]) < depth:
                        if stall_since is not None:
                            counters[f"{names[stall_eng]}_stall"] += now - stall_since
                            if events is not None:
                                events.append(("stall", ENGINES[stall_eng], pc, None, stall_since, now))
                            stall_since = stall_eng = None
                        queues[e].append((pc, item))
                        pc += 1
                        fetch_ready = now + fetch_cost
                        changed = True
                    elif stall_since is None:
                        stall_since, stall_eng = now, e
                if pc >= n_words:
                    fetch_done = True
        # 3. done, next event or deadlock
        ends = [r[2] for r in running if r is not None]
        ends += [r[1] for e, r in enumerate(released) if r is not None and running[e] is None and r[1] > now]
        ends += [t for t, *_ in landing]
        if fetch_done and not ends and not any(queues):
            return result()
        if not fetch_done and fetch_ready > now:
            ends.append(fetch_ready)
        if not ends:
            return result(*_deadlock(decoded, queues, sems, pc, fetch_done, depth))
        nxt = min(ends)
        if max_cycles is not None and nxt > max_cycles:
            now = max_cycles
            return result(ErrorCode.TIMEOUT, None, None, f"cycle limit {max_cycles} reached")
        now = nxt


def _deadlock(decoded, queues, sems, pc, fetch_done, depth):
    """``(code, index, engine, detail)`` of a deadlock: every blocked engine and fetch."""
    parts = []
    blocked = []
    for e, q in enumerate(queues):
        if q:
            idx, ins = q[0]
            blocked.append((idx, ENGINES[e]))
            parts.append(f"engine {ENGINES[e].name} instruction {idx} waits on semaphore {ins.wait_sem} "
                         f"for count {ins.wait_count} (value {sems[ins.wait_sem]})")
    if not fetch_done:
        ins = decoded[pc]
        eng = engine_of(ins)
        parts.append(f"fetch blocked at instruction {pc}: queue of engine {eng.name} is full "
                     f"({depth} entries)")
    idx, eng = min(blocked, key=lambda t: t[0]) if blocked else (pc, None)
    return ErrorCode.WATCHDOG, idx, eng, "deadlock: " + "; ".join(parts)
