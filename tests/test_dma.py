"""DMA engines: codec units and realigners in amaranth.sim, the engines in cocotb on Verilator.

References are independent: ``sparrow.codec`` for the compressed format and plain byte/NumPy
slicing for the realigners and strided transfers.
"""

import os
import random
import sys

import numpy as np
import pytest
from amaranth.sim import Simulator

from sparrow import codec
from sparrow.config import preset
from sparrow.hdl.dma_load import ByteWindow, LineWindow, LoadEngine
from sparrow.hdl.dma_store import BytePacker, StoreEngine
from sparrow.hdl.zero_codec import ZeroCompact, ZeroExpand
from sparrow.sim.cocotb_run import TB_DIR, run_cocotb

SEED = int(os.environ.get("SPARROW_SEED", "1"))


def _rng(salt):
    return random.Random(f"{SEED}-{salt}")


def _lines(rng, n, cols, sparsity):
    out = np.array([[rng.randrange(-128, 128) or 1 for _ in range(cols)] for _ in range(n)], np.int8)
    zero = np.array([[rng.random() < sparsity for _ in range(cols)] for _ in range(n)])
    out[zero] = 0
    return out


def _run(dut, bench, clock=True):
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# -- codec units -------------------------------------------------------------------------------


@pytest.mark.parametrize("cols", [4, 8, 16, 12])
def test_zero_compact_matches_codec(cols):
    print(f"SPARROW_SEED={SEED}")
    rng = _rng(f"compact{cols}")
    dut = ZeroCompact(cols)
    mb = codec.mask_bytes(cols)
    lines = np.concatenate([_lines(rng, 40, cols, s) for s in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)])

    async def bench(ctx):
        for line in lines:
            ctx.set(dut.line, int.from_bytes(line.tobytes(), "little"))
            ref = codec.compress_group(line[None, :])[2:]
            n = ctx.get(dut.n)
            assert n == len(ref) == mb + np.count_nonzero(line)
            assert ctx.get(dut.k) == np.count_nonzero(line)
            got = ctx.get(dut.data).to_bytes(mb + cols, "little")
            assert got[:n] == ref, (line, got, ref)
            assert not any(got[n:]), "bytes above n must be zero"

    _run(dut, bench, clock=False)


@pytest.mark.parametrize("cols", [4, 8, 16, 12])
def test_zero_expand_matches_codec(cols):
    rng = _rng(f"expand{cols}")
    dut = ZeroExpand(cols)
    mb = codec.mask_bytes(cols)
    lines = np.concatenate([_lines(rng, 40, cols, s) for s in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)])

    async def bench(ctx):
        for line in lines:
            enc = codec.compress_group(line[None, :])[2:]
            # garbage after the line's bytes must be ignored
            padded = enc + bytes(rng.randrange(256) for _ in range(mb + cols - len(enc)))
            ctx.set(dut.data, int.from_bytes(padded, "little"))
            ref, _ = codec.decompress_group(codec.compress_group(line[None, :]), 1, cols)
            assert ctx.get(dut.line).to_bytes(cols, "little") == ref.tobytes()
            assert ctx.get(dut.n) == len(enc)

    _run(dut, bench, clock=False)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_codec_units_reject_bad_parameters():
    for cls in (ZeroCompact, ZeroExpand):
        with pytest.raises(ValueError, match="cols"):
            cls(0)
    with pytest.raises(ValueError, match="in_bytes"):
        ByteWindow(0, 4)
    with pytest.raises(ValueError, match="win_bytes"):
        ByteWindow(8, 0)
    with pytest.raises(ValueError, match="late_bytes"):
        ByteWindow(8, 8, -1)
    with pytest.raises(ValueError, match="early_opts"):
        ByteWindow(8, 8, 0, 0)
    with pytest.raises(ValueError, match="count_bits"):
        ByteWindow(8, 8, count_bits=12, count_at=(0,))
    with pytest.raises(ValueError, match="count_at"):
        ByteWindow(8, 8, count_bits=16, count_at=(7,))
    with pytest.raises(ValueError, match="count_at"):
        ByteWindow(8, 8, count_at=(0,))
    with pytest.raises(ValueError, match="in_bytes"):
        LineWindow(0, 4)
    with pytest.raises(ValueError, match="win_bytes"):
        LineWindow(8, 0)
    with pytest.raises(ValueError, match="mem_bytes"):
        BytePacker(6, 8)
    with pytest.raises(ValueError, match="item_bytes"):
        BytePacker(8, 0)
    with pytest.raises(ValueError, match="cfg"):
        LoadEngine("small")
    with pytest.raises(ValueError, match="cfg"):
        StoreEngine(None)


# -- realigners --------------------------------------------------------------------------------


