"""cocotb backend of ``sparrow.runtime.Device``: run a script of Device operations on the AXI top.

``AsyncDevice`` is the in-simulator driver (usable from any testbench): CSR accesses through
``CsrMaster``, external memory is a cocotbext-axi ``AxiRam``. ``run_script`` executes the JSON
script written by ``sparrow.runtime.cocotb`` (``SPARROW_RUNTIME_SCRIPT``: a directory holding
``script.json`` and ``blobs.npz``) and writes ``results.json`` there: one entry per operation.
Device faults are recorded (code, engine, index), not raised, so the host side can raise them
at the right operation.
"""

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge
from cocotbext.axi import AxiBus, AxiRam

from sparrow import regmap
from sparrow.sim.tbutil import CsrMaster, reset, start_clock

ENGINES = regmap.ENGINES


class AsyncDevice:
    """Device operations inside a cocotb test (the Sparrow top with ``bus="axi"``)."""

    def __init__(self, dut, mem_bytes):
        self.dut = dut
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=mem_bytes)
        self.csr = CsrMaster(dut)

    async def status(self):
        return regmap.status_fields(await self.csr.read("STATUS"))

    async def counters(self):
        return {c: await self.csr.read64(c) for c in regmap.COUNTERS}

    async def pcs(self):
        out = {n: await self.csr.read(f"PC_{n.upper()}") for n in ENGINES}
        out["fetch"] = await self.csr.read("FETCH_PC")
        return out

    async def _wait(self, max_cycles, used=0):
        """Poll STATUS (2 cycles per read) until done / error / newly halted / limit."""
        cycles = used
        halted0 = None
        err_polls = 0
        while cycles < max_cycles:
            st = await self.status()
            cycles += 2
            if halted0 is None:
                halted0 = st["halted"]
            if st["error"]:
                err_polls += 1
            if st["error"] and (not st["busy"] or err_polls >= 128):  # a faulted engine may stay busy
                return {"stop": "error", "cycles": cycles, "status": st,
                        "err_index": await self.csr.read("ERR_INDEX")}
            if not st["busy"] and st["done"]:
                return {"stop": "done", "cycles": cycles, "status": st}
            if st["halted"] & ~halted0:
                return {"stop": "breakpoint", "cycles": cycles, "status": st}
            halted0 &= st["halted"]
        st = await self.status()
        pcs = await self.pcs()
        await self.csr.write("CTRL", 2)  # abort
        for _ in range(regmap.START_CYCLES):
            await FallingEdge(self.dut.clk)
        return {"stop": "limit", "cycles": cycles, "status": st, "pcs": pcs}

    async def op(self, op, blobs):
        kind = op[0]
        c = self.csr
        if kind == "write_dram":
            self.ram.write(op[1], blobs[op[2]].tobytes())
        elif kind == "read_dram":
            return np.frombuffer(self.ram.read(op[1], op[2]), np.uint8).tolist()
        elif kind == "set_program":
            await c.write("PROG_BASE", op[1])
            await c.write("PROG_LEN", op[2])
        elif kind == "set_delay":
            await c.write(f"DELAY_{op[1]}", op[2])
        elif kind == "set_watchdog":
            await c.write("WATCHDOG", op[1])
        elif kind == "set_bp":
            await c.write(f"BP_INDEX_{ENGINES[op[1]].upper()}", op[2])
            await c.write("BP_ENABLE", (await c.read("BP_ENABLE")) | (1 << op[1]))
            await c.write("BP_HALT_ALL", int(op[3]))
        elif kind == "clear_bp":
            await c.write("BP_ENABLE", 0)
        elif kind == "run":
            t0 = time.perf_counter()
            await c.write("CTRL", 1)
            for _ in range(regmap.START_CYCLES):
                await FallingEdge(self.dut.clk)
            res = await self._wait(op[1], regmap.START_CYCLES)
            res["wall_seconds"] = time.perf_counter() - t0
            return res
        elif kind == "resume":
            await c.write("RESUME", op[1])
            return await self._wait(op[2])
        elif kind == "step":
            await c.write("STEP", 1 << op[1])
            return await self._wait(op[2])
        elif kind == "counters":
            return await self.counters()
        elif kind == "status":
            return await self.status()
        elif kind == "pcs":
            return await self.pcs()
        else:
            raise ValueError(f"unknown runtime operation {kind!r}")
        return None


@cocotb.test()
async def run_script(dut):
    d = Path(os.environ["SPARROW_RUNTIME_SCRIPT"])
    script = json.loads((d / "script.json").read_text())
    blobs = dict(np.load(d / "blobs.npz"))
    start_clock(dut)
    dut.csr__r_stb.value = 0
    dut.csr__w_stb.value = 0
    dev = AsyncDevice(dut, script["mem_bytes"])
    await reset(dut)
    assert await dev.csr.read("ID") == regmap.MAGIC
    results = []
    for op in script["ops"]:
        results.append(await dev.op(op, blobs))
    (d / "results.json").write_text(json.dumps(results))
