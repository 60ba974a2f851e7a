"""Error codes shared by the RTL status register, the golden model and the driver."""

from __future__ import annotations

from amaranth.lib import enum

__all__ = ["ErrorCode", "SparrowError", "DeviceError", "CorruptDataError", "CollisionWarning"]


class ErrorCode(enum.Enum, shape=4):
    """Value of the ``error`` status field. Each is a distinct cause; the device halts on any."""
    NONE = 0
    ILLEGAL_OPCODE = 1   #: opcode (or vector op) not in the ISA
    ILLEGAL_FIELD = 2    #: a field breaks a rule of sparrow.isa.check (reserved bits, enum, range)
    SPAD_RANGE = 3       #: an instruction's scratchpad footprint leaves its scratchpad
    DRAM_RANGE = 4       #: an external-memory access outside memory (bus error)
    SEM_OVERFLOW = 5     #: a signal on a semaphore already at its maximum
    CORRUPT_DATA = 6     #: a compressed group is inconsistent (count overflow, mask overrun, trailing bytes)
    WATCHDOG = 7         #: no engine progressed for the watchdog period (deadlock)
    ABORTED = 8          #: the host aborted the run
    TIMEOUT = 9          #: the simulator's cycle limit was reached (reported by the driver)


class SparrowError(Exception):
    """Base class of Sparrow's own errors."""


class DeviceError(SparrowError):
    """The device (golden model or RTL) halted with an error.

    Attributes: ``code`` (:class:`ErrorCode`), ``engine`` (``sparrow.isa.Engine`` or ``None``),
    ``index`` (faulting instruction index or ``None``), ``detail`` (text).
    """

    def __init__(self, code, engine=None, index=None, detail=""):
        self.code, self.engine, self.index, self.detail = ErrorCode(code), engine, index, detail
        where = []
        if engine is not None:
            where.append(f"engine {getattr(engine, 'name', engine)}")
        if index is not None:
            where.append(f"instruction {index}")
        msg = f"device error {self.code.name}" + (f" at {', '.join(where)}" if where else "")
        super().__init__(msg + (f": {detail}" if detail else ""))


class CorruptDataError(SparrowError):
    """A compressed stream is inconsistent; ``reason`` says how."""


class CollisionWarning(UserWarning):
    """A run read and wrote one scratchpad line in the same cycle (STATUS ``collision``).

    Simulation returns the old line then, but FPGA block RAM returns undefined data, so the
    program's results may differ on an FPGA: two engines touched one line without a semaphore
    ordering them. The tests turn this warning into an error."""
