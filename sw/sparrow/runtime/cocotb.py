"""cocotb backend of :class:`sparrow.runtime.Device`: record, then replay in a cocotb test.

Calls are recorded as a script of operations; every call that returns something (``run``,
``read_dram``, ``counters``...) replays the *whole* script from reset in a fresh cocotb
simulation of ``Sparrow(cfg, bus="axi")`` with a cocotbext-axi RAM (``tb/tb_runtime.py``) and
returns that operation's result. Replays are deterministic, so results equal those of one
continuous session; the cost is one simulator start per query. :func:`execute` runs a whole
script at once (what tests with many programs use).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DeviceError, ErrorCode
from .device import ENGINE_NAMES, RunInfo, error_from_status, warn_on_collision

__all__ = ["CocotbBackend", "execute", "result_to_info"]


def _top(cfg):
    from sparrow.hdl.top import Sparrow
    return Sparrow(cfg, bus="axi")


def execute(cfg, ops, blobs, *, work_dir=None, waves=False):
    """Run ``ops`` (list of operation tuples, see tb/tb_runtime.py) with ``blobs`` (name ->
    uint8 array) in one cocotb simulation; returns the list of results."""
    from sparrow.sim.cocotb_run import run_cocotb
    d = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sparrow-cocotb-"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "script.json").write_text(json.dumps({"mem_bytes": cfg.dram_bytes, "ops": ops}))
    np.savez(d / "blobs.npz", **{k: np.asarray(v, np.uint8) for k, v in blobs.items()})
    run_cocotb(lambda: _top(cfg), name=f"sparrow_{cfg.name}_axi", test_module="tb_runtime",
               extra_env={"SPARROW_RUNTIME_SCRIPT": str(d), "SPARROW_PRESET": cfg.name}, waves=waves)
    return json.loads((d / "results.json").read_text())


def result_to_info(res, max_cycles, counters=None) -> RunInfo:
    """RunInfo from a run/resume/step result, raising DeviceError for faults and the limit."""
    st = res["status"]
    if res["stop"] == "error":
        raise error_from_status(st, res["err_index"])
    if res["stop"] == "limit":
        raise DeviceError(ErrorCode.TIMEOUT, None, None,
                          f"cycle limit {max_cycles} reached; status {st}, pcs {res['pcs']}")
    warn_on_collision(st)
    halted = tuple(n for i, n in enumerate(ENGINE_NAMES) if st["halted"] >> i & 1)
    return RunInfo(res["stop"], res["cycles"], halted if res["stop"] == "breakpoint" else (), counters or {})


class CocotbBackend:
    def __init__(self, cfg, *, work_dir=None):
        if cfg.name not in ("small", "default", "large"):
            raise ValueError(f"cfg: the cocotb backend needs a named preset, not {cfg.name!r}")
        self.cfg = cfg
        self.ops, self.blobs = [], {}
        self.work_dir = work_dir

    def _query(self, op):
        self.ops.append(op)
        return execute(self.cfg, self.ops, self.blobs, work_dir=self.work_dir)[-1]

    def write_dram(self, addr, buf):
        name = f"b{len(self.blobs)}"
        self.blobs[name] = np.frombuffer(buf, np.uint8)
        self.ops.append(["write_dram", addr, name])

    def read_dram(self, addr, n):
        return np.array(self._query(["read_dram", addr, n]), np.uint8)

    def set_program(self, base, length):
        self.ops.append(["set_program", base, length])

    def set_delay(self, slot, cycles):
        self.ops.append(["set_delay", slot, cycles])

    def set_watchdog(self, cycles):
        self.ops.append(["set_watchdog", cycles])

    def set_breakpoint(self, e, index, halt_all):
        self.ops.append(["set_bp", e, index, halt_all])

    def clear_breakpoints(self):
        self.ops.append(["clear_bp"])

    def _run_op(self, op, max_cycles):
        self.ops.append(op)
        self.ops.append(["counters"])
        results = execute(self.cfg, self.ops, self.blobs, work_dir=self.work_dir)
        return result_to_info(results[-2], max_cycles, results[-1])

    def run(self, max_cycles):
        return self._run_op(["run", int(max_cycles)], max_cycles)

    def resume(self, mask, max_cycles):
        return self._run_op(["resume", mask, int(max_cycles)], max_cycles)

    def step(self, e, max_cycles):
        return self._run_op(["step", e, int(max_cycles)], max_cycles)

    def counters(self):
        return self._query(["counters"])

    def status(self):
        return self._query(["status"])

    def pcs(self):
        return self._query(["pcs"])

    def close(self):
        self.ops = []
