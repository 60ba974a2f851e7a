"""Every semaphore wait is necessary, shown on the RTL (Verilator harness, small preset).

For kernel-built programs with engines that overlap (``sparrow.testprograms``: gemm, conv,
gemm_big with double buffering and WAR waits on NOPs), each instruction that waits is taken in
turn and its wait is removed (``wait_count = wait_consume = 0``). The instruction that releases
that wait in the intact program (its *signaler*, found by counting the semaphore's signals and
consumes in program order) is held back by a DELAY inserted just before it on its own engine, so
the unsynchronised instruction really runs first (the removal is first tried without a delay: a
DELAY on an engine whose queue then fills stalls in-order fetch, which can hide the race).
Before every run the three scratchpads are
filled with random bytes, so a read that happens too early sees garbage, never a previous
run's correct data.

Checks, all against the golden model's final image of the intact program (``case.golden()``):

* the intact program, and the intact program with the same DELAY inserted, give the golden
  image (the delay only moves time, the waits keep the order);
* every single-wait removal makes the golden race checker report a race involving that
  instruction (its *partner*), and gives a different image on the RTL -- first with natural
  timing, then with the partner held back by a DELAY. The only removals allowed to stay
  invisible are those that in-order dispatch hides on this configuration: the partner comes
  first and ``queue_depth`` or more instructions of its engine lie between the two, so the
  instruction is not fetched before the partner has started (in gemm_big: a parameter LOAD that
  would overwrite a REQUANT's parameters). The ISA does not guarantee that ordering (queue depth
  is a parameter), so those waits are needed all the same; at least 3/4 of the removals of every
  program must be visible.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sparrow import isa
from sparrow.config import preset
from sparrow.errors import CollisionWarning
from sparrow.golden import Machine, RaceError
from sparrow.isa import Engine, Program, Spad, make
from sparrow.runtime import Device
from sparrow.testprograms import build_case

SMALL = preset("small")
CASES = ("gemm", "conv", "gemm_big")
SLOT = 15                 # delay CSR slot used by the inserted DELAYs
DELAY = 6000              # cycles: longer than any of these programs (gemm_big ~1.4k cycles)
SCRUB_DRAM = 0x200000     # random bytes copied into the scratchpads before each run
SCRUB_PROG = 0x300000
SEED = 1234


def _with_delay_before(program: Program, j: int, engine: Engine) -> list:
    out = list(program)
    out.insert(j, make("delay", engine=engine, slot=SLOT))
    return out


def _without_wait(program, i: int) -> list:
    out = list(program)
    out[i] = out[i].replace(wait_sem=0, wait_count=0, wait_consume=0)
    return out


def _scrub_program(cfg):
    """LOADs that fill every line of the three scratchpads from random DRAM bytes."""
    prog, addr = [], SCRUB_DRAM
    for spad, depth, line in ((Spad.ACT, cfg.act_depth, cfg.cols), (Spad.WGT, cfg.wgt_depth, cfg.cols),
                              (Spad.ACC, cfg.acc_depth, 4 * cfg.cols)):
        rows, row_lines = depth // 8, 8
        prog.append(make("load", spad=spad, spad_addr=0, dram_addr=addr, rows=rows, row_lines=row_lines,
                         dram_stride=row_lines * line))
        addr += depth * line
    prog.append(make("halt"))
    return Program(prog), addr - SCRUB_DRAM


@pytest.fixture(scope="module")
def dev():
    d = Device(SMALL, "verilator")
    yield d
    d.close()


@pytest.fixture(scope="module")
def scrub(dev):
    prog, nbytes = _scrub_program(SMALL)
    rng = np.random.default_rng(SEED)
    print(f"scrub seed {SEED}")

    def run_scrub():
        dev.write_dram(SCRUB_DRAM, rng.integers(0, 256, nbytes, dtype=np.uint8))
        dev.load_program(prog, SCRUB_PROG)
        assert dev.run(max_cycles=200_000).stop == "done"
    return run_scrub


def _run(dev, scrub, case, program, *, racy=False):
    """Run ``program`` on scrubbed memory; its data. A ``racy`` program (a wait removed) may read
    and write one scratchpad line in one cycle: its STATUS.collision warning is expected then."""
    scrub()
    dev.write_dram(0, np.zeros(len(case.image) + 4096, np.uint8))
    dev.write_dram(0, case.image)
    dev.set_delay(SLOT, DELAY)
    dev.load_program(program, case.prog_base)
    with warnings.catch_warnings():
        if racy:
            warnings.simplefilter("ignore", CollisionWarning)
        info = dev.run(max_cycles=500_000)
    assert info.stop == "done"
    return dev.read_dram(0, case.prog_base)     # data only: the program sits at the end of the image


def _race(cfg, case, program, i: int):
    """``(partner, racer)`` of the race the golden race checker finds in ``program`` (each
    ``(index, engine)``): ``racer`` is ``i`` or a later instruction of ``i``'s engine (a NOP's wait
    orders the instructions after it), ``partner`` the other one. None if there is no race."""
    m = Machine(cfg)
    m.write_dram(0, case.image)
    try:
        m.run(Program(program), mode="concurrent", check_races=True)
    except RaceError as e:
        e_i = isa.engine_of(program[i])
        pair = [e.first, e.second]
        mine = [x for x in pair if x[1] == e_i and x[0] >= i]
        assert len(mine) == 1, f"race not involving #{i} or a later instruction of its engine: {e}"
        return pair[1 - pair.index(mine[0])], mine[0]
    return None


@pytest.mark.verilator
@pytest.mark.parametrize("name", CASES)
def test_every_wait_is_necessary_on_rtl(dev, scrub, name):
    case = build_case(name, SMALL)
    prog = case.program
    expected = case.golden()[0][:case.prog_base]
    # the program must fit below the scrub buffers; room for one extra word (the DELAY)
    assert case.prog_base + (len(prog) + 1) * isa.WORD_BYTES < SCRUB_DRAM

    img = _run(dev, scrub, case, prog)
    assert np.array_equal(img, expected), f"{name}: intact program differs from golden"

    waits = [i for i, p in enumerate(prog) if p.wait_count]
    assert waits, f"{name}: no waits to remove"
    diffs, hidden = [], []
    for i in waits:
        mutant = _without_wait(prog, i)
        race = _race(SMALL, case, mutant, i)
        assert race is not None, f"{name}: the golden race checker finds no race without the wait of #{i}"
        (j, e_par), (r, _) = race
        diff, tried = 0, []
        # natural timing first; then the partner held back by a DELAY on its engine (which can
        # also stall fetch once that engine's queue is full, hence both)
        for delay_before in (None, j):
            if delay_before is None:
                intact, k = list(prog), i
            else:
                intact, k = _with_delay_before(prog, j, e_par), i + (j <= i)
            img = _run(dev, scrub, case, intact)
            assert np.array_equal(img, expected), \
                f"{name}: intact program (DELAY before #{delay_before}) differs from golden"
            img = _run(dev, scrub, case, _without_wait(intact, k), racy=True)
            diff = int(np.count_nonzero(img != expected))
            tried.append(delay_before)
            if diff:
                break
        if diff == 0:
            # Visible on no timing: allowed only when in-order dispatch already orders the pair on
            # this configuration -- the partner precedes the racer and at least queue_depth instructions
            # of the partner's engine lie between them, so the racer is not even fetched before the partner
            # has left its queue (started). The ISA does not promise that (queue depth is a
            # parameter; the race checker rightly flags it, asserted above), so the wait stays.
            between = sum(isa.engine_of(prog[x]) == e_par for x in range(j, r))
            assert j < r and between >= SMALL.queue_depth, (
                f"{name}: removing the wait of #{i} ({isa.disassemble_one(prog[i])}, races with #{j}) "
                f"still gives the golden image (DELAY before: {tried})")
            hidden.append(i)
            continue
        diffs.append(diff)
    print(f"{name}: {len(waits)} waits; {len(diffs)} removals visible on the RTL (bytes differing: {diffs}); "
          f"hidden by in-order dispatch (queue depth {SMALL.queue_depth}): {hidden}")
    assert len(diffs) + len(hidden) == len(waits)
    assert len(diffs) >= len(waits) * 3 // 4, f"{name}: only {len(diffs)} of {len(waits)} removals visible"