def _random_beats(rng, mb, count=300):
    """``count`` random beats of ``mb`` bytes, each (data, offset, count of useful bytes), and the
    byte stream they carry."""
    beats = []
    for _ in range(count):
        off = rng.randrange(mb)
        n = rng.randrange(0, mb - off + 1)
        beats.append((bytes(rng.randrange(256) for _ in range(mb)), off, n))
    return beats, b"".join(d[o : o + n] for d, o, n in beats)


def _offer_beat(ctx, dut, beats, i, offer):
    """Drive a window's push port with beat ``i`` of ``beats`` ((data, off, n) each) when
    ``offer`` and one is left; returns the index of the next beat to offer."""
    if i < len(beats) and offer:
        d, o, n = beats[i]
        ctx.set(dut.push.payload, {"data": int.from_bytes(d, "little"), "off": o, "n": n})
        ctx.set(dut.push.valid, 1)
        return i + 1 if ctx.get(dut.push.ready) else i
    ctx.set(dut.push.valid, 0)
    return i


@pytest.mark.parametrize("mb,win,late,nopts,cbits,cat", [
    (8, 16, 4, 3, 8, (0, 2)), (8, 9, 0, 2, 4, (0, 5, 8)), (4, 32, 8, 1, 16, (0, 3, 30)), (16, 12, 3, 4, 0, ()),
])
def test_byte_window_realigns(mb, win, late, nopts, cbits, cat):
    """Random beats (offset, count) pushed, random pops (an early option chosen at random, with a
    random late part): the popped bytes are the pushed stream, and every cycle the counts are the
    popcounts of the window's fields at their positions."""
    rng = _rng(f"window{mb}-{win}-{late}-{nopts}")
    print(f"seed {SEED} (SPARROW_SEED)")
    dut = ByteWindow(mb, win, late, nopts, count_bits=cbits, count_at=cat)
    # fixed options (they may only change while no pop follows); 1 among them, so the tail of
    # the stream can always be drained
    opts = [1] + [rng.randrange(0, win + 1) for _ in range(nopts - 1)]
    rng.shuffle(opts)
    beats, expect = _random_beats(rng, mb)

    async def bench(ctx):
        for i, o in enumerate(opts):
            ctx.set(dut.pop_opts[i], o)
        got = bytearray()
        i = 0
        for cycle in range(20000):
            if len(got) == len(expect):
                break
            level = ctx.get(dut.level)
            assert ctx.get(dut.level_ge) == (1 << (min(level, win) + 1)) - 1, "level_ge is level's thermometer code"
            if cycle:  # a register formed from the options of the cycle before
                assert ctx.get(dut.level_ge_opt0) == (level >= opts[0] and opts[0] <= win), "level_ge_opt0"
            window = ctx.get(dut.window).to_bytes(win, "little")
            assert not any(window[min(level, win) :]), "bytes above level must be zero"
            for j, h in enumerate(cat):
                field = int.from_bytes(window[h:], "little") & ((1 << cbits) - 1)
                assert ctx.get(dut.counts[j]) == bin(field).count("1"), f"cycle {cycle}: count at byte {h}"
            avail = min(level, win)
            choices = [j for j, o in enumerate(opts) if o <= avail]
            if choices and rng.random() < 0.7:
                sel = rng.choice(choices)
                lt = rng.randrange(0, min(late, avail - opts[sel]) + 1)
                ctx.set(dut.pop_en, 1)
                ctx.set(dut.pop_sel, sel)
                ctx.set(dut.pop_late, lt)
                got += window[: opts[sel] + lt]
            else:
                # pop_en low: pop_sel / pop_late are ignored (random values)
                ctx.set(dut.pop_en, 0)
                ctx.set(dut.pop_sel, rng.randrange(nopts))
                ctx.set(dut.pop_late, rng.randrange(late + 1))
            i = _offer_beat(ctx, dut, beats, i, rng.random() < 0.8)
            await ctx.tick()
        assert bytes(got) == expect

    _run(dut, bench)


