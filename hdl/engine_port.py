"""Control interface between the instruction sequencer and an execution engine.

Every engine (LOAD, STORE, MATMUL, VECTOR) has these members (engine's view):

``instr``: ``In(stream.Signature(instruction_layout()))``
    The next instruction for this engine, already decoded-legal (``isa.decode`` rules were
    checked by fetch) and already past its semaphore wait. The engine raises ``ready`` when it
    can take it; it may accept the next one before the previous has completed (pipelining).
``done``: ``Out(1)``
    One-cycle pulse per completed instruction, **in acceptance order**. For DMA, "completed"
    means the data has landed (LOAD: last line written; STORE: last byte accepted by memory).
``busy``: ``Out(1)``
    High while any accepted instruction has not completed.
``error``: ``Out(ErrorCode)``
    Non-zero once the engine hit an error (SPAD_RANGE, DRAM_RANGE, CORRUPT_DATA,
    ILLEGAL_FIELD for start-time rules); the faulting instruction is the oldest not-done one.
    Sticky until reset; the engine stops accepting instructions and stops writing.

Engines check their instruction's footprint when it starts (see ``docs/isa.md``, Errors) and
report an error instead of executing it.
"""

from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sparrow.errors import ErrorCode
from sparrow.isa import instruction_layout

__all__ = ["engine_control_members", "EngineControlSignature"]


def engine_control_members() -> dict:
    """Members to merge into an engine's signature (see module docstring)."""
    return {
        "instr": In(stream.Signature(instruction_layout())),
        "done": Out(1),
        "busy": Out(1),
        "error": Out(ErrorCode),
    }


class EngineControlSignature(wiring.Signature):
    """The control members alone, engine's view (use ``.flip()`` on the sequencer side)."""

    def __init__(self):
        super().__init__(engine_control_members())
