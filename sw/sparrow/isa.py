"""Sparrow instruction set: the single source of truth.

The RTL decoder (``sparrow.hdl``), the compiler and the golden model all import the field
tables below. From them this module derives

* encode/decode between :class:`Instruction` objects and 128-bit words, with validation whose
  errors name the instruction index and the field (:class:`IsaError`);
* a text assembler/disassembler (``sparrow asm`` / ``sparrow disasm``);
* Amaranth ``data.Layout``s (:func:`instruction_layout`) and ``lib.enum`` opcodes for the RTL.

Every instruction is 128 bits, little-endian when stored in memory. Bits ``[21:0]`` are a common
header; the body follows from bit 22. See ``docs/isa.md`` for the semantics of every field.

Header (every instruction)
--------------------------
``opcode`` (4)
    :class:`Opcode`.
``wait_sem`` (4), ``wait_count`` (8), ``wait_consume`` (1)
    Before issue, the engine waits until semaphore ``wait_sem`` holds at least ``wait_count``
    (a count of 0 never waits). With ``wait_consume`` the count is subtracted when released.
``signal_sem`` (4), ``signal_en`` (1)
    On completion (for DMA: when the data has landed), increment semaphore ``signal_sem``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from amaranth.lib import enum

__all__ = [
    "WORD_BITS", "WORD_BYTES", "HEADER_BITS",
    "Opcode", "Engine", "Spad", "VectorOp", "MaskMode", "Fmt",
    "Field", "HEADER", "KINDS", "Instruction", "Program", "IsaError",
    "make", "encode", "decode", "assemble", "disassemble", "engine_of",
    "header_layout", "body_layout", "instruction_layout",
]

WORD_BITS = 128
WORD_BYTES = WORD_BITS // 8


class Opcode(enum.Enum, shape=4):
    NOP = 0
    DELAY = 1
    HALT = 2
    LOAD = 3
    STORE = 4
    MATMUL = 5
    VECTOR = 6


class Engine(enum.Enum, shape=2):
    """The four instruction queues / execution engines."""
    LOAD = 0
    MATMUL = 1
    VECTOR = 2
    STORE = 3


class Spad(enum.Enum, shape=2):
    ACT = 0   #: activation scratchpad, lines of ``cols`` int8
    WGT = 1   #: weight scratchpad, lines of ``cols`` int8
    ACC = 2   #: accumulator scratchpad, lines of ``cols`` int32


class VectorOp(enum.Enum, shape=4):
    REQUANT = 0   #: acc -> act: + bias, * mult >> shift (per channel), + zp, clamp
    ADD = 1       #: act + act -> act with per-operand multipliers (residual add)
    MAXPOOL = 2
    AVGPOOL = 3
    MASK = 4      #: out = mask ? alt : data, mask generated (causal/padding) or loaded


class MaskMode(enum.Enum, shape=2):
    CAUSAL = 0    #: masked where col > row + param (param signed)
    PADDING = 1   #: masked where col >= param
    LOADED = 2    #: bitmap read from the activation scratchpad at mask_addr


class Fmt(enum.Enum, shape=2):
    """Datapath number format of a MATMUL. Only INT8 exists; the others are reserved for
    shared-exponent block formats and codebook weights."""
    INT8 = 0


class IsaError(ValueError):
    """A bad instruction word, field or assembly line.

    Attributes ``index`` (instruction index or ``None``), ``field`` (field name or ``None``)
    and ``line`` (assembly source line or ``None``) say where.
    """

    def __init__(self, message, *, index=None, field=None, line=None):
        self.index, self.field, self.line, self.reason = index, field, line, message
        where = []
        if line is not None:
            where.append(f"line {line}")
        if index is not None:
            where.append(f"instruction {index}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)


@dataclass(frozen=True)
class Field:
    """One bit field. ``kind`` is ``"u"`` (unsigned), ``"s"`` (two's complement) or an enum class."""
    name: str
    width: int
    kind: object = "u"
    min: int | None = None
    doc: str = ""

    @property
    def is_enum(self):
        return isinstance(self.kind, type)

    @property
    def lo(self):
        if self.is_enum:
            return None
        if self.kind == "s":
            return -(1 << (self.width - 1))
        return 0 if self.min is None else self.min

    @property
    def hi(self):
        if self.is_enum:
            return None
        return (1 << (self.width - 1)) - 1 if self.kind == "s" else (1 << self.width) - 1


HEADER = (
    Field("opcode", 4, Opcode),
    Field("wait_sem", 4, doc="semaphore to wait on"),
    Field("wait_count", 8, doc="wait until the semaphore is >= this (0: no wait)"),
    Field("wait_consume", 1, doc="subtract wait_count from the semaphore when released"),
    Field("signal_sem", 4, doc="semaphore incremented on completion"),
    Field("signal_en", 1, doc="enable the completion signal"),
)
HEADER_BITS = sum(f.width for f in HEADER)
assert HEADER_BITS == 22

_ENGINE = Field("engine", 2, Engine, doc="queue that executes this NOP/DELAY")
_VOP = Field("vop", 4, VectorOp)


@dataclass(frozen=True)
class Kind:
    """An instruction kind: a mnemonic, its opcode (and vector op) and its body fields."""
    mnemonic: str
    opcode: Opcode
    fields: tuple
    vop: VectorOp | None = None
    doc: str = ""

    @property
    def body(self):
        """Body fields in bit order, including the leading ``vop`` of vector kinds."""
        return ((_VOP,) if self.vop is not None else ()) + self.fields

    @property
    def all_fields(self):
        return HEADER + self.body


_DMA_COMMON = (
    Field("spad", 2, Spad, doc="scratchpad"),
    Field("spad_addr", 14, doc="first scratchpad line"),
    Field("dram_addr", 28, doc="byte address of row 0 in external memory"),
    Field("rows", 10, min=1, doc="rows transferred"),
    Field("row_lines", 10, min=1, doc="scratchpad lines per row"),
    Field("dram_stride", 16, doc="bytes between consecutive rows in external memory"),
    Field("line_bytes", 7, doc="bytes of each line in external memory (0: the whole line)"),
)

KINDS: dict[str, Kind] = {k.mnemonic: k for k in (
    Kind("nop", Opcode.NOP, (_ENGINE,), doc="do nothing on an engine (a pure sync point)"),
    Kind("delay", Opcode.DELAY, (_ENGINE, Field("slot", 4, doc="delay CSR slot holding the cycle count")),
         doc="stall an engine for delay[slot] cycles; the runtime can change the slot"),
    Kind("halt", Opcode.HALT, (), doc="end of program: fetch stops, done when all engines drain"),
    Kind("load", Opcode.LOAD, _DMA_COMMON + (
        Field("pad_top", 4, doc="zero rows written before the data rows"),
        Field("pad_bottom", 4, doc="zero rows written after the data rows"),
        Field("pad_left", 4, doc="zero lines written before each data row"),
        Field("pad_right", 4, doc="zero lines written after each data row"),
        Field("compressed", 1, doc="rows are zero-mask compressed groups"),
    ), doc="DMA external memory -> scratchpad"),
    Kind("store", Opcode.STORE, _DMA_COMMON + (
        Field("spad_stride", 10, doc="lines between scratchpad row starts (0: row_lines)"),
        Field("compressed", 1, doc="write zero-mask compressed groups"),
    ), doc="DMA scratchpad -> external memory"),
    Kind("matmul", Opcode.MATMUL, (
        Field("a_addr", 14, doc="activation line of row 0"),
        Field("w_addr", 14, doc="weight line of k = 0"),
        Field("acc_addr", 14, doc="accumulator line of output row 0"),
        Field("k", 12, min=1, doc="reduction length in elements"),
        Field("m_inner", 8, min=1, doc="rows per inner loop"),
        Field("a_stride", 8, doc="activation lines between inner rows"),
        Field("m_outer", 8, min=1, doc="inner loops"),
        Field("a_outer_stride", 14, doc="activation lines between outer loops"),
        Field("accumulate", 1, doc="add to the accumulator instead of overwriting it"),
        Field("fmt", 2, Fmt, doc="number format"),
    ), doc="acc[acc_addr+m] (+)= A[m, 0:k] @ W[0:k, 0:cols]"),
    Kind("requant", Opcode.VECTOR, (
        Field("src", 14, doc="first accumulator line"),
        Field("dst", 14, doc="first activation line"),
        Field("rows", 12, min=1, doc="lines processed"),
        Field("dst_stride", 8, doc="activation lines between output rows"),
        Field("param", 14, doc="accumulator line of bias; mult at +1, shift at +2"),
        Field("lo", 8, "s", doc="clamp low (0 for ReLU)"),
        Field("hi", 8, "s", doc="clamp high"),
        Field("zp", 8, "s", doc="output zero point"),
    ), vop=VectorOp.REQUANT, doc="int32 accumulators -> int8 activations"),
    Kind("vadd", Opcode.VECTOR, (
        Field("src_a", 14), Field("src_b", 14), Field("dst", 14),
        Field("lines", 12, min=1, doc="lines processed"),
        Field("mult_a", 16, "s"), Field("mult_b", 16, "s"),
        Field("shift", 6),
        Field("relu", 1),
    ), vop=VectorOp.ADD, doc="dst = sat8(rne((a*mult_a + b*mult_b) / 2**shift)), optional ReLU"),
    *[Kind(m, Opcode.VECTOR, (
        Field("src", 14, doc="input line of pixel (0, 0)"),
        Field("dst", 14, doc="output line of pixel (0, 0)"),
        Field("lpp", 6, min=1, doc="lines per pixel (channel blocks)"),
        Field("row_stride", 14, doc="input lines between image rows"),
        Field("out_h", 8, min=1), Field("out_w", 8, min=1),
        Field("kh", 4, min=1), Field("kw", 4, min=1),
        Field("stride_h", 3, min=1), Field("stride_w", 3, min=1),
        Field("mult", 16, doc="average: sum * mult >> shift (ignored by maxpool)"),
        Field("shift", 6),
    ), vop=v, doc=d) for m, v, d in (("maxpool", VectorOp.MAXPOOL, "max over kh x kw windows"),
                                      ("avgpool", VectorOp.AVGPOOL, "scaled sum over kh x kw windows"))],
    Kind("mask", Opcode.VECTOR, (
        Field("src", 14), Field("dst", 14),
        Field("rows", 10, min=1), Field("row_lines", 8, min=1),
        Field("mode", 2, MaskMode),
        Field("param", 12, "s", doc="CAUSAL: offset; PADDING: valid length"),
        Field("mask_addr", 14, doc="LOADED: activation line of the bitmap"),
        Field("alt", 8, "s", doc="value written where masked"),
    ), vop=VectorOp.MASK, doc="out = mask ? alt : data"),
)}

for _k in KINDS.values():
    assert HEADER_BITS + sum(f.width for f in _k.body) <= WORD_BITS, _k.mnemonic

_BY_CODE = {(k.opcode, k.vop): k for k in KINDS.values()}


_QUEUE_OF = {Opcode.LOAD: Engine.LOAD, Opcode.STORE: Engine.STORE, Opcode.MATMUL: Engine.MATMUL,
             Opcode.VECTOR: Engine.VECTOR}
_OWN_QUEUE = (Opcode.NOP, Opcode.DELAY)  # these name their engine in a field


def engine_of(instr: "Instruction") -> Engine | None:
    """The engine queue an instruction is dispatched to (``None`` for HALT)."""
    op = instr.kind.opcode
    if op in _OWN_QUEUE:
        return instr.values["engine"]
    return _QUEUE_OF.get(op)


class Instruction:
    """One decoded instruction: a :class:`Kind` and a value for each of its fields.

    Fields are attributes (``instr.rows``); enum fields hold enum members. Build with
    :func:`make` (``make("load", spad="act", ...)``); ``instr.replace(...)`` copies with changes.
    """

    __slots__ = ("kind", "values")

    def __init__(self, kind: Kind, values: dict):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "values", values)

    @property
    def mnemonic(self):
        return self.kind.mnemonic

    @property
    def opcode(self):
        return self.kind.opcode

    @property
    def engine_queue(self):
        return engine_of(self)

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"{self.kind.mnemonic} instruction has no field {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Instruction is immutable; use replace()")

    def replace(self, **changes) -> "Instruction":
        return make(self.kind.mnemonic, **{**self.values, **changes})

    def __eq__(self, other):
        return isinstance(other, Instruction) and self.kind is other.kind and self.values == other.values

    def __hash__(self):
        return hash((self.kind.mnemonic, tuple(sorted((k, int(v)) for k, v in self.values.items()))))

    def __repr__(self):
        return f"<{disassemble_one(self)}>"


