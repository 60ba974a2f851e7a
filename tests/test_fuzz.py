"""Differential fuzzer (sparrow.fuzz): generator properties, golden vs Verilator batches, the
shrinker, replay of the saved regression cases, and the coverage flow.

References: the golden model (the specification) for every comparison; the golden model's race
checker for race freedom; the intended fault of each invalid-case kind for its error code.
Seeds: ``SPARROW_SEED`` (default 1), printed by every randomised test.
"""

import json
import os

import pytest

from sparrow import fuzz, isa
from sparrow.config import preset
from sparrow.errors import DeviceError, ErrorCode
from sparrow.golden import Machine
from sparrow.isa import VectorOp

SMALL = preset("small")
SEED = int(os.environ.get("SPARROW_SEED", "1"))
CASE_FILES = sorted(fuzz.CASES_DIR.glob("*.json"))

#: the error code each invalid kind is built to end in (defined by the golden model)
INTENDED = {"bad_word": {ErrorCode.ILLEGAL_OPCODE, ErrorCode.ILLEGAL_FIELD},
            "spad_range": {ErrorCode.SPAD_RANGE}, "dram_range": {ErrorCode.DRAM_RANGE},
            "corrupt": {ErrorCode.CORRUPT_DATA}, "slot": {ErrorCode.ILLEGAL_FIELD},
            "sem_overflow": {ErrorCode.SEM_OVERFLOW}, "deadlock": {ErrorCode.WATCHDOG}}
MNEMONICS = ("load", "store", "matmul", "requant", "vadd", "maxpool", "avgpool", "mask", "nop", "delay")


@pytest.fixture(scope="module")
def runner():
    r = fuzz.VerilatorRunner(SMALL)
    yield r
    r.close()


# -- generator --------------------------------------------------------------------------------------

def test_generator_race_free_and_covers_every_opcode():
    print(f"SPARROW_SEED={SEED}")
    executed = set()
    features = fuzz.FeatureCounter()
    for i in range(60):
        case = fuzz.generate(SMALL, SEED, i, ("handsync", "valid", "remap")[i % 3])
        out = fuzz.run_golden(case, SMALL, check_races=True)      # RaceError fails the test
        assert out.code == ErrorCode.NONE, f"seed {SEED} index {i}: {out.code.name} {out.detail}"
        dec = case.decoded(SMALL)
        executed |= {dec[j].mnemonic for j in out.executed}
        features.add(case, SMALL, out)
        # every valid program ends in HALT and every word decodes
        assert all(d is not None for d in dec) and dec[-1].mnemonic == "halt"
    assert executed >= set(MNEMONICS), f"not executed: {set(MNEMONICS) - executed}"
    # the hand-made synchronisation really uses counts > 1 and waits that keep their count
    assert features.counts["nop:wait_keep"] + features.counts["load:wait_keep"] > 0
    assert sum(v for k, v in features.counts.items() if k.endswith("wait_count_gt_1")) > 0


def test_cases_reproduce_from_seed_and_index():
    a, b = fuzz.generate(SMALL, SEED, 17), fuzz.generate(SMALL, SEED, 17)
    assert a.words == b.words and a.segments == b.segments and a.delays == b.delays
    c = fuzz.generate(SMALL, SEED, 18)
    assert c.words != a.words
    back = fuzz.Case.from_dict(json.loads(json.dumps(a.to_dict(SMALL))))
    assert back.words == a.words and back.segments == a.segments and back.delays == a.delays


@pytest.mark.parametrize("kind", sorted(INTENDED))
def test_invalid_kinds_end_in_their_error_code_on_golden(kind):
    print(f"SPARROW_SEED={SEED}")
    for i in range(8):
        case = fuzz.generate(SMALL, SEED, i, kind)
        out = fuzz.run_golden(case, SMALL)
        assert out.code in INTENDED[kind], f"seed {SEED} index {i} {kind} ({case.note}): {out.code.name}"
        assert out.index is not None


def test_remap_kind_uses_high_semaphore_ids_and_leaves_the_default_mix_alone():
    used = set()
    for i in range(10):
        for ins in fuzz.generate(SMALL, SEED, i, "remap").decoded(SMALL):
            if ins.wait_count:
                used.add(ins.wait_sem)
            if ins.signal_en:
                used.add(ins.signal_sem)
    assert max(used) >= SMALL.n_semaphores // 2, used
    assert fuzz.KINDS["remap"] == 0.0
    assert all(fuzz.generate(SMALL, SEED, i).kind != "remap" for i in range(50))


def test_generate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        fuzz.generate(SMALL, 1, 0, "nonsense")


