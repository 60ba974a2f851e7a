"""cocotb testbench of the DMA LOAD and STORE engines (``hdl/dma_load.py``, ``hdl/dma_store.py``).

The DUT is :class:`DmaPair`: both engines side by side, ports prefixed ``ld__`` and ``st__``.
Around it: a membus memory model per engine on one shared Python ``bytearray`` DRAM (random
command/data back-pressure, random read latency, in-order responses, ``err`` for beats outside
memory or in a "poisoned" range) and scratchpad port models (``tbutil``) on NumPy arrays.
Every expectation is computed here from NumPy slicing or ``sparrow.codec``.

Environment: ``SPARROW_PRESET`` (config), ``SPARROW_SEED``, ``SPARROW_DMA_QUICK`` (fewer
random cases), ``SPARROW_DMA_BENCH`` (path: run only the benchmark and write its JSON there).
"""

from __future__ import annotations

import json
import os
import random
from collections import deque

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from sparrow import codec, isa
from sparrow.config import preset
from sparrow.errors import ErrorCode
from sparrow.hdl.dma_load import LoadEngine
from sparrow.hdl.dma_store import StoreEngine
from sparrow.hdl.membus import mem_cmd_layout, mem_rdata_layout, mem_wdata_layout, mem_wresp_layout
from sparrow.hdl.spad_port import acc_line, act_line


# -- DUT ---------------------------------------------------------------------------------------


