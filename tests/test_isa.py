"""ISA: encode/decode, assembler/disassembler, validation errors and the RTL layout."""

import pytest
from amaranth.lib import data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparrow import isa
from sparrow.config import preset
from sparrow.isa import (HEADER, KINDS, WORD_BYTES, Engine, Fmt, IsaError, MaskMode, Opcode, Program,
                         Spad, VectorOp, assemble, decode, disassemble, encode, make)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- independent bit-offset bookkeeping (just widths summed in table order) ------------------

def offsets(mnemonic):
    """{field name: (lsb, width)} for a kind, header included."""
    pos, out = 0, {}
    for f in KINDS[mnemonic].all_fields:
        out[f.name] = (pos, f.width)
        pos += f.width
    return out


def field_bits(word, mnemonic, name):
    lsb, width = offsets(mnemonic)[name]
    return (word >> lsb) & ((1 << width) - 1)


def set_bits(word, mnemonic, name, raw):
    lsb, width = offsets(mnemonic)[name]
    mask = ((1 << width) - 1) << lsb
    return (word & ~mask) | ((raw << lsb) & mask)


# -- strategies --------------------------------------------------------------------------------

def field_strategy(f):
    if f.is_enum:
        return st.sampled_from(list(f.kind))
    return st.integers(f.lo, f.hi)


@st.composite
def instructions(draw, mnemonic=None):
    mnemonic = mnemonic or draw(st.sampled_from(sorted(KINDS)))
    kind = KINDS[mnemonic]
    values = {f.name: draw(field_strategy(f)) for f in kind.all_fields if f.name not in ("opcode", "vop")}
    if mnemonic in ("load", "store") and values["compressed"]:
        values["line_bytes"] = 0
        values["spad"] = draw(st.sampled_from([Spad.ACT, Spad.WGT]))
    return make(mnemonic, **values)


# -- encode/decode -------------------------------------------------------------------------------

@pytest.mark.parametrize("mnemonic", sorted(KINDS))
@SETTINGS
@given(data=st.data())
def test_encode_decode_round_trip(mnemonic, data):
    instr = data.draw(instructions(mnemonic))
    word = encode(instr)
    assert 0 <= word < 1 << 128
    # opcode / vop land where the tables say
    assert field_bits(word, mnemonic, "opcode") == KINDS[mnemonic].opcode.value
    if KINDS[mnemonic].vop is not None:
        assert field_bits(word, mnemonic, "vop") == KINDS[mnemonic].vop.value
    # every field value is at its offset, two's complement for signed ones
    for f in KINDS[mnemonic].all_fields:
        if f.name in ("opcode", "vop"):
            continue
        v = instr.values[f.name]
        raw = v.value if f.is_enum else v & ((1 << f.width) - 1)
        assert field_bits(word, mnemonic, f.name) == raw, f.name
    # nothing beyond the last field
    last = sum(f.width for f in KINDS[mnemonic].all_fields)
    assert word >> last == 0
    back = decode(word)
    assert back == instr
    assert back.values == instr.values


def test_header_is_common_prefix():
    names = [f.name for f in HEADER]
    for m in KINDS:
        assert [f.name for f in KINDS[m].all_fields[:len(HEADER)]] == names


def test_known_encoding():
    # hand-computed: load spad=wgt spad_addr=3 dram_addr=0x10 rows=2 row_lines=1 signal=5 wait=1:2!
    instr = make("load", spad="wgt", spad_addr=3, dram_addr=0x10, rows=2, row_lines=1,
                 wait_sem=1, wait_count=2, wait_consume=1, signal_sem=5, signal_en=1)
    expect = (3 | 1 << 4 | 2 << 8 | 1 << 16 | 5 << 17 | 1 << 21 | 1 << 22 | 3 << 24 | 0x10 << 38
              | 2 << 66 | 1 << 76)
    assert encode(instr) == expect
    assert encode(make("halt")) == 2