def _coerce(field: Field, value, *, index=None):
    if field.is_enum:
        if isinstance(value, field.kind):
            return value
        if isinstance(value, str):
            try:
                return field.kind[value.upper()]
            except KeyError:
                choices = ", ".join(m.name.lower() for m in field.kind)
                raise IsaError(f"{value!r} is not one of {choices}", index=index, field=field.name) from None
        try:
            return field.kind(int(value))
        except (ValueError, TypeError):
            raise IsaError(f"{value!r} is not a valid {field.kind.__name__}", index=index,
                           field=field.name) from None
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int):
        try:
            import numbers
            if isinstance(value, numbers.Integral):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise IsaError(f"{value!r} is not an integer", index=index, field=field.name) from None
    if not field.lo <= value <= field.hi:
        raise IsaError(f"{value} out of range {field.lo}..{field.hi}", index=index, field=field.name)
    return value


def _make_plan(kind: "Kind") -> tuple:
    """Per-kind tuple of ``(name, field, lo, hi, enum class or None, default)`` (cached)."""
    plan = []
    for f in kind.all_fields:
        if f.name in ("opcode", "vop"):
            continue
        if f.is_enum:
            plan.append((f.name, f, None, None, f.kind, f.kind(0)))
        else:
            plan.append((f.name, f, f.lo, f.hi, None, f.min or 0))
    return tuple(plan)


