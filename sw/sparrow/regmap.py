"""CSR register map: the single definition read by the RTL register bank and the driver.

All registers are 32 bits wide at word addresses. Access: ``r`` read-only (status/counter),
``rw`` read/write, ``w`` write-only command (a write has an effect, reads return 0).
64-bit counters are two registers, ``NAME_LO`` then ``NAME_HI``. ``regmap.json`` for a preset
is written by ``make verilog`` next to the Verilog.

Control commands (``CTRL``, write a 1 to a bit):

* ``start``: reset semaphores/counters/status, fetch from ``PROG_BASE`` for ``PROG_LEN``
  instructions and run.
* ``abort``: stop and reset the datapath; status error becomes ``ABORTED``.
* ``clear``: clear ``done``/error status (the next ``start`` also does).

Breakpoints: engine ``e`` stops issuing when its next instruction's index equals
``BP_INDEX_<e>`` and bit ``e`` of ``BP_ENABLE`` is set. With ``BP_HALT_ALL`` set, the first
engine to hit its breakpoint halts every engine. ``RESUME`` (engine mask) lets those engines
run again — an engine at its breakpoint passes it once; ``STEP`` (engine mask) lets each
masked engine issue exactly one instruction and halt again. ``STATUS.halted`` is the mask of
halted engines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["Reg", "REGISTERS", "BY_NAME", "ENGINES", "COUNTERS", "ADDR_WIDTH", "MAGIC", "addr", "to_json",
           "status_fields", "STATUS_FIELDS", "START_CYCLES", "READ_LATENCY"]

MAGIC = 0x53505257  # "SPRW"
ADDR_WIDTH = 8
ENGINES = ("load", "matmul", "vector", "store")

#: Clock cycles from the cycle a CTRL start (or abort) write is strobed until STATUS reflects
#: the new run: the strobe is registered in the bank, the soft reset and then ``go`` are
#: registered in the top, the sequencer sets ``running``, and STATUS is read from a register.
#: A host waits this long after the write before polling STATUS.
START_CYCLES = 6

#: Clock edges from a read strobe until ``r_data`` holds the register's value (sampled at the
#: first of them). The bank reads in two stages (timing: one multiplexer over every register
#: was a long path): a group of 16 registers at the first edge, the group at the second.
READ_LATENCY = 2

#: 64-bit performance counters, in register order.
COUNTERS = (
    "cycles", "instructions", "macs", "macs_skipped",
    "load_bytes", "load_bytes_raw", "store_bytes", "store_bytes_raw",
    *[f"{e}_{k}" for e in ENGINES for k in ("busy", "wait", "stall")],
)

#: STATUS register bit fields: name -> (lsb, width)
STATUS_FIELDS = {
    "busy": (0, 1),        # running (fetching or any engine with work)
    "done": (1, 1),        # program finished without error since the last start
    "error": (4, 4),       # sparrow.errors.ErrorCode
    "error_engine": (8, 3),  # 0..3 engine, 4 = fetch/decode, 7 = none
    "halted": (12, 4),     # mask of engines halted at a breakpoint / by STEP / HALT_ALL
    "stuck": (16, 4),      # watchdog: engines that had pending work
    "fetch_done": (20, 1),
    "collision": (21, 1),  # a scratchpad line was read and written in one cycle since the start
                           # (undefined data on FPGA block RAM: see sparrow.hdl.scratchpad)
}


@dataclass(frozen=True)
class Reg:
    name: str
    addr: int
    access: str   # "r", "rw", "w"
    doc: str = ""
    init: int = 0


def _build():
    regs = []
    a = 0

    def add(name, access, doc="", init=0, n=1):
        nonlocal a
        regs.append(Reg(name, a, access, doc, init))
        a += n

    add("ID", "r", "magic 0x53505257 'SPRW'")
    add("HWCFG", "r", "rows | cols<<8 | log2(mem_bytes)<<16 | n_semaphores<<24")
    add("CTRL", "w", "bit0 start, bit1 abort, bit2 clear")
    add("STATUS", "r", "see STATUS_FIELDS")
    add("ERR_INDEX", "r", "index of the faulting instruction")
    add("PROG_BASE", "rw", "byte address of instruction 0")
    add("PROG_LEN", "rw", "number of instructions")
    add("WATCHDOG", "rw", "cycles without progress before a WATCHDOG error (0: off)", init=1 << 20)
    add("BP_ENABLE", "rw", "engine mask of enabled breakpoints")
    add("BP_HALT_ALL", "rw", "1: a breakpoint hit halts every engine")
    for e in ENGINES:
        add(f"BP_INDEX_{e.upper()}", "rw", f"breakpoint instruction index of the {e} engine")
    add("RESUME", "w", "engine mask: run again (passing a breakpoint once)")
    add("STEP", "w", "engine mask: issue one instruction, then halt")
    for e in ENGINES:
        add(f"PC_{e.upper()}", "r", f"index of the {e} engine's next instruction")
    add("FETCH_PC", "r", "index of the next instruction to fetch")
    a = 0x20
    for i in range(16):
        add(f"DELAY_{i}", "rw", f"cycles of DELAY slot {i}")
    for c in COUNTERS:
        add(f"{c.upper()}_LO", "r", f"counter {c}, low word")
        add(f"{c.upper()}_HI", "r", f"counter {c}, high word")
    a = 0x80
    for i in range(16):
        add(f"SEM_{i}", "r", f"semaphore {i}")
    return tuple(regs)


REGISTERS: tuple[Reg, ...] = _build()
BY_NAME = {r.name: r for r in REGISTERS}
assert len({r.addr for r in REGISTERS}) == len(REGISTERS)
assert max(r.addr for r in REGISTERS) < (1 << ADDR_WIDTH)


def addr(name: str) -> int:
    try:
        return BY_NAME[name].addr
    except KeyError:
        raise KeyError(f"no CSR named {name!r}") from None


def status_fields(value: int) -> dict:
    """Decode a STATUS register value into its fields."""
    return {k: (value >> lsb) & ((1 << w) - 1) for k, (lsb, w) in STATUS_FIELDS.items()}


def to_json(cfg=None) -> str:
    d = {"registers": [asdict(r) for r in REGISTERS], "status_fields": STATUS_FIELDS,
         "counters": list(COUNTERS), "engines": list(ENGINES), "magic": MAGIC, "addr_width": ADDR_WIDTH,
         "read_latency": READ_LATENCY}
    if cfg is not None:
        d["config"] = cfg.to_dict()
    return json.dumps(d, indent=2)