@SETTINGS
@given(st.lists(instructions(), max_size=12))
def test_program_bytes_round_trip(instrs):
    p = Program(instrs)
    b = bytes(p)
    assert len(b) == WORD_BYTES * len(p)
    for i, instr in enumerate(p):
        assert int.from_bytes(b[16 * i:16 * i + 16], "little") == encode(instr)
    assert Program.from_bytes(b) == p


@SETTINGS
@given(st.lists(instructions(), max_size=12))
def test_assemble_disassemble_round_trip(instrs):
    p = Program(instrs)
    text = disassemble(p)
    assert assemble(text) == p
    numbered = disassemble(p, numbered=True)
    assert assemble(numbered) == p


def test_make_defaults_and_coercion():
    i = make("load", spad="ACT", rows=3)
    assert i.row_lines == 1 and i.rows == 3 and i.spad is Spad.ACT and i.dram_addr == 0
    assert make("matmul").k == 1 and make("matmul").fmt is Fmt.INT8
    assert make("nop", engine=2).engine is Engine.VECTOR
    assert i.replace(rows=5).rows == 5
    assert i.engine_queue is Engine.LOAD
    assert make("halt").engine_queue is None
    assert make("delay", engine="store").engine_queue is Engine.STORE
    with pytest.raises(AttributeError):
        i.rows = 4


# -- rejection of bad words ------------------------------------------------------------------------

def err(fn, *a, **kw):
    with pytest.raises(IsaError) as ei:
        fn(*a, **kw)
    return ei.value


@pytest.mark.parametrize("opc", [7, 8, 11, 15])
def test_illegal_opcode(opc):
    e = err(decode, opc, index=9)
    assert (e.index, e.field) == (9, "opcode")
    assert "instruction 9" in str(e) and "'opcode'" in str(e)


@pytest.mark.parametrize("vop", [5, 9, 15])
def test_illegal_vop(vop):
    e = err(decode, Opcode.VECTOR.value | vop << 22, index=4)
    assert (e.index, e.field) == (4, "vop")


@pytest.mark.parametrize("mnemonic", sorted(KINDS))
def test_reserved_bits(mnemonic):
    word = encode(make(mnemonic))
    last = sum(f.width for f in KINDS[mnemonic].all_fields)
    for bit in (last, 127):
        e = err(decode, word | 1 << bit, index=1)
        assert (e.index, e.field) == (1, "reserved")
    assert decode(word) == make(mnemonic)


@pytest.mark.parametrize("mnemonic,name,raw", [
    ("load", "spad", 3), ("store", "spad", 3), ("matmul", "fmt", 1), ("matmul", "fmt", 3),
    ("mask", "mode", 3),
])
def test_illegal_enum_value(mnemonic, name, raw):
    word = set_bits(encode(make(mnemonic)), mnemonic, name, raw)
    e = err(decode, word, index=2)
    assert (e.index, e.field) == (2, name)


MIN_FIELDS = [(m, f.name) for m in sorted(KINDS) for f in KINDS[m].body if f.min]


@pytest.mark.parametrize("mnemonic,name", MIN_FIELDS)
def test_below_minimum(mnemonic, name):
    word = set_bits(encode(make(mnemonic)), mnemonic, name, 0)
    e = err(decode, word, index=0)
    assert (e.index, e.field) == (0, name)
    e = err(make, mnemonic, **{name: 0})
    assert e.field == name


def test_min_fields_include_rows_and_k():
    assert ("load", "rows") in MIN_FIELDS and ("matmul", "k") in MIN_FIELDS


def test_compressed_rules():
    # compressed accumulator transfer
    word = encode(make("load", spad="acc"))
    word = set_bits(word, "load", "compressed", 1)
    assert err(decode, word, index=3).field == "compressed"
    assert err(make, "store", spad="acc", compressed=1).field == "compressed"
    # compressed with line_bytes != 0
    word = set_bits(encode(make("store", spad="act", compressed=1)), "store", "line_bytes", 2)
    e = err(decode, word, index=5)
    assert (e.index, e.field) == (5, "line_bytes")
    assert err(make, "load", spad="wgt", compressed=1, line_bytes=1).field == "line_bytes"