_PLANS: dict = {}


def make(mnemonic: str, *, index=None, cfg=None, **values) -> Instruction:
    """Build an instruction. Unnamed fields are 0 (``min`` for fields that must be >= 1).

    Raises :class:`IsaError` naming the field for unknown fields, out-of-range values and
    rule violations (see :func:`check`).
    """
    kind = KINDS.get(mnemonic)
    if kind is None:
        raise IsaError(f"unknown instruction {mnemonic!r}", index=index)
    plan = _PLANS.get(mnemonic)  # keyed by name: hashing a Kind (a dataclass of tuples) is slow
    if plan is None:
        plan = _PLANS[mnemonic] = _make_plan(kind)
    values.pop("opcode", None)
    values.pop("vop", None)
    out = {}
    for name, f, lo, hi, enum_cls, default in plan:
        if name in values:
            v = values.pop(name)
            # fast path: a plain in-range int (the common case for compiler-built programs)
            if enum_cls is None and type(v) is int and lo <= v <= hi:
                out[name] = v
            elif enum_cls is not None and type(v) is enum_cls:
                out[name] = v
            else:
                out[name] = _coerce(f, v, index=index)
        else:
            out[name] = default
    if values:
        raise IsaError(f"{mnemonic} has no field(s) {', '.join(sorted(values))}", index=index,
                       field=sorted(values)[0])
    instr = Instruction(kind, out)
    check(instr, cfg=cfg, index=index)
    return instr


