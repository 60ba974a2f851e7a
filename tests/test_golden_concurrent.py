"""Concurrent mode: equivalence with program order on a hand-built double-buffered GEMM,
overlap (fewer cycles), deadlock reports, queue-full fetch deadlock, the race checker, counters."""

import os

import numpy as np
import pytest

from sparrow.config import preset
from sparrow.errors import ErrorCode
from sparrow.golden import Machine, RaceError
from sparrow.isa import Engine, Program, make

SEED = int(os.environ.get("SPARROW_SEED", "1"))
print(f"SPARROW_SEED={SEED}")
CFG = preset("small").replace(dram_bytes=1 << 16)

A_ADDR, W_ADDR, C_ADDR = 0x0000, 0x4000, 0x8000


def gemm_pipeline(cfg, n_tiles, tm, k, *, drop_wait=False):
    """C[n_tiles*tm, cols] = A @ W, A tiles double-buffered in ACT and ACC.

    Semaphores: 0 A tile (and W) loaded, 1 ACT buffer free, 2 ACC tile ready, 3 ACC buffer free.
    """
    cols = cfg.cols
    nl = -(-k // cols)
    p = [make("load", spad="wgt", spad_addr=0, dram_addr=W_ADDR, rows=k, row_lines=1, dram_stride=cols,
              signal_en=1, signal_sem=0)]
    for t in range(n_tiles):
        b = t % 2
        act, acc = b * tm * nl, b * tm
        wait_free = {} if (t < 2 or drop_wait) else dict(wait_sem=1, wait_count=1, wait_consume=1)
        p.append(make("load", spad="act", spad_addr=act, dram_addr=A_ADDR + t * tm * k, rows=tm, row_lines=nl,
                      dram_stride=k, signal_en=1, signal_sem=0, **wait_free))
        if t >= 2:
            p.append(make("nop", engine="matmul", wait_sem=3, wait_count=1, wait_consume=1))
        p.append(make("matmul", a_addr=act, w_addr=0, acc_addr=acc, k=k, m_inner=tm, a_stride=nl,
                      wait_sem=0, wait_count=2 if t == 0 else 1, wait_consume=1, signal_en=1, signal_sem=1))
        p.append(make("nop", engine="matmul", signal_en=1, signal_sem=2))
        p.append(make("store", spad="acc", spad_addr=acc, dram_addr=C_ADDR + t * tm * cols * 4, rows=tm,
                      row_lines=1, dram_stride=cols * 4, wait_sem=2, wait_count=1, wait_consume=1,
                      signal_en=1, signal_sem=3))
    p.append(make("halt"))
    return Program(p)


def setup(cfg, n_tiles, tm, k, seed, density=0.6):
    rng = np.random.default_rng(seed)
    m = Machine(cfg)
    a = rng.integers(-128, 128, (n_tiles * tm, k))
    a = np.where(rng.random(a.shape) < density, a, 0).astype(np.int8)
    w = rng.integers(-128, 128, (k, cfg.cols)).astype(np.int8)
    m.write_dram(A_ADDR, a)
    m.write_dram(W_ADDR, w)
    return m, a, w


def result(m, a, cfg):
    return m.read_dram(C_ADDR, a.shape[0] * cfg.cols * 4).view(np.int32).reshape(a.shape[0], cfg.cols)


@pytest.mark.parametrize("queue_depth", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 3, 5), (5, 4, 8), (6, 7, 13)])
def test_pipelined_gemm_matches_program_order(queue_depth, shape):
    cfg = CFG.replace(queue_depth=queue_depth)
    n_tiles, tm, k = shape
    prog = gemm_pipeline(cfg, n_tiles, tm, k)
    outs = {}
    for mode in ("program", "concurrent"):
        m, a, w = setup(cfg, n_tiles, tm, k, SEED)
        res = m.run(prog, mode=mode)
        out = result(m, a, cfg)
        np.testing.assert_array_equal(out, a.astype(np.int64) @ w.astype(np.int64))
        # counters computed independently from the data
        assert res.counters["macs"] == np.count_nonzero(a) * cfg.cols
        assert res.counters["macs_skipped"] == (a.size - np.count_nonzero(a)) * cfg.cols
        assert res.counters["store_bytes"] == a.shape[0] * cfg.cols * 4
        nl = -(-k // cfg.cols)
        assert res.counters["load_bytes"] == k * cfg.cols + a.shape[0] * nl * cfg.cols
        assert res.counters["instructions"] == len(prog) - 1
        outs[mode] = (res, list(m.sems), m.acc.copy(), m.act.copy())
    (rp, sp, accp, actp), (rc, sc, accc, actc) = outs["program"], outs["concurrent"]
    assert sp == sc
    np.testing.assert_array_equal(accp, accc)
    np.testing.assert_array_equal(actp, actc)
    for e in ("load", "matmul", "vector", "store"):      # same instructions, same durations
        assert rp.counters[f"{e}_busy"] == rc.counters[f"{e}_busy"]
    if n_tiles > 1:
        assert rc.cycles < rp.cycles                     # engines overlap


def test_program_cycles_are_the_sum_of_fetch_and_durations():
    cfg = CFG
    prog = gemm_pipeline(cfg, 3, 4, 8)
    m, _, _ = setup(cfg, 3, 4, 8, SEED)
    res = m.run(prog)
    fetch = 16 // cfg.mem_bytes
    assert res.cycles == len(prog) * fetch + sum(e - s for _, _, s, e in res.timeline)


def test_concurrent_timeline_respects_semaphores_and_engine_order():
    cfg = CFG.replace(queue_depth=2)
    prog = gemm_pipeline(cfg, 5, 4, 8)
    m, _, _ = setup(cfg, 5, 4, 8, SEED)
    res = m.run(prog, mode="concurrent")
    by_index = {i: (eng, s, e) for i, eng, s, e in res.timeline}
    assert len(by_index) == len(prog) - 1
    gap = m.costs.issue_gap
    assert gap >= 1                                     # the checks below then also test the gap
    last_end = {}
    for i in sorted(by_index):
        eng, s, e = by_index[i]
        assert s >= last_end.get(eng, -gap) + gap       # one at a time, in program order per engine
        last_end[eng] = e
        assert eng == prog[i].engine_queue
    # every MATMUL starts after the LOAD of its tile completes
    loads = [i for i in sorted(by_index) if prog[i].mnemonic == "load" and prog[i].spad.name == "ACT"]
    mms = [i for i in sorted(by_index) if prog[i].mnemonic == "matmul"]
    for ld, mm in zip(loads, mms, strict=True):
        assert by_index[mm][1] >= by_index[ld][2] + gap
    last = max(res.timeline, key=lambda t: t[3])
    landing = m.costs.signal_latency if prog[last[0]].signal_en else 0   # its signal lands later
    assert res.cycles == last[3] + gap + landing
    busy = {}
    for _, eng, s, e in res.timeline:
        busy[eng] = busy.get(eng, 0) + e - s
    for eng, v in busy.items():
        assert res.counters[f"{eng.name.lower()}_busy"] == v
    assert res.counters["matmul_wait"] > 0


def test_wait_counter_and_signal_release_time():
    cfg = CFG
    m = Machine(cfg)
    prog = [make("load", rows=3, row_lines=2, dram_stride=8, signal_en=1, signal_sem=4),
            make("vadd", wait_sem=4, wait_count=1)]
    res = m.run(prog, mode="concurrent")
    (_, _, ls, le), (_, _, vs, ve) = res.timeline
    fetch, lat, gap, rel = 16 // cfg.mem_bytes, m.costs.fetch_latency, m.costs.issue_gap, m.costs.release_latency
    land = m.costs.signal_latency
    assert rel >= 1 and land >= 1
    seen = le + gap + land                               # the signal reaches the semaphore
    assert (ls, vs) == (lat + fetch + rel, seen + rel)   # released in the cycle the signal is seen
    assert res.counters["vector_wait"] == seen - (lat + 2 * fetch)  # dispatched at lat + 2*fetch
    assert m.sems[4] == 1                                # no consume


# -- deadlock -------------------------------------------------------------------------------

def test_deadlock_names_engine_index_and_semaphore():
    m = Machine(CFG)
    prog = [make("load", rows=1, row_lines=1),
            make("matmul", k=4, wait_sem=5, wait_count=2),
            make("nop", engine="store", wait_sem=7, wait_count=1, wait_consume=1),
            make("nop", engine="vector", signal_en=1, signal_sem=5)]
    res = m.run(prog, mode="concurrent", raise_on_error=False)
    assert res.error == ErrorCode.WATCHDOG
    assert (res.error_index, res.error_engine) == (1, Engine.MATMUL)
    assert "engine MATMUL instruction 1 waits on semaphore 5 for count 2 (value 1)" in res.detail
    assert "engine STORE instruction 2 waits on semaphore 7 for count 1 (value 0)" in res.detail
    assert "fetch" not in res.detail and "LOAD" not in res.detail
    assert m.sems[5] == 1
    # program order does not enforce waits: the same program completes there
    assert m.run(prog).error == ErrorCode.NONE


def test_queue_full_fetch_deadlock():
    prog = [make("nop", engine="store", wait_sem=0, wait_count=1, wait_consume=1)] * 3 + \
           [make("nop", engine="load", signal_en=1, signal_sem=0)] * 3
    res = Machine(CFG.replace(queue_depth=2)).run(prog, mode="concurrent", raise_on_error=False)
    assert res.error == ErrorCode.WATCHDOG
    assert "engine STORE instruction 0 waits on semaphore 0 for count 1" in res.detail
    assert "fetch blocked at instruction 2: queue of engine STORE is full (2 entries)" in res.detail
    # with room for all three waits, fetch reaches the signals and the program completes
    res = Machine(CFG.replace(queue_depth=3)).run(prog, mode="concurrent")
    assert res.error == ErrorCode.NONE and res.counters["instructions"] == 6


def test_stall_counter_charges_the_full_queue():
    m = Machine(CFG.replace(queue_depth=1))
    m.delays[2] = 100
    prog = [make("delay", engine="vector", slot=2), make("nop", engine="vector"),
            make("nop", engine="vector"), make("nop", engine="load")]
    res = m.run(prog, mode="concurrent")
    fetch, lat, gap, rel = 16 // CFG.mem_bytes, m.costs.fetch_latency, m.costs.issue_gap, m.costs.release_latency
    delay_done = res.timeline[0][3] + gap
    # word 2 is ready at lat + 3*fetch but the VECTOR queue holds word 1 until it starts, after
    # the DELAY completes and its release latency
    assert res.counters["vector_stall"] == delay_done + rel - (lat + 3 * fetch)
    assert res.counters["load_stall"] == res.counters["matmul_stall"] == res.counters["store_stall"] == 0
    load_start = [s for i, _, s, _ in res.timeline if i == 3][0]
    # in-order dispatch held the LOAD-queue NOP too: dispatched a fetch later, then released
    assert load_start == delay_done + rel + fetch + rel


# -- race checker ---------------------------------------------------------------------------

def test_race_checker_flags_missing_wait_and_accepts_fixed_program():
    cfg = CFG
    m, a, w = setup(cfg, 5, 4, 8, SEED)
    m.run(gemm_pipeline(cfg, 5, 4, 8), mode="concurrent")          # race-free: accepted
    m, a, w = setup(cfg, 5, 4, 8, SEED)
    with pytest.raises(RaceError) as e:
        m.run(gemm_pipeline(cfg, 5, 4, 8, drop_wait=True), mode="concurrent")
    err = e.value
    assert err.space == "ACT"
    assert {err.first[1], err.second[1]} == {Engine.LOAD, Engine.MATMUL}
    load_idx = err.first[0] if err.first[1] == Engine.LOAD else err.second[0]
    assert load_idx >= 5                                             # the LOAD of tile 2 (index 6)
    assert f"instruction {err.first[0]}" in str(err) and f"instruction {err.second[0]}" in str(err)
    # without the checker the racy program just runs
    m, a, w = setup(cfg, 5, 4, 8, SEED)
    assert m.run(gemm_pipeline(cfg, 5, 4, 8, drop_wait=True), mode="concurrent", check_races=False).ok


def test_race_through_dram_and_its_fix():
    cfg = CFG
    store = make("store", spad_addr=3, dram_addr=1000, rows=2, row_lines=1, dram_stride=4)
    load = make("load", spad_addr=50, dram_addr=1004, rows=1, row_lines=1)
    m = Machine(cfg)
    m.act[3:5] = [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(RaceError) as e:
        m.run([store, load], mode="concurrent")
    assert e.value.space == "DRAM" and e.value.location == 1004
    assert e.value.first == (0, Engine.STORE) and e.value.second == (1, Engine.LOAD)
    assert e.value.first_write and not e.value.second_write
    m = Machine(cfg)
    m.act[3:5] = [[1, 2, 3, 4], [5, 6, 7, 8]]
    m.run([store.replace(signal_en=1, signal_sem=2), load.replace(wait_sem=2, wait_count=1, wait_consume=1)],
          mode="concurrent")
    assert m.act[50].tolist() == [5, 6, 7, 8]


def test_race_write_write_and_read_read():
    cfg = CFG
    m = Machine(cfg)
    with pytest.raises(RaceError) as e:       # VECTOR and LOAD both write ACT line 21
        m.run([make("vadd", src_a=0, src_b=0, dst=20, lines=2),
               make("load", spad_addr=21, rows=1, row_lines=1)], mode="concurrent")
    assert e.value.location == 21 and e.value.first_write and e.value.second_write
    # MATMUL and VECTOR only read ACT lines 0..1; writes go to different places: no race
    m.run([make("matmul", k=8), make("vadd", src_a=0, src_b=1, dst=30, lines=1)], mode="concurrent")


def test_transitive_order_through_a_third_engine():
    """LOAD -> MATMUL (sem 0) -> STORE (sem 1): STORE reading what LOAD wrote is ordered."""
    m = Machine(CFG)
    m.run([make("load", spad="acc", spad_addr=0, rows=1, row_lines=1, signal_en=1, signal_sem=0),
           make("nop", engine="matmul", wait_sem=0, wait_count=1, wait_consume=1, signal_en=1, signal_sem=1),
           make("store", spad="acc", spad_addr=0, dram_addr=512, rows=1, row_lines=1,
                wait_sem=1, wait_count=1, wait_consume=1)], mode="concurrent")


def test_wait_without_consume_orders_only_the_first_signals():
    """A wait for count 1 is ordered after the first signal only, not after a later one."""
    m = Machine(CFG)
    prog = [make("nop", engine="load", signal_en=1, signal_sem=0),
            make("load", spad_addr=7, rows=1, row_lines=1, signal_en=1, signal_sem=0),
            make("vadd", src_a=7, src_b=7, dst=40, lines=1, wait_sem=0, wait_count=1)]
    # in the simulation the VECTOR starts after the NOP's signal but before the LOAD finishes: race
    with pytest.raises(RaceError):
        m.run(prog, mode="concurrent")
    ok = prog[:2] + [prog[2].replace(wait_count=2)]
    m.run(ok, mode="concurrent")


def test_program_mode_rejects_race_checking():
    with pytest.raises(ValueError, match="check_races"):
        Machine(CFG).run([make("nop")], check_races=True)


def test_race_found_after_many_unrelated_instructions():
    """Record pruning must keep accesses no other engine is ordered after (here: 150 later starts)."""
    prog = [make("load", spad_addr=5, rows=1, row_lines=1)]
    prog += [make("vadd", src_a=100 + i % 50, src_b=100, dst=200 + i % 50, lines=1) for i in range(150)]
    prog += [make("vadd", src_a=5, src_b=5, dst=300, lines=1)]
    with pytest.raises(RaceError) as e:
        Machine(CFG).run(prog, mode="concurrent")
    assert e.value.first == (0, Engine.LOAD) and e.value.second == (151, Engine.VECTOR)
    assert e.value.location == 5
    synced = [prog[0].replace(signal_en=1, signal_sem=0),
              prog[1].replace(wait_sem=0, wait_count=1)] + prog[2:]
    Machine(CFG).run(synced, mode="concurrent")
