"""Sequencer: decode, dispatch to per-engine queues, semaphore-gated issue, debug and status."""

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparrow import isa
from sparrow.config import HwConfig
from sparrow.errors import ErrorCode

from .decoder import InstructionDecoder
from .engine_port import EngineControlSignature
from .fetch import INDEX_BITS, fetched_layout
from .semaphores import SemaphoreUnit

__all__ = ["Sequencer", "N_ENGINES", "FETCH_ENGINE", "NO_ENGINE"]

N_ENGINES = 4
#: ``error_engine`` values beyond the four engines
FETCH_ENGINE = 4
NO_ENGINE = 7

_H = {f.name: (pos, f.width) for f, pos in zip(isa.HEADER, [sum(h.width for h in isa.HEADER[:i])
                                                             for i in range(len(isa.HEADER))])}


def _hdr(word, name):
    pos, w = _H[name]
    return word[pos:pos + w]


class _FlagFifo(wiring.Component):
    """``SyncFIFO`` of ``depth`` entries (same ports, same cycles) whose ``r_rdy`` and ``w_rdy``
    are registers, computed from the next level (timing: no compare of ``level`` behind them; they
    feed the issue, dispatch and watchdog decisions). ``stays_nonempty`` is the value ``r_rdy``
    takes at the next clock edge, this cycle's write not counted (a reset aside)."""

    def __init__(self, width, depth):
        self.width, self.depth = width, depth
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1, init=1),
            "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1), "stays_nonempty": Out(1),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.storage = storage = Memory(shape=self.width, depth=self.depth, init=[])
        w_port = storage.write_port()
        r_port = storage.read_port(domain="comb")
        produce = Signal(range(self.depth))
        consume = Signal(range(self.depth))

        def incr(v):
            return Mux(v == self.depth - 1, 0, v + 1)[:len(v)]

        do_write = self.w_en & self.w_rdy
        do_read = self.r_en & self.r_rdy
        m.d.comb += [w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(do_write),
                     r_port.addr.eq(consume), self.r_data.eq(r_port.data)]
        with m.If(do_write):
            m.d.sync += produce.eq(incr(produce))
        with m.If(do_read):
            m.d.sync += consume.eq(incr(consume))
        m.d.comb += self.stays_nonempty.eq(Mux(do_read, self.level != 1, self.r_rdy))
        with m.If(do_write & ~do_read):
            m.d.sync += [self.level.eq(self.level + 1), self.r_rdy.eq(1),
                         self.w_rdy.eq(self.level != self.depth - 1)]
        with m.If(do_read & ~do_write):
            m.d.sync += [self.level.eq(self.level - 1), self.r_rdy.eq(self.level != 1), self.w_rdy.eq(1)]
        return m