def check(instr: Instruction, cfg=None, index=None):
    """Rules beyond single-field ranges. With ``cfg`` also the configuration-dependent ones.

    These are exactly the conditions the RTL decoder reports as ``ILLEGAL_FIELD``.
    """
    def bad(field, why):
        raise IsaError(why, index=index, field=field)

    v = instr.values
    if cfg is not None:
        if v["wait_sem"] >= cfg.n_semaphores:
            bad("wait_sem", f"semaphore {v['wait_sem']} >= n_semaphores {cfg.n_semaphores}")
        if v["signal_sem"] >= cfg.n_semaphores:
            bad("signal_sem", f"semaphore {v['signal_sem']} >= n_semaphores {cfg.n_semaphores}")
        if v["wait_count"] > cfg.sem_max:
            bad("wait_count", f"{v['wait_count']} > semaphore maximum {cfg.sem_max}")
    m = instr.mnemonic
    if m == "delay" and cfg is not None and v["slot"] >= cfg.delay_slots:
        bad("slot", f"slot {v['slot']} >= delay_slots {cfg.delay_slots}")
    if m in ("load", "store"):
        if v["compressed"]:
            if v["spad"] == Spad.ACC:
                bad("compressed", "accumulator lines cannot be compressed")
            if v["line_bytes"] != 0:
                bad("line_bytes", "compressed transfers move whole lines (line_bytes must be 0)")
        if cfg is not None and v["line_bytes"] > cfg.spad_line_bytes(v["spad"]):
            bad("line_bytes", f"{v['line_bytes']} > line size {cfg.spad_line_bytes(v['spad'])}")
    if m in ("maxpool", "avgpool") and cfg is not None:
        pass  # geometry is checked against scratchpad depth at execution (SPAD_RANGE)


