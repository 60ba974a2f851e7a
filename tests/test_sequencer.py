"""Sequencer: semaphore ordering, NOP/DELAY, breakpoints, watchdog, errors — with mock engines."""

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from sparrow import isa
from sparrow.config import preset
from sparrow.errors import ErrorCode
from sparrow.hdl.sequencer import FETCH_ENGINE, Sequencer

CFG = preset("small").replace(queue_depth=2)
ENG = [isa.Engine.LOAD, isa.Engine.MATMUL, isa.Engine.VECTOR, isa.Engine.STORE]


def tagged(engine, tag, **hdr):
    """An instruction for ``engine`` carrying ``tag`` in a field the mock engine reads back."""
    if engine == isa.Engine.LOAD:
        return isa.make("load", dram_addr=tag, rows=1, row_lines=1, **hdr)
    if engine == isa.Engine.STORE:
        return isa.make("store", dram_addr=tag, rows=1, row_lines=1, **hdr)
    if engine == isa.Engine.MATMUL:
        return isa.make("matmul", acc_addr=tag, k=1, m_inner=1, m_outer=1, **hdr)
    return isa.make("requant", src=tag, rows=1, **hdr)


def tag_of(word):
    instr = isa.decode(word)
    return {"load": lambda i: i.dram_addr, "store": lambda i: i.dram_addr,
            "matmul": lambda i: i.acc_addr, "requant": lambda i: i.src}[instr.mnemonic](instr)


class MockEngine:
    """Accepts instructions (randomly not ready), runs them for random durations, pipelined 2 deep."""

    def __init__(self, port, rng, log, e, *, fail_tag=None):
        self.port, self.rng, self.log, self.e, self.fail_tag = port, rng, log, e, fail_tag
        self.queue = deque()

    async def process(self, ctx):
        p = self.port
        cycle = 0
        busy_left = 0
        async for _, _, valid, ready, payload in ctx.tick().sample(p.instr.valid, p.instr.ready, p.instr.payload):
            cycle += 1
            done = 0
            if self.queue and busy_left == 0:
                tag = self.queue.popleft()
                if tag == self.fail_tag:
                    ctx.set(p.error, ErrorCode.SPAD_RANGE)
                else:
                    done = 1
                    self.log.append(("done", self.e, tag, cycle))
                if self.queue:
                    busy_left = self.rng.randint(0, 4)
            elif busy_left:
                busy_left -= 1
            if valid and ready:
                tag = tag_of(payload.as_value().value)
                self.log.append(("issue", self.e, tag, cycle))
                if not self.queue:
                    busy_left = self.rng.randint(0, 4)
                self.queue.append(tag)
            ctx.set(p.done, done)
            ctx.set(p.busy, int(bool(self.queue)))
            ctx.set(p.instr.ready, int(len(self.queue) < 2 and self.rng.random() < 0.7))