# -- shrinker ----------------------------------------------------------------------------------------

class _AddOffByOne(Machine):
    """A broken 'device': every VECTOR ADD flips bit 0 of its first output line."""

    def _vector(self, ins, track):
        ex = super()._vector(ins, track)
        if ins.kind.vop == VectorOp.ADD:
            self.act[ins.dst] ^= 1
        return ex


class _FakeRunner:
    def run(self, case):
        return fuzz.run_golden(case, SMALL, _AddOffByOne, check_races=False)


def test_shrinker_reduces_a_synthetic_mismatch_to_a_minimal_program():
    print(f"SPARROW_SEED={SEED}")
    dut = _FakeRunner()
    for i in range(200):
        case = fuzz.generate(SMALL, SEED, i, "valid")
        ref = fuzz.run_golden(case, SMALL)
        diffs = fuzz.compare(case, SMALL, ref, dut.run(case))
        if any(d.startswith("memory") for d in diffs):
            break
    else:
        pytest.fail("no generated program exposes the broken ADD")
    like = (ref.code, "memory")
    small = fuzz.shrink(case, SMALL, lambda c: fuzz._still_fails(c, SMALL, dut, like=like))
    assert fuzz._still_fails(small, SMALL, dut, like=like), "the shrunk case lost the mismatch"
    dec = small.decoded(SMALL)
    # the minimum that shows a wrong ADD in memory: the ADD, a STORE of its line, and the
    # semaphore wait that orders them (on the STORE or a NOP before it)
    assert [d.mnemonic for d in dec].count("vadd") == 1, small.asm(SMALL)
    assert "store" in [d.mnemonic for d in dec]
    assert len(small.words) <= 4 < len(case.words), small.asm(SMALL)


def test_parallel_batches_merge_to_the_whole_range():
    """``merge_batches`` of consecutive ranges (what ``run_parallel`` does per process) gives the
    same counts as one batch over the whole range (golden backend: fast)."""
    whole = fuzz.run_batch(SMALL, 24, 5, 0, "golden", save_dir=None, log=lambda s: None)
    parts = [fuzz.run_batch(SMALL, 10, 5, 0, "golden", save_dir=None, log=lambda s: None),
             fuzz.run_batch(SMALL, 14, 5, 10, "golden", save_dir=None, log=lambda s: None)]
    merged = fuzz.merge_batches(parts, 1.0)
    assert (merged.programs, merged.first, merged.last) == (24, 0, 23)
    assert merged.by_kind == whole.by_kind and merged.by_code == whole.by_code
    assert merged.features.counts == whole.features.counts
    with pytest.raises(ValueError, match="seeds"):
        fuzz.merge_batches([parts[0], fuzz.run_batch(SMALL, 1, 6, 0, "golden", save_dir=None,
                                                     log=lambda s: None)], 1.0)


def test_saved_case_roundtrip(tmp_path):
    case = fuzz.generate(SMALL, SEED, 3)
    path = fuzz.save_case(case, SMALL, ["memory: example"], tmp_path, xfail="why")
    back, d = fuzz.load_case(path)
    assert back.words == case.words and d["xfail"] == "why" and d["preset"] == "small"
    assert d["asm"][0].startswith("   0: ")


# -- golden vs Verilator -----------------------------------------------------------------------------

@pytest.mark.verilator
def test_fuzz_batch_golden_vs_verilator(runner, tmp_path):
    print(f"SPARROW_SEED={SEED} (indices 1000..1049)")
    res = fuzz.run_batch(SMALL, 50, SEED, start=1000, runner=runner, save_dir=tmp_path)
    print(res.summary())
    assert res.programs == 50 and not res.racy
    assert not res.mismatches, res.summary()


@pytest.mark.verilator
def test_invalid_batch_golden_vs_verilator(runner, tmp_path):
    print(f"SPARROW_SEED={SEED} (indices 2000..2027)")
    kinds = sorted(INTENDED)
    res = fuzz.run_batch(SMALL, 4 * len(kinds), SEED, start=2000, runner=runner, save_dir=tmp_path,
                         kinds=kinds)
    print(res.summary())
    assert not res.mismatches, res.summary()
    wanted = {c.name for codes in INTENDED.values() for c in codes}
    assert set(res.by_code) == wanted, res.by_code


def _replay_params():
    out = []
    for p in CASE_FILES:
        d = json.loads(p.read_text())
        marks = [pytest.mark.xfail(reason=d["xfail"], strict=False)] if d.get("xfail") else []
        out.append(pytest.param(p, marks=marks, id=p.stem))
    return out


