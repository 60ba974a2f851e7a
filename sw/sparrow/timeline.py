"""Engine activity over time: busy / waiting on a semaphore / stalled, per engine.

Sources
-------
* golden model (concurrent mode): exact per-instruction ``busy`` intervals
  (:attr:`RunResult.timeline`) and the idle intervals the counters charge (``wait`` with the
  semaphore, ``stall`` of fetch on the engine's full queue), via the ``events`` recorder of
  :func:`sparrow.golden.concurrent.run_concurrent`;
* Verilator harness: the run is sampled every ``resolution`` cycles (CSR reads of each engine's
  PC and its busy/wait/stall counters); in each sample period an engine's busy, wait and stall
  cycles (counter deltas) are laid end to end from the period's start and labelled with the
  instruction it issued last (busy) or its queue head (wait: that instruction's semaphore). So
  totals equal the counters; placement within a period is approximate.

Outputs: :meth:`Timeline.to_chrome` (Chrome trace event format, opens in Perfetto /
chrome://tracing; one ``"X"`` event per instruction per engine, 1 cycle shown as 1 µs),
:meth:`Timeline.save_png` (matplotlib), :meth:`Timeline.utilization` (per graph node, from the
instruction tags of the compiled program).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import isa, regmap

__all__ = ["Timeline", "Event", "trace_program", "trace_golden", "trace_device"]

ENGINES = regmap.ENGINES
KINDS = ("busy", "wait", "stall")
_COLORS = {"busy": "#2b7bba", "wait": "#f0a030", "stall": "#d03030"}


@dataclass
class Event:
    """One interval of an engine: ``kind`` busy/wait/stall, ``start``/``end`` cycles, the
    instruction ``index`` (busy: running; wait: the waiting head; stall: the one fetch could
    not dispatch), its ``node`` tag, the semaphore ``sem`` (wait), the program ``step``."""

    engine: str
    kind: str
    start: int
    end: int
    index: int | None = None
    node: str | None = None
    sem: int | None = None
    step: int = 0
    label: str = ""

    @property
    def dur(self) -> int:
        return self.end - self.start


@dataclass
class Timeline:
    events: list = field(default_factory=list)
    cycles: int = 0
    source: str = ""

    # -- building -------------------------------------------------------------------------------
    def append(self, other: "Timeline", offset: int = 0, step: int = 0) -> None:
        """Add ``other``'s events shifted by ``offset`` cycles (the next program of a run)."""
        for e in other.events:
            self.events.append(Event(e.engine, e.kind, e.start + offset, e.end + offset, e.index, e.node,
                                     e.sem, step, e.label))
        self.cycles = max(self.cycles, offset + other.cycles)
        self.source = self.source or other.source

    # -- summaries ------------------------------------------------------------------------------
    def totals(self) -> dict:
        """``{engine: {kind: cycles}}``."""
        out = {e: dict.fromkeys(KINDS, 0) for e in ENGINES}
        for ev in self.events:
            out[ev.engine][ev.kind] += ev.dur
        return out

    def utilization(self) -> dict:
        """Per graph node (in order of first activity): ``start``, ``end`` (span of its busy
        intervals), per engine ``busy`` cycles and ``util`` (busy / span)."""
        nodes = {}
        for ev in self.events:
            if ev.kind != "busy" or ev.node is None:
                continue
            d = nodes.setdefault(ev.node, {"start": ev.start, "end": ev.end, "busy": dict.fromkeys(ENGINES, 0)})
            d["start"], d["end"] = min(d["start"], ev.start), max(d["end"], ev.end)
            d["busy"][ev.engine] += ev.dur
        for d in nodes.values():
            span = max(d["end"] - d["start"], 1)
            d["util"] = {e: d["busy"][e] / span for e in ENGINES}
        return dict(sorted(nodes.items(), key=lambda kv: kv[1]["start"]))

    def format_utilization(self) -> str:
        rows = [("node", "start", "cycles", *[f"{e} %" for e in ENGINES])]
        for n, d in self.utilization().items():
            rows.append((n, str(d["start"]), str(d["end"] - d["start"]),
                         *[f"{100 * d['util'][e]:.0f}" for e in ENGINES]))
        tot = self.totals()
        rows.append(("(all)", "0", str(self.cycles),
                     *[f"{100 * tot[e]['busy'] / max(self.cycles, 1):.0f}" for e in ENGINES]))
        w = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w[k]) if k == 0 else c.rjust(w[k]) for k, c in enumerate(r))
                         for r in rows)

    # -- outputs --------------------------------------------------------------------------------
    def to_chrome(self) -> dict:
        """Chrome trace event format: ``{"traceEvents": [...]}`` (``ph`` ``"X"`` per interval,
        ``pid`` the program step, ``tid`` the engine; ``ts``/``dur`` in cycles as µs)."""
        evs = []
        steps = sorted({e.step for e in self.events}) or [0]
        for s in steps:
            evs.append({"ph": "M", "name": "process_name", "pid": s, "tid": 0,
                        "args": {"name": f"sparrow program step {s}"}})
            for t, name in enumerate(ENGINES):
                evs.append({"ph": "M", "name": "thread_name", "pid": s, "tid": t, "args": {"name": name}})
        for e in self.events:
            if e.dur <= 0:
                continue
            if e.kind == "busy":
                name = e.label or f"#{e.index}"
            elif e.kind == "wait":
                name = f"wait sem {e.sem}"
            else:
                name = "stall (queue full)"
            args = {"index": e.index, "node": e.node}
            if e.sem is not None:
                args["sem"] = e.sem
            evs.append({"name": name, "cat": e.kind, "ph": "X", "ts": e.start, "dur": e.dur, "pid": e.step,
                        "tid": ENGINES.index(e.engine), "args": args})
        return {"traceEvents": evs, "displayTimeUnit": "ns",
                "otherData": {"source": self.source, "cycles": self.cycles, "time_unit": "1 us = 1 cycle"}}

    def save_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_chrome()))

    def save_png(self, path, title: str = "") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 3.2))
        for row, eng in enumerate(ENGINES):
            for kind in KINDS:
                bars = [(e.start, e.dur) for e in self.events if e.engine == eng and e.kind == kind and e.dur > 0]
                if bars:  # busy full height, wait (idle) half, stall (fetch blocked) a strip on top
                    y0, h = {"busy": (-0.35, 0.7), "wait": (-0.2, 0.4), "stall": (0.37, 0.12)}[kind]
                    label = "stall (fetch blocked on a full queue)" if kind == "stall" else kind
                    ax.broken_barh(bars, (len(ENGINES) - 1 - row + y0, h), facecolors=_COLORS[kind], label=label)
        util = self.utilization()
        for k, (n, d) in enumerate(util.items()):  # node spans as shaded bands
            if k % 2:
                ax.axvspan(d["start"], d["end"], color="#000000", alpha=0.05, lw=0)
            if len(util) <= 24:
                ax.text((d["start"] + d["end"]) / 2, len(ENGINES) - 0.45, n, ha="center", va="bottom",
                        fontsize=6, rotation=30)
        ax.set_yticks(range(len(ENGINES)))
        ax.set_yticklabels(list(reversed(ENGINES)))
        ax.set_xlim(0, max(self.cycles, 1))
        ax.set_ylim(-0.7, len(ENGINES) + 0.4)
        ax.set_xlabel("cycle")
        handles, labels = ax.get_legend_handles_labels()
        seen = {}
        for h, lab in zip(handles, labels, strict=True):
            seen.setdefault(lab, h)
        ax.legend(seen.values(), seen.keys(), loc="upper right", fontsize=7, ncol=3)
        ax.set_title(title or f"engine activity ({self.source}, {self.cycles} cycles)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def save(self, path) -> None:
        """``.png`` -> :meth:`save_png`, anything else -> Chrome-trace JSON."""
        if str(path).lower().endswith(".png"):
            self.save_png(path)
        else:
            self.save_json(path)


# -- sources -------------------------------------------------------------------------------------
def _label(decoded, i, tags):
    ins = decoded[i] if i is not None and i < len(decoded) else None
    mn = ins.mnemonic if ins is not None else "?"
    tag = tags[i] if tags and i is not None and i < len(tags) else None
    return f"{mn} #{i}" + (f" ({tag})" if tag else ""), tag


def trace_golden(machine, image: bytes, tags=None, max_cycles=None):
    """Run ``image`` on a golden :class:`~sparrow.golden.Machine` in concurrent mode recording
    events; returns ``(RunResult, Timeline)`` (raises ``DeviceError`` on a fault)."""
    from .errors import DeviceError
    from .golden.concurrent import run_concurrent

    decoded = machine.decode_program(image)
    machine.sems[:] = [0] * machine.cfg.n_semaphores
    idle = []
    res = run_concurrent(machine, decoded, max_cycles=max_cycles, check_races=False, events=idle)
    if not res.ok:
        err = DeviceError(res.error, res.error_engine, res.error_index, res.detail)
        err.result = res
        raise err
    dec = [d if isinstance(d, isa.Instruction) else None for d in decoded]
    tl = Timeline(cycles=res.cycles, source="golden")
    for idx, eng, t0, t1 in res.timeline:
        lab, tag = _label(dec, idx, tags)
        tl.events.append(Event(eng.name.lower(), "busy", t0, t1, idx, tag, None, 0, lab))
    for kind, eng, idx, sem, t0, t1 in idle:
        lab, tag = _label(dec, idx, tags)
        tl.events.append(Event(eng.name.lower(), kind, t0, t1, idx, tag, sem, 0, lab))
    tl.events.sort(key=lambda e: (e.start, ENGINES.index(e.engine)))
    return res, tl


def trace_device(dev, tags=None, resolution: int = 64, max_cycles: int = 50_000_000):
    """Run the program loaded on a Verilator-backend :class:`sparrow.runtime.Device`, sampling
    every ``resolution`` cycles; returns ``(RunInfo, Timeline)``."""
    from .runtime.device import RunInfo, error_from_status

    if getattr(dev, "backend_name", None) != "verilator":
        raise ValueError("trace_device: needs a Device on the verilator backend")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, not {resolution!r}")
    decoded = dev.decoded_program()
    hw = dev._b.hw
    names = [n.upper() for n in ENGINES]
    dev.clear_breakpoints()
    t0 = dev._b.start()

    def sample():
        t = hw.cycles - t0
        st = regmap.status_fields(hw.csr_read("STATUS"))
        pcs = [hw.csr_read(f"PC_{n}") for n in names]
        cnt = [[hw.read64(f"{n}_{k}") for k in ("BUSY", "WAIT", "STALL")] for n in names]
        return t, st, pcs, cnt

    tl = Timeline(source="verilator")
    prev = sample()
    last_issued = [None] * 4
    # next instruction index of each engine, to name what a PC jump issued
    eng_of = [(isa.engine_of(d).value if d is not None and isa.engine_of(d) is not None else -1) for d in decoded]
    def account(prev, cur):
        for e in range(4):
            # instructions issued in the period: engine e's instructions in [old pc, new pc)
            lo, hi = prev[2][e], cur[2][e]
            issued = [i for i in range(lo, min(hi, len(eng_of))) if eng_of[i] == e]
            if issued:
                last_issued[e] = issued[-1]
            t = prev[0]
            for k, kind in enumerate(KINDS):
                d = cur[3][e][k] - prev[3][e][k]
                if d <= 0:
                    continue
                idx = last_issued[e] if kind == "busy" else cur[2][e]  # wait/stall: the queue's next
                idx = idx if idx is not None and idx < len(decoded) else None
                lab, tag = _label(decoded, idx, tags)
                sem = None
                if kind == "wait" and idx is not None and decoded[idx] is not None:
                    sem = decoded[idx].wait_sem
                last = next((x for x in reversed(tl.events) if x.engine == ENGINES[e]), None)
                if last is not None and last.kind == kind and last.index == idx and last.end == t:
                    last.end += d  # continues the previous period's interval
                else:
                    tl.events.append(Event(ENGINES[e], kind, t, t + d, idx, tag, sem, 0, lab))
                t += d

    # counters restart at the start command: account for the cycles before the first sample
    account((0, prev[1], [0] * 4, [[0, 0, 0] for _ in range(4)]), prev)
    while True:
        if prev[1]["error"]:
            raise error_from_status(prev[1], hw.csr_read("ERR_INDEX"))
        if prev[1]["done"] and not prev[1]["busy"]:
            account(prev, sample())  # counters read after STATUS in the last sample
            break
        if hw.cycles - t0 > max_cycles:
            raise dev._b.abort_timeout(max_cycles, " while tracing")
        hw.step(resolution)
        cur = sample()
        account(prev, cur)
        prev = cur
    counters = dev.counters()
    tl.cycles = int(counters["cycles"])
    # the sampled intervals are laid from each period's start; keep them inside the run
    info = RunInfo("done", hw.cycles - t0, (), counters)
    return info, tl


def trace_program(dev, image: bytes, addr: int, tags=None, resolution: int = 64):
    """``(cycles, counters, Timeline)`` of one program on a compiler run device: the compiler's
    ``GoldenDevice``, a golden or a verilator :class:`sparrow.runtime.Device`."""
    machine = getattr(dev, "machine", None)
    if machine is None and getattr(dev, "backend_name", None) == "golden":
        dev.load_program(image, addr)
        machine = dev._b.m
    if machine is not None:
        res, tl = trace_golden(machine, image, tags)
        return int(res.cycles), dict(res.counters), tl
    dev.load_program(image, addr)
    info, tl = trace_device(dev, tags, resolution)
    return int(info.cycles), dict(info.counters), tl
