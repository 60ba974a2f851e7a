"""Membus arbiter: several membus masters share one membus (fetch, LOAD DMA, STORE DMA -> AXI)."""

from amaranth import Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .membus import MemBusSignature
from .round_robin import RoundRobin

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

    Ports
    -----
    masters : In(MemBusSignature(addr_width, data_bytes)).array(n_masters)
        Master-facing ports (slave side). Verilog ``masters__<i>__{cmd,wdata,rdata,wresp}__*``.
    bus : Out(MemBusSignature(addr_width, data_bytes))
        The shared membus (master side). Verilog ``bus__{cmd,wdata,rdata,wresp}__*``.
    """

    def __init__(self, addr_width: int, data_bytes: int, n_masters: int, *, depth: int = 4):
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
        self.n_masters, self.depth = n_masters, depth
        sig = MemBusSignature(addr_width, data_bytes)
        super().__init__({"masters": In(sig).array(n_masters), "bus": Out(sig)})

    def elaborate(self, platform):
        m = Module()
        n, masters, bus = self.n_masters, self.masters, self.bus
        id_w = max(1, (n - 1).bit_length())
        m.submodules.rd_ids = rd_ids = fifo.SyncFIFO(width=id_w, depth=self.depth)
        m.submodules.wd_ids = wd_ids = fifo.SyncFIFO(width=id_w, depth=self.depth)
        m.submodules.wr_ids = wr_ids = fifo.SyncFIFO(width=id_w, depth=self.depth)
        m.submodules.rr = rr = RoundRobin(n)

        # -- commands ---------------------------------------------------------------------
        locked = Signal()                 # a granted command is waiting on bus.cmd.ready
        lock_id = Signal(range(max(n, 2)))
        for i, p in enumerate(masters):
            room = Mux(p.cmd.payload.write, wd_ids.w_rdy & wr_ids.w_rdy, rd_ids.w_rdy)
            m.d.comb += rr.requests[i].eq(p.cmd.valid & ~locked & room)
        sel = Signal(range(max(n, 2)))
        m.d.comb += [sel.eq(lock_id), bus.cmd.valid.eq(locked | rr.valid)]
        with m.If(~locked):
            m.d.comb += sel.eq(rr.index)
        with m.Switch(sel):
            for i, p in enumerate(masters):
                with _case(m, i, n):
                    m.d.comb += bus.cmd.payload.eq(p.cmd.payload)
        for i, p in enumerate(masters):
            m.d.comb += p.cmd.ready.eq(bus.cmd.ready & bus.cmd.valid & (sel == i))
        new_grant = rr.valid                                   # rr only requests when ~locked
        m.d.comb += [rr.advance.eq(new_grant),
                     rd_ids.w_data.eq(rr.index), wd_ids.w_data.eq(rr.index), wr_ids.w_data.eq(rr.index),
                     rd_ids.w_en.eq(new_grant & ~bus.cmd.payload.write),
                     wd_ids.w_en.eq(new_grant & bus.cmd.payload.write),
                     wr_ids.w_en.eq(new_grant & bus.cmd.payload.write)]
        with m.If(new_grant & ~bus.cmd.ready):
            m.d.sync += [locked.eq(1), lock_id.eq(rr.index)]
        with m.If(locked & bus.cmd.ready):
            m.d.sync += locked.eq(0)

        # -- write data: from the head of the write-data FIFO ------------------------------------
        with m.If(wd_ids.r_rdy):
            with m.Switch(wd_ids.r_data):
                for i, p in enumerate(masters):
                    with _case(m, i, n):
                        m.d.comb += [bus.wdata.valid.eq(p.wdata.valid), bus.wdata.payload.eq(p.wdata.payload)]
        for i, p in enumerate(masters):
            m.d.comb += p.wdata.ready.eq(bus.wdata.ready & wd_ids.r_rdy & (wd_ids.r_data == i))
        m.d.comb += wd_ids.r_en.eq(bus.wdata.valid & bus.wdata.ready & bus.wdata.payload.last)

        # -- read data and write responses: to the head of their FIFOs ------------------------
        for i, p in enumerate(masters):
            m.d.comb += [p.rdata.payload.eq(bus.rdata.payload), p.wresp.payload.eq(bus.wresp.payload),
                         p.rdata.valid.eq(bus.rdata.valid & rd_ids.r_rdy & (rd_ids.r_data == i)),
                         p.wresp.valid.eq(bus.wresp.valid & wr_ids.r_rdy & (wr_ids.r_data == i))]
        with m.If(rd_ids.r_rdy):
            with m.Switch(rd_ids.r_data):
                for i, p in enumerate(masters):
                    with _case(m, i, n):
                        m.d.comb += bus.rdata.ready.eq(p.rdata.ready)
        with m.If(wr_ids.r_rdy):
            with m.Switch(wr_ids.r_data):
                for i, p in enumerate(masters):
                    with _case(m, i, n):
                        m.d.comb += bus.wresp.ready.eq(p.wresp.ready)
        m.d.comb += [rd_ids.r_en.eq(bus.rdata.valid & bus.rdata.ready & bus.rdata.payload.last),
                     wr_ids.r_en.eq(bus.wresp.valid & bus.wresp.ready)]
        return m


def _case(m, i, n):
    """``m.Case(i)``, or ``m.Default()`` for the last of ``n`` choices (a complete case, lint-clean)."""
    return m.Case(i) if i < n - 1 else m.Default()
