"""The whole accelerator: CSRs, fetch, sequencer, four engines, three scratchpads, memory port."""

from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from sparrow import regmap
from sparrow.config import HwConfig
from sparrow.errors import ErrorCode

from .axi4 import Axi4Master
from .csr import CsrBank, CsrBusSignature
from .dma_load import LoadEngine
from .dma_store import StoreEngine
from .fetch import FetchUnit
from .matrix_engine import MatrixEngine
from .membus import MemBusSignature
from .membus_arbiter import MembusArbiter
from .scratchpad import acc_scratchpad, act_scratchpad, wgt_scratchpad
from .sequencer import N_ENGINES, Sequencer
from .credit_slice import CreditSlice
from .skid_buffer import SkidBuffer
from .vector_engine import VectorEngine

__all__ = ["Sparrow"]

_ENGINE_ORDER = ("load", "matmul", "vector", "store")  # = sparrow.isa.Engine values


class Sparrow(wiring.Component):
    """Sparrow accelerator top level.

    Parameters
    ----------
    cfg : HwConfig
        Hardware configuration.
    bus : "axi" or "membus"
        External memory port: an AXI4 master (``m_axi_*``, for FPGA designs) or the internal
        in-order burst interface (``mem__*``, used by the fast Verilator harness).
    zero_skip : bool
        Elaborate the zero-skipping matrix engine (default) or the dense baseline.

    Ports
    -----
    csr : In(CsrBusSignature())
        Host register access (``sparrow.regmap``).
    irq : Out(1)
        High while the last run has finished (done or error) and the host has not restarted it.
    mem : Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes))
        With ``bus="membus"``.
    m_axi_* : AXI4 master signals
        With ``bus="axi"`` (names as cocotbext-axi's ``AxiBus.from_prefix(dut, "m_axi")``).
    """

    def __init__(self, cfg: HwConfig, *, bus: str = "axi", zero_skip: bool = True):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg must be a HwConfig, not {cfg!r}")
        if bus not in ("axi", "membus"):
            raise ValueError(f"bus must be 'axi' or 'membus', not {bus!r}")
        self.cfg, self.bus_kind, self.zero_skip = cfg, bus, zero_skip
        members = {"csr": In(CsrBusSignature()), "irq": Out(1)}
        if bus == "membus":
            members["mem"] = Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes))
        else:
            self._axi = Axi4Master(cfg.dram_addr_bits, cfg.mem_bytes)
            members.update({name: m for name, m in self._axi.signature.members.items() if name != "bus"})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg

        m.submodules.csr = csr = CsrBank()
        connect(m, wiring.flipped(self.csr), csr.bus)

        # start: reset the datapath for one cycle, then go; abort: reset it and stop. The reset
        # and the abort come from registers (timing: the CSR write decode fanned out
        # combinationally into the reset logic of every engine), so go follows the strobe by two
        # cycles.
        go, go_early = Signal(), Signal()
        soft_reset, abort = Signal(), Signal()
        m.d.sync += [go_early.eq(csr.ctrl_stb & csr.ctrl[0]), go.eq(go_early),
                     soft_reset.eq(csr.ctrl_stb & (csr.ctrl[0] | csr.ctrl[1])),
                     abort.eq(csr.ctrl_stb & csr.ctrl[1])]
        dp = ResetInserter(soft_reset)

        # -- scratchpads -------------------------------------------------------------------------
        lane_reads = [f"mx{i}" for i in range(cfg.rows)]
        act_reads = [*lane_reads, "vec_a", "vec_b", "dma"]
        # Timing, measured on the whole design: every read port, and LOAD's, VECTOR's and
        # MATMUL's write ports, are sliced, so the arbiters' grants no longer form combinational
        # paths from one engine (or lane) into another (MATMUL's writes: its write queue -> the
        # accumulator's write arbitration -> LOAD's write slice was 15.5 ns estimated). Every
        # read port's responses are registered once more, so a block RAM's slow output (5.6 ns
        # at speed grade 6) does not run into an engine's logic (first MATMUL's zero-skip and
        # credit logic; then the whole design's critical path, an ACT bank -> the response's
        # bank select -> STORE's line FIFO, 13.0 ns); the engines' response credits cover the
        # longer round trip. MATMUL's accumulator reads land later than its writes could, and
        # still see every earlier write: the rows of one instruction are distinct, and an
        # instruction's first read waits for the previous one's writes to land
        # (``acc_wr_pending``). STORE's reads of the weights go to a copy of their own (timing:
        # lane 0's weight reads met an arbitration against STORE, the only lane that did).
        acc_reads = ["mx", "vec", "dma"]
        m.submodules.act = act = dp(act_scratchpad(cfg, act_reads, ["vec", "dma"], sliced_reads=act_reads,
                                                   registered_reads=act_reads, sliced_writes=["vec", "dma"]))
        m.submodules.acc = acc = dp(acc_scratchpad(cfg, acc_reads, ["mx", "dma"], sliced_reads=acc_reads,
                                                   registered_reads=acc_reads, sliced_writes=["mx", "dma"]))
        m.submodules.wgt = wgt = dp(wgt_scratchpad(cfg, sliced_shared=True, own_shared=True,
                                                   registered_shared=True))

        # -- engines ----------------------------------------------------------------------------
        m.submodules.load = load = dp(LoadEngine(cfg))
        # six lines in flight per lane, and six rows in the accumulator read-modify-write, cover
        # the sliced, registered reads' longer round trips
        m.submodules.matmul = mx = dp(MatrixEngine(cfg, zero_skip=self.zero_skip, line_depth=6, write_depth=6))
        m.submodules.vector = vec = dp(VectorEngine(cfg))
        m.submodules.store = store = dp(StoreEngine(cfg))
        load_c, mx_c, vec_c, store_c = (_inner(x) for x in (load, mx, vec, store))
        act_c, acc_c, wgt_c = _inner(act), _inner(acc), _inner(wgt)

        for i in range(cfg.rows):
            connect(m, mx_c.act_rd[i], act_c.read_port(f"mx{i}"))
            connect(m, mx_c.wgt_rd[i], wgt_c.rd[i])
        connect(m, mx_c.acc_rd, acc_c.read_port("mx"))
        connect(m, mx_c.acc_wr, acc_c.write_port("mx"))
        m.d.comb += mx_c.acc_wr_pending.eq(acc_c.wr_pending[acc_c.write_index["mx"]])
        connect(m, vec_c.acc_rd, acc_c.read_port("vec"))
        connect(m, vec_c.act_rd_a, act_c.read_port("vec_a"))
        connect(m, vec_c.act_rd_b, act_c.read_port("vec_b"))
        connect(m, vec_c.act_wr, act_c.write_port("vec"))
        connect(m, load_c.act_wr, act_c.write_port("dma"))
        connect(m, load_c.acc_wr, acc_c.write_port("dma"))
        connect(m, load_c.wgt_wr, wgt_c.wr)
        connect(m, store_c.act_rd, act_c.read_port("dma"))
        connect(m, store_c.acc_rd, acc_c.read_port("dma"))
        connect(m, store_c.wgt_rd, wgt_c.shared)

        # -- fetch, sequencer ---------------------------------------------------------------------
        m.submodules.fetch = fetch = dp(FetchUnit(cfg))
        fetch_c = _inner(fetch)
        m.submodules.seq = seq = Sequencer(cfg)
        # fetched words pass a register slice (timing: the sequencer's dispatch decision ran
        # back into the fetch unit's gearbox and buffer through the handshake); it is emptied by
        # the soft reset like the fetch unit
        m.submodules.fetch_slice = fetch_slice = dp(CreditSlice(fetch_c.out.payload.shape()))
        connect(m, fetch_c.out, _inner(fetch_slice).i)
        connect(m, _inner(fetch_slice).o, seq.fetched)
        m.d.comb += [
            fetch_c.start.eq(go), fetch_c.base.eq(csr.prog_base), fetch_c.length.eq(csr.prog_len),
            fetch_c.stop.eq(seq.fetch_stop),
            seq.fetch_busy.eq(fetch_c.busy), seq.fetch_error.eq(fetch_c.error),
            seq.fetch_error_index.eq(fetch_c.error_index),
            seq.start.eq(go), seq.abort.eq(abort),
            seq.bp_enable.eq(csr.bp_enable), seq.bp_halt_all.eq(csr.bp_halt_all[0]),
            seq.resume.eq(csr.resume_stb.replicate(N_ENGINES) & csr.resume),
            seq.step.eq(csr.step_stb.replicate(N_ENGINES) & csr.step),
        ]
        for e, name in enumerate(_ENGINE_ORDER):
            m.d.comb += seq.bp_index[e].eq(getattr(csr, f"bp_index_{name}"))
        # The watchdog period and the DELAY slots reach the sequencer through a register each
        # (timing: on the whole design the watchdog register -> the sequencer's watchdog compare
        # -> error_index was the critical path, 11.4 of 14.3 ns routing between the CSR bank and
        # the sequencer). A host write takes effect a cycle later; hosts write them before a start.
        watchdog_r = Signal.like(csr.watchdog, name="watchdog_r")
        m.d.sync += watchdog_r.eq(csr.watchdog)
        m.d.comb += seq.watchdog.eq(watchdog_r)
        for s in range(cfg.delay_slots):
            delay_r = Signal.like(getattr(csr, f"delay_{s}"), name=f"delay_r{s}")
            m.d.sync += delay_r.eq(getattr(csr, f"delay_{s}"))
            m.d.comb += seq.delays[s].eq(delay_r)
        # Engine completions, busy flags and errors reach the sequencer a cycle late, from
        # registers (timing: they ran from deep inside each engine into the sequencer's retire
        # logic, the NOP/DELAY drain check, the semaphores and the 64-bit counters). A busy flag
        # that rises a cycle late is covered by the in-flight FIFO, which holds the instruction
        # from its issue to its (equally delayed) completion.
        for e, eng in enumerate((load_c, mx_c, vec_c, store_c)):
            port = seq.engines[e]
            connect(m, port.instr, eng.instr)
            err_r = Signal.like(eng.error, name=f"error_r{e}")
            busy_r = Signal(name=f"busy_r{e}")
            m.d.sync += [err_r.eq(eng.error), busy_r.eq(eng.busy)]
            m.d.comb += [port.busy.eq(busy_r), port.error.eq(err_r)]
        # A LOAD, MATMUL or VECTOR completion is passed on once its engine's sliced writes have landed
        # (the ISA's "signal when the last line is written"): completions are counted while a
        # slice holds a write and passed on one per cycle once none does (a slice drains within
        # a few cycles and an instruction takes far longer, so the 2-bit count does not fill).
        for e, eng, pending in ((0, load_c, act_c.wr_pending[act_c.write_index["dma"]]
                                 | acc_c.wr_pending[acc_c.write_index["dma"]]),
                                (1, mx_c, acc_c.wr_pending[acc_c.write_index["mx"]]),
                                (2, vec_c, act_c.wr_pending[act_c.write_index["vec"]])):
            held = Signal(2, name=f"done_held{e}")
            total = Signal(3, name=f"done_total{e}")
            emit = Signal(name=f"done_emit{e}")
            m.d.comb += [total.eq(held + eng.done), emit.eq((total != 0) & ~pending)]
            m.d.sync += [held.eq(total - emit), seq.engines[e].done.eq(emit)]
        m.d.sync += seq.engines[3].done.eq(store_c.done)

        # -- external memory -----------------------------------------------------------------------
        # The arbiter and the AXI adapter are not soft-reset: transactions still outstanding on
        # the external bus when the masters are reset are completed by the arbiter (``flush``),
        # so the slave never sees a protocol violation and no stale response reaches a new run.
        # sliced (timing: the arbitration and the read routing formed combinational paths from
        # one DMA master into another and from the read-ID FIFO into LOAD)
        m.submodules.arb = arb_c = MembusArbiter(cfg.dram_addr_bits, cfg.mem_bytes, 3, sliced=True)
        m.d.comb += arb_c.flush.eq(soft_reset)
        connect(m, fetch_c.bus, arb_c.masters[0])
        connect(m, load_c.bus, arb_c.masters[1])
        connect(m, store_c.bus, arb_c.masters[2])
        # Commands leave the arbiter through a register slice (timing: the bus's ready ran into
        # the arbitration and from there into the masters' slices). Not soft-reset: a command
        # the arbiter handed over is completed like any other outstanding transaction.
        m.submodules.cmd_slice = cmd_slice = SkidBuffer(arb_c.bus.cmd.payload.shape())
        connect(m, arb_c.bus.cmd, cmd_slice.i)
        if self.bus_kind == "membus":
            slave = wiring.flipped(self.mem)
        else:
            m.submodules.axi = axi_c = self._axi
            slave = axi_c.bus
            for name, member in axi_c.signature.members.items():
                if name == "bus":
                    continue
                ours, theirs = getattr(self, name), getattr(axi_c, name)
                if member.flow == Out:
                    m.d.comb += ours.eq(theirs)
                else:
                    m.d.comb += theirs.eq(ours)
        connect(m, cmd_slice.o, slave.cmd)
        for name in ("wdata", "rdata", "wresp"):
            connect(m, getattr(arb_c.bus, name), getattr(slave, name))

        # -- CSR read values -------------------------------------------------------------------------
        # Busy while running, or while a finished run still has work in flight; after an error
        # the run is over even if a faulted engine holds its busy flag (it is reset by the next
        # start), so the host can wait for "not busy" and then read the error.
        any_busy = Signal()
        has_error = seq.error != ErrorCode.NONE
        m.d.comb += any_busy.eq(seq.running | (~has_error & (fetch_c.busy | load_c.busy | mx_c.busy
                                                               | vec_c.busy | store_c.busy)))
        status = {
            "busy": any_busy, "done": seq.done, "error": seq.error.as_value(), "error_engine": seq.error_engine,
            "halted": seq.halted, "stuck": seq.stuck, "fetch_done": ~fetch_c.busy,
            "collision": act_c.collision | acc_c.collision | wgt_c.collision,
        }
        # STATUS is read from a register, a cycle behind the engines (timing: the busy flags ran
        # from every engine's state through the CSR read multiplexer)
        st = Signal(32)
        for name, (lsb, width) in regmap.STATUS_FIELDS.items():
            m.d.sync += st[lsb:lsb + width].eq(status[name])
        m.d.comb += [
            csr.id.eq(regmap.MAGIC),
            csr.hwcfg.eq(cfg.rows | (cfg.cols << 8) | ((cfg.mem_bytes.bit_length() - 1) << 16)
                         | (cfg.n_semaphores << 24)),
            csr.status.eq(st),
            csr.err_index.eq(seq.error_index),
            csr.fetch_pc.eq(fetch_c.fetch_pc),
        ]
        for e, name in enumerate(_ENGINE_ORDER):
            m.d.comb += getattr(csr, f"pc_{name}").eq(seq.pc[e])
        for i in range(min(cfg.n_semaphores, 16)):
            m.d.comb += getattr(csr, f"sem_{i}").eq(seq.sem_values[i])
        counters = {
            "cycles": seq.count_cycles, "instructions": seq.count_instructions,
            "macs": mx_c.macs, "macs_skipped": mx_c.macs_skipped,
            "load_bytes": load_c.bytes, "load_bytes_raw": load_c.bytes_raw,
            "store_bytes": store_c.bytes, "store_bytes_raw": store_c.bytes_raw,
        }
        for e, name in enumerate(_ENGINE_ORDER):
            counters[f"{name}_busy"] = seq.count_busy[e]
            counters[f"{name}_wait"] = seq.count_wait[e]
            counters[f"{name}_stall"] = seq.count_stall[e]
        for cname in regmap.COUNTERS:
            v = counters[cname]
            m.d.comb += getattr(csr, f"{cname}_lo").eq(v[:32])
            if len(v) > 32:
                m.d.comb += getattr(csr, f"{cname}_hi").eq(v[32:64])
        m.d.comb += self.irq.eq(seq.done | (seq.error != ErrorCode.NONE))
        return m


def _inner(x):
    """The component inside a ``ResetInserter`` wrapper."""
    return getattr(x, "_e", x)