@pytest.mark.parametrize("mb,win,n", [(8, 16, 16), (8, 16, 5), (8, 32, 8), (4, 9, 1), (16, 12, 7)])
def test_line_window_realigns(mb, win, n):
    """Random beats (offset, count) pushed, pops of n bytes at random cycles (often back to back,
    so pops meet the buffer's one-cycle lag): the popped bytes are the pushed stream, the window's
    bytes above the level are zero and the level flag is right every cycle."""
    rng = _rng(f"linewindow{mb}-{win}-{n}")
    print(f"seed {SEED} (SPARROW_SEED)")
    dut = LineWindow(mb, win)
    beats, expect = _random_beats(rng, mb)
    expect = expect[: len(expect) - len(expect) % n]  # whole pops only

    async def bench(ctx):
        ctx.set(dut.pop_n, n)
        ctx.set(dut.clear, 1)  # the level flag is formed with pop_n
        await ctx.tick()
        ctx.set(dut.clear, 0)
        got = bytearray()
        i = 0
        pops = 0
        p_pop = 0.9
        for cycle in range(20000):
            if len(got) == len(expect):
                break
            if cycle % 200 == 0:
                p_pop = rng.choice([0.3, 0.9, 1.0])
            level = ctx.get(dut.level)
            assert ctx.get(dut.level_ge_n) == (level >= n), "level_ge_n"
            window = ctx.get(dut.window).to_bytes(win, "little")
            assert not any(window[min(level, win) :]), "bytes above level must be zero"
            pop = level >= n and rng.random() < p_pop
            ctx.set(dut.pop_en, pop)
            if pop:
                got += window[:n]
                pops += 1
            i = _offer_beat(ctx, dut, beats, i, rng.random() < 0.9)
            await ctx.tick()
        assert bytes(got) == expect
        assert pops == len(expect) // n

    _run(dut, bench)


@pytest.mark.parametrize("mb,ib", [(8, 16), (8, 9), (4, 32), (16, 4)])
def test_byte_packer_packs_segments(mb, ib):
    """Random segments at random addresses: beats rebuild exactly the segment bytes, strobes exact."""
    rng = _rng(f"packer{mb}-{ib}")
    dut = BytePacker(mb, ib, 20)
    items, segs = [], []
    for _ in range(40):
        addr = rng.randrange(0, 1 << 14)
        chunks = [
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, ib + 1)))
            for _ in range(rng.randrange(1, 6))
        ]
        segs.append((addr, b"".join(chunks)))
        for j, ch in enumerate(chunks):
            items.append(
                {
                    # bytes at and above n zero, as the item port requires
                    "data": int.from_bytes(ch, "little"),
                    "n": len(ch),
                    "start": int(j == 0),
                    "end": int(j == len(chunks) - 1),
                    "addr": addr,
                }
            )

    async def bench(ctx):
        beats = []
        i = 0
        for _ in range(20000):
            if i == len(items) and ctx.get(dut.idle):
                break
            ctx.set(dut.beat.ready, int(rng.random() < 0.7))
            if i < len(items) and rng.random() < 0.8:
                ctx.set(dut.item.payload, items[i])
                ctx.set(dut.item.valid, 1)
            else:
                ctx.set(dut.item.valid, 0)
            if ctx.get(dut.item.valid) and ctx.get(dut.item.ready):
                i += 1
            if ctx.get(dut.beat.valid) and ctx.get(dut.beat.ready):
                p = ctx.get(dut.beat.payload)
                beats.append((int(p.addr), int(p.data), int(p.strb), int(p.seg_last)))
            await ctx.tick()
        # rebuild segments
        k = 0
        for addr, payload in segs:
            mem = {}
            while True:
                baddr, d, strb, seg_last = beats[k]
                k += 1
                assert baddr % mb == 0
                for j in range(mb):
                    if strb >> j & 1:
                        assert baddr + j not in mem
                        mem[baddr + j] = (d >> 8 * j) & 0xFF
                    else:
                        assert (d >> 8 * j) & 0xFF == 0, "bytes without strobe must be zero"
                if seg_last:
                    break
            assert sorted(mem) == list(range(addr, addr + len(payload)))
            assert bytes(mem[a] for a in sorted(mem)) == payload
        assert k == len(beats)

    _run(dut, bench)


# -- engines on Verilator ----------------------------------------------------------------------

# No extra waivers: sparrow.sim.cocotb_run.VERILATOR_WAIVERS (one list for the project) covers
# what Amaranth's output needs.
BUILD_ARGS = []


def _tb():
    if str(TB_DIR) not in sys.path:
        sys.path.insert(0, str(TB_DIR))
    import tb_dma

    return tb_dma


@pytest.mark.verilator
def test_dma_engines_small():
    tb = _tb()
    cfg = preset("small")
    run_cocotb(
        None,
        name="dma_pair_small",
        test_module="tb_dma",
        verilog_text=tb.dut_verilog(cfg),
        build_args=BUILD_ARGS,
        extra_env={"SPARROW_PRESET": "small"},
    )


@pytest.mark.verilator
def test_dma_engines_default():
    tb = _tb()
    cfg = preset("default")
    run_cocotb(
        None,
        name="dma_pair_default",
        test_module="tb_dma",
        verilog_text=tb.dut_verilog(cfg),
        build_args=BUILD_ARGS,
        extra_env={"SPARROW_PRESET": "default", "SPARROW_DMA_QUICK": "1"},
    )
