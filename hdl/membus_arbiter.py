"""Membus arbiter: several membus masters share one membus (fetch, LOAD DMA, STORE DMA -> AXI)."""

from amaranth import Cat, Module, Mux, ResetInserter, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .membus import MemBusSignature
from .round_robin import RoundRobin, one_hot_mux
from .credit_slice import CreditSlice

__all__ = ["MembusArbiter"]


class MembusArbiter(wiring.Component):
    """Round-robin arbiter from ``n_masters`` membus masters to one membus.

    Commands are granted round-robin among the masters offering one (a waiting master is
    granted after at most ``n_masters - 1`` other grants). A granted command is presented on
    ``bus.cmd`` and held there until accepted. At grant time the master's index is queued:

    * read grants in a read-routing FIFO: ``bus.rdata`` beats go to the head master, which pops
      on the beat with ``last``;
    * write grants in a write-data FIFO and a write-response FIFO: ``bus.wdata`` is taken from
      the head master's ``wdata`` until its ``last`` beat, and each ``bus.wresp`` goes to the
      head of the response FIFO. Write data flows as soon as the command is granted, before or
      after ``bus.cmd`` accepts it (the membus/AXI rule that a slave may wait for write data
      before accepting the command cannot deadlock).

    Each FIFO holds ``depth`` entries, so at most ``depth`` reads and ``depth`` writes are
    outstanding; a read (write) command is not granted while its FIFO is full. As in AXI, a
    master must offer a write command without waiting for its write data to be accepted (data
    is only taken once the command is granted). Responses must
    come at the earliest the cycle after their command was accepted (true of any membus slave
    that registers its command, including :class:`sparrow.hdl.axi4.Axi4Master` with an AXI slave).
    ``rdata``/``wresp`` ordering per master is the slave's order, i.e. command order.

    ``flush`` (one cycle; the accelerator's soft reset on start/abort, which resets the masters
    but not the arbiter) *orphans* every transaction then outstanding, so that the slave still
    sees each one completed and the next run starts on a clean bus: a command being held on
    ``bus.cmd`` stays there (from a register) until accepted, without ``ready`` reaching its
    former master; read beats of orphaned reads are accepted and dropped; orphaned writes get
    their remaining beats from the arbiter (zero strobes, so memory is unchanged); their
    responses are accepted and dropped. No new command is granted in the flush cycle.

    Parameters
    ----------
    addr_width : int
        Byte-address width of the membus.
    data_bytes : int
        Bytes per data beat (power of two).
    n_masters : int
        Masters (>= 1).
    depth : int
        Outstanding reads and outstanding writes tracked (>= 1, default 4).
    sliced : bool
        Pass every master's commands, write data, read data and write responses through a
        register slice (:class:`~sparrow.hdl.credit_slice.CreditSlice`, full throughput, one cycle
        more latency each), so no combinational path runs from one master through the
        arbitration into another master or from the routing FIFOs into a master (default False).
        A master's write data may then be accepted into its slice before its command is granted.
        ``flush`` empties the slices.

    Ports
    -----
    masters : In(MemBusSignature(addr_width, data_bytes)).array(n_masters)
        Master-facing ports (slave side). Verilog ``masters__<i>__{cmd,wdata,rdata,wresp}__*``.
    bus : Out(MemBusSignature(addr_width, data_bytes))
        The shared membus (master side). Verilog ``bus__{cmd,wdata,rdata,wresp}__*``.
    flush : In(1)
        Orphan every outstanding transaction (see above).
    """

    def __init__(self, addr_width: int, data_bytes: int, n_masters: int, *, depth: int = 4,
                 sliced: bool = False):
        if not isinstance(addr_width, int) or isinstance(addr_width, bool) or not 1 <= addr_width <= 64:
            raise ValueError(f"addr_width must be an int in 1..64, not {addr_width!r}")
        if (not isinstance(data_bytes, int) or isinstance(data_bytes, bool) or data_bytes < 1
                or data_bytes & (data_bytes - 1)):
            raise ValueError(f"data_bytes must be a power of two, not {data_bytes!r}")
        if not isinstance(n_masters, int) or isinstance(n_masters, bool) or n_masters < 1:
            raise ValueError(f"n_masters must be a positive int, not {n_masters!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth must be a positive int, not {depth!r}")
        self.addr_width, self.data_bytes = addr_width, data_bytes
        if not isinstance(sliced, bool):
            raise TypeError(f"sliced must be a bool, not {sliced!r}")
        self.n_masters, self.depth, self.sliced = n_masters, depth, sliced
        sig = MemBusSignature(addr_width, data_bytes)
        super().__init__({"masters": In(sig).array(n_masters), "bus": Out(sig), "flush": In(1)})

    def elaborate(self, platform):
        m = Module()
        n, bus = self.n_masters, self.bus
        # What the arbitration sees of each master: its own port, or register slices between them.
        masters = []
        for i, p in enumerate(self.masters):
            if not self.sliced:
                masters.append(p)
                continue
            slices = {}
            for name in ("cmd", "wdata", "rdata", "wresp"):
                sb = slices[name] = CreditSlice(getattr(p, name).payload.shape())
                m.submodules[f"{name}_slice{i}"] = ResetInserter(self.flush)(sb)
            for name in ("cmd", "wdata"):                   # master -> arbiter
                wiring.connect(m, wiring.flipped(getattr(p, name)), slices[name].i)
            for name in ("rdata", "wresp"):                 # arbiter -> master
                wiring.connect(m, slices[name].o, wiring.flipped(getattr(p, name)))
            masters.append(_SlicedView(slices["cmd"].o, slices["wdata"].o, slices["rdata"].i, slices["wresp"].i))
        id_w = max(1, (n - 1).bit_length())
        m.submodules.rd_ids = rd_ids = fifo.SyncFIFO(width=id_w, depth=self.depth)
        m.submodules.wd_ids = wd_ids = fifo.SyncFIFO(width=id_w + 8, depth=self.depth)  # id, len
        m.submodules.wr_ids = wr_ids = fifo.SyncFIFO(width=id_w, depth=self.depth)
        m.submodules.rr = rr = RoundRobin(n)
        flush = self.flush
        # orphaned transactions are the oldest entries of each FIFO: count them
        orphan_rd = Signal(range(self.depth + 1))
        orphan_wd = Signal(range(self.depth + 1))
        orphan_wr = Signal(range(self.depth + 1))

        # -- commands ---------------------------------------------------------------------
        locked = Signal()                 # a granted command is waiting on bus.cmd.ready
        lock_cmd = Signal.like(bus.cmd.payload)
        lock_hold = Signal(n)             # one-hot: the master whose command that is (none if flushed)
        # Room in the ID FIFOs, registered flags equal to their w_rdy, from the next level with
        # the grant's write selecting last (timing: the levels' compares ran into the requests,
        # the round robin, the FIFOs' writes and the top's command slice)
        rd_room, wd_room, wr_room = (Signal(init=1, name=f"{q}_room") for q in ("rd", "wd", "wr"))
        for flag, q in ((rd_room, rd_ids), (wd_room, wd_ids), (wr_room, wr_ids)):
            kept = q.level - (q.r_en & q.r_rdy)
            m.d.sync += flag.eq(Mux(q.w_en, kept + 1 != self.depth, kept != self.depth))
        for i, p in enumerate(masters):
            room = Mux(p.cmd.payload.write, wd_room & wr_room, rd_room)
            m.d.comb += rr.requests[i].eq(p.cmd.valid & ~locked & ~flush & room)
        # the granted master by the one-hot grant (timing: an encoded index and compares with
        # it put a priority chain and a decoder between the requests and every master's ready)
        m.d.comb += [bus.cmd.valid.eq(locked | rr.valid),
                     bus.cmd.payload.eq(Mux(locked, lock_cmd, one_hot_mux(rr.grant, [p.cmd.payload for p in masters])))]
        for i, p in enumerate(masters):
            m.d.comb += p.cmd.ready.eq((rr.grant[i] | lock_hold[i]) & bus.cmd.ready)
        new_grant = rr.valid                                   # rr only requests when ~locked
        # a new grant's kind from the grant and the masters' own write bits (timing: not behind
        # the lock's payload select)
        granted_rd, granted_wr = Signal(), Signal()
        m.d.comb += [granted_rd.eq(Cat(*(rr.grant[i] & ~p.cmd.payload.write for i, p in enumerate(masters))).any()),
                     granted_wr.eq(Cat(*(rr.grant[i] & p.cmd.payload.write for i, p in enumerate(masters))).any())]
        m.d.comb += [rr.advance.eq(new_grant),
                     rd_ids.w_data.eq(rr.index), wd_ids.w_data.eq(Cat(rr.index, bus.cmd.payload.len)),
                     wr_ids.w_data.eq(rr.index),
                     rd_ids.w_en.eq(granted_rd), wd_ids.w_en.eq(granted_wr), wr_ids.w_en.eq(granted_wr)]
        with m.If(new_grant & ~bus.cmd.ready):
            m.d.sync += [locked.eq(1), lock_hold.eq(rr.grant), lock_cmd.eq(bus.cmd.payload)]
        with m.If(locked & bus.cmd.ready):
            m.d.sync += [locked.eq(0), lock_hold.eq(0)]
        with m.If(flush):
            m.d.sync += lock_hold.eq(0)

        # -- write data: from the head of the write-data FIFO ------------------------------------
        wd_id, wd_len = wd_ids.r_data[:id_w], wd_ids.r_data[id_w:]
        wd_beat = Signal(8)               # beats of the head write already accepted
        with m.If(wd_ids.r_rdy & (orphan_wd != 0)):
            m.d.comb += [bus.wdata.valid.eq(1), bus.wdata.payload.data.eq(0), bus.wdata.payload.strb.eq(0),
                         bus.wdata.payload.last.eq(wd_beat == wd_len)]
        with m.Elif(wd_ids.r_rdy):
            with m.Switch(wd_id):
                for i, p in enumerate(masters):
                    with _case(m, i, n):
                        m.d.comb += [bus.wdata.valid.eq(p.wdata.valid), bus.wdata.payload.eq(p.wdata.payload)]
        for i, p in enumerate(masters):
            m.d.comb += p.wdata.ready.eq(bus.wdata.ready & wd_ids.r_rdy & (orphan_wd == 0) & (wd_id == i))
        wd_pop = Signal()
        m.d.comb += [wd_pop.eq(bus.wdata.valid & bus.wdata.ready & bus.wdata.payload.last),
                     wd_ids.r_en.eq(wd_pop)]
        with m.If(wd_pop):
            m.d.sync += wd_beat.eq(0)
        with m.Elif(bus.wdata.valid & bus.wdata.ready):
            m.d.sync += wd_beat.eq(wd_beat + 1)

        # -- read data and write responses: to the head of their FIFOs ------------------------
        rd_orphan, wr_orphan = orphan_rd != 0, orphan_wr != 0
        for i, p in enumerate(masters):
            m.d.comb += [p.rdata.payload.eq(bus.rdata.payload), p.wresp.payload.eq(bus.wresp.payload),
                         p.rdata.valid.eq(bus.rdata.valid & rd_ids.r_rdy & ~rd_orphan & (rd_ids.r_data == i)),
                         p.wresp.valid.eq(bus.wresp.valid & wr_ids.r_rdy & ~wr_orphan & (wr_ids.r_data == i))]
        with m.If(rd_ids.r_rdy & rd_orphan):
            m.d.comb += bus.rdata.ready.eq(1)
        with m.Elif(rd_ids.r_rdy):
            with m.Switch(rd_ids.r_data):
                for i, p in enumerate(masters):
                    with _case(m, i, n):
                        m.d.comb += bus.rdata.ready.eq(p.rdata.ready)
        with m.If(wr_ids.r_rdy & wr_orphan):
            m.d.comb += bus.wresp.ready.eq(1)
        with m.Elif(wr_ids.r_rdy):
            with m.Switch(wr_ids.r_data):
                for i, p in enumerate(masters):
                    with _case(m, i, n):
                        m.d.comb += bus.wresp.ready.eq(p.wresp.ready)
        m.d.comb += [rd_ids.r_en.eq(bus.rdata.valid & bus.rdata.ready & bus.rdata.payload.last),
                     wr_ids.r_en.eq(bus.wresp.valid & bus.wresp.ready)]

        # -- orphan counts: on flush, everything outstanding after this cycle's pops --------------
        for count, q in ((orphan_rd, rd_ids), (orphan_wd, wd_ids), (orphan_wr, wr_ids)):
            with m.If(flush):
                m.d.sync += count.eq(q.level - q.r_en)
            with m.Elif(q.r_en & (count != 0)):
                m.d.sync += count.eq(count - 1)
        return m


class _SlicedView:
    """A master port as the arbitration sees it when sliced: slice outputs and inputs in place
    of its ``cmd`` and ``rdata``."""

    def __init__(self, cmd, wdata, rdata, wresp):
        self.cmd, self.wdata, self.rdata, self.wresp = cmd, wdata, rdata, wresp


def _case(m, i, n):
    """``m.Case(i)``, or ``m.Default()`` for the last of ``n`` choices (a complete case, lint-clean)."""
    return m.Case(i) if i < n - 1 else m.Default()