class _HeadQueue(wiring.Component):
    """``SyncFIFOBuffered`` of ``depth`` entries (same ports but ``nonempty`` for ``level != 0``,
    same cycles: an entry written in one cycle is at the registered head two cycles later) that
    also compares the entry's index field (bits ``index_at`` and up) with ``bp_index`` as the
    entry enters the head register, and every cycle while it sits there: ``at_index`` is
    ``head index == bp_index`` of the previous cycle, a register (timing: the 24-bit compare does
    not feed the issue decision). ``r_rdy_next`` is the value ``r_rdy`` takes at the next clock
    edge (a reset of the queue aside), for users that keep ``r_rdy`` in a register combined with
    their own state; ``r_load`` is high when the head register takes ``r_new`` at the next clock
    edge (a reset aside; otherwise it keeps its value), for users that decode the head into
    registers of their own. The inner FIFO's flags are registers (:class:`_FlagFifo`)."""

    def __init__(self, width, depth, index_at):
        self.width, self.depth, self.index_at = width, depth, index_at
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1),
            "nonempty": Out(1), "r_rdy_next": Out(1), "r_load": Out(1), "r_new": Out(width),
            "bp_index": In(width - index_at), "at_index": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        head_index = self.r_data[self.index_at:]
        load = Signal()
        if self.depth == 1:
            m.d.comb += [self.w_rdy.eq(~self.r_rdy), load.eq(self.w_en & self.w_rdy),
                         self.nonempty.eq(self.r_rdy)]
            new = self.w_data
        else:
            m.submodules.inner = inner = _FlagFifo(self.width, self.depth - 1)
            m.d.comb += [inner.w_data.eq(self.w_data), inner.w_en.eq(self.w_en), self.w_rdy.eq(inner.w_rdy),
                         load.eq(inner.r_rdy & (~self.r_rdy | self.r_en)), inner.r_en.eq(load),
                         self.nonempty.eq(inner.r_rdy | self.r_rdy)]
            new = inner.r_data
        m.d.comb += [self.r_rdy_next.eq(load | (self.r_rdy & ~self.r_en)), self.r_load.eq(load),
                     self.r_new.eq(new)]
        # the two compares are nets of their own (kept), so that synthesis leaves `load`, which
        # hangs off the issue decision, as the last select instead of folding it into them
        at_new = Signal(attrs={"keep": 1})
        at_head = Signal(attrs={"keep": 1})
        m.d.comb += [at_new.eq(new[self.index_at:] == self.bp_index), at_head.eq(head_index == self.bp_index)]
        m.d.sync += self.at_index.eq(Mux(load, at_new, at_head))
        with m.If(load):
            m.d.sync += [self.r_data.eq(new), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m


class Sequencer(wiring.Component):
    """Everything between fetched words and the four execution engines.

    * **Dispatch**: checks each fetched word with :class:`InstructionDecoder` into a register
      stage; from there an illegal word stops the program with its error (engine
      ``FETCH_ENGINE``), HALT stops fetch, and every other instruction goes to its engine's queue
      (``cfg.queue_depth`` deep) in program order, fetch stalling while that queue is full.
    * **Issue**, per engine: the queue head waits for its semaphore (``SemaphoreUnit``); NOP and
      DELAY are executed here, after the engine has drained (they complete in order with the
      engine's other instructions); other instructions are offered to the engine and their signal
      fields queued until the engine's ``done`` pulse, which then signals the semaphore. An
      engine instruction is *released* when its wait is met: its wait is taken (a consuming wait
      subtracts its count) then, possibly while the engine is still busy, and from the next cycle
      on it is offered until the engine accepts it (nothing withdraws it: not the semaphore, not
      the debugger). NOP and DELAY likewise run the cycle after their wait is taken. Queue heads,
      ``instr.valid`` and NOP/DELAY signals come from registers, so no combinational path runs
      from a queue through the semaphore compares into an engine.
    * **Debug**: per-engine breakpoints, halt-all, resume and single step (see
      :mod:`sparrow.regmap`), program counters. The breakpoint index is compared with the queue
      head in a register (:class:`_HeadQueue`), so a change of ``bp_index`` takes effect a cycle
      after it is made.
    * **Status**: done, first error (code, engine, instruction index), a deadlock watchdog
      (no dispatch, issue, completion or delay progress for ``watchdog`` cycles while work is
      pending and no engine is halted by the debugger; a change of ``watchdog`` takes effect a
      cycle after it is made), and the control-side counters.

    Timing: decisions read registers wherever a cycle allows it. ``go`` (running and no error)
    is a register computed from the next values, so the error flag does not feed the issue and
    dispatch decisions (and from them the queues' clock enables); the first error is picked by a
    balanced tree of priority muxes; the breakpoint compare, the per-engine event counts, the
    retired count (a table, no adder), the signals to the semaphores, the overflow report and the
    watchdog's choice of engine are registered. So are, computed from the next values, the
    queues' and in-flight FIFOs' ready flags (:class:`_FlagFifo`), each engine's readiness to
    request its semaphore (``ready``), whether the head is a NOP/DELAY (``local``, from the
    entry entering the head register) and whether any work is held past dispatch (``holding``,
    ``wrote``); the semaphore unit decodes the heads' waits into registers the same way (it
    is told each head's next wait). A NOP/DELAY's count follows the queue head while none runs,
    so its issue sets one flag. The watchdog's quiet count runs a cycle behind its restart
    decision (a register).

    Ports
    -----
    fetched : In(stream.Signature(fetched_layout()))
        From the fetch unit.
    fetch_stop : Out(1)
        Tells fetch to abandon the rest of the program (HALT, error); registered, a cycle after
        the decision.
    fetch_busy, fetch_error : In(1); fetch_error_index : In(INDEX_BITS)
        Fetch status.
    engines : Out(EngineControlSignature().flip()).array(4)
        Control ports of the LOAD, MATMUL, VECTOR and STORE engines (index = ``isa.Engine``).
    start, abort : In(1)
        Pulses from the CSRs. ``start`` clears status, semaphores and counters.
    delays : In(ArrayLayout(32, cfg.delay_slots))
    watchdog : In(32)
    bp_enable : In(4); bp_halt_all : In(1); bp_index : In(ArrayLayout(INDEX_BITS, 4))
    resume, step : In(4)
        Engine masks, valid for one cycle (CSR write strobes).
    running, done : Out(1)
    error : Out(ErrorCode); error_engine : Out(3); error_index : Out(INDEX_BITS)
    halted, stuck : Out(4)
    pc : Out(ArrayLayout(INDEX_BITS, 4))
    sem_values : Out(ArrayLayout(cfg.sem_bits, cfg.n_semaphores))
    count_cycles, count_instructions : Out(64)
    count_busy, count_wait, count_stall : Out(ArrayLayout(64, 4))
        Per engine: busy (has an instruction in flight or a DELAY running), waiting on its
        semaphore, stalled (fetch blocked on the engine's full queue — as the golden model counts).
        Each event is added a cycle after it happens (registered, for timing).
    """

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg must be a HwConfig, not {cfg!r}")
        self.cfg = cfg
        super().__init__({
            "fetched": In(stream.Signature(fetched_layout())),
            "fetch_stop": Out(1),
            "fetch_busy": In(1),
            "fetch_error": In(1),
            "fetch_error_index": In(INDEX_BITS),
            "engines": Out(EngineControlSignature().flip()).array(N_ENGINES),
            "start": In(1),
            "abort": In(1),
            "delays": In(data.ArrayLayout(32, cfg.delay_slots)),
            "watchdog": In(32),
            "bp_enable": In(N_ENGINES),
            "bp_halt_all": In(1),
            "bp_index": In(data.ArrayLayout(INDEX_BITS, N_ENGINES)),
            "resume": In(N_ENGINES),
            "step": In(N_ENGINES),
            "running": Out(1),
            "done": Out(1),
            "error": Out(ErrorCode),
            "error_engine": Out(3, init=NO_ENGINE),
            "error_index": Out(INDEX_BITS),
            "halted": Out(N_ENGINES),
            "stuck": Out(N_ENGINES),
            "pc": Out(data.ArrayLayout(INDEX_BITS, N_ENGINES)),
            "sem_values": Out(data.ArrayLayout(cfg.sem_bits, cfg.n_semaphores)),
            "count_cycles": Out(64),
            "count_instructions": Out(64),
            "count_busy": Out(data.ArrayLayout(64, N_ENGINES)),
            "count_wait": Out(data.ArrayLayout(64, N_ENGINES)),
            "count_stall": Out(data.ArrayLayout(64, N_ENGINES)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        entry_w = isa.WORD_BITS + INDEX_BITS

        m.submodules.decoder = dec = InstructionDecoder(cfg)
        m.submodules.sems = sems = SemaphoreUnit(cfg, n_clients=N_ENGINES)
        m.d.comb += self.sem_values.eq(sems.values)

        running = self.running
        # error != NONE, a register set with the error (timing: not a decode of the error code in
        # front of the error registers' enables and the run's end)
        has_error = Signal()
        # go == running & ~has_error, kept in a register computed from the next values (timing:
        # the error register's decode does not feed the issue and dispatch decisions, and from
        # them the queues' and engines' wide clock enables)
        go = Signal()
        progress = Signal()
        halt_seen = Signal()

        # The per-engine event counters count a cycle late: the event is registered, then added
        # (timing: the 64-bit counters' enables do not hang off the semaphore compares). `start`
        # clears the registered events with the counters.
        late_events = []

        def count_late(counter, event, name):
            ev = Signal(name=name)
            m.d.sync += ev.eq(event)
            with m.If(ev):
                m.d.sync += counter.eq(counter + 1)
            late_events.append(ev)

        # error sources, lowest priority first: (condition, code, engine, index); the first error
        # of a run is kept. Picked at the end by a balanced tree of priority muxes (timing)
        errors = []

        def set_error(cond, code, engine, index):
            errors.append((cond, code, engine, index))

        # -- dispatch -------------------------------------------------------------------------------
        queues = []
        flush = Signal()
        m.d.comb += flush.eq(self.start | self.abort)
        for e in range(N_ENGINES):
            # registered head (timing: the head's wait fields feed the semaphore compares), with
            # the breakpoint compare registered too
            q = _HeadQueue(entry_w, cfg.queue_depth, isa.WORD_BITS)
            m.submodules[f"queue{e}"] = ResetInserter(flush)(q)
            queues.append(q)

        # A register stage between fetch and the queues (timing: the decoder's legality checks
        # feed registers, not the queues' write enables and fetch's ready): a word is decoded
        # into `d_*` as fetch delivers it and dispatched (or stops the program) from there.
        m.d.comb += dec.word.eq(self.fetched.payload.word)
        d_valid, d_legal, d_halt, d_dispatch = Signal(), Signal(), Signal(), Signal()
        d_word, d_index = Signal(isa.WORD_BITS), Signal(INDEX_BITS)
        d_engine, d_error = Signal(2), Signal(ErrorCode)
        target_ready = Signal()
        with m.Switch(d_engine):
            for e in range(N_ENGINES):
                with m.Case(e):
                    m.d.comb += target_ready.eq(queues[e].w_rdy)
        accepting = Signal()
        m.d.comb += accepting.eq(go & ~halt_seen)
        # fetch is told to stop a cycle after the decision (timing: the decision, behind the
        # decoded word and `go`, ran into the fetch unit's request and counter enables); words it
        # delivers meanwhile are not taken (illegal word, error) or dropped (HALT). Never into
        # the next run: `start` clears it.
        stop_now = Signal()
        m.d.sync += self.fetch_stop.eq(stop_now & ~flush)
        fire = Signal()
        set_error(d_valid & accepting & ~d_legal, d_error, FETCH_ENGINE, d_index)
        with m.If(d_valid & accepting):
            with m.If(~d_legal):
                m.d.comb += stop_now.eq(1)
            with m.Elif(d_halt):
                m.d.comb += [stop_now.eq(1), progress.eq(1)]
                m.d.sync += [halt_seen.eq(1), d_valid.eq(0)]
        # d_dispatch: a legal word, not a HALT (a register, set with the word: timing, the
        # dispatch decision behind it feeds the fetch slice's handshake)
        m.d.comb += fire.eq(d_valid & accepting & d_dispatch & target_ready)
        # refill when empty or dispatching (never behind a HALT or an illegal word); words fetched
        # behind a HALT are dropped, so the run can finish (the fetch unit stops at the HALT, but
        # the words it had already delivered into the fetch slice would stay valid)
        load = Signal()
        take = Signal()
        room = Signal()         # the decode register is free or dispatches its word this cycle
        m.d.comb += [room.eq(~d_valid | (d_dispatch & target_ready)),
                     take.eq(halt_seen | (accepting & room)),
                     load.eq(self.fetched.valid & accepting & room),
                     self.fetched.ready.eq(take)]
        with m.If(load):
            m.d.sync += [d_valid.eq(1), d_legal.eq(dec.legal), d_halt.eq(dec.is_halt),
                         d_dispatch.eq(dec.legal & ~dec.is_halt), d_error.eq(dec.error),
                         d_engine.eq(dec.engine), d_word.eq(self.fetched.payload.word),
                         d_index.eq(self.fetched.payload.index)]
        with m.Elif(fire):
            m.d.sync += d_valid.eq(0)
        with m.If(flush):
            m.d.sync += d_valid.eq(0)
        for e in range(N_ENGINES):
            to_e = d_engine == e
            m.d.comb += [queues[e].w_data.eq(Cat(d_word, d_index)), queues[e].w_en.eq(fire & to_e)]
            stalled = d_valid & accepting & d_dispatch & to_e & ~queues[e].w_rdy
            count_late(self.count_stall[e], running & stalled, f"stall_event{e}")
        with m.If(fire):
            m.d.comb += progress.eq(1)
        set_error(self.fetch_error & running, ErrorCode.DRAM_RANGE, FETCH_ENGINE, self.fetch_error_index)

        # -- per-engine issue ------------------------------------------------------------------------
        halted = Signal(N_ENGINES)
        m.d.comb += self.halted.eq(halted)
        bp_hit = Signal(N_ENGINES)
        step_hit = Signal(N_ENGINES)
        resume_mask = Signal(N_ENGINES)
        retired = []
        sig_index = []
        signals_r = []
        pending_any = Signal()
        pending = Signal(N_ENGINES)
        ready_regs = []
        ready_next = []
        # holding | wrote == any engine's queue, in-flight FIFO or DELAY holds work, kept in two
        # registers computed from the next values: `wrote` a dispatch into a queue, `holding`
        # the rest (timing: `pending_any` is those and the engines' busy, not an OR of twenty
        # terms, in front of `finished` and the watchdog; the dispatch decision feeds one
        # register of its own)
        holding = Signal()
        wrote = Signal()
        holding_next = []
        for e in range(N_ENGINES):
            q = queues[e]
            eng = self.engines[e]
            cl = sems.clients[e]
            head_word = q.r_data[:isa.WORD_BITS]
            head_index = q.r_data[isa.WORD_BITS:]
            opcode = head_word[0:4]
            is_nop = opcode == isa.Opcode.NOP.value
            # the head's next word: `new_word` when the head register loads it, the same word
            # otherwise; the semaphore unit decodes its wait into registers, and `local` (NOP or
            # DELAY) is decoded into a register here (timing: the grants and the issue start from
            # registers, not from decodes of the head). A flush empties the queue and zeroes its
            # head without a load; the semaphore unit's decode follows a cycle later, while the
            # queue is empty and nothing requests
            new_word = q.r_new[:isa.WORD_BITS]
            local = Signal(name=f"local{e}", init=1)
            with m.If(flush):
                m.d.sync += local.eq(1)
            with m.Elif(q.r_load):
                m.d.sync += local.eq(new_word[0:4].matches(isa.Opcode.NOP.value, isa.Opcode.DELAY.value))
            slot = head_word[isa.HEADER_BITS + 2:isa.HEADER_BITS + 6]

            # in-flight instructions: (signal_en, signal_sem, index), completed in order by `done`
            inflight = _FlagFifo(1 + 4 + INDEX_BITS, 4)
            m.submodules[f"inflight{e}"] = ResetInserter(flush)(inflight)
            delay_index = Signal(INDEX_BITS, name=f"delay_index{e}")
            delay_left = Signal(32, name=f"delay_left{e}")
            delay_active = Signal(name=f"delay_active{e}")
            delay_sig = Signal(5, name=f"delay_sig{e}")
            pass_bp = Signal(name=f"pass_bp{e}")
            step_armed = Signal(name=f"step_armed{e}")
            last_pc = Signal(INDEX_BITS, name=f"last_pc{e}")

            m.d.comb += q.bp_index.eq(self.bp_index[e])
            at_bp = q.r_rdy & self.bp_enable[e] & q.at_index & ~pass_bp
            # ready == ~halted & q.r_rdy & ~delay_active, kept in a register computed from the
            # next values (timing: one term instead of three in the semaphore requests, which
            # feed the other engines' hold-back and the grants)
            ready = Signal(name=f"ready{e}")
            ready_regs.append(ready)
            can_go = go & ready
            # (with can_go, no DELAY is running: the engine has drained when nothing is in flight
            # and it is not busy)
            drained = ~inflight.r_rdy & ~eng.busy
            m.d.comb += [
                cl.wait_sem.eq(_hdr(head_word, "wait_sem")),
                cl.wait_count.eq(_hdr(head_word, "wait_count")),
                cl.wait_consume.eq(_hdr(head_word, "wait_consume")),
                cl.next_load.eq(q.r_load),
                cl.next_sem.eq(_hdr(new_word, "wait_sem")),
                cl.next_count.eq(_hdr(new_word, "wait_count")),
                cl.next_consume.eq(_hdr(new_word, "wait_consume")),
            ]
            issue = Signal(name=f"issue{e}")
            # the head would issue this cycle if its wait allowed it (the semaphore unit holds
            # back higher engines' consumes on the same semaphore while this is high)
            request = Signal(name=f"request{e}")
            # An engine instruction is *released* when its wait is met: its wait is taken (a
            # consuming wait subtracts its count) then, and ``committed`` offers it from the next
            # cycle until the engine accepts it, whatever later happens to the semaphore or the
            # debugger, so the instr stream never withdraws valid (lib.stream rules). NOP/DELAY
            # take their wait once the engine has drained, and run the next cycle.
            committed = Signal(name=f"committed{e}")
            release = Signal(name=f"release{e}")
            # the semaphore unit's `request` leaves out the breakpoint compare (timing: the index
            # compare does not feed the other engines' hold-back); a head waiting at a
            # breakpoint only holds back a higher engine's consume for the one cycle before
            # every engine halts
            m.d.comb += [cl.request.eq(can_go & ~committed & Mux(local, drained, inflight.w_rdy)),
                         request.eq(cl.request & ~at_bp)]
            with m.If(go & committed):
                with m.If(local):
                    m.d.comb += issue.eq(1)
                with m.Else():
                    m.d.comb += [eng.instr.valid.eq(1), issue.eq(eng.instr.ready)]
            with m.Elif(can_go & at_bp):
                m.d.comb += bp_hit[e].eq(1)
            with m.Elif(request & cl.wait_ok):
                # run (NOP/DELAY) or offered (others) from the next cycle on, from the
                # `committed` register (timing: neither the engines' instr.valid nor the
                # NOP/DELAY state hangs off the semaphore compare)
                m.d.comb += [cl.take.eq(1), release.eq(1)]
            with m.If(flush | issue):
                m.d.sync += committed.eq(0)
            with m.Elif(release):
                m.d.sync += committed.eq(1)
            m.d.comb += [eng.instr.payload.eq(head_word), q.r_en.eq(issue)]
            m.d.comb += [inflight.w_en.eq(issue & ~local),
                         inflight.w_data.eq(Cat(_hdr(head_word, "signal_en"), _hdr(head_word, "signal_sem"),
                                                head_index))]
            with m.If(issue):
                m.d.comb += progress.eq(1)
                m.d.sync += [pass_bp.eq(0), last_pc.eq(head_index + 1)]
                with m.If(step_armed):
                    m.d.comb += step_hit[e].eq(1)
                    m.d.sync += step_armed.eq(0)
            # DELAY counts down delays[slot], then completes; a NOP is a DELAY of 0 (it completes,
            # and signals, the cycle after its issue: a registered signal, for timing)
            local_signal = Signal(name=f"local_signal{e}")
            local_sem = Signal(4, name=f"local_sem{e}")
            local_index = Signal(INDEX_BITS, name=f"local_index{e}")
            # an engine's completion and a NOP/DELAY of the same engine never coincide (below)
            n_retired = Signal(name=f"retired{e}")
            # delay_zero == (delay_left == 0), kept in a register (timing: the completion and its
            # signal do not wait for a 32-bit compare)
            delay_zero = Signal(name=f"delay_zero{e}")
            # while no NOP/DELAY runs, its count, index and signal follow the queue head (as the
            # head would start them), so its issue only sets delay_active (timing: the issue
            # decision does not select the 32-bit counter's next value; a NOP/DELAY issues only
            # with no DELAY running)
            with m.If(~delay_active):
                with m.If(is_nop):
                    m.d.sync += [delay_left.eq(0), delay_zero.eq(1)]
                with m.Else():
                    with m.Switch(slot):
                        for s in range(cfg.delay_slots):
                            with m.Case(s):
                                m.d.sync += [delay_left.eq(self.delays[s]), delay_zero.eq(self.delays[s] == 0)]
                m.d.sync += [delay_index.eq(head_index),
                             delay_sig.eq(Cat(_hdr(head_word, "signal_en"), _hdr(head_word, "signal_sem")))]
            with m.If(issue & local):
                m.d.sync += delay_active.eq(1)
            with m.If(delay_active):
                m.d.comb += progress.eq(1)
                with m.If(delay_zero):
                    m.d.sync += delay_active.eq(0)
                    m.d.comb += [local_signal.eq(delay_sig[0]), local_sem.eq(delay_sig[1:]),
                                 local_index.eq(delay_index)]
                with m.Else():
                    m.d.sync += [delay_left.eq(delay_left - 1), delay_zero.eq(delay_left == 1)]
            # completion of engine instructions
            done_sig = Signal(name=f"done_sig{e}")
            engine_done = Signal(name=f"engine_done{e}")
            with m.If(eng.done & inflight.r_rdy):
                m.d.comb += [inflight.r_en.eq(1), progress.eq(1), done_sig.eq(inflight.r_data[0]),
                             engine_done.eq(1)]
            delay_done = delay_active & delay_zero
            m.d.comb += n_retired.eq(engine_done | delay_done)
            retired.append(n_retired)
            # an engine's completion and a NOP/DELAY of the same engine never coincide (NOP/DELAY
            # wait for the engine to drain), so one signal port per engine suffices. The signal
            # reaches the semaphores a cycle after the completion (registered, for timing: the
            # in-flight FIFO's read does not feed the semaphore adders and overflow compares),
            # decoded to one bit per semaphore before the register (timing: each bit then feeds
            # only its own semaphore's logic, not all of them)
            sig_r = Signal(name=f"signal_r{e}")
            sig_on = Signal(name=f"signal_on{e}")
            idx = Signal(INDEX_BITS, name=f"sig_index{e}")
            m.d.comb += sig_on.eq((done_sig | local_signal) & running & ~flush)
            m.d.sync += [sig_r.eq(sig_on),
                         cl.signal_oh.eq(Mux(sig_on, Const(1, cfg.n_semaphores)
                                             << Mux(engine_done, inflight.r_data[1:5], local_sem), 0)),
                         idx.eq(Mux(engine_done, inflight.r_data[5:], local_index))]
            sig_index.append(idx)
            signals_r.append(sig_r)
            # errors from the engine: the faulting instruction is the oldest in flight
            set_error(eng.error != ErrorCode.NONE, eng.error, e, inflight.r_data[5:])
            # debug controls
            with m.If(self.resume[e] | self.step[e]):
                m.d.comb += resume_mask[e].eq(1)
                with m.If(at_bp):
                    m.d.sync += pass_bp.eq(1)
            with m.If(self.step[e]):
                m.d.sync += step_armed.eq(1)
            with m.If(self.start):
                m.d.sync += [pass_bp.eq(0), step_armed.eq(0), delay_active.eq(0), last_pc.eq(0)]
            # the next values of q.r_rdy (the queue is reset by flush) and delay_active (the
            # assignments above, in their order)
            active_next = Mux(self.start | (delay_active & delay_zero), 0, (issue & local) | delay_active)
            ready_next.append(~flush & q.r_rdy_next & ~active_next)
            # (an issue moves the head into the in-flight FIFO or the DELAY, so, a flush aside,
            # the head register holding work stands for both: no issue decision in this term)
            holding_next.append((~flush & (q.nonempty | inflight.stays_nonempty)) | active_next)
            m.d.comb += self.pc[e].eq(Mux(q.r_rdy, head_index, last_pc))
            # counters
            busy_now = inflight.r_rdy | eng.busy | delay_active
            count_late(self.count_busy[e], running & busy_now, f"busy_event{e}")
            count_late(self.count_wait[e], running & ~busy_now & q.r_rdy & ~halted[e] & ~cl.wait_ok & ~committed,
                       f"wait_event{e}")
            # the queue's content, not r_rdy: an entry spends a cycle inside the buffered queue
            # before its head register shows it
            m.d.comb += pending[e].eq(q.nonempty | inflight.r_rdy | eng.busy | delay_active)
        m.d.sync += [holding.eq(reduce(operator.or_, holding_next)), wrote.eq(fire & ~flush)]
        m.d.comb += pending_any.eq(holding | wrote | Cat(*(eng.busy for eng in self.engines)).any())

        # the blocked queue head with the lowest instruction index (what a watchdog error names,
        # as the golden model does): a two-level tournament over the engines' queue heads with a
        # register after each level (timing; the watchdog reads it after `watchdog` quiet cycles,
        # when the heads have long stopped changing)
        def lower(a, b, level):
            """(valid, index, engine) of the lower-indexed valid head of ``a`` and ``b``, registered."""
            va, ia, ea = a
            vb, ib, eb = b
            pick_b = vb & (~va | (ib < ia))
            out = (Signal(name=f"wd_valid_l{level}"), Signal(INDEX_BITS, name=f"wd_index_l{level}"),
                   Signal(3, name=f"wd_engine_l{level}"))
            m.d.sync += [out[0].eq(va | vb), out[1].eq(Mux(pick_b, ib, ia)), out[2].eq(Mux(pick_b, eb, ea))]
            return out

        heads = [(queues[e].r_rdy, self.pc[e], Const(e, 3)) for e in range(N_ENGINES)]
        while len(heads) > 1:
            heads = [lower(heads[i], heads[i + 1], f"{i}_{len(heads)}") if i + 1 < len(heads) else heads[i]
                     for i in range(0, len(heads), 2)]
        wd_valid_r, wd_index_r, wd_engine_r = heads[0]

        # counted a cycle late, like the event counters (timing: completions from the engines
        # ran into the 64-bit adder's carry chain); the count of the engines' bits is a table
        # (LUTs, no adder)
        retired_r = Signal(range(N_ENGINES + 1))
        with m.Switch(Cat(*retired)):
            for v in range(1 << N_ENGINES):
                with m.Case(v):
                    m.d.sync += retired_r.eq(bin(v).count("1"))
        m.d.sync += self.count_instructions.eq(self.count_instructions + retired_r)

        # breakpoints: a hit halts that engine, or all of them with bp_halt_all; RESUME/STEP
        # release the engines in their mask
        halted_next = Signal(N_ENGINES)
        m.d.comb += halted_next.eq(halted | bp_hit | step_hit)
        with m.If(bp_hit.any() & self.bp_halt_all):
            m.d.comb += halted_next.eq(~0)
        m.d.sync += halted.eq(halted_next & ~resume_mask)
        halted_d = Mux(self.start, 0, halted_next & ~resume_mask)
        m.d.sync += [r.eq(nxt & ~halted_d[e]) for e, (r, nxt) in enumerate(zip(ready_regs, ready_next))]

        # semaphore overflow: charged to the instruction whose completion signalled; registered
        # (timing), so the error is raised a cycle after the overflowing signal lands (the program
        # is not finished while a signal or its overflow report is on its way)
        # The engines whose signal overflowed are registered and the lowest of them is picked
        # after the register (timing: the pick does not follow the semaphores' overflow compares)
        ovf_seen = Signal()
        ovf_clients = Signal(N_ENGINES)
        ovf_engine = Signal(3)
        ovf_index = Signal(INDEX_BITS)
        m.d.sync += [ovf_seen.eq(sems.overflow & running & ~self.start), ovf_clients.eq(sems.overflow_clients)]
        sig_index_r = [Signal(INDEX_BITS, name=f"sig_index_r{e}") for e in range(N_ENGINES)]
        m.d.sync += [r.eq(i) for r, i in zip(sig_index_r, sig_index)]
        for e in reversed(range(N_ENGINES)):
            with m.If(ovf_clients[e]):
                m.d.comb += [ovf_engine.eq(e), ovf_index.eq(sig_index_r[e])]
        set_error(ovf_seen & running, ErrorCode.SEM_OVERFLOW, ovf_engine, ovf_index)

        # -- watchdog, done ----------------------------------------------------------------------------
        quiet = Signal(32)
        debug_halted = Signal()
        m.d.comb += debug_halted.eq((halted & pending).any())
        # The quiet count runs a cycle behind (timing: the decision to restart it, which hangs
        # off the engines' and queues' state, feeds one register, `quiet_rst`, instead of the
        # 32-bit counter's resets): `quiet_rst` is the previous cycle's restart and `quiet` the
        # previous cycle's count, so the count of this cycle is 0 after a restart, else
        # quiet + 1. `quiet_ge` is (that count + 1 >= watchdog, and watchdog != 0) of the
        # previous cycle, made on registers; the watchdog fires as if the count were kept in
        # step. `watchdog` is read only there (timing: not in front of the error registers), so
        # a change of it takes effect a cycle later, a change to or from 0 included.
        quiet_rst = Signal(init=1)
        quiet_ge = Signal()
        m.d.sync += [quiet_rst.eq(self.start | ~running | progress | debug_halted
                                  | ~(pending_any | self.fetched.valid | d_valid)),
                     quiet.eq(Mux(quiet_rst, 0, quiet + 1)),
                     quiet_ge.eq(self.watchdog.any() & Mux(quiet_rst, self.watchdog[1:] == 0,
                                                           quiet + 2 >= self.watchdog))]
        # (`watchdog <= 1` and `watchdog != 0` as reductions, not compares: yosys merged them
        # into one carry chain)
        wd_hit = Signal()
        m.d.comb += wd_hit.eq(running & ~quiet_rst & quiet_ge)
        with m.If(wd_hit):
            m.d.sync += self.stuck.eq(pending)
        # no queued instruction: the lowest-numbered engine still holding work, registered like
        # the tournament (timing: the engines' busy and in-flight state do not feed the error
        # registers; read after `watchdog` quiet cycles, when that state has long stopped
        # changing)
        wd_fb_engine = Signal(3, init=NO_ENGINE)
        wd_fb_index = Signal(INDEX_BITS)
        m.d.sync += [wd_fb_engine.eq(NO_ENGINE), wd_fb_index.eq(0)]
        for e in reversed(range(N_ENGINES)):
            with m.If(pending[e]):
                m.d.sync += [wd_fb_engine.eq(e), wd_fb_index.eq(self.pc[e])]
        wd_engine = Signal(3)
        wd_index = Signal(INDEX_BITS)
        # name the blocked queue head with the lowest instruction index
        m.d.comb += [wd_engine.eq(Mux(wd_valid_r, wd_engine_r, wd_fb_engine)),
                     wd_index.eq(Mux(wd_valid_r, wd_index_r, wd_fb_index))]
        set_error(wd_hit, ErrorCode.WATCHDOG, wd_engine, wd_index)

        finished = Signal()
        m.d.comb += finished.eq((halt_seen | ~self.fetch_busy) & ~self.fetched.valid & ~d_valid & ~pending_any
                                & ~Cat(*signals_r).any() & ~ovf_seen)
        with m.If(running):
            m.d.sync += self.count_cycles.eq(self.count_cycles + 1)
            with m.If(has_error):
                # stop issuing at once; engines finish (or, on their own error, drop) what they hold
                m.d.comb += stop_now.eq(1)
                m.d.sync += running.eq(0)
            with m.Elif(finished):
                m.d.sync += [running.eq(0), self.done.eq(1)]

        with m.If(self.abort & running):
            m.d.sync += running.eq(0)
        set_error(self.abort & running, ErrorCode.ABORTED, NO_ENGINE, 0)

        # the first error: the highest-priority source of this cycle, picked by a balanced tree
        # of two-way priority muxes (timing: log2 of the sources deep, where a one-hot select
        # behind a running OR of the higher sources' conditions was a chain through all of them)
        err_any = Signal()
        m.d.comb += err_any.eq(Cat(*(c for c, *_ in errors)).any())
        err_code = Signal(len(Value.cast(self.error)))
        err_engine = Signal(3)
        err_index = Signal(INDEX_BITS)

        def first_error(srcs):
            """(cond, code, engine, index) of the highest-priority (last) source whose cond is high."""
            if len(srcs) == 1:
                return srcs[0]
            lo, hi = first_error(srcs[:len(srcs) // 2]), first_error(srcs[len(srcs) // 2:])
            return (lo[0] | hi[0],) + tuple(Mux(hi[0], h, l) for h, l in zip(hi[1:], lo[1:]))

        _, code, engine, index = first_error([(c, Value.cast(code), Value.cast(eng), Value.cast(idx))
                                              for c, code, eng, idx in errors])
        m.d.comb += [err_code.eq(code), err_engine.eq(engine), err_index.eq(index)]
        with m.If(~has_error & err_any):
            m.d.sync += [self.error.eq(err_code), self.error_engine.eq(err_engine),
                         self.error_index.eq(err_index), has_error.eq(err_code != ErrorCode.NONE)]
        # go's next value: running and no error next cycle (the updates of `running` and
        # `error` above and below, in one expression)
        m.d.sync += go.eq(self.start | (running & ~has_error & ~finished & ~err_any))

        with m.If(self.start):
            m.d.sync += [
                running.eq(1), self.done.eq(0), halt_seen.eq(0), halted.eq(0), self.stuck.eq(0),
                self.error.eq(ErrorCode.NONE), self.error_engine.eq(NO_ENGINE), self.error_index.eq(0),
                has_error.eq(0),
                self.count_cycles.eq(0), self.count_instructions.eq(0),
            ]
            for e in range(N_ENGINES):
                m.d.sync += [self.count_busy[e].eq(0), self.count_wait[e].eq(0), self.count_stall[e].eq(0)]
            m.d.sync += [ev.eq(0) for ev in late_events]
            m.d.sync += retired_r.eq(0)
        m.d.comb += sems.clear.eq(self.start)
        return m