@pytest.mark.verilator
@pytest.mark.parametrize("path", _replay_params())
def test_replay_saved_case(runner, path):
    case, d = fuzz.load_case(path)
    cfg = preset(d["preset"])
    assert cfg == SMALL, "saved cases are for the small preset"
    ref = fuzz.run_golden(case, cfg)
    diffs = fuzz.compare(case, cfg, ref, runner.run(case))
    assert not diffs, f"{path.name}: {diffs}\n{case.asm(cfg)}"


def test_saved_cases_exist_and_load():
    assert CASE_FILES, "tests/fuzz_cases/ holds the regression cases"
    for p in CASE_FILES:
        case, d = fuzz.load_case(p)
        assert case.words and d["preset"] in ("small",)


@pytest.mark.verilator
@pytest.mark.parametrize("stop", ["error", "abort"])
def test_restart_right_after_error_or_abort(stop):
    """A run that ends with memory traffic in flight (an error, or an abort half-way through), then
    a new start at once: the fuzz runner's scrub program (LOADs zeroing the scratchpads), then a
    valid case with LOADs, compared with golden in full. Before the arbiter completed orphaned
    transactions, stale read data reached the new run and the device hung."""
    from sparrow.runtime import Device
    for i in range(50):                                       # the first valid case with LOADs
        prog = fuzz.generate(SMALL, 1, i)
        expect = fuzz.run_golden(prog, SMALL)
        if expect.code == ErrorCode.NONE and expect.cycles > 200 and any(
                d is not None and d.opcode == isa.Opcode.LOAD for d in prog.decoded(SMALL)):
            break
    with Device(SMALL, "verilator") as dev:
        runner = fuzz.VerilatorRunner(SMALL, device=dev)
        points = [None] if stop == "error" else [expect.cycles * k // 6 for k in range(1, 6)]
        for at in points:
            if stop == "error":
                case = fuzz.generate(SMALL, 1, 10)            # SPAD_RANGE while LOADs are in flight
                for a, data in case.segments:
                    dev.write_dram(a, data)
                dev.load_program(case.image(), fuzz.PROG_BASE)
                with pytest.raises(DeviceError) as e:
                    dev.run(max_cycles=100_000)
                assert e.value.code == ErrorCode.SPAD_RANGE
            else:
                runner._reset()
                for a, data in prog.segments:
                    dev.write_dram(a, data)
                dev.load_program(prog.image(), fuzz.PROG_BASE)
                dev._b.start()
                dev._b.hw.step(at)
                dev._b.hw.csr_write("CTRL", 2)                 # abort, and start the next at once
            got = runner.run(prog)
            assert runner.renewed == 0, f"the device hung on the start after the {stop} (at {at})"
            assert fuzz.compare(prog, SMALL, expect, got) == [], f"case {i} after the {stop} (at {at})"


# -- coverage ----------------------------------------------------------------------------------------

def test_coverage_dat_parser_and_block_map(tmp_path):
    from sparrow.sim import coverage
    v = tmp_path / "top.v"
    v.write_text('(* src = "/x/hdl/fetch.py:10" *)\nmodule \\top.fetch (a);\n  input a;\nendmodule\n'
                 '(* src = "/x/hdl/top.py:5" *)\nmodule top (a);\n  input a;\n  assign b = a;\nendmodule\n')
    dat = tmp_path / "c.dat"

    def key(**kw):
        return "\x01".join(f"{k}\x02{val}" for k, val in kw.items())
    lines = ["# SystemC::Coverage-3",
             f"C '{key(f=str(v), l=3, page='v_line/top.fetch', o='block', h='top.top.fetch')}' 5",
             f"C '{key(f=str(v), l=3, page='v_line/top.fetch', o='else', h='top.top.fetch')}' 0",
             f"C '{key(f=str(v), l=8, page='v_line/top', o='block', h='top.top')}' 1",
             f"C '{key(f=str(v), l=8, page='v_toggle/top', o='a', h='top.top')}' 0"]
    dat.write_text("\n".join(lines) + "\n")
    rep = coverage.parse_dat(dat, v)
    assert rep["fetch.py"]["line"] == (1, 2) and rep["top.py"]["line"] == (1, 1)
    assert rep["top.py"]["toggle"] == (0, 1)


@pytest.mark.verilator
@pytest.mark.slow
def test_coverage_smoke(tmp_path):
    from sparrow.sim import coverage
    rep = coverage.run(SMALL, n_fuzz=20, out_dir=tmp_path)
    assert rep["total"]["line_points"] > 100
    assert 0 < rep["total"]["line_pct"] <= 100
    assert "sequencer.py" in rep["blocks"] and (tmp_path / "coverage.dat").exists()
    assert rep["isa"]["covered"] > 0