# -- binary encoding ---------------------------------------------------------------------------

def _fields_with_offsets(kind: Kind):
    pos = 0
    for f in kind.all_fields:
        yield f, pos
        pos += f.width


_ENC: dict = {}


def _encode_plan(kind: "Kind") -> tuple:
    """``(constant bits, ((field name, is enum, bit offset, mask), ...))`` of a kind."""
    const, fields = 0, []
    for f, pos in _fields_with_offsets(kind):
        if f.name == "opcode":
            const |= kind.opcode.value << pos
        elif f.name == "vop":
            const |= kind.vop.value << pos
        else:
            fields.append((f.name, f.is_enum, pos, (1 << f.width) - 1))
    return const, tuple(fields)


def encode(instr: Instruction) -> int:
    """Encode to a 128-bit integer."""
    kind = instr.kind
    plan = _ENC.get(kind.mnemonic)
    if plan is None:
        plan = _ENC[kind.mnemonic] = _encode_plan(kind)
    word, fields = plan
    v = instr.values
    for name, is_enum, pos, mask in fields:
        raw = v[name]
        word |= ((raw.value if is_enum else raw) & mask) << pos
    return word


def decode(word: int, *, index=None, cfg=None) -> Instruction:
    """Decode a 128-bit integer; raises :class:`IsaError` naming ``index`` and the bad field."""
    if not 0 <= word < (1 << WORD_BITS):
        raise IsaError("word is not a 128-bit unsigned integer", index=index)
    opc_raw = word & 0xF
    try:
        opcode = Opcode(opc_raw)
    except ValueError:
        raise IsaError(f"illegal opcode {opc_raw}", index=index, field="opcode") from None
    vop = None
    if opcode == Opcode.VECTOR:
        vraw = (word >> HEADER_BITS) & 0xF
        try:
            vop = VectorOp(vraw)
        except ValueError:
            raise IsaError(f"illegal vector op {vraw}", index=index, field="vop") from None
    kind = _BY_CODE[(opcode, vop)]
    values = {}
    end = 0
    for f, pos in _fields_with_offsets(kind):
        end = pos + f.width
        if f.name in ("opcode", "vop"):
            continue
        raw = (word >> pos) & ((1 << f.width) - 1)
        if f.is_enum:
            try:
                values[f.name] = f.kind(raw)
            except ValueError:
                raise IsaError(f"illegal {f.kind.__name__} value {raw}", index=index, field=f.name) from None
            continue
        if f.kind == "s" and raw >> (f.width - 1):
            raw -= 1 << f.width
        if f.min is not None and raw < f.min:
            raise IsaError(f"{raw} < minimum {f.min}", index=index, field=f.name)
        values[f.name] = raw
    if word >> end:
        raise IsaError(f"reserved bits {end}..{WORD_BITS - 1} are not zero", index=index, field="reserved")
    instr = Instruction(kind, values)
    check(instr, cfg=cfg, index=index)
    return instr