class DmaPair(wiring.Component):
    """Both DMA engines, unconnected to each other (ports ``ld__*`` and ``st__*``)."""

    def __init__(self, cfg):
        self._ld = LoadEngine(cfg)
        self._st = StoreEngine(cfg)
        super().__init__({"ld": Out(self._ld.signature), "st": Out(self._st.signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.ld = self._ld
        m.submodules.st = self._st
        wiring.connect(m, wiring.flipped(self.ld), self._ld)
        wiring.connect(m, wiring.flipped(self.st), self._st)
        return m


def dut_verilog(cfg, name=None) -> str:
    """Verilog of :class:`DmaPair`."""
    from sparrow.sim.cocotb_run import verilog_of
    return verilog_of(DmaPair(cfg), name or f"dma_pair_{cfg.name}")


# -- everything below runs inside the simulator ------------------------------------------------

try:
    import cocotb
    from cocotb.triggers import FallingEdge, ReadOnly

    from sparrow.sim.tbutil import (
        ReadPortModel,
        StreamSource,
        WritePortModel,
        pack,
        reset,
        seeded,
        sig,
        start_clock,
        unpack,
    )
except ImportError:  # pragma: no cover - only the DUT helpers are needed outside cocotb
    cocotb = None


class MemBusModel:
    """A membus slave on ``prefix`` serving ``mem`` (bytearray). See module docstring.

    Checks the protocol on the way: aligned addresses, ``len < max_burst``, no 4 KiB crossing,
    ``last`` on exactly the last write beat. Records read beat addresses and written bytes.
    """

    def __init__(
        self,
        dut,
        prefix,
        mem,
        cfg,
        rng,
        *,
        cmd_stall=0.3,
        rdata_stall=0.2,
        wdata_stall=0.3,
        latency=(1, 8),
        wresp_latency=(1, 4),
        poison=None,
    ):
        self.dut, self.mem, self.cfg, self.rng = dut, mem, cfg, rng
        self.mb = cfg.mem_bytes
        p = prefix
        self.cmd_valid, self.cmd_ready, self.cmd_payload = (
            sig(dut, f"{p}__cmd__{n}") for n in ("valid", "ready", "payload")
        )
        self.rd_valid, self.rd_ready, self.rd_payload = (
            sig(dut, f"{p}__rdata__{n}") for n in ("valid", "ready", "payload")
        )
        self.wd_valid, self.wd_ready, self.wd_payload = (
            sig(dut, f"{p}__wdata__{n}") for n in ("valid", "ready", "payload")
        )
        self.wr_valid, self.wr_ready, self.wr_payload = (
            sig(dut, f"{p}__wresp__{n}") for n in ("valid", "ready", "payload")
        )
        self.cmd_layout = mem_cmd_layout(cfg.dram_addr_bits)
        self.rd_layout = mem_rdata_layout(self.mb)
        self.wd_layout = mem_wdata_layout(self.mb)
        self.wr_layout = mem_wresp_layout()
        self.cmd_stall, self.rdata_stall, self.wdata_stall = cmd_stall, rdata_stall, wdata_stall
        self.latency, self.wresp_latency = latency, wresp_latency
        self.poison = poison  # (lo, hi) byte range answering err
        self.errors = []  # protocol violations seen
        self.clear()
        self.cmd_ready.value = 0
        self.rd_valid.value = 0
        self.wd_ready.value = 0
        self.wr_valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def clear(self):
        self.cycle = getattr(self, "cycle", 0)
        self.rq = deque()  # (due, data, last, err)
        self.wcmds = deque()  # [addr, beats, index, err]
        self.wbeats = deque()
        self.bq = deque()  # (due, err)
        self.rhold = False
        self.read_beats = []
        self.written = set()
        self.rd_beats = 0
        self.wd_beats = 0
        self.first_cmd_cycle = None

    def _bad(self, a):
        if a + self.mb > self.cfg.dram_bytes:
            return True
        return self.poison is not None and self.poison[0] <= a < self.poison[1]

    def _check_cmd(self, addr, ln):
        if addr % self.mb:
            self.errors.append(f"unaligned burst address {addr:#x}")
        if ln + 1 > self.cfg.max_burst:
            self.errors.append(f"burst of {ln + 1} beats > max_burst {self.cfg.max_burst}")
        if addr % 4096 + (ln + 1) * self.mb > 4096:
            self.errors.append(f"burst at {addr:#x} of {ln + 1} beats crosses 4 KiB")

    async def _run(self):
        mb = self.mb
        while True:
            await FallingEdge(self.dut.clk)
            self.cycle += 1
            if (
                self.rq
                and self.rq[0][0] <= self.cycle
                and (self.rhold or self.rng.random() >= self.rdata_stall)
            ):
                self.rhold = True
                _, d, last, err = self.rq[0]
                self.rd_valid.value = 1
                self.rd_payload.value = pack(self.rd_layout, {"data": d, "last": last, "err": err})
            else:
                self.rd_valid.value = 0
            if self.bq and self.bq[0][0] <= self.cycle:
                self.wr_valid.value = 1
                self.wr_payload.value = pack(self.wr_layout, {"err": self.bq[0][1]})
            else:
                self.wr_valid.value = 0
            crdy = int(self.rng.random() >= self.cmd_stall)
            wrdy = int(self.rng.random() >= self.wdata_stall)
            self.cmd_ready.value = crdy
            self.wd_ready.value = wrdy
            await ReadOnly()
            if self.rhold and int(self.rd_ready.value):
                self.rq.popleft()
                self.rhold = False
                self.rd_beats += 1
            if self.bq and self.bq[0][0] <= self.cycle and int(self.wr_ready.value):
                self.bq.popleft()
            if crdy and int(self.cmd_valid.value):
                c = unpack(self.cmd_layout, int(self.cmd_payload.value))
                addr, ln = c["addr"], c["len"]
                if self.first_cmd_cycle is None:
                    self.first_cmd_cycle = self.cycle
                self._check_cmd(addr, ln)
                if c["write"]:
                    self.wcmds.append([addr, ln + 1, 0, False])
                else:
                    due = self.cycle + self.rng.randint(*self.latency)
                    if self.rq:
                        due = max(due, self.rq[-1][0] + 1)
                    for i in range(ln + 1):
                        a = addr + i * mb
                        self.read_beats.append(a)
                        err = self._bad(a)
                        d = 0 if err else int.from_bytes(self.mem[a : a + mb], "little")
                        self.rq.append((due + i, d, int(i == ln), int(err)))
            if wrdy and int(self.wd_valid.value):
                self.wbeats.append(unpack(self.wd_layout, int(self.wd_payload.value)))
                self.wd_beats += 1
            while self.wcmds and self.wbeats:
                cmd = self.wcmds[0]
                beat = self.wbeats.popleft()
                a = cmd[0] + cmd[2] * mb
                if bool(beat["last"]) != (cmd[2] == cmd[1] - 1):
                    self.errors.append(f"wdata last={beat['last']} on beat {cmd[2]} of {cmd[1]}")
                if self._bad(a):
                    cmd[3] = True
                else:
                    for j in range(mb):
                        if beat["strb"] >> j & 1:
                            self.mem[a + j] = (beat["data"] >> 8 * j) & 0xFF
                            self.written.add(a + j)
                cmd[2] += 1
                if cmd[2] == cmd[1]:
                    self.wcmds.popleft()
                    due = self.cycle + self.rng.randint(*self.wresp_latency)
                    if self.bq:
                        due = max(due, self.bq[-1][0] + 1)
                    self.bq.append((due, int(cmd[3])))


class Env:
    """DUT + models for one cocotb test."""

    def __init__(self, dut, *, stall=True, poison=None):
        self.dut = dut
        self.cfg = cfg = preset(os.environ.get("SPARROW_PRESET", "small"))
        self.rng, self.nprng, self.seed = seeded(dut)
        C = cfg.cols
        self.dram = bytearray(cfg.dram_bytes)
        self.spads = {
            isa.Spad.ACT: np.zeros((cfg.act_depth, C), np.int8),
            isa.Spad.WGT: np.zeros((cfg.wgt_depth, C), np.int8),
            isa.Spad.ACC: np.zeros((cfg.acc_depth, C), np.int32),
        }
        layouts = {isa.Spad.ACT: act_line(C), isa.Spad.WGT: act_line(C), isa.Spad.ACC: acc_line(C)}
        r = self.rng
        s = 0.25 if stall else 0.0
        self.spad_writes = []
        self.wports = {
            sp: WritePortModel(
                dut,
                f"ld__{sp.name.lower()}_wr",
                self.spads[sp],
                layouts[sp],
                stall=s,
                rng=random.Random(r.random()),
                on_write=lambda a, line, sp=sp: self.spad_writes.append((sp, a)),
            )
            for sp in isa.Spad
        }
        self.rports = {
            sp: ReadPortModel(
                dut,
                f"st__{sp.name.lower()}_rd",
                self.spads[sp],
                layouts[sp],
                stall=s,
                latency=(1, 3) if stall else (1, 1),
                rng=random.Random(r.random()),
            )
            for sp in isa.Spad
        }
        kw = (
            {}
            if stall
            else dict(cmd_stall=0.0, rdata_stall=0.0, wdata_stall=0.0, latency=(8, 8), wresp_latency=(4, 4))
        )
        self.ldmem = MemBusModel(
            dut, "ld__bus", self.dram, cfg, random.Random(r.random()), poison=poison, **kw
        )
        self.stmem = MemBusModel(
            dut, "st__bus", self.dram, cfg, random.Random(r.random()), poison=poison, **kw
        )
        self.src = {"ld": StreamSource(dut, "ld__instr"), "st": StreamSource(dut, "st__instr")}
        self.dones = {"ld": [], "st": []}
        self.accepts = {"ld": [], "st": []}
        self.cycle = 0
        self._mon = cocotb.start_soon(self._monitor())

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.clk)
            self.cycle += 1
            await ReadOnly()
            for e in ("ld", "st"):
                if int(sig(self.dut, f"{e}__done").value):
                    self.dones[e].append(self.cycle)
                if int(sig(self.dut, f"{e}__instr__valid").value) and int(
                    sig(self.dut, f"{e}__instr__ready").value
                ):
                    self.accepts[e].append(self.cycle)
            # STORE's ready is a register of its own: it must say exactly "idle and no error"
            st_ready, st_busy = int(self.dut.st__instr__ready.value), int(self.dut.st__busy.value)
            assert st_ready == (not st_busy and int(self.dut.st__error.value) == 0), (
                f"cycle {self.cycle}: st ready {st_ready}, busy {st_busy}")

    async def start(self):
        start_clock(self.dut)
        await reset(self.dut)

    async def reset(self):
        for s in self.src.values():
            s.queue.clear()
            s._cur = None
        await reset(self.dut)
        for mem in (self.ldmem, self.stmem):
            mem.clear()
        for p in self.rports.values():
            p.pending.clear()
        self.dones = {"ld": [], "st": []}
        self.accepts = {"ld": [], "st": []}
        self.spad_writes.clear()

    def error(self, eng):
        return ErrorCode(int(sig(self.dut, f"{eng}__error").value))

    def counter(self, eng, name):
        return int(sig(self.dut, f"{eng}__{name}").value)

    def issue(self, eng, instr):
        self.src[eng].send_nowait(isa.encode(instr))

    async def wait(self, eng, n_done, timeout=200_000):
        """Until ``n_done`` done pulses or an error; returns the error code."""
        for _ in range(timeout):
            await FallingEdge(self.dut.clk)
            if len(self.dones[eng]) >= n_done or self.error(eng) != ErrorCode.NONE:
                for _ in range(3):
                    await FallingEdge(self.dut.clk)
                return self.error(eng)
        raise TimeoutError(f"{eng}: {len(self.dones[eng])}/{n_done} done within {timeout} cycles")

    def check_busy(self, eng, busy0, stall0):
        """One instruction ran since the counters were ``busy0``/``stall0``: busy_cycles counts
        exactly the cycles from its acceptance to its done pulse; stalls are a part of them."""
        busy = self.counter(eng, "busy_cycles") - busy0
        stall = self.counter(eng, "stall_cycles") - stall0
        assert len(self.accepts[eng]) == 1 and len(self.dones[eng]) == 1
        assert busy == self.dones[eng][0] - self.accepts[eng][0], (busy, self.accepts[eng], self.dones[eng])
        assert 0 <= stall < busy

    def check_protocol(self):
        errs = self.ldmem.errors + self.stmem.errors
        assert not errs, errs[:5]

    # -- references ---------------------------------------------------------------------------
    def line_size(self, sp):
        return 4 * self.cfg.cols if sp == isa.Spad.ACC else self.cfg.cols

    def line_bytes(self, sp, line):
        return np.asarray(line, "<i4" if sp == isa.Spad.ACC else np.int8).tobytes()

    def bytes_to_line(self, sp, b):
        return np.frombuffer(bytes(b), "<i4" if sp == isa.Spad.ACC else np.int8)

    def expect_load(self, i: isa.Instruction):
        """Expected scratchpad array after LOAD ``i`` (from the current DRAM)."""
        sp, C = i.spad, self.cfg.cols
        out = self.spads[sp].copy()
        lsz = self.line_size(sp)
        lb = i.line_bytes or lsz
        width = i.pad_left + i.row_lines + i.pad_right
        height = i.pad_top + i.rows + i.pad_bottom
        out[i.spad_addr : i.spad_addr + width * height] = 0
        for y in range(i.rows):
            if i.compressed:
                s = i.dram_addr + y * i.dram_stride
                lines, _ = codec.decompress_group(
                    self.dram[s : s + 2 + codec.group_capacity(i.row_lines, C)], i.row_lines, C
                )
            for x in range(i.row_lines):
                idx = i.spad_addr + (i.pad_top + y) * width + i.pad_left + x
                if i.compressed:
                    out[idx] = lines[x]
                else:
                    a = i.dram_addr + y * i.dram_stride + x * lb
                    out[idx] = self.bytes_to_line(sp, bytes(self.dram[a : a + lb]) + bytes(lsz - lb))
        return out

    def expect_store(self, i: isa.Instruction):
        """Expected DRAM after STORE ``i`` (from the current scratchpad)."""
        sp = i.spad
        out = bytearray(self.dram)
        lsz = self.line_size(sp)
        lb = i.line_bytes or lsz
        S = i.spad_stride or i.row_lines
        for y in range(i.rows):
            base = i.spad_addr + y * S
            lines = self.spads[sp][base : base + i.row_lines]
            a = i.dram_addr + y * i.dram_stride
            if i.compressed:
                g = codec.compress_group(lines)
                out[a : a + len(g)] = g
            else:
                for x in range(i.row_lines):
                    out[a + x * lb : a + (x + 1) * lb] = self.line_bytes(sp, lines[x])[:lb]
        return out

    def fill_dram(self, lo, hi):
        self.dram[lo:hi] = self.nprng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()

    def random_lines(self, sp, n, sparsity):
        C = self.cfg.cols
        if sp == isa.Spad.ACC:
            v = self.nprng.integers(-(1 << 31), 1 << 31, (n, C), dtype=np.int64).astype(np.int32)
        else:
            v = self.nprng.integers(-128, 128, (n, C)).astype(np.int8)
        v[self.nprng.random((n, C)) < sparsity] = 0
        return v


def _slot(cfg, rl):
    return 2 + codec.group_capacity(rl, cfg.cols)


def _quick():
    return os.environ.get("SPARROW_DMA_QUICK") == "1"


def _bench_mode():
    return bool(os.environ.get("SPARROW_DMA_BENCH"))


def _test(**kw):
    """cocotb.test that is skipped in benchmark mode."""

    def deco(f):
        return cocotb.test(skip=_bench_mode(), **kw)(f) if cocotb else f

    return deco


# -- tests -------------------------------------------------------------------------------------


@_test()
async def compressed_roundtrip(dut):
    """Random tensors at sparsity 0..100 %: compress-STORE == codec bytes, decompress-LOAD == data."""
    env = Env(dut)
    await env.start()
    cfg, C = env.cfg, env.cfg.cols
    sparsities = (0.0, 0.5, 1.0) if _quick() else (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    for k, sparsity in enumerate(sparsities):
        sp = isa.Spad.ACT if k % 2 == 0 else isa.Spad.WGT
        dst = isa.Spad.WGT if sp == isa.Spad.ACT else isa.Spad.ACT
        rows, rl = env.rng.randint(1, 5), env.rng.randint(1, 12)
        stride = _slot(cfg, rl) + env.rng.randrange(0, 9)
        addr = env.rng.randrange(0, 1 << 16) + (4096 - 5 if k == 1 else 0)
        src_line = env.rng.randrange(0, 64)
        data = env.random_lines(sp, rows * rl, sparsity).reshape(rows, rl, C)
        env.spads[sp][src_line : src_line + rows * rl] = data.reshape(-1, C)
        env.fill_dram(max(0, addr - 64), addr + rows * stride + 64)
        st = isa.make(
            "store",
            spad=sp,
            spad_addr=src_line,
            dram_addr=addr,
            rows=rows,
            row_lines=rl,
            dram_stride=stride,
            compressed=1,
            cfg=cfg,
        )
        expect = env.expect_store(st)
        b0, r0 = env.counter("st", "bytes"), env.counter("st", "bytes_raw")
        busy0, stall0 = env.counter("st", "busy_cycles"), env.counter("st", "stall_cycles")
        env.issue("st", st)
        assert await env.wait("st", 1) == ErrorCode.NONE
        env.check_busy("st", busy0, stall0)
        assert env.dram == expect, f"compressed STORE bytes differ (sparsity {sparsity})"
        sizes = [codec.group_size(data[y]) for y in range(rows)]
        allowed = {addr + y * stride + j for y in range(rows) for j in range(sizes[y])}
        assert env.stmem.written == allowed, "STORE wrote bytes outside 2+N per slot"
        assert env.counter("st", "bytes") - b0 == sum(sizes)
        assert env.counter("st", "bytes_raw") - r0 == rows * rl * C
        # LOAD it back (with padding) into the other scratchpad
        pads = dict(
            pad_top=env.rng.randint(0, 2),
            pad_bottom=env.rng.randint(0, 1),
            pad_left=env.rng.randint(0, 2),
            pad_right=env.rng.randint(0, 1),
        )
        dst_line = env.rng.randrange(0, 64)
        ld = isa.make(
            "load",
            spad=dst,
            spad_addr=dst_line,
            dram_addr=addr,
            rows=rows,
            row_lines=rl,
            dram_stride=stride,
            compressed=1,
            cfg=cfg,
            **pads,
        )
        exp = env.expect_load(ld)
        width = pads["pad_left"] + rl + pads["pad_right"]
        got_region = exp[dst_line : dst_line + width * (pads["pad_top"] + rows + pads["pad_bottom"])]
        b0, r0 = env.counter("ld", "bytes"), env.counter("ld", "bytes_raw")
        busy0, stall0 = env.counter("ld", "busy_cycles"), env.counter("ld", "stall_cycles")
        env.issue("ld", ld)
        assert await env.wait("ld", 1) == ErrorCode.NONE
        env.check_busy("ld", busy0, stall0)
        assert np.array_equal(env.spads[dst], exp), f"decompressed LOAD differs (sparsity {sparsity})"
        data_rows = got_region.reshape(-1, width, C)[
            pads["pad_top"] : pads["pad_top"] + rows, pads["pad_left"] : pads["pad_left"] + rl
        ]
        assert np.array_equal(data_rows, data), "round trip differs from the original tensor"
        assert env.counter("ld", "bytes") - b0 == sum(sizes)
        assert env.counter("ld", "bytes_raw") - r0 == rows * rl * C
        env.check_protocol()
        await env.reset()


@_test()
async def uncompressed_loads(dut):
    """Strided, unaligned, line_bytes < line and padded loads into every scratchpad vs NumPy."""
    env = Env(dut)
    await env.start()
    cfg = env.cfg
    for k in range(8 if _quick() else 24):
        sp = list(isa.Spad)[k % 3]
        lsz = env.line_size(sp)
        lb = env.rng.choice([0, 0, env.rng.randint(1, lsz)])
        eff = lb or lsz
        rows, rl = env.rng.randint(1, 5), env.rng.randint(1, 8 if sp == isa.Spad.ACC else 20)
        stride = env.rng.choice(
            [rl * eff, rl * eff + env.rng.randint(1, 40), env.rng.randint(0, 3 * rl * eff)]
        )
        addr = env.rng.randrange(0, 1 << 16) + (4096 - env.rng.randint(1, 64) if k % 4 == 1 else 0)
        pads = dict(
            pad_top=env.rng.randint(0, 2),
            pad_bottom=env.rng.randint(0, 2),
            pad_left=env.rng.randint(0, 2),
            pad_right=env.rng.randint(0, 2),
        )
        depth = cfg.spad_depth(sp)
        region = (pads["pad_top"] + rows + pads["pad_bottom"]) * (pads["pad_left"] + rl + pads["pad_right"])
        spad_addr = env.rng.randrange(0, depth - region + 1)
        if k % 5 == 0:
            spad_addr = depth - region  # footprint ends exactly at the last line
        env.fill_dram(addr, addr + rows * max(stride, rl * eff) + rl * eff + 64)
        env.spads[sp][:] = env.random_lines(sp, depth, 0.3)
        ld = isa.make(
            "load",
            spad=sp,
            spad_addr=spad_addr,
            dram_addr=addr,
            rows=rows,
            row_lines=rl,
            dram_stride=stride,
            line_bytes=lb,
            cfg=cfg,
            **pads,
        )
        exp = env.expect_load(ld)
        b0, r0 = env.counter("ld", "bytes"), env.counter("ld", "bytes_raw")
        env.issue("ld", ld)
        assert await env.wait("ld", 1) == ErrorCode.NONE, ld
        assert np.array_equal(env.spads[sp], exp), f"LOAD differs: {ld}"
        assert env.counter("ld", "bytes") - b0 == rows * rl * eff
        assert env.counter("ld", "bytes_raw") - r0 == rows * rl * eff
        # every beat read holds at least one byte of the transfer
        need = {(addr + y * stride + j) // cfg.mem_bytes for y in range(rows) for j in range(rl * eff)}
        assert {a // cfg.mem_bytes for a in env.ldmem.read_beats} <= need, "read a beat outside the transfer"
        env.check_protocol()
        await env.reset()


@_test()
async def uncompressed_stores(dut):
    """Strided, unaligned, line_bytes < line, spad_stride stores from every scratchpad vs NumPy."""
    env = Env(dut)
    await env.start()
    cfg = env.cfg
    for k in range(8 if _quick() else 24):
        sp = list(isa.Spad)[k % 3]
        lsz = env.line_size(sp)
        lb = env.rng.choice([0, 0, env.rng.randint(1, lsz)])
        eff = lb or lsz
        rows, rl = env.rng.randint(1, 5), env.rng.randint(1, 8 if sp == isa.Spad.ACC else 20)
        stride = env.rng.choice(
            [rl * eff, rl * eff + env.rng.randint(1, 40), env.rng.randint(0, 3 * rl * eff)]
        )
        addr = env.rng.randrange(0, 1 << 16) + (4096 - env.rng.randint(1, 64) if k % 4 == 1 else 0)
        sstride = env.rng.choice([0, env.rng.randint(0, 2 * rl)])
        foot = (rows - 1) * (sstride or rl) + rl
        spad_addr = env.rng.randrange(0, cfg.spad_depth(sp) - foot + 1)
        if k % 5 == 0:
            spad_addr = cfg.spad_depth(sp) - foot  # footprint ends exactly at the last line
        env.spads[sp][:] = env.random_lines(sp, cfg.spad_depth(sp), 0.3)
        env.fill_dram(max(0, addr - 64), addr + rows * max(stride, rl * eff) + rl * eff + 64)
        st = isa.make(
            "store",
            spad=sp,
            spad_addr=spad_addr,
            dram_addr=addr,
            rows=rows,
            row_lines=rl,
            dram_stride=stride,
            line_bytes=lb,
            spad_stride=sstride,
            cfg=cfg,
        )
        exp = env.expect_store(st)
        b0 = env.counter("st", "bytes")
        env.issue("st", st)
        assert await env.wait("st", 1) == ErrorCode.NONE, st
        assert env.dram == exp, f"STORE differs: {st}"
        region = {addr + y * stride + j for y in range(rows) for j in range(rl * eff)}
        assert env.stmem.written <= region, "STORE wrote outside its region"
        assert env.counter("st", "bytes") - b0 == rows * rl * eff
        env.check_protocol()
        await env.reset()


def _corrupt_group(kind, lines, C, rng):
    """A group (count + payload bytes) for ``lines`` broken in the named way; also the fault line."""
    g = bytearray(codec.compress_group(lines))
    rl = lines.shape[0]
    mb = codec.mask_bytes(C)
    if kind == "count_overflow":
        n = codec.group_capacity(rl, C) + rng.randint(1, 5)
        return bytes(n.to_bytes(2, "little")) + bytes(g[2:]), 0
    if kind == "trailing":
        n = len(g) - 2 + rng.randint(1, 3)
        return n.to_bytes(2, "little") + bytes(g[2:]) + bytes(n - (len(g) - 2)), rl
    if kind == "mask_overrun":
        # shorten the count so that the last line's bytes run past the end
        k = int(np.count_nonzero(lines[-1]))
        n = len(g) - 2 - max(1, k // 2) if k else len(g) - 2 - 1
        return n.to_bytes(2, "little") + bytes(g[2 : 2 + n]), rl - 1
    if kind == "mask_past_end":
        # the count stops inside line 1's mask
        first = mb + int(np.count_nonzero(lines[0]))
        n = first + rng.randint(0, mb - 1)
        return n.to_bytes(2, "little") + bytes(g[2 : 2 + n]), 1
    raise ValueError(kind)


@_test()
async def corrupt_streams(dut):
    """Each corrupt kind ends in CORRUPT_DATA; earlier rows land; nothing outside the region is
    written; no beat outside the groups' [slot, slot + 2 + N) is read."""
    env = Env(dut)
    await env.start()
    cfg, C, mb = env.cfg, env.cfg.cols, env.cfg.mem_bytes
    kinds = ["count_overflow", "trailing", "mask_overrun", "mask_past_end"]
    for kind in kinds * (1 if _quick() else 2):
        rows = env.rng.randint(2, 4)
        rl = env.rng.randint(2, 6)
        bad_row = env.rng.randrange(rows)
        data = env.random_lines(isa.Spad.ACT, rows * rl, 0.4).reshape(rows, rl, C)
        data[:, :, 0] = 1  # at least one non-zero per line (mask_overrun needs a payload)
        data[:, -1, -1] = 0  # N < capacity, so a few trailing bytes still fit the count
        stride = _slot(cfg, rl) + 8
        addr = env.rng.randrange(0, 1 << 15)
        env.fill_dram(addr, addr + rows * stride + 64)
        groups, fault = [], None
        for y in range(rows):
            if y == bad_row:
                g, fault = _corrupt_group(kind, data[y], C, env.rng)
            else:
                g = codec.compress_group(data[y])
            groups.append(g)
            env.dram[addr + y * stride : addr + y * stride + len(g)] = g
        spad_addr = env.rng.randrange(0, 100)
        env.spads[isa.Spad.ACT][:] = 7
        ld = isa.make(
            "load",
            spad="act",
            spad_addr=spad_addr,
            dram_addr=addr,
            rows=rows,
            row_lines=rl,
            dram_stride=stride,
            compressed=1,
            cfg=cfg,
        )
        env.issue("ld", ld)
        code = await env.wait("ld", 1)
        assert code == ErrorCode.CORRUPT_DATA, (kind, code)
        assert not env.dones["ld"], "a corrupt LOAD must not complete"
        act = env.spads[isa.Spad.ACT]
        lines_ok = bad_row * rl + min(fault, rl)
        assert np.array_equal(act[spad_addr : spad_addr + lines_ok], data.reshape(-1, C)[:lines_ok]), kind
        # nothing at or after the faulting line, nothing outside the region
        assert np.all(act[:spad_addr] == 7) and np.all(act[spad_addr + lines_ok :] == 7), (
            f"{kind}: wrote at/after the faulting line"
        )
        cap = codec.group_capacity(rl, C)
        legit = []
        for y in range(rows):
            n = int.from_bytes(groups[y][:2], "little")
            s = addr + y * stride
            legit.append((s, s + 2 + (n if n <= cap else 0)))
        for a in env.ldmem.read_beats:
            assert any(a < hi and a + mb > lo for lo, hi in legit), (
                f"{kind}: read beat {a:#x} outside the groups"
            )
        env.check_protocol()
        await env.reset()


@_test()
async def range_errors(dut):
    """SPAD_RANGE, DRAM_RANGE (start-time, per compressed row, bus err) and ILLEGAL_FIELD."""
    env = Env(dut, poison=(0x30000, 0x30000 + 4096))
    await env.start()
    cfg, C = env.cfg, env.cfg.cols
    D = cfg.dram_bytes
    A = cfg.act_depth
    env.spads[isa.Spad.ACT][:] = env.random_lines(isa.Spad.ACT, A, 0.3)

    async def expect(eng, instr, code, *, writes_ok=False):
        snapshot_dram = bytes(env.dram)
        snapshot_act = env.spads[isa.Spad.ACT].copy()
        env.issue(eng, instr)
        got = await env.wait(eng, 1)
        assert got == code, f"{instr}: {got.name}, expected {code.name}"
        assert not env.dones[eng]
        if not writes_ok:
            assert bytes(env.dram) == snapshot_dram, f"{instr}: DRAM written"
            assert np.array_equal(env.spads[isa.Spad.ACT], snapshot_act), f"{instr}: scratchpad written"
        env.check_protocol()
        await env.reset()

    # SPAD_RANGE: padded LOAD footprint one line too long; STORE with spad_stride
    await expect(
        "ld",
        isa.make(
            "load",
            spad="act",
            spad_addr=A - 3 * 4 + 1,
            dram_addr=0,
            rows=2,
            row_lines=2,
            dram_stride=64,
            pad_top=1,
            pad_left=1,
            pad_right=1,
            cfg=cfg,
        ),
        ErrorCode.SPAD_RANGE,
    )
    await expect(
        "st",
        isa.make(
            "store",
            spad="act",
            spad_addr=A - 10,
            dram_addr=0,
            rows=3,
            row_lines=2,
            spad_stride=5,
            dram_stride=64,
            cfg=cfg,
        ),
        ErrorCode.SPAD_RANGE,
    )
    await expect(
        "st",
        isa.make(
            "store",
            spad="acc",
            spad_addr=cfg.acc_depth - 1,
            dram_addr=0,
            rows=1,
            row_lines=2,
            dram_stride=64,
            cfg=cfg,
        ),
        ErrorCode.SPAD_RANGE,
    )
    # DRAM_RANGE at start: last byte one past the end
    await expect(
        "ld",
        isa.make(
            "load",
            spad="act",
            spad_addr=0,
            dram_addr=D - 2 * C - 3,
            rows=2,
            row_lines=1,
            dram_stride=C + 4,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
    )
    await expect(
        "st",
        isa.make(
            "store",
            spad="acc",
            spad_addr=0,
            dram_addr=D - 4 * C + 1,
            rows=1,
            row_lines=1,
            dram_stride=0,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
    )
    rl = 3
    await expect(
        "st",
        isa.make(
            "store",
            spad="act",
            spad_addr=0,
            dram_addr=D - _slot(cfg, rl) - 100 + 1,
            rows=2,
            row_lines=rl,
            dram_stride=100,
            compressed=1,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
    )
    # exactly at the end is fine
    ok = isa.make(
        "load",
        spad="act",
        spad_addr=0,
        dram_addr=D - 2 * C - 4,
        rows=2,
        row_lines=1,
        dram_stride=C + 4,
        cfg=cfg,
    )
    env.issue("ld", ok)
    assert await env.wait("ld", 1) == ErrorCode.NONE
    await env.reset()
    # ILLEGAL_FIELD: compressed STORE slot smaller than the worst case
    await expect(
        "st",
        isa.make(
            "store",
            spad="act",
            spad_addr=0,
            dram_addr=0,
            rows=2,
            row_lines=rl,
            dram_stride=_slot(cfg, rl) - 1,
            compressed=1,
            cfg=cfg,
        ),
        ErrorCode.ILLEGAL_FIELD,
    )
    # compressed LOAD, per row: row 1's count bytes out of memory (row 0 fine and written)
    g = codec.compress_group(np.ones((rl, C), np.int8))
    s0 = D - 600
    env.dram[s0 : s0 + len(g)] = g
    await expect(
        "ld",
        isa.make(
            "load",
            spad="act",
            spad_addr=0,
            dram_addr=s0,
            rows=2,
            row_lines=rl,
            dram_stride=599,
            compressed=1,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
        writes_ok=True,
    )
    # ... row 0's 2+N bytes out of memory
    s0 = D - 10
    env.dram[s0 : s0 + 2] = (12).to_bytes(2, "little")
    await expect(
        "ld",
        isa.make(
            "load",
            spad="act",
            spad_addr=0,
            dram_addr=s0,
            rows=1,
            row_lines=rl,
            dram_stride=0,
            compressed=1,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
    )
    assert not any(a + cfg.mem_bytes > D for a in env.ldmem.read_beats)
    # bus error (poisoned range) -> DRAM_RANGE, for a read and a write
    await expect(
        "ld",
        isa.make(
            "load",
            spad="act",
            spad_addr=0,
            dram_addr=0x30000 - 16,
            rows=1,
            row_lines=8,
            dram_stride=0,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
        writes_ok=True,
    )
    await expect(
        "st",
        isa.make(
            "store",
            spad="act",
            spad_addr=0,
            dram_addr=0x30000 - 8,
            rows=1,
            row_lines=4,
            dram_stride=0,
            cfg=cfg,
        ),
        ErrorCode.DRAM_RANGE,
        writes_ok=True,
    )
    # a long STORE whose first burst fails: the bursts already accepted still get their data
    st = isa.make(
        "store", spad="act", spad_addr=0, dram_addr=0x30000 - 8, rows=1, row_lines=64, dram_stride=0, cfg=cfg
    )
    env.issue("st", st)
    assert await env.wait("st", 1) == ErrorCode.DRAM_RANGE
    for _ in range(300):
        await FallingEdge(dut.clk)
    assert not env.stmem.wcmds and not env.stmem.wbeats, "accepted write commands left without data"
    assert all(0x30000 - 8 <= a < 0x30000 - 8 + 64 * C for a in env.stmem.written)
    env.check_protocol()
    await env.reset()
    # sticky: after an error the engine takes no instruction
    env.issue(
        "ld", isa.make("load", spad="act", spad_addr=0, dram_addr=0x30000, rows=1, row_lines=1, cfg=cfg)
    )
    assert await env.wait("ld", 1) == ErrorCode.DRAM_RANGE
    env.issue("ld", ok)
    for _ in range(200):
        await FallingEdge(dut.clk)
    assert not env.dones["ld"] and env.error("ld") == ErrorCode.DRAM_RANGE
    assert int(dut.ld__instr__ready.value) == 0


@_test()
async def back_to_back(dut):
    """Queued instructions on both engines: done pulses in order, each when its data has landed."""
    env = Env(dut)
    await env.start()
    cfg = env.cfg
    n = 4 if _quick() else 8
    loads, stores = [], []
    for k in range(n):
        sp = list(isa.Spad)[k % 3]
        rl = env.rng.randint(1, 6)
        comp = sp != isa.Spad.ACC and k % 2 == 1
        stride = _slot(cfg, rl) if comp else rl * env.line_size(sp)
        src = 0x10000 + k * 0x800
        if comp:
            for y in range(2):
                env.dram[src + y * stride : src + y * stride + stride] = bytes(stride)
                g = codec.compress_group(env.random_lines(sp, rl, 0.5))
                env.dram[src + y * stride : src + y * stride + len(g)] = g
        else:
            env.fill_dram(src, src + 2 * stride)
        loads.append(
            isa.make(
                "load",
                spad=sp,
                spad_addr=k * 12,
                dram_addr=src,
                rows=2,
                row_lines=rl,
                dram_stride=stride,
                compressed=int(comp),
                cfg=cfg,
            )
        )
        stores.append(
            isa.make(
                "store",
                spad=sp,
                spad_addr=100 + k * 12,
                dram_addr=0x40000 + k * 0x800,
                rows=2,
                row_lines=rl,
                dram_stride=stride,
                compressed=int(comp),
                cfg=cfg,
            )
        )
    for sp in isa.Spad:
        env.spads[sp][100:] = env.random_lines(sp, cfg.spad_depth(sp) - 100, 0.3)
    # references computed up front (regions are disjoint)
    exp_ld = [env.expect_load(i) for i in loads]
    exp_st = [env.expect_store(i) for i in stores]
    landed = {"ld": [], "st": []}

    async def watch(eng, instrs, check):
        seen = 0
        while seen < len(instrs):
            await FallingEdge(dut.clk)
            await ReadOnly()
            if int(sig(dut, f"{eng}__done").value):
                landed[eng].append(check(seen))
                seen += 1

    def ld_check(k):
        i = loads[k]
        width = i.row_lines
        lo, hi = i.spad_addr, i.spad_addr + 2 * width
        return np.array_equal(env.spads[i.spad][lo:hi], exp_ld[k][lo:hi])

    def st_check(k):
        i = stores[k]
        lo, hi = i.dram_addr, i.dram_addr + 2 * i.dram_stride
        return env.dram[lo:hi] == exp_st[k][lo:hi]

    w1 = cocotb.start_soon(watch("ld", loads, ld_check))
    w2 = cocotb.start_soon(watch("st", stores, st_check))
    for i in loads:
        env.issue("ld", i)
    for i in stores:
        env.issue("st", i)
    await w1
    await w2
    assert env.error("ld") == ErrorCode.NONE and env.error("st") == ErrorCode.NONE
    assert all(landed["ld"]), f"a LOAD done pulsed before its data landed: {landed['ld']}"
    assert all(landed["st"]), f"a STORE done pulsed before its data landed: {landed['st']}"
    for k, i in enumerate(loads):
        assert np.array_equal(
            env.spads[i.spad][i.spad_addr : i.spad_addr + 2 * i.row_lines],
            exp_ld[k][i.spad_addr : i.spad_addr + 2 * i.row_lines],
        )
    env.check_protocol()


# -- benchmark ---------------------------------------------------------------------------------


@cocotb.test(skip=not _bench_mode()) if cocotb else (lambda f: f)
async def bench_dma(dut):
    """Cycles and bus bytes without back-pressure (fixed latency 8), written to SPARROW_DMA_BENCH."""
    env = Env(dut, stall=False)
    await env.start()
    cfg, C, MB = env.cfg, env.cfg.cols, env.cfg.mem_bytes
    out = {"preset": cfg.name, "mem_bytes": MB, "cols": C, "read_latency": 8}

    async def timed(eng, instr):
        start = env.cycle
        env.issue(eng, instr)
        assert await env.wait(eng, 1) == ErrorCode.NONE
        return env.dones[eng][0] - start

    # long uncompressed bursts: 1 row of 16 KiB, aligned
    rl = 16384 // C
    rl = min(rl, 1023)
    nbytes = rl * C
    env.fill_dram(0, nbytes)
    ld = isa.make("load", spad="act", spad_addr=0, dram_addr=0, rows=1, row_lines=rl, dram_stride=0, cfg=cfg)
    cyc = await timed("ld", ld)
    out["long_load"] = {"bytes": nbytes, "cycles": cyc}
    await env.reset()
    st = isa.make(
        "store", spad="act", spad_addr=0, dram_addr=0x100000, rows=1, row_lines=rl, dram_stride=0, cfg=cfg
    )
    cyc = await timed("st", st)
    out["long_store"] = {"bytes": nbytes, "cycles": cyc}
    await env.reset()

    # compressed vs raw across sparsity, fixed seeded tensor sets: rows x row_lines lines of C int8
    out["shapes"] = []
    for rows, rl in ((16, 256), (32, 32)):
        rng = np.random.default_rng(12345)
        base = rng.integers(-128, 128, (rows * rl, C)).astype(np.int8)
        base[base == 0] = 1
        u = rng.random((rows * rl, C))
        recs = []
        for sparsity in (0.0, 0.25, 0.5, 0.75, 0.9):
            t = base.copy()
            t[u < sparsity] = 0
            slot = _slot(cfg, rl)
            rec = {
                "sparsity": sparsity,
                "lines": rows * rl,
                "format_bytes": codec.compressed_size(t.reshape(rows, rl, C)),
            }
            for comp in (0, 1):
                env.spads[isa.Spad.ACT][: rows * rl] = t
                stride = slot if comp else rl * C
                st = isa.make(
                    "store",
                    spad="act",
                    spad_addr=0,
                    dram_addr=0x200000,
                    rows=rows,
                    row_lines=rl,
                    dram_stride=stride,
                    compressed=comp,
                    cfg=cfg,
                )
                b0 = env.counter("st", "bytes")
                c_st = await timed("st", st)
                bb_st = env.counter("st", "bytes") - b0
                wbeats = env.stmem.wd_beats
                await env.reset()
                env.spads[isa.Spad.ACT][: rows * rl] = 0
                ld = isa.make(
                    "load",
                    spad="act",
                    spad_addr=0,
                    dram_addr=0x200000,
                    rows=rows,
                    row_lines=rl,
                    dram_stride=stride,
                    compressed=comp,
                    cfg=cfg,
                )
                b0 = env.counter("ld", "bytes")
                c_ld = await timed("ld", ld)
                bb_ld = env.counter("ld", "bytes") - b0
                rbeats = env.ldmem.rd_beats
                key = "compressed" if comp else "raw"
                rec[key] = {
                    "store_cycles": c_st,
                    "load_cycles": c_ld,
                    "store_bus_bytes": bb_st,
                    "load_bus_bytes": bb_ld,
                    "store_beats": wbeats,
                    "load_beats": rbeats,
                }
                assert np.array_equal(env.spads[isa.Spad.ACT][: rows * rl], t), "benchmark round trip differs"
                await env.reset()
            recs.append(rec)
        out["shapes"].append({"rows": rows, "row_lines": rl, "sparsity": recs})
    with open(os.environ["SPARROW_DMA_BENCH"], "w") as fh:
        json.dump(out, fh, indent=1)
