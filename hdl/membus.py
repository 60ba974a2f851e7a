"""Internal external-memory interface ("membus"): what every bus master in Sparrow speaks.

A simplified, in-order AXI: no IDs, one outstanding order, bursts of up to ``max_burst`` beats
of ``data_bytes`` bytes. The AXI4 master adapter (``hdl/axi4.py``) turns it into AXI4; the
Verilator harness and testbenches model it directly. Master's view:

``cmd``: ``Out(stream.Signature(MemCmd))``
    ``addr`` (byte address, aligned to ``data_bytes``), ``write``, ``len`` (beats - 1). A burst
    never crosses a 4 KiB boundary (AXI rule); masters split their transfers accordingly.
``wdata``: ``Out(stream.Signature(MemWData))``
    ``data``, ``strb`` (byte enables), ``last``: ``len + 1`` beats per write command, in
    command order. Write data may be offered before or after its command is accepted.
``rdata``: ``In(stream.Signature(MemRData))``
    ``data``, ``last``, ``err``: ``len + 1`` beats per read command, in command order.
``wresp``: ``In(stream.Signature(MemWResp))``
    ``err``: one per write command, in command order, after its last data beat was accepted.

``err`` (an AXI SLVERR/DECERR) becomes the ``DRAM_RANGE`` error of the engine that issued it.
"""

from amaranth.hdl import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MemBusSignature", "mem_cmd_layout", "mem_wdata_layout", "mem_rdata_layout", "mem_wresp_layout"]


def mem_cmd_layout(addr_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "write": unsigned(1), "len": unsigned(8)})


def mem_wdata_layout(data_bytes: int) -> data.StructLayout:
    return data.StructLayout({"data": unsigned(8 * data_bytes), "strb": unsigned(data_bytes), "last": unsigned(1)})


def mem_rdata_layout(data_bytes: int) -> data.StructLayout:
    return data.StructLayout({"data": unsigned(8 * data_bytes), "last": unsigned(1), "err": unsigned(1)})


def mem_wresp_layout() -> data.StructLayout:
    return data.StructLayout({"err": unsigned(1)})


class MemBusSignature(wiring.Signature):
    """Master-side membus signature. ``addr_width`` bits of byte address, ``data_bytes`` per beat."""

    def __init__(self, addr_width: int, data_bytes: int):
        if not isinstance(addr_width, int) or not 1 <= addr_width <= 64:
            raise TypeError(f"addr_width must be an int in 1..64, not {addr_width!r}")
        if not isinstance(data_bytes, int) or data_bytes < 1 or data_bytes & (data_bytes - 1):
            raise TypeError(f"data_bytes must be a power of two, not {data_bytes!r}")
        self.addr_width, self.data_bytes = addr_width, data_bytes
        super().__init__({
            "cmd": Out(stream.Signature(mem_cmd_layout(addr_width))),
            "wdata": Out(stream.Signature(mem_wdata_layout(data_bytes))),
            "rdata": In(stream.Signature(mem_rdata_layout(data_bytes))),
            "wresp": In(stream.Signature(mem_wresp_layout())),
        })

    def __eq__(self, other):
        return (isinstance(other, MemBusSignature) and other.addr_width == self.addr_width
                and other.data_bytes == self.data_bytes)

    def __repr__(self):
        return f"MemBusSignature({self.addr_width}, {self.data_bytes})"