def decode_image(data: bytes, cfg=None) -> list:
    """Decode a program image word by word; a word that does not decode becomes ``None``
    (for tools that inspect programs, where the hardware would report the error)."""
    out = []
    for i in range(len(data) // WORD_BYTES):
        try:
            out.append(decode(int.from_bytes(data[i * WORD_BYTES:(i + 1) * WORD_BYTES], "little"),
                              index=i, cfg=cfg))
        except IsaError:
            out.append(None)
    return out


class Program:
    """A sequence of instructions; ``bytes(program)`` is its memory image (16 bytes each, LE)."""

    def __init__(self, instructions: Iterable[Instruction] = ()):
        self.instructions = list(instructions)

    def __len__(self):
        return len(self.instructions)

    def __iter__(self):
        return iter(self.instructions)

    def __getitem__(self, i):
        return self.instructions[i]

    def __eq__(self, other):
        return isinstance(other, Program) and self.instructions == other.instructions

    def append(self, instr):
        self.instructions.append(instr)
        return instr

    def extend(self, instrs):
        self.instructions.extend(instrs)

    def to_bytes(self) -> bytes:
        return b"".join(encode(i).to_bytes(WORD_BYTES, "little") for i in self.instructions)

    __bytes__ = to_bytes

    @classmethod
    def from_bytes(cls, data: bytes, cfg=None) -> "Program":
        if len(data) % WORD_BYTES:
            raise IsaError(f"program image of {len(data)} bytes is not a multiple of {WORD_BYTES}")
        return cls(decode(int.from_bytes(data[i:i + WORD_BYTES], "little"), index=i // WORD_BYTES, cfg=cfg)
                   for i in range(0, len(data), WORD_BYTES))

    def validate(self, cfg):
        for i, instr in enumerate(self.instructions):
            check(instr, cfg=cfg, index=i)

    def to_asm(self) -> str:
        return disassemble(self)

    @classmethod
    def from_asm(cls, text: str, cfg=None) -> "Program":
        return assemble(text, cfg=cfg)


# -- text assembly -----------------------------------------------------------------------------
#
#   load spad=act spad_addr=0 dram_addr=0x100 rows=2 row_lines=1 dram_stride=8 wait=3:2 signal=4
#
# One instruction per line: a mnemonic, then name=value pairs in any order. Omitted fields are
# 0 (or their minimum). Enum values are written by name. Header sugar: ``wait=S:C`` (wait on
# semaphore S for count C), ``wait=S:C!`` (and consume), ``signal=S``. ``#`` or ``;`` starts a
# comment.

_TOKEN = re.compile(r"^([a-z_][a-z0-9_]*)=(\S+)$")


def _parse_int(text):
    return int(text, 0)


def assemble(text: str, cfg=None) -> Program:
    """Parse assembly text into a :class:`Program`; errors name the source line and field."""
    prog = Program()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = re.split(r"[#;]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        parts = line.split()
        mnemonic = parts[0].lower()
        if mnemonic not in KINDS:
            raise IsaError(f"unknown instruction {parts[0]!r}", line=lineno)
        kind = KINDS[mnemonic]
        fields = {f.name: f for f in kind.all_fields}
        values = {}
        for tok in parts[1:]:
            m = _TOKEN.match(tok)
            if not m:
                raise IsaError(f"expected name=value, got {tok!r}", line=lineno)
            name, val = m.groups()
            try:
                if name == "wait":
                    sem, _, cnt = val.partition(":")
                    consume = cnt.endswith("!")
                    values.update(wait_sem=_parse_int(sem), wait_count=_parse_int(cnt.rstrip("!") or "1"),
                                  wait_consume=int(consume))
                    continue
                if name == "signal":
                    values.update(signal_sem=_parse_int(val), signal_en=1)
                    continue
                if name not in fields or name in ("opcode", "vop"):
                    raise IsaError(f"{mnemonic} has no field {name!r}", line=lineno, field=name)
                f = fields[name]
                values[name] = val if f.is_enum else _parse_int(val)
            except ValueError as e:
                if isinstance(e, IsaError):
                    raise
                raise IsaError(f"bad value {val!r}", line=lineno, field=name) from None
        try:
            prog.append(make(mnemonic, index=len(prog), cfg=cfg, **values))
        except IsaError as e:
            raise IsaError(e.reason, line=lineno, index=e.index, field=e.field) from None
    return prog


def disassemble_one(instr: Instruction) -> str:
    parts = [instr.mnemonic]
    v = instr.values
    for f in instr.kind.body:
        if f.name == "vop":
            continue
        val = v[f.name]
        default = f.kind(0) if f.is_enum else (f.min or 0)
        if f.is_enum:
            if f.name in ("engine", "spad", "mode") or val != default:
                parts.append(f"{f.name}={val.name.lower()}")
        elif val != default or f.min is not None:
            parts.append(f"{f.name}={hex(val) if f.name == 'dram_addr' else val}")
    if v["wait_count"] or v["wait_consume"] or v["wait_sem"]:
        parts.append(f"wait={v['wait_sem']}:{v['wait_count']}{'!' if v['wait_consume'] else ''}")
    if v["signal_en"]:
        parts.append(f"signal={v['signal_sem']}")
    elif v["signal_sem"]:
        parts.append(f"signal_sem={v['signal_sem']}")
    return " ".join(parts)


def disassemble(program: Iterable[Instruction], *, numbered=False) -> str:
    lines = []
    for i, instr in enumerate(program):
        text = disassemble_one(instr)
        lines.append(f"{text:<100} # {i}" if numbered else text)
    return "\n".join(lines) + ("\n" if lines else "")


# -- Amaranth layouts for the RTL --------------------------------------------------------------

def _shape(f: Field):
    from amaranth.hdl import signed, unsigned
    if f.is_enum:
        return f.kind
    return signed(f.width) if f.kind == "s" else unsigned(f.width)


def header_layout():
    """``data.StructLayout`` of the 22-bit common header."""
    from amaranth.lib import data
    return data.StructLayout({f.name: _shape(f) for f in HEADER})


def body_layout(mnemonic: str):
    """``data.StructLayout`` of one kind's body (bits 22 and up; vector kinds start with ``vop``)."""
    from amaranth.lib import data
    return data.StructLayout({f.name: _shape(f) for f in KINDS[mnemonic].body})


def instruction_layout():
    """``data.StructLayout`` of a whole 128-bit word: ``header`` and a ``body`` union by mnemonic."""
    from amaranth.lib import data
    body = data.UnionLayout({m: body_layout(m) for m in KINDS if KINDS[m].body})
    pad = WORD_BITS - HEADER_BITS - body.size
    fields = {"header": header_layout(), "body": body}
    if pad:
        from amaranth.hdl import unsigned
        fields["reserved"] = unsigned(pad)
    return data.StructLayout(fields)


def field_table_markdown() -> str:
    """The field tables as Markdown (used to generate ``docs/isa.md``)."""
    out = []
    for name, fields in [("header", HEADER)] + [(k.mnemonic, k.body) for k in KINDS.values()]:
        out.append(f"### `{name}`" + (f" — {KINDS[name].doc}" if name in KINDS and KINDS[name].doc else ""))
        out.append("")
        out.append("| bits | field | type | meaning |")
        out.append("|---|---|---|---|")
        pos = 0 if name == "header" else HEADER_BITS
        for f in fields:
            typ = f"{f.kind.__name__} ({f.width})" if f.is_enum else ("int" if f.kind == "s" else "uint") + str(f.width)
            if f.min:
                typ += f", >= {f.min}"
            out.append(f"| {pos + f.width - 1}:{pos} | `{f.name}` | {typ} | {f.doc} |")
            pos += f.width
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(field_table_markdown())
