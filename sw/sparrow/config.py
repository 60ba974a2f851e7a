"""The one hardware configuration object read by ``hdl/``, ``sw/`` and the tests.

A :class:`HwConfig` fixes every size the RTL is elaborated with and that the compiler, the
golden model and the driver must agree on. It is frozen, validated on construction (errors
name the field), round-trips through JSON and comes in named presets::

    >>> from sparrow.config import HwConfig, preset
    >>> cfg = preset("small")
    >>> cfg.rows, cfg.cols, cfg.line_bytes
    (4, 4, 4)
    >>> HwConfig.from_json(cfg.to_json()) == cfg
    True

Scratchpad geometry
-------------------
Every scratchpad is organised in *lines* of ``cols`` elements, so that one line is one row of
the PE array's output tile:

* activation scratchpad (``act``): ``act_depth`` lines of ``cols`` int8;
* weight scratchpad (``wgt``): ``wgt_depth`` lines of ``cols`` int8 (line *k* of a weight tile
  holds ``W[k, 0:cols]``);
* accumulator scratchpad (``acc``): ``acc_depth`` lines of ``cols`` int32.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

__all__ = ["HwConfig", "PRESETS", "preset", "NUMBER_FORMATS"]

#: Datapath number formats. Only ``int8`` is implemented; shared-exponent block formats and
#: codebook (clustered) weights are planned and reserved in the ISA's ``fmt`` field.
NUMBER_FORMATS = ("int8",)

# Widths fixed by the ISA encoding (see sparrow.isa); the config must fit inside them.
_SPAD_ADDR_BITS = 14
_DRAM_ADDR_BITS = 28
_SEM_ID_BITS = 4
_DELAY_SLOT_BITS = 4


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class HwConfig:
    """Sizes of one Sparrow instance.

    Parameters
    ----------
    rows, cols : int
        PE array shape: ``rows`` lanes (rows of neurons), each with ``cols`` int8 MAC units.
    act_depth, wgt_depth, acc_depth : int
        Lines in the activation, weight and accumulator scratchpads (powers of two).
    act_banks, acc_banks : int
        Banks the activation and accumulator scratchpads are interleaved over (by line
        address), so several engines and lanes can access them in the same cycle.
    mem_bytes : int
        Data width of the external memory port in bytes (power of two).
    max_burst : int
        Longest external-memory burst in beats.
    n_semaphores : int
        Counting semaphores available to programs.
    sem_bits : int
        Width of each semaphore counter.
    queue_depth : int
        Depth of each engine's instruction queue.
    delay_slots : int
        Runtime-adjustable delay registers addressed by DELAY instructions.
    dram_bytes : int
        Size of external memory modelled by the golden model and the simulators.
    number_format : str
        Datapath number format, one of :data:`NUMBER_FORMATS`.
    name : str
        Label (preset name) used in file names and reports; not part of the hardware.
    """

    rows: int = 8
    cols: int = 8
    act_depth: int = 4096
    wgt_depth: int = 1024
    acc_depth: int = 2048
    act_banks: int = 8
    acc_banks: int = 2
    mem_bytes: int = 8
    max_burst: int = 16
    n_semaphores: int = 16
    sem_bits: int = 8
    queue_depth: int = 4
    delay_slots: int = 16
    dram_bytes: int = 1 << 24
    number_format: str = "int8"
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        def need(cond, fld, what):
            if not cond:
                raise ValueError(f"HwConfig.{fld}: {what} (got {getattr(self, fld)!r})")

        for fld in ("rows", "cols", "act_depth", "wgt_depth", "acc_depth", "act_banks", "acc_banks",
                    "mem_bytes", "max_burst", "n_semaphores", "sem_bits", "queue_depth",
                    "delay_slots", "dram_bytes"):
            v = getattr(self, fld)
            need(isinstance(v, int) and not isinstance(v, bool), fld, "must be an int")
            need(v >= 1, fld, "must be >= 1")
        need(2 <= self.rows <= 64, "rows", "must be in 2..64")
        need(_is_pow2(self.cols) and 2 <= self.cols <= 64, "cols", "must be a power of two in 2..64")
        for fld, limit in (("act_depth", 1 << _SPAD_ADDR_BITS), ("wgt_depth", 1 << _SPAD_ADDR_BITS),
                           ("acc_depth", 1 << _SPAD_ADDR_BITS)):
            v = getattr(self, fld)
            need(_is_pow2(v) and 16 <= v <= limit, fld, f"must be a power of two in 16..{limit}")
        need(_is_pow2(self.act_banks) and self.act_banks <= self.act_depth, "act_banks",
             "must be a power of two <= act_depth")
        need(_is_pow2(self.acc_banks) and self.acc_banks <= self.acc_depth, "acc_banks",
             "must be a power of two <= acc_depth")
        need(_is_pow2(self.mem_bytes) and 1 <= self.mem_bytes <= 64, "mem_bytes",
             "must be a power of two in 1..64")
        need(self.max_burst <= 256, "max_burst", "must be <= 256 (AXI4 burst limit)")
        need(self.n_semaphores <= (1 << _SEM_ID_BITS), "n_semaphores",
             f"must be <= {1 << _SEM_ID_BITS} (4-bit semaphore id in the ISA)")
        need(2 <= self.sem_bits <= 8, "sem_bits", "must be in 2..8 (8-bit wait count in the ISA)")
        need(self.queue_depth <= 64, "queue_depth", "must be <= 64")
        need(self.delay_slots <= (1 << _DELAY_SLOT_BITS), "delay_slots",
             f"must be <= {1 << _DELAY_SLOT_BITS} (4-bit slot in the ISA)")
        need(_is_pow2(self.dram_bytes) and self.dram_bytes <= (1 << _DRAM_ADDR_BITS), "dram_bytes",
             f"must be a power of two <= 2**{_DRAM_ADDR_BITS}")
        need(self.number_format in NUMBER_FORMATS, "number_format", f"must be one of {NUMBER_FORMATS}")

    # -- derived properties ------------------------------------------------------------------
    @property
    def line_bytes(self) -> int:
        """Bytes in one activation or weight scratchpad line (``cols`` int8)."""
        return self.cols

    @property
    def acc_line_bytes(self) -> int:
        """Bytes in one accumulator line (``cols`` little-endian int32)."""
        return 4 * self.cols

    @property
    def mask_bytes(self) -> int:
        """Bytes of zero-mask per compressed line (one bit per element)."""
        return (self.cols + 7) // 8

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.rows * self.cols

    @property
    def act_addr_bits(self) -> int:
        return (self.act_depth - 1).bit_length()

    @property
    def wgt_addr_bits(self) -> int:
        return (self.wgt_depth - 1).bit_length()

    @property
    def acc_addr_bits(self) -> int:
        return (self.acc_depth - 1).bit_length()

    @property
    def dram_addr_bits(self) -> int:
        return (self.dram_bytes - 1).bit_length()

    @property
    def sem_max(self) -> int:
        return (1 << self.sem_bits) - 1

    def spad_depth(self, spad) -> int:
        """Depth in lines of scratchpad ``spad`` (a :class:`sparrow.isa.Spad` or its name)."""
        name = getattr(spad, "name", spad)
        return {"ACT": self.act_depth, "WGT": self.wgt_depth, "ACC": self.acc_depth}[str(name).upper()]

    def spad_line_bytes(self, spad) -> int:
        name = str(getattr(spad, "name", spad)).upper()
        return self.acc_line_bytes if name == "ACC" else self.line_bytes

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "HwConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"HwConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "HwConfig":
        return cls.from_dict(json.loads(s))

    def replace(self, **changes) -> "HwConfig":
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Short stable identifier of the hardware (ignores ``name``); used for build caches."""
        import hashlib
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, HwConfig] = {
    # Fast tests: tiny array and memories so Verilator builds and simulations are quick.
    "small": HwConfig(rows=4, cols=4, act_depth=1024, wgt_depth=256, acc_depth=512,
                      act_banks=4, acc_banks=2, mem_bytes=8, max_burst=16, queue_depth=4,
                      dram_bytes=1 << 22, name="small"),
    # The design point: 8x8 array, 32 KiB activations, 8 KiB weights (replicated per lane), 64 KiB acc.
    "default": HwConfig(name="default"),
    # Throughput point: 16x16 array and a 16-byte memory port.
    "large": HwConfig(rows=16, cols=16, act_depth=8192, wgt_depth=2048, acc_depth=4096,
                      act_banks=16, acc_banks=4, mem_bytes=16, max_burst=16, queue_depth=8,
                      dram_bytes=1 << 26, name="large"),
}


def preset(name: str) -> HwConfig:
    """Return the named preset (``small``, ``default`` or ``large``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
