"""Shared cocotb helpers for Sparrow testbenches (one module, imported by every ``tb/`` file).

Timing discipline
-----------------
All helpers drive and sample on the **falling** clock edge: at a falling edge they write their
inputs, wait for ``ReadOnly`` and sample; everything sampled then is exactly what the DUT sees at
the next rising edge, so a ``valid & ready`` seen there is a transfer at that rising edge. This
avoids the simulator-dependent question of whether a value read right after ``RisingEdge`` is
from before or after the edge.

Ports are named as Amaranth flattens them into Verilog: a ``lib.stream`` member ``o`` becomes
``o__valid``, ``o__ready`` and ``o__payload``; nested interfaces join names with ``__``.
"""

from __future__ import annotations

import os
import random
from collections import deque

import cocotb
from amaranth.hdl import Shape
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

__all__ = ["seeded", "start_clock", "reset", "sig", "pack", "unpack", "StreamSource", "StreamSink",
           "ReadPortModel", "WritePortModel", "wait_cycles"]


def seeded(dut=None):
    """``(random.Random, numpy.random.Generator, seed)`` from ``SPARROW_SEED``; logs the seed."""
    import numpy as np
    seed = int(os.environ.get("SPARROW_SEED", "1"))
    if dut is not None:
        dut._log.info(f"SPARROW_SEED={seed}")
    return random.Random(seed), np.random.default_rng(seed), seed


def start_clock(dut, period_ns=10):
    cocotb.start_soon(Clock(dut.clk, period_ns, units="ns").start())


async def reset(dut, cycles=2):
    """Hold ``rst`` for ``cycles`` rising edges (clock must be running); returns at a falling edge."""
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def wait_cycles(dut, n):
    for _ in range(n):
        await FallingEdge(dut.clk)


def sig(dut, name):
    """The DUT signal ``name`` (with ``.`` or ``__`` as the separator)."""
    return getattr(dut, name.replace(".", "__"))


# -- packing Amaranth layouts ------------------------------------------------------------------

def pack(layout, value) -> int:
    """Pack a Python value into the bits of an Amaranth shape.

    ``value`` is an int for plain shapes, a dict for struct layouts, a sequence for array layouts
    and an enum member or int for enums.
    """
    from amaranth.hdl import Shape
    from amaranth.lib import data
    if isinstance(layout, data.Layout):
        word = 0
        if isinstance(layout, data.ArrayLayout):
            items = [(i, layout.elem_shape, i * Shape.cast(layout.elem_shape).width) for i in range(layout.length)]
            values = list(value)
            if len(values) != layout.length:
                raise ValueError(f"expected {layout.length} elements, got {len(values)}")
            for (_, shape, off), v in zip(items, values):
                word |= pack(shape, v) << off
            return word
        for name, f in layout:
            if name in value:
                word |= pack(f.shape, value[name]) << f.offset
        unknown = set(value) - {n for n, _ in layout}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return word
    if hasattr(value, "value") and not isinstance(value, int):
        value = value.value
    shape = Shape.cast(layout)
    return int(value) & ((1 << shape.width) - 1)


