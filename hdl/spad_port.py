"""Scratchpad access ports: the contract between the engines and the scratchpads.

Engines never instantiate scratchpad memories; they own *ports* and the scratchpad block
(``hdl/scratchpad.py``) arbitrates banks between them. Both directions are ``lib.stream``:

Read port (:class:`ReadPortSignature`, from the engine's side)
    ``cmd``: ``Out(stream.Signature(addr))`` — a line address; accepted on ``valid & ready``.
    ``rsp``: ``In(stream.Signature(data, always_ready=True))`` — the line, returned in request
    order some cycles later (latency >= 1 and may vary with bank conflicts); the engine must take
    it when ``valid`` (no back-pressure on responses), so it may only issue what it can absorb.

Write port (:class:`WritePortSignature`)
    ``cmd``: ``Out(stream.Signature(WriteCmd))`` with ``addr`` and ``data``; written on
    ``valid & ready``.

A line of the activation or weight scratchpad is ``data.ArrayLayout(signed(8), cols)``; an
accumulator line is ``data.ArrayLayout(signed(32), cols)``.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["act_line", "acc_line", "ReadPortSignature", "WritePortSignature", "write_cmd_layout"]


def act_line(cols: int) -> data.ArrayLayout:
    """Layout of an ACT/WGT line: ``cols`` int8."""
    return data.ArrayLayout(signed(8), cols)


def acc_line(cols: int) -> data.ArrayLayout:
    """Layout of an ACC line: ``cols`` int32."""
    return data.ArrayLayout(signed(32), cols)


def write_cmd_layout(addr_width: int, line_shape) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "data": line_shape})


class ReadPortSignature(wiring.Signature):
    """Engine-side read port of a scratchpad (see module docstring)."""

    def __init__(self, addr_width: int, line_shape):
        if not isinstance(addr_width, int) or addr_width < 1:
            raise TypeError(f"addr_width must be a positive int, not {addr_width!r}")
        self.addr_width, self.line_shape = addr_width, line_shape
        super().__init__({
            "cmd": Out(stream.Signature(unsigned(addr_width))),
            "rsp": In(stream.Signature(line_shape, always_ready=True)),
        })

    def __eq__(self, other):
        return (isinstance(other, ReadPortSignature) and other.addr_width == self.addr_width
                and other.line_shape == self.line_shape)

    def __repr__(self):
        return f"ReadPortSignature({self.addr_width}, {self.line_shape!r})"


class WritePortSignature(wiring.Signature):
    """Engine-side write port of a scratchpad (see module docstring)."""

    def __init__(self, addr_width: int, line_shape):
        if not isinstance(addr_width, int) or addr_width < 1:
            raise TypeError(f"addr_width must be a positive int, not {addr_width!r}")
        self.addr_width, self.line_shape = addr_width, line_shape
        super().__init__({"cmd": Out(stream.Signature(write_cmd_layout(addr_width, line_shape)))})

    def __eq__(self, other):
        return (isinstance(other, WritePortSignature) and other.addr_width == self.addr_width
                and other.line_shape == self.line_shape)

    def __repr__(self):
        return f"WritePortSignature({self.addr_width}, {self.line_shape!r})"
