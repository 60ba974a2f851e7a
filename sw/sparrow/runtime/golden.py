"""Golden-model backend of :class:`sparrow.runtime.Device` (see its docstring for semantics)."""

from __future__ import annotations

from .. import isa, regmap
from ..errors import DeviceError
from ..golden import Machine
from .device import ENGINE_NAMES, RunInfo

__all__ = ["GoldenBackend"]

_COUNTERS = regmap.COUNTERS


class GoldenBackend:
    def __init__(self, cfg):
        self.cfg = cfg
        self.m = Machine(cfg)
        self.base = self.length = 0
        self.bps = {}          # engine -> index
        self.halt_all = False
        self.pos = 0           # next instruction (program order) in breakpoint mode
        self.passed = None     # index of the breakpoint being resumed past
        self.decoded = []
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._status = {"busy": 0, "done": 0, "error": 0, "error_engine": 7, "halted": 0, "stuck": 0,
                        "fetch_done": 1, "collision": 0}
        self._halt = None

    # memory / setup
    def write_dram(self, addr, buf):
        self.m.write_dram(addr, buf)

    def read_dram(self, addr, n):
        return self.m.read_dram(addr, n)

    def set_program(self, base, length):
        self.base, self.length = base, length

    def set_delay(self, slot, cycles):
        self.m.delays[slot] = cycles

    def set_watchdog(self, cycles):
        pass  # the concurrent model detects deadlock itself

    def set_breakpoint(self, e, index, halt_all):
        self.bps[e] = index
        self.halt_all = halt_all

    def clear_breakpoints(self):
        self.bps.clear()

    # running
    def _image(self):
        return bytes(self.m.read_dram(self.base, self.length * isa.WORD_BYTES))

    def _engine_at(self, i):
        """Engine number (0..3) of instruction ``i``, None for HALT or an undecodable word."""
        ins = self.decoded[i]
        e = isa.engine_of(ins) if isinstance(ins, isa.Instruction) else None
        return None if e is None else e.value

    def _fail(self, res):
        self._status.update(busy=0, done=0, error=res.error.value,
                            error_engine=res.error_engine.value if res.error_engine is not None else 4)
        err = DeviceError(res.error, res.error_engine, res.error_index, res.detail)
        err.result = res
        raise err

    def _begin(self) -> bytes:
        """Reset counters and status for a new run; decode the program; returns its image."""
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._status.update(busy=1, done=0, error=0, error_engine=7, halted=0)
        img = self._image()
        self.decoded = self.m.decode_program(img)
        halts = [i for i, ins in enumerate(self.decoded)
                 if isinstance(ins, isa.Instruction) and ins.opcode == isa.Opcode.HALT]
        self._halt = halts[0] if halts else len(self.decoded)
        self.pos, self.passed = 0, None
        return img

    def run(self, max_cycles):
        img = self._begin()
        if not self.bps:
            res = self.m.run(img, mode="concurrent", raise_on_error=False, max_cycles=max_cycles,
                             check_races=False)
            self._add(res.counters)
            if not res.ok:
                self._fail(res)
            self._status.update(busy=0, done=1)
            self.pos = self._halt
            return RunInfo("done", res.cycles, (), dict(self._counters))
        return self._segment(self._next_stop(), max_cycles)

    def run_to(self, cut, bps, max_cycles):
        """Program order: run ``[0, cut)`` and halt the engines holding a breakpoint (``bps``:
        engine -> index, set by :meth:`Device.run_to`)."""
        words = self._begin()[:cut * isa.WORD_BYTES]
        res = self.m.run(words, mode="program", raise_on_error=False, max_cycles=max_cycles)
        self._add(res.counters)
        if not res.ok:
            self._fail(res)
        self.pos = cut
        mask = 0
        for e in bps:
            mask |= 1 << e
        self._status.update(halted=mask)
        halted = tuple(n for i, n in enumerate(ENGINE_NAMES) if mask >> i & 1)
        return RunInfo("breakpoint", res.cycles, halted, dict(self._counters))

    def _next_stop(self):
        stops = [idx for e, idx in self.bps.items()
                 if self.pos <= idx < self._halt and self._engine_at(idx) == e and idx != self.passed]
        return min(stops) if stops else None

    def _segment(self, stop, max_cycles):
        """Run [pos, stop) in program order (stop None: to the end); halt at stop."""
        end = self._halt if stop is None else stop
        words = self._image()[self.pos * isa.WORD_BYTES:end * isa.WORD_BYTES]
        res = self.m.run(words, mode="program", raise_on_error=False, max_cycles=max_cycles)
        if res.error_index is not None:
            res.error_index += self.pos
        self._add(res.counters)
        if not res.ok:
            self._fail(res)
        self.pos = end
        if stop is None:
            self._status.update(busy=0, done=1, halted=0)
            return RunInfo("done", res.cycles, (), dict(self._counters))
        e = self._engine_at(stop)
        mask = 0xF if self.halt_all else (1 << e)
        self._status.update(halted=mask)
        halted = tuple(n for i, n in enumerate(ENGINE_NAMES) if mask >> i & 1)
        return RunInfo("breakpoint", res.cycles, halted, dict(self._counters))

    def _require_halted(self):
        if not self._status["busy"] or not self._status["halted"]:
            raise ValueError("the device is not halted at a breakpoint")

    def resume(self, mask, max_cycles):
        self._require_halted()
        self.passed = self.pos
        self._status.update(halted=0)
        return self._segment(self._next_stop(), max_cycles)

    def step(self, e, max_cycles):
        self._require_halted()
        nxt = [i for i in range(self.pos, self._halt) if self._engine_at(i) == e]
        if not nxt:
            return self.resume(0xF, max_cycles)
        self.passed = self.pos
        return self._segment(nxt[0] + 1 if nxt[0] + 1 < self._halt else None, max_cycles)

    def _add(self, counters):
        for k in _COUNTERS:
            self._counters[k] += int(counters.get(k, 0))

    # state
    def counters(self):
        return dict(self._counters)

    def status(self):
        return dict(self._status)

    def pcs(self):
        out = {}
        for e, name in enumerate(ENGINE_NAMES):
            nxt = [i for i in range(self.pos, self._halt or 0) if self._engine_at(i) == e]
            out[name] = nxt[0] if nxt else None
        out["fetch"] = self.pos
        return out

    def close(self):
        self.m = None