def test_cfg_dependent_rules():
    cfg = preset("small").replace(n_semaphores=4, sem_bits=4, delay_slots=4)
    ok = make("load", wait_sem=3, wait_count=15, signal_sem=3, signal_en=1, line_bytes=4)
    assert decode(encode(ok), cfg=cfg) == ok
    cases = [
        (make("nop", wait_sem=4, wait_count=1), "wait_sem"),
        (make("nop", signal_sem=7, signal_en=1), "signal_sem"),
        (make("nop", wait_count=16), "wait_count"),
        (make("delay", slot=4), "slot"),
        (make("load", spad="act", line_bytes=5), "line_bytes"),
        (make("store", spad="wgt", line_bytes=5), "line_bytes"),
        (make("store", spad="acc", line_bytes=17), "line_bytes"),
    ]
    for instr, fld in cases:
        # legal without a config, illegal with it
        assert decode(encode(instr)) == instr
        e = err(decode, encode(instr), index=7, cfg=cfg)
        assert (e.index, e.field) == (7, fld)
        e = err(Program([make("halt"), instr]).validate, cfg)
        assert (e.index, e.field) == (1, fld)
    assert decode(encode(make("store", spad="acc", line_bytes=16)), cfg=cfg).line_bytes == 16


def test_from_bytes_names_index():
    good = bytes(Program([make("nop"), make("halt")]))
    bad = good + (9).to_bytes(16, "little")
    e = err(Program.from_bytes, bad)
    assert (e.index, e.field) == (2, "opcode")
    e = err(Program.from_bytes, good + b"\0")
    assert "multiple of 16" in str(e)


def test_make_range_errors():
    assert err(make, "load", rows=1024).field == "rows"
    assert err(make, "requant", lo=-129).field == "lo"
    assert err(make, "requant", hi=128).field == "hi"
    assert err(make, "load", spad="foo").field == "spad"
    assert err(make, "load", bogus=1).field == "bogus"
    assert "unknown instruction" in str(err(make, "jump"))


# -- assembler errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("src,line,fld,text", [
    ("nop\nfrobnicate x=1\n", 2, None, "unknown instruction"),
    ("# c\n\nload spad=act colour=3\n", 3, "colour", "no field"),
    ("load rows=abc\n", 1, "rows", "bad value"),
    ("halt\nhalt\nload rows=5000\n", 3, "rows", "out of range"),
    ("load spad=dram\n", 1, "spad", "not one of"),
    ("load rows 3\n", 1, None, "name=value"),
    ("requant lo=-200\n", 1, "lo", "out of range"),
    ("nop wait=x:1\n", 1, "wait", "bad value"),
    ("load spad=acc compressed=1\n", 1, "compressed", "cannot be compressed"),
])
def test_assembler_errors(src, line, fld, text):
    e = err(assemble, src)
    assert e.line == line and e.field == fld
    assert f"line {line}" in str(e) and text in str(e)


def test_assembler_cfg_errors_name_line():
    e = err(assemble, "nop\nnop signal=15\n", cfg=preset("small").replace(n_semaphores=8))
    assert (e.line, e.field, e.index) == (2, "signal_sem", 1)


