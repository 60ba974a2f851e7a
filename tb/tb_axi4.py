"""cocotb: membus -> AXI4 master adapter (optionally behind the membus arbiter) against cocotbext-axi.

The DUT has either one membus slave port ``bus`` (a bare ``Axi4Master``) or several
``masters__<i>`` (``MembusArbiter`` + ``Axi4Master``), and the AXI master port ``m_axi_*``.
The AXI side is cocotbext-axi's ``AxiRam`` with random pauses on all five channels (or an
``AxiSlave`` over a small memory that fails out-of-range accesses, for error mapping).

Each membus master reads bursts from its own preloaded 4 KiB page and writes bursts with random
strobes into another page of its own, so every read has one right answer; written pages are
compared with a byte-dict model at the end.
"""

import itertools
import logging

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly
from cocotbext.axi import AxiBus, AxiRam, AxiSlave

from sparrow.hdl.membus import mem_cmd_layout, mem_rdata_layout, mem_wdata_layout, mem_wresp_layout
from sparrow.sim.tbutil import StreamSink, StreamSource, reset, seeded, sig, start_clock


def _membus_prefixes(dut):
    # (an arbitrated DUT also has an internal net called bus__cmd__valid: look for masters first)
    out, i = [], 0
    while hasattr(dut, f"masters__{i}__cmd__valid"):
        out.append(f"masters__{i}")
        i += 1
    return out or ["bus"]


def _quiet(dut):
    # cocotbext-axi logs every burst at INFO; keep the test log readable
    logging.getLogger(f"cocotb.{dut._name}.m_axi").setLevel(logging.WARNING)


def _pause(rng, p):
    return (rng.random() < p for _ in itertools.count())


class Master:
    """One membus master driven from cocotb: queued commands and write data, checked responses."""

    def __init__(self, dut, prefix, data_bytes, addr_width, rng, idle):
        self.dut, self.prefix, self.db = dut, prefix, data_bytes
        self.cmd = StreamSource(dut, prefix + "__cmd", mem_cmd_layout(addr_width), idle=idle, rng=rng)
        self.wdata = StreamSource(dut, prefix + "__wdata", mem_wdata_layout(data_bytes), idle=idle, rng=rng)
        self.rdata = StreamSink(dut, prefix + "__rdata", mem_rdata_layout(data_bytes), stall=idle, rng=rng)
        self.wresp = StreamSink(dut, prefix + "__wresp", mem_wresp_layout(), stall=idle, rng=rng)
        self.exp_r = []     # (data or None, last, err)
        self.exp_b = []

    def read(self, addr, length, words, err=0):
        self.cmd.send_nowait({"addr": addr, "write": 0, "len": length})
        for j in range(length + 1):
            self.exp_r.append((None if err else words[j], int(j == length), err))

    def write(self, addr, beats, err=0):
        self.cmd.send_nowait({"addr": addr, "write": 1, "len": len(beats) - 1})
        for j, (data, strb) in enumerate(beats):
            self.wdata.send_nowait({"data": data, "strb": strb, "last": int(j == len(beats) - 1)})
        self.exp_b.append(err)

    def done(self):
        return self.rdata.count == len(self.exp_r) and self.wresp.count == len(self.exp_b)

    def check(self):
        got_r = list(self.rdata.items)
        assert len(got_r) == len(self.exp_r), \
            f"{self.prefix}: {len(got_r)} read beats, expected {len(self.exp_r)}"
        for k, (g, (data, last, err)) in enumerate(zip(got_r, self.exp_r, strict=True)):
            assert (g["last"], g["err"]) == (last, err), \
                f"{self.prefix} beat {k}: last/err {g} vs {(last, err)}"
            if data is not None:
                assert g["data"] == data, f"{self.prefix} beat {k}: data {g['data']:#x} != {data:#x}"
        got_b = [b["err"] for b in self.wresp.items]
        assert got_b == self.exp_b, f"{self.prefix}: write responses {got_b} != {self.exp_b}"


class AxiMonitor:
    """Checks the AXI constants on every AW/AR handshake and counts outstanding reads."""

    def __init__(self, dut, data_bytes):
        self.dut, self.size = dut, (data_bytes - 1).bit_length()
        self.outstanding = self.max_outstanding = 0
        self.bursts = 0
        cocotb.start_soon(self._run())

    async def _run(self):
        d = self.dut
        while True:
            await FallingEdge(d.clk)
            await ReadOnly()
            for ch in ("aw", "ar"):
                if int(sig(d, f"m_axi_{ch}valid").value) and int(sig(d, f"m_axi_{ch}ready").value):
                    assert int(sig(d, f"m_axi_{ch}size").value) == self.size
                    assert int(sig(d, f"m_axi_{ch}burst").value) == 1, "burst type must be INCR"
                    assert int(sig(d, f"m_axi_{ch}id").value) == 0
                    self.bursts += 1
            if int(d.m_axi_arvalid.value) and int(d.m_axi_arready.value):
                self.outstanding += 1
            if int(d.m_axi_rvalid.value) and int(d.m_axi_rready.value) and int(d.m_axi_rlast.value):
                self.outstanding -= 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)


async def _wait_done(dut, masters, limit):
    for _ in range(limit):
        if all(mm.done() for mm in masters):
            return
        await FallingEdge(dut.clk)
    raise AssertionError("membus traffic did not complete: " +
                         ", ".join(f"{m.prefix} r {m.rdata.count}/{len(m.exp_r)} "
                                   f"b {m.wresp.count}/{len(m.exp_b)}"
                                   for m in masters))


