"""Formal region property of the LOAD DMA engine (:class:`sparrow.hdl.dma_load.LoadEngine`).

``dma.load_region``: one LOAD instruction with free fields (small ranges: 1-2 rows of 1-2
lines, padding 0-1, compressed or not, any scratchpad and addresses) and a memory returning
*any* data (corrupt compressed groups included, read errors included) after any latency, with
any back-pressure on the bus and the scratchpad ports. Asserted on the write ports only:

* the engine writes only the instruction's scratchpad;
* every written line lies in the instruction's region ``[spad_addr, spad_addr + footprint)``,
  ``footprint = (pad_top + rows + pad_bottom) * (pad_left + row_lines + pad_right)``, and inside
  the scratchpad;
* it writes at most ``footprint`` lines, each address once, in increasing order (row-major);
* nothing is written once ``error`` is set.
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cover, Mux, Signal
from amaranth.hdl._ast import AnyConst, AnySeq
from amaranth.lib.fifo import SyncFIFO

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.hdl.dma_load import LoadEngine
from sparrow.isa import Opcode, Spad

from .formal import FormalCheck, FormalWrapper, register

CFG = HwConfig(rows=2, cols=4, act_depth=16, wgt_depth=16, acc_depth=16, act_banks=1, acc_banks=1,
               mem_bytes=4, max_burst=4, n_semaphores=4, dram_bytes=1 << 8, name="formal-dma")

MUTANTS = {
    "off_by_one": "act_wr addresses are presented one line higher",
    "write_after_error": "act_wr.valid is presented high for one cycle after an error",
}


class LoadRegion(FormalWrapper):
    def __init__(self, mutant=None, cfg=CFG, covers=False):
        super().__init__(mutant)
        self.cfg, self.covers = cfg, covers

    def build(self, m):
        cfg, mut = self.cfg, self.mutant
        m.submodules.dut = dut = LoadEngine(cfg)

        # -- one instruction, offered until accepted ---------------------------------------------
        word = AnyConst(128)
        m.d.comb += dut.instr.payload.eq(word)
        ins = dut.instr.payload.body.load
        m.d.comb += [Assume(dut.instr.payload.header.opcode == Opcode.LOAD),
                     Assume((ins.rows >= 1) & (ins.rows <= 2)), Assume((ins.row_lines >= 1) & (ins.row_lines <= 2)),
                     Assume(ins.pad_top <= 1), Assume(ins.pad_bottom <= 1), Assume(ins.pad_left <= 1),
                     Assume(ins.pad_right <= 1), Assume(ins.spad != Spad.ACC), Assume(ins.line_bytes == 0),
                     Assume(ins.spad_addr < 32), Assume(ins.dram_addr < 512), Assume(ins.dram_stride < 64)]
        offered = Signal()
        accepted = Signal()
        want = AnySeq(1)
        m.d.comb += dut.instr.valid.eq(~accepted & (offered | want))
        with m.If(dut.instr.valid):
            m.d.sync += offered.eq(1)
        with m.If(dut.instr.valid & dut.instr.ready):
            m.d.sync += accepted.eq(1)

        # -- memory: any data after any latency, beats per accepted burst, `last` on the final beat --
        bus = dut.bus
        m.submodules.bursts = bursts = SyncFIFO(width=8, depth=4)
        m.d.comb += [bus.cmd.ready.eq(AnySeq(1) & bursts.w_rdy), bursts.w_en.eq(bus.cmd.valid & bus.cmd.ready),
                     bursts.w_data.eq(bus.cmd.payload.len)]
        beat = Signal(8)
        rvalid = Signal()
        m.d.comb += [rvalid.eq(bursts.r_rdy & AnySeq(1)), bus.rdata.valid.eq(rvalid),
                     bus.rdata.payload.data.eq(AnySeq(8 * cfg.mem_bytes)),
                     bus.rdata.payload.err.eq(AnySeq(1)),
                     bus.rdata.payload.last.eq(beat == bursts.r_data),
                     bus.wdata.ready.eq(AnySeq(1)), bus.wresp.valid.eq(0)]
        rfire = rvalid & bus.rdata.ready
        m.d.comb += bursts.r_en.eq(rfire & (beat == bursts.r_data))
        with m.If(rfire):
            m.d.sync += beat.eq(Mux(beat == bursts.r_data, 0, beat + 1))

        # -- region of the (latched) instruction -----------------------------------------------------
        foot = Signal(8)
        m.d.comb += foot.eq((ins.pad_top + ins.rows + ins.pad_bottom) * (ins.pad_left + ins.row_lines + ins.pad_right))
        writes = Signal(8)
        last_addr = Signal(16)
        err_seen = Signal()
        m.d.sync += err_seen.eq(err_seen | (dut.error != ErrorCode.NONE))
        for name, port, spad in (("act", dut.act_wr, Spad.ACT), ("wgt", dut.wgt_wr, Spad.WGT),
                                 ("acc", dut.acc_wr, Spad.ACC)):
            ready = AnySeq(1)
            m.d.comb += port.cmd.ready.eq(ready)
            valid, addr = port.cmd.valid, port.cmd.payload.addr
            if name == "act" and mut == "off_by_one":
                addr = addr + 1
            if name == "act" and mut == "write_after_error":
                valid = valid | (err_seen & AnySeq(1))
            fire = valid & ready
            with m.If(fire):
                m.d.comb += [Assert(accepted, "write before the instruction was accepted"),
                             Assert(ins.spad == spad, "write to another scratchpad"),
                             Assert((addr >= ins.spad_addr) & (addr < ins.spad_addr + foot),
                                    "write outside the instruction's region"),
                             Assert(writes < foot, "more lines written than the region holds"),
                             Assert((writes == 0) | (addr > last_addr), "lines not written in increasing order"),
                             Assert(~err_seen, "write after the error was raised")]
                m.d.sync += [writes.eq(writes + 1), last_addr.eq(addr)]
        if self.covers:
            m.d.comb += [Cover(dut.done & ins.compressed & (ins.rows == 2) & (writes == foot)),
                         Cover((dut.error == ErrorCode.CORRUPT_DATA) & (writes != 0))]


register(FormalCheck(
    "dma.load_region", lambda mutant: LoadRegion(mutant), "bmc", 12,
    ci_depth=10, description=
    "LoadEngine, one LOAD (<=2 rows x <=2 lines, padding <=1, compressed or not) on any memory data "
    "(corrupt groups, read errors) and back-pressure: writes only its scratchpad, only inside its region "
    "and the scratchpad, at most once per line in order, nothing after an error",
    mutants=MUTANTS, mutant_depth=10))
register(FormalCheck(
    "dma.load_region_cover", lambda mutant: LoadRegion(mutant, covers=True), "cover", 24,
    "reachability: a 2-row compressed LOAD completes; a corrupt group stops a LOAD after writing a line"))