def unpack(layout, word: int):
    """Inverse of :func:`pack` (struct -> dict, array -> list, signed shapes sign-extended)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    word = int(word)
    if isinstance(layout, data.ArrayLayout):
        w = Shape.cast(layout.elem_shape).width
        return [unpack(layout.elem_shape, (word >> (i * w)) & ((1 << w) - 1)) for i in range(layout.length)]
    if isinstance(layout, data.Layout):
        return {name: unpack(f.shape, (word >> f.offset) & ((1 << Shape.cast(f.shape).width) - 1))
                for name, f in layout}
    shape = Shape.cast(layout)
    word &= (1 << shape.width) - 1
    if shape.signed and word >> (shape.width - 1):
        word -= 1 << shape.width
    if isinstance(layout, type) and hasattr(layout, "__members__"):
        return layout(word)
    return word


# -- streams -----------------------------------------------------------------------------------

class StreamSource:
    """Drive a ``lib.stream`` input of the DUT from a queue, idling randomly between items.

    ``idle`` is the probability of holding ``valid`` low in a cycle where data is available.
    """

    def __init__(self, dut, prefix, layout=None, *, idle=0.0, rng=None):
        self.dut, self.prefix, self.layout = dut, prefix, layout
        self.valid = sig(dut, prefix + "__valid")
        self.ready = sig(dut, prefix + "__ready")
        self.payload = sig(dut, prefix + "__payload")
        self.idle, self.rng = idle, rng or random.Random(0)
        self.queue = deque()
        self.sent = 0
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send_nowait(self, item):
        self.queue.append(item)

    def extend(self, items):
        self.queue.extend(items)

    async def wait_empty(self):
        while self.queue or self._cur is not None:
            await FallingEdge(self.dut.clk)

    _cur = None

    async def _run(self):
        while True:
            await FallingEdge(self.dut.clk)
            if self._cur is None and self.queue and self.rng.random() >= self.idle:
                self._cur = self.queue.popleft()
            if self._cur is not None:
                self.valid.value = 1
                self.payload.value = self._cur if self.layout is None else pack(self.layout, self._cur)
            else:
                self.valid.value = 0
            await ReadOnly()
            if self._cur is not None and int(self.ready.value):
                self._cur = None
                self.sent += 1


class StreamSink:
    """Accept a ``lib.stream`` output of the DUT, dropping ``ready`` randomly (``stall`` prob.)."""

    def __init__(self, dut, prefix, layout=None, *, stall=0.0, rng=None, always_ready=False):
        self.dut, self.prefix, self.layout = dut, prefix, layout
        self.valid = sig(dut, prefix + "__valid")
        self.payload = sig(dut, prefix + "__payload")
        self.ready = None if always_ready else sig(dut, prefix + "__ready")
        self.stall, self.rng = stall, rng or random.Random(0)
        self.items = deque()
        self.count = 0
        if self.ready is not None:
            self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await FallingEdge(self.dut.clk)
            rdy = 1
            if self.ready is not None:
                rdy = int(self.rng.random() >= self.stall)
                self.ready.value = rdy
            await ReadOnly()
            if rdy and int(self.valid.value):
                raw = int(self.payload.value)
                self.items.append(raw if self.layout is None else unpack(self.layout, raw))
                self.count += 1

    async def recv(self, timeout_cycles=100_000):
        for _ in range(timeout_cycles):
            if self.items:
                return self.items.popleft()
            await FallingEdge(self.dut.clk)
        raise TimeoutError(f"no item on {self.prefix} within {timeout_cycles} cycles")


# -- scratchpad port models (see hdl/spad_port.py) -----------------------------------------------

class ReadPortModel:
    """Serve a scratchpad read port of the DUT from ``mem`` (a list/array of line values).

    Accepts commands with probability ``1 - stall`` per cycle and answers each after a random
    latency in ``latency`` (a (min, max) pair, min >= 1), in order.
    """

    def __init__(self, dut, prefix, mem, line_layout, *, stall=0.0, latency=(1, 1), rng=None, on_read=None):
        self.dut, self.mem, self.layout = dut, mem, line_layout
        self.cmd_valid = sig(dut, prefix + "__cmd__valid")
        self.cmd_ready = sig(dut, prefix + "__cmd__ready")
        self.cmd_addr = sig(dut, prefix + "__cmd__payload")
        self.rsp_valid = sig(dut, prefix + "__rsp__valid")
        self.rsp_data = sig(dut, prefix + "__rsp__payload")
        self.stall, self.latency, self.rng = stall, latency, rng or random.Random(0)
        self.on_read = on_read
        self.reads = 0
        self.cycle = 0
        self.pending = deque()   # (due_cycle, packed)
        self.cmd_ready.value = 0
        self.rsp_valid.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await FallingEdge(self.dut.clk)
            self.cycle += 1
            if self.pending and self.pending[0][0] <= self.cycle:
                self.rsp_valid.value = 1
                self.rsp_data.value = self.pending.popleft()[1]
            else:
                self.rsp_valid.value = 0
            rdy = int(self.rng.random() >= self.stall)
            self.cmd_ready.value = rdy
            await ReadOnly()
            if rdy and int(self.cmd_valid.value):
                addr = int(self.cmd_addr.value)
                if self.on_read:
                    self.on_read(addr)
                line = self.mem[addr]
                due = max(self.cycle + self.rng.randint(*self.latency),
                          self.pending[-1][0] + 1 if self.pending else 0)
                self.pending.append((due, pack(self.layout, line)))
                self.reads += 1


class WritePortModel:
    """Accept a scratchpad write port of the DUT into ``mem`` (``stall`` drops ready randomly)."""

    def __init__(self, dut, prefix, mem, line_layout, *, stall=0.0, rng=None, on_write=None):
        self.dut, self.mem, self.layout = dut, mem, line_layout
        self.valid = sig(dut, prefix + "__cmd__valid")
        self.ready = sig(dut, prefix + "__cmd__ready")
        self.payload = sig(dut, prefix + "__cmd__payload")
        self.stall, self.rng, self.on_write = stall, rng or random.Random(0), on_write
        self.writes = []
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await FallingEdge(self.dut.clk)
            rdy = int(self.rng.random() >= self.stall)
            self.ready.value = rdy
            await ReadOnly()
            if rdy and int(self.valid.value):
                raw = int(self.payload.value)
                aw = len(self.payload) - Shape.cast(self.layout).width
                addr = raw & ((1 << aw) - 1)
                line = unpack(self.layout, raw >> aw)
                self.mem[addr] = line
                self.writes.append(addr)
                if self.on_write:
                    self.on_write(addr, line)


# -- CSR host interface (hdl/csr.py) -------------------------------------------------------------

class CsrMaster:
    """Host-side access to the ``csr`` bus of the Sparrow top (``csr__addr``, ``csr__r_stb``, ...).

    Register names come from :mod:`sparrow.regmap`.
    """

    def __init__(self, dut, prefix="csr"):
        self.dut = dut
        self.addr = sig(dut, prefix + "__addr")
        self.r_stb = sig(dut, prefix + "__r_stb")
        self.r_data = sig(dut, prefix + "__r_data")
        self.w_stb = sig(dut, prefix + "__w_stb")
        self.w_data = sig(dut, prefix + "__w_data")
        self.r_stb.value = 0
        self.w_stb.value = 0

    @staticmethod
    def _addr(reg):
        from sparrow import regmap
        return reg if isinstance(reg, int) else regmap.addr(reg)

    async def write(self, reg, value):
        await FallingEdge(self.dut.clk)
        self.addr.value = self._addr(reg)
        self.w_data.value = value & 0xFFFFFFFF
        self.w_stb.value = 1
        await FallingEdge(self.dut.clk)
        self.w_stb.value = 0

    async def read(self, reg) -> int:
        """The register's value at the strobe's edge (``regmap.READ_LATENCY`` edges later)."""
        from sparrow import regmap
        await FallingEdge(self.dut.clk)
        self.addr.value = self._addr(reg)
        self.r_stb.value = 1
        await FallingEdge(self.dut.clk)
        self.r_stb.value = 0
        for _ in range(regmap.READ_LATENCY - 1):
            await FallingEdge(self.dut.clk)
        await ReadOnly()
        return int(self.r_data.value)

    async def program(self, prog_base, n_instructions, watchdog=20000):
        """Point fetch at a program and set the watchdog (start it with ``CTRL = 1``)."""
        await self.write("PROG_BASE", prog_base)
        await self.write("PROG_LEN", n_instructions)
        await self.write("WATCHDOG", watchdog)

    async def wait_idle(self, max_polls, poll_cycles=64) -> dict:
        """Poll STATUS every ``poll_cycles`` until not busy; returns the decoded STATUS fields."""
        from cocotb.triggers import ClockCycles

        from sparrow import regmap
        status = {}
        for _ in range(max_polls):
            await ClockCycles(self.dut.clk, poll_cycles)
            status = regmap.status_fields(await self.read("STATUS"))
            if not status["busy"]:
                break
        return status

    async def read64(self, name) -> int:
        lo = await self.read(f"{name.upper()}_LO")
        hi = await self.read(f"{name.upper()}_HI")
        return lo | (hi << 32)
