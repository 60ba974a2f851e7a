"""The RTL decoder accepts and rejects exactly the words sparrow.isa.decode does."""

import random

import pytest
from amaranth.sim import Simulator

from sparrow import isa
from sparrow.config import preset
from sparrow.errors import ErrorCode
from sparrow.hdl.decoder import InstructionDecoder

SEED = 20261121


def _random_legalish_words(cfg, rng, n):
    """Encodings of random instructions, half of them with a few bits flipped."""
    words = []
    for _ in range(n):
        kind = rng.choice(list(isa.KINDS.values()))
        vals = {}
        for f in kind.all_fields:
            if f.name in ("opcode", "vop"):
                continue
            if f.is_enum:
                vals[f.name] = rng.choice(list(f.kind))
            else:
                vals[f.name] = rng.randint(f.lo, f.hi)
        try:
            word = isa.encode(isa.make(kind.mnemonic, **vals))
        except isa.IsaError:
            vals.update(compressed=0) if "compressed" in vals else None
            vals.update(line_bytes=0) if "line_bytes" in vals else None
            word = isa.encode(isa.make(kind.mnemonic, **vals))
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                word ^= 1 << rng.randrange(isa.WORD_BITS)
        words.append(word)
    # plus words that are small perturbations of the opcode/vop space
    for op in range(16):
        for vop in range(16):
            words.append(op | (vop << isa.HEADER_BITS))
    return words


def _expected(word, cfg):
    try:
        instr = isa.decode(word, cfg=cfg)
    except isa.IsaError as e:
        code = ErrorCode.ILLEGAL_OPCODE if e.field in ("opcode", "vop") else ErrorCode.ILLEGAL_FIELD
        return False, code, None, False
    return True, ErrorCode.NONE, instr.engine_queue, instr.opcode == isa.Opcode.HALT


@pytest.mark.parametrize("name", ["small", "default"])
def test_decoder_matches_isa_decode(name):
    cfg = preset(name)
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    words = _random_legalish_words(cfg, rng, 600)
    dut = InstructionDecoder(cfg)
    sim = Simulator(dut)
    mismatches = []
    legal_seen = 0

    async def tb(ctx):
        nonlocal legal_seen
        for w in words:
            ctx.set(dut.word, w)
            legal, code, engine, halt = _expected(w, cfg)
            got = (bool(ctx.get(dut.legal)), ctx.get(dut.error), ctx.get(dut.is_halt))
            legal_seen += legal
            if got != (legal, code, halt) or (legal and engine is not None and ctx.get(dut.engine) != engine):
                mismatches.append((hex(w), got, (legal, code, engine, halt)))

    sim.add_testbench(tb)
    sim.run()
    assert not mismatches, mismatches[:5]
    assert legal_seen > 100  # the sample exercises the legal path, not only rejections
