"""CSR host interface: a register bank generated from :mod:`sparrow.regmap`.

Shaped like amaranth-soc's CSR interface (which is not on the package index): a host-side bus
with ``addr``, ``r_stb``/``r_data`` and ``w_stb``/``w_data``; registers are 32 bits at word
addresses. ``r_data`` holds the value :data:`sparrow.regmap.READ_LATENCY` (2) clock edges after
the strobe, as sampled at the strobe's edge; a read may be strobed every cycle (the reads are
pipelined).
"""

from amaranth.hdl import Module, Signal
from amaranth.utils import ceil_log2
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sparrow import regmap

__all__ = ["CsrBusSignature", "CsrBank"]


class CsrBusSignature(wiring.Signature):
    """Host-side CSR bus (initiator's view): ``addr``, ``r_stb``, ``r_data``, ``w_stb``, ``w_data``."""

    def __init__(self, addr_width=regmap.ADDR_WIDTH, data_width=32):
        super().__init__({
            "addr": Out(addr_width),
            "r_stb": Out(1),
            "r_data": In(data_width),
            "w_stb": Out(1),
            "w_data": Out(data_width),
        })


def _member(reg):
    return reg.name.lower()


class CsrBank(wiring.Component):
    """The register bank of :data:`sparrow.regmap.REGISTERS`.

    Ports
    -----
    bus : In(CsrBusSignature())
        Host access.
    <name> : Out(32)
        For every ``rw`` register: its current value (reset to the register's ``init``).
    <name> : In(32)
        For every ``r`` register: the value the design presents.
    <name> : Out(32), <name>_stb : Out(1)
        For every ``w`` (command) register: the written value and a one-cycle strobe.
    """

    def __init__(self, registers=regmap.REGISTERS):
        self.registers = tuple(registers)
        members = {"bus": In(CsrBusSignature())}
        for r in self.registers:
            if r.access == "rw":
                members[_member(r)] = Out(32, init=r.init)
            elif r.access == "r":
                members[_member(r)] = In(32)
            elif r.access == "w":
                members[_member(r)] = Out(32)
                members[_member(r) + "_stb"] = Out(1)
            else:
                raise ValueError(f"register {r.name}: access must be r, rw or w, not {r.access!r}")
        super().__init__(members)

    #: Registers per group of the read's first stage (a power of two).
    GROUP = 16

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        assert regmap.READ_LATENCY == 2, "the read below has two stages"
        # Reads in two stages (timing: a single multiplexer over every register, addressed by
        # the bus, was one of the whole design's longest paths): at the strobe's edge each group
        # of GROUP registers is reduced to the one addressed (the low address bits), and the
        # group is remembered; at the next edge the group's value is taken. Unmapped addresses
        # and write-only registers read 0.
        lo = ceil_log2(self.GROUP)
        readable = [r for r in self.registers if r.access in ("r", "rw")]
        groups = sorted({r.addr >> lo for r in readable})
        picked = {g: Signal(32, name=f"rd_group{g}") for g in groups}
        group_r = Signal(len(bus.addr) - lo)
        stb_r = Signal()
        m.d.sync += [group_r.eq(bus.addr[lo:]), stb_r.eq(bus.r_stb)]
        for g, value in picked.items():
            m.d.sync += value.eq(0)
            with m.Switch(bus.addr[:lo]):
                for r in readable:
                    if r.addr >> lo == g:
                        with m.Case(r.addr & (self.GROUP - 1)):
                            m.d.sync += value.eq(getattr(self, _member(r)))
        r_data = Signal(32)
        m.d.comb += bus.r_data.eq(r_data)
        m.d.sync += r_data.eq(0)
        with m.If(stb_r):
            with m.Switch(group_r):
                for g, value in picked.items():
                    with m.Case(g):
                        m.d.sync += r_data.eq(value)
        for r in self.registers:
            if r.access == "w":
                m.d.sync += getattr(self, _member(r) + "_stb").eq(0)
        with m.If(bus.w_stb):
            with m.Switch(bus.addr):
                for r in self.registers:
                    if r.access == "rw":
                        with m.Case(r.addr):
                            m.d.sync += getattr(self, _member(r)).eq(bus.w_data)
                    elif r.access == "w":
                        with m.Case(r.addr):
                            m.d.sync += [getattr(self, _member(r)).eq(bus.w_data),
                                         getattr(self, _member(r) + "_stb").eq(1)]
                with m.Default():
                    pass  # unmapped or read-only: writes are ignored
        return m
