"""AXI4 master adapter: the membus (``hdl/membus.py``) as an AXI4 memory-mapped master port."""

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .membus import MemBusSignature

__all__ = ["Axi4Master", "AXI_PREFIX"]

#: Prefix of the flat AXI port names (``m_axi_awaddr``, ...), as cocotbext-axi's
#: ``AxiBus.from_prefix(dut, "m_axi")`` and most FPGA tools expect them.
AXI_PREFIX = "m_axi"

_BURST_INCR = 0b01
_CACHE_NORMAL_NONCACHEABLE_BUFFERABLE = 0b0011   # "modifiable, bufferable": what DMA masters use
_PROT_DATA_NONSECURE_UNPRIV = 0b010


class Axi4Master(wiring.Component):
    """Membus slave port in, AXI4 master port out.

    Each membus command becomes one INCR burst of ``len + 1`` full-width beats (``awsize`` /
    ``arsize`` = log2(``data_bytes``)) on AW or AR, through one register stage (AW/AR are driven
    from flops; a command is accepted in the cycle the previous one leaves, so one command per
    cycle). Write data, read data and write responses pass straight through (combinational; W
    may run ahead of AW, as both AXI and the membus allow). Every
    transaction uses ID 0, so the AXI slave returns reads in order and write responses in order,
    which is exactly the membus' in-order rule; any number of reads and writes may be
    outstanding. ``rresp``/``bresp`` SLVERR (0b10) and DECERR (0b11) set ``err``; OKAY and
    EXOKAY do not. There is no combinational path from an AXI input to an AXI output inside the
    adapter; the membus master's stream discipline (valid never waits for ready, payload held
    until accepted) carries over to W, so the AXI VALID/READY rules hold.

    Parameters
    ----------
    addr_width : int
        Byte-address width (1..64).
    data_bytes : int
        Bytes per beat: a power of two in 1..128 (AXI4 data widths 8..1024 bits).
    id_width : int
        Width of the (constant zero) AXI ID signals (>= 1).

    Ports
    -----
    bus : In(MemBusSignature(addr_width, data_bytes))
        Membus, slave side. Verilog ``bus__cmd__*``, ``bus__wdata__*``, ``bus__rdata__*``,
        ``bus__wresp__*``.
    m_axi_aw{id,addr,len,size,burst,lock,cache,prot,qos,valid} : Out, m_axi_awready : In
    m_axi_w{data,strb,last,valid} : Out, m_axi_wready : In
    m_axi_b{id,resp,valid} : In, m_axi_bready : Out
    m_axi_ar{id,addr,len,size,burst,lock,cache,prot,qos,valid} : Out, m_axi_arready : In
    m_axi_r{id,data,resp,last,valid} : In, m_axi_rready : Out
        The AXI4 master port (flat names, exactly as in the Verilog). Constants: ``*id`` 0,
        ``*burst`` INCR, ``*lock`` 0, ``*cache`` 0b0011, ``*prot`` 0b010 (unprivileged,
        non-secure, data), ``*qos`` 0.
    """

    def __init__(self, addr_width: int, data_bytes: int, *, id_width: int = 1):
        if not isinstance(addr_width, int) or isinstance(addr_width, bool) or not 1 <= addr_width <= 64:
            raise ValueError(f"addr_width must be an int in 1..64, not {addr_width!r}")
        if (not isinstance(data_bytes, int) or isinstance(data_bytes, bool) or not 1 <= data_bytes <= 128
                or data_bytes & (data_bytes - 1)):
            raise ValueError(f"data_bytes must be a power of two in 1..128, not {data_bytes!r}")
        if not isinstance(id_width, int) or isinstance(id_width, bool) or not 1 <= id_width <= 32:
            raise ValueError(f"id_width must be an int in 1..32, not {id_width!r}")
        self.addr_width, self.data_bytes, self.id_width = addr_width, data_bytes, id_width
        p = AXI_PREFIX
        members = {"bus": In(MemBusSignature(addr_width, data_bytes))}
        for ch in ("aw", "ar"):
            members.update({
                f"{p}_{ch}id": Out(id_width), f"{p}_{ch}addr": Out(addr_width), f"{p}_{ch}len": Out(8),
                f"{p}_{ch}size": Out(3), f"{p}_{ch}burst": Out(2), f"{p}_{ch}lock": Out(1),
                f"{p}_{ch}cache": Out(4), f"{p}_{ch}prot": Out(3), f"{p}_{ch}qos": Out(4),
                f"{p}_{ch}valid": Out(1), f"{p}_{ch}ready": In(1),
            })
        members.update({
            f"{p}_wdata": Out(8 * data_bytes), f"{p}_wstrb": Out(data_bytes), f"{p}_wlast": Out(1),
            f"{p}_wvalid": Out(1), f"{p}_wready": In(1),
            f"{p}_bid": In(id_width), f"{p}_bresp": In(2), f"{p}_bvalid": In(1), f"{p}_bready": Out(1),
            f"{p}_rid": In(id_width), f"{p}_rdata": In(8 * data_bytes), f"{p}_rresp": In(2),
            f"{p}_rlast": In(1), f"{p}_rvalid": In(1), f"{p}_rready": Out(1),
        })
        super().__init__(members)

    def axi(self, name: str):
        """The AXI signal ``name`` without prefix, e.g. ``axi("awaddr")``."""
        return getattr(self, f"{AXI_PREFIX}_{name}")

    def elaborate(self, platform):
        m = Module()
        a, bus = self.axi, self.bus
        cmd = bus.cmd
        size = (self.data_bytes - 1).bit_length()
        # One register stage between the membus command and AW/AR (full throughput: a new
        # command is loaded in the cycle the held one is accepted).
        ax_valid = Signal()
        ax = Signal.like(cmd.payload)
        ax_ready = Mux(ax.write, a("awready"), a("arready"))
        m.d.comb += cmd.ready.eq(~ax_valid | ax_ready)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [ax_valid.eq(1), ax.eq(cmd.payload)]
        with m.Elif(ax_ready):
            m.d.sync += ax_valid.eq(0)
        for ch, is_write in (("aw", 1), ("ar", 0)):
            m.d.comb += [
                a(f"{ch}id").eq(0), a(f"{ch}addr").eq(ax.addr), a(f"{ch}len").eq(ax.len),
                a(f"{ch}size").eq(size), a(f"{ch}burst").eq(_BURST_INCR), a(f"{ch}lock").eq(0),
                a(f"{ch}cache").eq(_CACHE_NORMAL_NONCACHEABLE_BUFFERABLE),
                a(f"{ch}prot").eq(_PROT_DATA_NONSECURE_UNPRIV), a(f"{ch}qos").eq(0),
                a(f"{ch}valid").eq(ax_valid & (ax.write == is_write)),
            ]
        m.d.comb += [
            a("wdata").eq(bus.wdata.payload.data), a("wstrb").eq(bus.wdata.payload.strb),
            a("wlast").eq(bus.wdata.payload.last), a("wvalid").eq(bus.wdata.valid),
            bus.wdata.ready.eq(a("wready")),
            bus.wresp.valid.eq(a("bvalid")), bus.wresp.payload.err.eq(a("bresp")[1]),
            a("bready").eq(bus.wresp.ready),
            bus.rdata.valid.eq(a("rvalid")), bus.rdata.payload.data.eq(a("rdata")),
            bus.rdata.payload.last.eq(a("rlast")), bus.rdata.payload.err.eq(a("rresp")[1]),
            a("rready").eq(bus.rdata.ready),
        ]
        return m