def test_assembler_syntax():
    p = assemble("""
        ; comment
        load spad=wgt rows=2 row_lines=3 dram_addr=0x40 wait=2:3! signal=1   # trailing
        vadd src_a=1 src_b=2 dst=3 lines=4 mult_a=-5 mult_b=6 shift=7 relu=1
        mask mode=causal param=-2 alt=-128 rows=1 row_lines=1
        HALT
    """)
    assert [i.mnemonic for i in p] == ["load", "vadd", "mask", "halt"]
    ld = p[0]
    assert (ld.spad, ld.rows, ld.row_lines, ld.dram_addr) == (Spad.WGT, 2, 3, 0x40)
    assert (ld.wait_sem, ld.wait_count, ld.wait_consume, ld.signal_sem, ld.signal_en) == (2, 3, 1, 1, 1)
    assert (p[1].mult_a, p[1].relu) == (-5, 1)
    assert (p[2].mode, p[2].param, p[2].alt) == (MaskMode.CAUSAL, -2, -128)
    assert p[2].kind.vop is VectorOp.MASK


# -- the Amaranth layout matches encode() ----------------------------------------------------------

@pytest.mark.parametrize("mnemonic", sorted(KINDS))
@settings(max_examples=40, deadline=None)
@given(draw=st.data())
def test_layout_matches_encode(mnemonic, draw):
    layout = isa.instruction_layout()
    assert layout.size == 128
    instr = draw.draw(instructions(mnemonic))
    c = data.Const(layout, encode(instr))
    hdr = c.header
    assert hdr.opcode == instr.kind.opcode
    for f in HEADER[1:]:
        assert getattr(hdr, f.name) == instr.values[f.name], f.name
    if not instr.kind.body:  # HALT: no body fields, so no member in the body union
        assert mnemonic not in c.body.shape().members
        return
    body = getattr(c.body, mnemonic)
    if instr.kind.vop is not None:
        assert body.vop == instr.kind.vop
    for f in instr.kind.fields:
        got = getattr(body, f.name)
        assert got == instr.values[f.name], f.name
    assert c.reserved == 0


def test_layout_offsets_equal_encode_offsets():
    layout = isa.instruction_layout()
    assert layout["header"].offset == 0
    for f in HEADER:
        lsb, width = offsets("halt")[f.name]
        assert layout["header"].shape[f.name].offset == lsb
        assert layout["header"].shape[f.name].width == width
    body = layout["body"]
    assert body.offset == isa.HEADER_BITS
    for m, kind in KINDS.items():
        if not kind.body:
            continue
        sub = body.shape[m].shape
        for f in kind.body:
            lsb, width = offsets(m)[f.name]
            assert isa.HEADER_BITS + sub[f.name].offset == lsb, (m, f.name)
            assert sub[f.name].width == width


def test_layout_in_simulation():
    """Drive an encoded word into a signal viewed through the layout in amaranth.sim."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    layout = isa.instruction_layout()
    instr = make("matmul", a_addr=100, w_addr=7, acc_addr=9000, k=300, m_inner=5, a_stride=3,
                 m_outer=2, a_outer_stride=1234, accumulate=1, wait_sem=2, wait_count=1, signal_en=1,
                 signal_sem=9)
    m = Module()
    raw = Signal(128)
    view = Signal(layout)
    m.d.comb += view.eq(raw)
    sim = Simulator(m)
    seen = {}

    async def tb(ctx):
        ctx.set(raw, encode(instr))
        mm = view.body.matmul
        for f in KINDS["matmul"].fields:
            seen[f.name] = ctx.get(getattr(mm, f.name))
        seen["opcode"] = ctx.get(view.header.opcode)
        seen["signal_sem"] = ctx.get(view.header.signal_sem)

    sim.add_testbench(tb)
    sim.run()
    assert seen["opcode"] == Opcode.MATMUL
    assert seen["signal_sem"] == 9
    for f in KINDS["matmul"].fields:
        assert seen[f.name] == instr.values[f.name], f.name


def test_decode_image_marks_bad_words_none():
    prog = Program([make("nop", engine="load"), make("halt")])
    bad = (0xF).to_bytes(16, "little")  # opcode 15 is not defined
    out = isa.decode_image(bytes(prog) + bad)
    assert out[:2] == list(prog) and out[2] is None and len(out) == 3