def run_program(program, *, seed=1, delays=None, watchdog=2000, max_cycles=20000, bp=None, fail=None,
                control=None):
    dut = Sequencer(CFG)
    words = [isa.encode(i) if isinstance(i, isa.Instruction) else i for i in program]
    log = []
    engines = [MockEngine(dut.engines[e], random.Random(seed * 10 + e), log, e,
                          fail_tag=(fail[1] if fail and fail[0] == e else None)) for e in range(4)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for eng in engines:
        sim.add_process(eng.process)
    result = {}

    async def tb(ctx):
        for s, v in enumerate(delays or []):
            ctx.set(dut.delays[s], v)
        ctx.set(dut.watchdog, watchdog)
        if bp:
            ctx.set(dut.bp_enable, bp["enable"])
            ctx.set(dut.bp_halt_all, bp.get("halt_all", 0))
            for e, idx in bp.get("index", {}).items():
                ctx.set(dut.bp_index[e], idx)
        ctx.set(dut.start, 1)
        ctx.set(dut.fetch_busy, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pos = 0
        for cycle in range(max_cycles):
            if pos < len(words):
                ctx.set(dut.fetched.valid, 1)
                ctx.set(dut.fetched.payload, {"word": words[pos], "index": pos})
            else:
                ctx.set(dut.fetched.valid, 0)
                ctx.set(dut.fetch_busy, 0)
            if control:
                await control(ctx, dut, cycle, result)
            if ctx.get(dut.fetched.valid) and ctx.get(dut.fetched.ready):
                pos += 1
            if ctx.get(dut.fetch_stop):
                pos = len(words)
            await ctx.tick()
            if not ctx.get(dut.running) and not result.get("keep_going"):
                break
        result.update(done=ctx.get(dut.done), error=ctx.get(dut.error), error_engine=ctx.get(dut.error_engine),
                      error_index=ctx.get(dut.error_index), cycles=ctx.get(dut.count_cycles),
                      instructions=ctx.get(dut.count_instructions), stuck=ctx.get(dut.stuck),
                      sems=[ctx.get(dut.sem_values[i]) for i in range(CFG.n_semaphores)],
                      busy=[ctx.get(dut.count_busy[e]) for e in range(4)],
                      wait=[ctx.get(dut.count_wait[e]) for e in range(4)])

    sim.add_testbench(tb)
    sim.run()
    result["log"] = log
    return result


def random_program(rng, n):
    """Random program whose waits only name signals of earlier instructions: deadlock-free."""
    prog, signals = [], [0] * 4
    for i in range(n):
        e = rng.choice(ENG)
        hdr = {}
        if rng.random() < 0.6 and any(signals):
            s = rng.choice([s for s in range(4) if signals[s]])
            hdr.update(wait_sem=s, wait_count=rng.randint(1, signals[s]))
        if rng.random() < 0.6:
            s = rng.randrange(4)
            hdr.update(signal_sem=s, signal_en=1)
            signals[s] += 1
        kind = rng.random()
        if kind < 0.1:
            prog.append(isa.make("nop", engine=e, **hdr))
        elif kind < 0.2:
            prog.append(isa.make("delay", engine=e, slot=rng.randrange(2), **hdr))
        else:
            prog.append(tagged(e, i, **hdr))
    return prog


def check_semantics(program, log):
    """Every issue respects its wait given the signals completed before it; per-engine order holds."""
    events = {}
    for kind, _, tag, cycle in log:
        events[(kind, tag)] = cycle
    # signals by engine instructions happen at their done cycle; NOP/DELAY are not visible to the
    # mock engines, so only check waits whose signals all come from engine instructions.
    local = {i for i, ins in enumerate(program) if ins.mnemonic in ("nop", "delay")}
    for i, ins in enumerate(program):
        if i in local:
            continue
        assert ("issue", i) in events and ("done", i) in events, f"instruction {i} never ran"
        if ins.wait_count:
            producers = [j for j, p in enumerate(program[:i]) if p.signal_en and p.signal_sem == ins.wait_sem]
            if any(j in local for j in producers):
                continue
            done_before = sorted(events[("done", j)] for j in producers)
            # the count-th signal must have been completed before (or in the cycle before) issue
            assert done_before[ins.wait_count - 1] < events[("issue", i)], f"instruction {i} issued early"
    for e in ENG:
        idx = [i for i, ins in enumerate(program) if ins.engine_queue == e and i not in local]
        issues = [events[("issue", i)] for i in idx]
        assert issues == sorted(issues), f"engine {e.name} out of order"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_programs_respect_semaphores(seed):
    rng = random.Random(seed)
    print(f"seed {seed}")
    prog = random_program(rng, 60) + [isa.make("halt")]
    res = run_program(prog, seed=seed, delays=[3, 0])
    assert res["error"] == ErrorCode.NONE and res["done"] == 1
    assert res["instructions"] == len(prog) - 1
    check_semantics(prog[:-1], res["log"])
    # every signal landed: semaphore values equal the signals minus nothing (no consumes)
    expect = [sum(1 for p in prog if p.signal_en and p.signal_sem == s) for s in range(CFG.n_semaphores)]
    assert res["sems"] == expect


def test_removing_a_wait_breaks_ordering():
    """The check above can fail: the same kind of program issues early once its wait is removed."""
    prog = [tagged(isa.Engine.LOAD, 0, signal_sem=0, signal_en=1),
            tagged(isa.Engine.MATMUL, 1, wait_sem=0, wait_count=1)]
    res = run_program(prog, seed=5)
    check_semantics(prog, res["log"])
    no_wait = [prog[0], prog[1].replace(wait_count=0)]
    res = run_program(no_wait, seed=5)
    with pytest.raises(AssertionError):
        check_semantics(prog, res["log"])


def test_consuming_waits_count_down():
    prog = [tagged(isa.Engine.LOAD, 0, signal_sem=1, signal_en=1),
            tagged(isa.Engine.LOAD, 1, signal_sem=1, signal_en=1),
            tagged(isa.Engine.MATMUL, 2, wait_sem=1, wait_count=2, wait_consume=1),
            tagged(isa.Engine.LOAD, 3, signal_sem=1, signal_en=1),
            tagged(isa.Engine.VECTOR, 4, wait_sem=1, wait_count=1, wait_consume=1)]
    res = run_program(prog)
    assert res["done"] and res["sems"][1] == 0
    check_semantics(prog, res["log"])


def test_delay_takes_its_slot_cycles():
    base = run_program([isa.make("delay", engine="vector", slot=0)], delays=[0])["cycles"]
    long = run_program([isa.make("delay", engine="vector", slot=0)], delays=[200])["cycles"]
    assert long - base == 200


def test_back_to_back_delays_take_each_their_own_slot():
    """A DELAY's count is taken from the queue head while none runs: DELAYs and NOPs queued back
    to back on one engine each run their own slot's cycles (a stale count would shift them)."""
    prog = [isa.make("delay", engine="vector", slot=0), isa.make("delay", engine="vector", slot=1),
            isa.make("nop", engine="vector"), isa.make("delay", engine="vector", slot=0)]
    base = run_program(prog, delays=[3, 10])["cycles"]
    assert run_program(prog, delays=[3, 110])["cycles"] - base == 100
    assert run_program(prog, delays=[13, 10])["cycles"] - base == 20
    assert run_program(prog, delays=[0, 0])["cycles"] - base == -16


def test_deadlock_ends_in_watchdog_naming_the_engine():
    prog = [tagged(isa.Engine.LOAD, 0), tagged(isa.Engine.STORE, 1, wait_sem=3, wait_count=1)]
    res = run_program(prog, watchdog=100)
    assert res["error"] == ErrorCode.WATCHDOG
    assert res["error_engine"] == isa.Engine.STORE.value and res["error_index"] == 1
    assert res["stuck"] == 1 << isa.Engine.STORE.value


def test_illegal_word_stops_with_its_index():
    prog = [tagged(isa.Engine.LOAD, 0), 0xF, tagged(isa.Engine.LOAD, 2)]
    res = run_program(prog)
    assert res["error"] == ErrorCode.ILLEGAL_OPCODE and res["error_index"] == 1
    assert res["error_engine"] == FETCH_ENGINE
    assert not any(t == 2 for _, _, t, _ in res["log"]), "instruction after the illegal word ran"


def test_engine_error_names_the_faulting_instruction():
    prog = [tagged(isa.Engine.MATMUL, i) for i in range(5)]
    res = run_program(prog, fail=(isa.Engine.MATMUL.value, 3))
    assert res["error"] == ErrorCode.SPAD_RANGE
    assert res["error_engine"] == isa.Engine.MATMUL.value and res["error_index"] == 3


def test_semaphore_overflow_is_an_error():
    prog = [tagged(isa.Engine.LOAD, i, signal_sem=2, signal_en=1) for i in range(CFG.sem_max + 1)]
    res = run_program(prog)
    assert res["error"] == ErrorCode.SEM_OVERFLOW and res["error_index"] == CFG.sem_max


def test_breakpoint_halts_all_engines_then_resumes():
    prog = [tagged(e, i) for i, e in enumerate(ENG * 4)]   # indices 0..15, round-robin engines
    bp_index = 9  # a MATMUL
    seen = {}

    async def control(ctx, dut, cycle, result):
        halted = ctx.get(dut.halted)
        if halted == 0b1111 and "halted_at" not in seen:
            seen["halted_at"] = cycle
            seen["pc"] = [ctx.get(dut.pc[e]) for e in range(4)]
            result["keep_going"] = True
        if "halted_at" in seen and cycle == seen["halted_at"] + 20:
            assert ctx.get(dut.halted) == 0b1111, "engines ran while halted"
            ctx.set(dut.resume, 0b1111)
            result["keep_going"] = False
        elif cycle > seen.get("halted_at", 1 << 30) + 20:
            ctx.set(dut.resume, 0)

    res = run_program(prog, bp={"enable": 0b0010, "halt_all": 1, "index": {1: bp_index}}, control=control)
    assert seen["pc"][1] == bp_index
    issued = {t: c for k, _, t, c in res["log"] if k == "issue"}
    assert issued[bp_index] > seen["halted_at"] + 20
    assert res["done"] and res["error"] == ErrorCode.NONE and len(issued) == len(prog)


def test_single_step():
    prog = [tagged(isa.Engine.LOAD, i) for i in range(6)]
    steps = []

    async def control(ctx, dut, cycle, result):
        if cycle == 0:
            result["keep_going"] = True
        if ctx.get(dut.halted) & 1 and cycle % 10 == 0:
            steps.append(ctx.get(dut.pc[0]))
            ctx.set(dut.step, 1)
        else:
            ctx.set(dut.step, 0)
        if len(steps) > 3:
            ctx.set(dut.resume, 1)
            result["keep_going"] = False

    res = run_program(prog, bp={"enable": 1, "index": {0: 1}}, control=control)
    assert steps[:3] == [1, 2, 3]
    assert res["done"]