def _burst(rng, db, max_len=16):
    words = 4096 // db
    length = rng.randrange(min(max_len, words))
    return length, rng.randrange(words - length) * db


@cocotb.test()
async def random_bursts_against_axiram(dut):
    rng, _, seed = seeded(dut)
    db = len(dut.m_axi_wdata) // 8
    aw = len(dut.m_axi_awaddr)
    start_clock(dut)
    _quiet(dut)
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=1 << aw)
    for ch in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
               ram.read_if.ar_channel, ram.read_if.r_channel):
        ch.set_pause_generator(_pause(rng, rng.uniform(0.1, 0.5)))
    mon = AxiMonitor(dut, db)
    prefixes = _membus_prefixes(dut)
    masters = [Master(dut, p, db, aw, rng, idle=0.2) for p in prefixes]
    await reset(dut)

    model = {}
    n_cmds = 60 if len(masters) == 1 else 30
    for i, mm in enumerate(masters):
        rpage, wpage = 0x2000 * i, 0x2000 * i + 0x1000
        image = bytes(rng.getrandbits(8) for _ in range(0x1000))
        ram.write(rpage, image)
        for _ in range(n_cmds):
            length, off = _burst(rng, db)
            if rng.random() < 0.5:
                words = [int.from_bytes(image[off + j * db: off + (j + 1) * db], "little")
                         for j in range(length + 1)]
                mm.read(rpage + off, length, words)
            else:
                beats = []
                for j in range(length + 1):
                    data = rng.getrandbits(8 * db)
                    strb = (1 << db) - 1 if rng.random() < 0.5 else rng.getrandbits(db)
                    beats.append((data, strb))
                    for b in range(db):
                        if strb >> b & 1:
                            model[wpage + off + j * db + b] = data >> (8 * b) & 0xFF
                mm.write(wpage + off, beats)
    await _wait_done(dut, masters, 20_000)
    for mm in masters:
        mm.check()
    for addr, byte in model.items():
        got = ram.read(addr, 1)[0]
        assert got == byte, f"memory byte {addr:#x}: {got:#x} != model {byte:#x}"
    # untouched bytes of the write pages must still be zero
    for i in range(len(masters)):
        page = ram.read(0x2000 * i + 0x1000, 0x1000)
        for k, byte in enumerate(page):
            if 0x2000 * i + 0x1000 + k not in model:
                assert byte == 0, f"byte {0x2000 * i + 0x1000 + k:#x} written without a strobe"
    dut._log.info(f"{sum(len(m.exp_r) for m in masters)} read beats, {len(model)} bytes written, "
                  f"{mon.bursts} bursts, max outstanding reads {mon.max_outstanding}")
    assert mon.max_outstanding >= 2, "never had two reads outstanding"


class FaultyMemory:
    """AxiSlave target: a byte array of ``size`` bytes; accesses at or beyond ``size`` raise."""

    def __init__(self, size):
        self.size, self.mem = size, bytearray(size)

    async def read(self, address, length):
        if address + length > self.size:
            raise IndexError(f"read {address:#x} out of range")
        return bytes(self.mem[address:address + length])

    async def write(self, address, data):
        if address + len(data) > self.size:
            raise IndexError(f"write {address:#x} out of range")
        self.mem[address:address + len(data)] = data


@cocotb.test()
async def slave_errors_map_to_err(dut):
    """SLVERR from the slave becomes ``err`` on exactly the failing beats / write responses."""
    rng, _, seed = seeded(dut)
    db = len(dut.m_axi_wdata) // 8
    aw = len(dut.m_axi_awaddr)
    start_clock(dut)
    _quiet(dut)
    target = FaultyMemory(0x8000)
    AxiSlave(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, target=target)
    prefixes = _membus_prefixes(dut)
    masters = [Master(dut, p, db, aw, rng, idle=0.2) for p in prefixes]
    await reset(dut)
    for k in range(0x8000):
        target.mem[k] = rng.getrandbits(8)
    expect_mem = bytearray(target.mem)
    # master i: reads page 0x1000*i, writes the 2 KiB at 0x4000 + 0x800*i; "bad" bursts go to
    # 0x8000 and above, past the end of the memory.
    for i, mm in enumerate(masters):
        for k in range(20):
            bad = k < 2 or rng.random() < 0.4            # each master: a failing read and write first
            if k == 0 or (k > 1 and rng.random() < 0.5):
                length, off = _burst(rng, db, 8)
                base = 0x8000 + 0x1000 * i if bad else 0x1000 * i
                a0 = base + off
                words = None if bad else [int.from_bytes(target.mem[a0 + j * db: a0 + (j + 1) * db], "little")
                                          for j in range(length + 1)]
                mm.read(base + off, length, words, err=int(bad))
            else:
                words = 0x800 // db
                length = rng.randrange(min(8, words))
                off = rng.randrange(words - length) * db
                base = 0x8000 + 0x1000 * i if bad else 0x4000 + 0x800 * i
                beats = [(rng.getrandbits(8 * db), (1 << db) - 1) for _ in range(length + 1)]
                if not bad:
                    for j, (data, _) in enumerate(beats):
                        a0 = base + off + j * db
                        expect_mem[a0: a0 + db] = data.to_bytes(db, "little")
                mm.write(base + off, beats, err=int(bad))
    await _wait_done(dut, masters, 10_000)
    for mm in masters:
        mm.check()
    assert target.mem == expect_mem, "in-range writes differ from the model"
    assert any(e for mm in masters for e in mm.exp_b) and any(e for mm in masters for _, _, e in mm.exp_r)
