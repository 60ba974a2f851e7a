"""LOAD DMA engine: external memory -> scratchpad, with padding and zero-mask decompression.

Semantics are exactly ``docs/isa.md`` (LOAD). The engine is three decoupled walkers over the
same instruction, so the bus is kept busy while lines are written:

* **command walker** — issues read bursts (aligned beats, at most ``max_burst`` beats, never
  crossing 4 KiB; as many as the bus accepts, without waiting for data) for each row's byte
  range. Uncompressed row ``y`` is the contiguous range ``[dram_addr + y*dram_stride,
  + row_lines*LB)``. A compressed row ``y`` is read as ``C_y`` (the 1-2 beats holding its count)
  and ``P_y`` (the rest of ``[slot, slot + 2 + N)``), in the order ``C0 C1 P0 C2 P1 ...``: the
  count of the next row is fetched one row ahead, so its payload read can be issued as soon as
  the current one is, with no round trip per row. Every byte range is checked before it is read
  (count bytes inside memory, then ``N <= capacity`` and ``2 + N`` bytes inside memory); the
  walker stops at the first failing row. A range is held as its next beat and a down-counter
  of the beats left; a burst's length is the smallest of those, ``max_burst`` and the beats to
  the 4 KiB boundary (the inverted low bits of the beat address), so issuing a burst needs
  small compares, no address subtraction; the next beat and remainder after a burst that does
  not end its range are two candidates formed from registers (it ended at the 4 KiB boundary,
  or it was ``max_burst`` beats long), selected by that compare.
* **unpacker** — takes read beats in order and pushes their useful bytes (offset, count) into a
  realigner: the :class:`LineWindow` for an uncompressed transfer, the narrower
  :class:`ByteWindow` (a count and a compressed line wide) for a compressed one. Count beats are
  parked in a small stash (the look-ahead row's count arrives before the current row's payload)
  and the counts are extracted and checked as they arrive (``N <= capacity``, ``2 + N`` bytes
  inside memory — both at once as ``N`` against ``min(capacity, DRAM - 2 - slot)``, registered
  when the count read starts, and the capacity alone for the error code). The count and its
  checks are registered (the *count stage*); in the next cycle what the walker and the unpacker
  need of them (the beats of the payload after the count beat(s), the bytes of the last count
  beat inside the group) is computed from those registers and queued. A row's stashed count
  beats enter the window just before its payload, without the bytes beyond the group. Each row's
  count and checks are also queued for the writer.
* **writer** — two stages. The *decode* stage walks the padded region in row-major order, one
  line per cycle: zero lines for padding, ``LB`` bytes popped from the window (zero-extended)
  for uncompressed data, and for compressed rows the mask and non-zero bytes of each line
  (:class:`~sparrow.hdl.zero_codec.ZeroExpand`; the count is popped with the first line),
  checking the format on the way with the queued count and checks (the mask's popcount is a
  register of the window: it keeps per-byte counts that move with the bytes). Its result — a line, or the error found
  at it — goes to a *line register* (with a skid register behind it, so the decode stage goes
  on while the skid register is empty, not after the port's ``ready``), which writes the line
  to the scratchpad in the next cycle or reports the error. So a corrupt group raises
  ``CORRUPT_DATA`` before the line at which the fault is found is written (trailing bytes:
  after the row's last line), as every line before it has been written first.

Timing: no path runs from the read data or the scratchpad port's ``ready`` through a
window's shifter. Uncompressed lines are popped from a :class:`LineWindow`, whose buffer is
updated from registers only (a pop is applied to it one cycle late, and its window shows the
held bytes shifted by ``lb`` meanwhile), so the pop decision drives a flag, not the buffer;
whether a line's bytes are held is a register of it (``level_ge_n``, level >= ``lb``).
Compressed lines are popped from a :class:`ByteWindow` only ``2 + mask_bytes + cols`` bytes
wide (the uncompressed window is ``4*cols`` bytes: the compressed one, whose buffer follows the
pop decision in the cycle, is the one whose width the late signals fan out over): the early pop
is an option selected by registers, the late pop (the mask's popcount) is kept in registers by the
window, and the decode stage's checks of a line against its popcount are bits selected by it from
thermometer codes of registers. The walkers
keep the next rows' slots (the unpacker only their low bits), their memory limits
(``DRAM - 2 - slot`` as its low ``log2(DRAM)`` bits and a sticky sign: ``DRAM`` is a power of
two, so a limit >= 0 fits and a step by the stride goes negative exactly when the narrow
subtraction borrows), the rows left as flags, a row's beats (two candidates per row length,
precomputed at CHECK, chosen by a 3-bit carry) and whether a row's payload goes on past its
count beat(s) (stored with the count) in registers or FIFO entries, and the command walker a
"few beats left" flag, so their decisions need no address adder and no compare after an
adder; the start values (row 1's slot, rows 0-2's limits) are summed at CHECK, one adder per
cycle. The stash and the unpacker's count queue have registered outputs, so the drain of
count beats into the window starts from registers. The writer's position, line address, next
data row's memory check and payload left are kept lazily (the values after a move are
registered every cycle and a registered "moved" bit selects them), so its late decisions
(advance, take) enable a few flags, not ~100 flip-flops. ``halted`` (an error is set) is a
register of its own, and ``done`` follows from registers only.
Latency: one cycle more for the line register and one for the window's input
register than a single-stage writer (the :class:`LineWindow`'s late pop adds none: its window
shows the bytes held after the pop); the start-time checks take four cycles and an
uncompressed transfer issues its first read in the cycle after them, so an uncompressed LOAD
takes as many cycles as before; a compressed one waits two cycles more for each count (the
count stage and the queues' registered outputs) where the data has not already arrived ahead.
One line per cycle as before.

Start-time checks: ``SPAD_RANGE`` then ``DRAM_RANGE`` (uncompressed; compressed rows are checked
per row: count bytes, then count <= capacity, then the ``2 + N`` bytes). A read beat with
``err`` gives ``DRAM_RANGE``. Errors are sticky; the engine then stops writing, accepts no
instruction and drains read data.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sparrow.config import HwConfig
from sparrow.errors import ErrorCode
from sparrow.isa import Spad

from .engine_port import engine_control_members
from .membus import MemBusSignature
from .spad_port import WritePortSignature, acc_line, act_line
from .zero_codec import ZeroExpand, mask_bytes, popcount, shl_bytes, shl_units, take_bytes, take_units

__all__ = ["ByteWindow", "LineWindow", "LoadEngine"]

#: Width of internal DRAM address arithmetic (28-bit field + strides without wrap-around).
ADDR_W = 32


def push_layout(in_bytes: int) -> data.StructLayout:
    return data.StructLayout({"data": 8 * in_bytes, "off": range(in_bytes), "n": range(in_bytes + 1)})


def _input_register(m, push, ib, room):
    """The windows' input register: a pushed beat's useful bytes ``[off, off+n)``, aligned to byte
    0 (``pend``, ``pend_n`` of them, valid ``pend_v``), merged behind the held bytes in a cycle with
    ``room`` (``merge``); ``push.ready`` when it is empty or merged. Returns
    ``(pend, pend_n, pend_v, merge)``; the caller clears ``pend_v`` (a later statement wins)."""
    pend = Signal(8 * ib, name="pend")
    pend_n = Signal(range(ib + 1), name="pend_n")
    pend_v = Signal(name="pend_v")
    merge = Signal(name="merge")
    m.d.comb += [merge.eq(pend_v & room), push.ready.eq(~pend_v | merge)]
    p = push.payload
    with m.If(push.valid & push.ready):
        m.d.sync += [pend.eq(take_bytes(p.data >> (p.off * 8), p.n, ib)), pend_n.eq(p.n), pend_v.eq(1)]
    with m.Elif(merge):
        m.d.sync += pend_v.eq(0)
    return pend, pend_n, pend_v, merge


class ByteWindow(wiring.Component):
    """Byte realigner: bytes pushed from aligned beats, a window of the oldest bytes, variable pops.

    Timing: a pushed beat is aligned (``data >> 8*off``, bytes from ``n`` up zeroed) into an
    input register and merged behind the held bytes in the next cycle, so no path runs from
    ``push`` to the buffer; ``push.ready`` depends on registers only (not on this cycle's pop).
    The bytes removed in a cycle are ``pop + pop_late`` (when ``pop_en``). The early part
    ``pop`` is one of a few options (``pop_opts[pop_sel]``, ``pop_sel`` from registers): the
    buffer is shifted by each option and the result selected, so an option wired to a constant
    costs no shifter, and the merge position after the early pop (``level - option``) is kept
    in a register per option. ``pop_late`` shifts the held bytes by ``0..late_bytes`` more and
    is subtracted from that merge position (a small subtraction, then the merge shifter, in
    parallel with that shift), so it should come from registers or a few gates (the LOAD
    engine's comes from ``counts``). ``pop_en`` is the late input: it only selects between the
    popped and the kept buffer, levels and codes.

    Parameters
    ----------
    in_bytes : int
        Bytes per pushed beat (the memory port width).
    win_bytes : int
        Bytes visible in ``window`` (the largest ``pop + pop_late``).
    late_bytes : int
        Largest ``pop_late`` (>= 0).
    early_opts : int
        Number of early pop options (>= 1).
    count_bits : int
        Width of the bit fields whose popcounts ``counts`` gives (0: none). The popcount of each
        held byte's low ``min(count_bits, 8)`` bits is kept in a register beside the byte and
        moves with it (the input register's counts are formed as a beat is pushed), so a count
        is a register (or a sum of ``count_bits / 8`` of them), not a popcount after the buffer.
    count_at : tuple of int
        Byte positions in ``window`` of the fields ``counts`` gives (each field must lie inside
        the window; a field wider than 8 bits starts on a byte and spans whole bytes).

    Ports
    -----
    push : In(stream {data, off, n})
        Append bytes ``[off, off+n)`` of ``data``. ``ready`` when the input register is empty or
        is merged this cycle (merged when at most ``win_bytes`` bytes are held; capacity
        ``win_bytes + in_bytes`` plus the input register).
    pop_opts : In(array of early_opts x range(win_bytes + 1))
        The early pop options. The merge positions are registered from them, so a pop uses the
        positions computed with the values of the cycle before: change an option only when no
        pop follows in the next cycle (e.g. while ``clear`` is held).
    pop_sel : In(range(max(early_opts, 2)))
        The option that is the early part of the bytes removed this cycle (< ``early_opts``;
        ignored with one option).
    pop_late : In(range(max(late_bytes, 1) + 1))
        Second part of the bytes removed (<= ``late_bytes``; ignored when ``late_bytes`` is 0).
    pop_en : In(1)
        Remove ``pop_opts[pop_sel] + pop_late`` bytes (must be <= ``level``) this cycle.
    window : Out(8*win_bytes)
        The oldest ``win_bytes`` bytes (byte 0 oldest); bytes at and above ``level`` are zero.
    level : Out(range(cap + 1))
        Bytes held (not counting the input register).
    level_ge : Out(win_bytes + 1)
        Thermometer code of ``level`` (bit ``j`` set when ``level >= j``), a register, so
        compares of the level with constants or registers need no carry chain.
    level_ge_opt0 : Out(1)
        ``level >= pop_opts[0]`` and ``pop_opts[0] <= win_bytes`` (``level_ge`` bit
        ``pop_opts[0]``), a register formed with the level from the option's value of the cycle
        before, so it needs no bit select by the option (valid while ``pop_opts[0]`` is held).
    clear : In(1)
        Empty the window and the input register (takes precedence).
    counts : Out(array of len(count_at) x range(count_bits + 1))
        Element ``i``: the number of set bits in ``window[8*count_at[i] : 8*count_at[i] +
        count_bits]`` (present only with ``count_bits``).
    """

    def __init__(self, in_bytes: int, win_bytes: int, late_bytes: int = 0, early_opts: int = 1,
                 count_bits: int = 0, count_at=()):
        if not isinstance(in_bytes, int) or in_bytes < 1:
            raise ValueError(f"in_bytes must be a positive int, not {in_bytes!r}")
        if not isinstance(win_bytes, int) or win_bytes < 1:
            raise ValueError(f"win_bytes must be a positive int, not {win_bytes!r}")
        if not isinstance(late_bytes, int) or late_bytes < 0:
            raise ValueError(f"late_bytes must be a non-negative int, not {late_bytes!r}")
        if not isinstance(early_opts, int) or early_opts < 1:
            raise ValueError(f"early_opts must be a positive int, not {early_opts!r}")
        if not isinstance(count_bits, int) or count_bits < 0 or (count_bits > 8 and count_bits % 8):
            raise ValueError(f"count_bits must be 0..8 or a positive multiple of 8, not {count_bits!r}")
        count_at = tuple(count_at)
        if count_at and not count_bits:
            raise ValueError(f"count_at {count_at!r} needs a count_bits > 0")
        for h in count_at:
            if not isinstance(h, int) or h < 0 or 8 * h + count_bits > 8 * win_bytes:
                raise ValueError(f"count_at entries must be byte positions of {count_bits}-bit fields "
                                 f"inside the {win_bytes}-byte window, not {h!r}")
        self.in_bytes, self.win_bytes, self.late_bytes = in_bytes, win_bytes, late_bytes
        self.early_opts = early_opts
        self.count_bits, self.count_at = count_bits, count_at
        self.cap = in_bytes + win_bytes
        counts = {"counts": Out(data.ArrayLayout(range(count_bits + 1), len(count_at)))} if count_at else {}
        super().__init__(
            {
                **counts,
                "push": In(stream.Signature(push_layout(in_bytes))),
                "pop_opts": In(data.ArrayLayout(range(win_bytes + 1), early_opts)),
                # at least one bit each (a zero-width port would be a [-1:0] vector in Verilog)
                "pop_sel": In(range(max(early_opts, 2))),
                "pop_late": In(range(max(late_bytes, 1) + 1)),
                "pop_en": In(1),
                "window": Out(8 * win_bytes),
                "level": Out(range(self.cap + 1)),
                "level_ge": Out(win_bytes + 1),
                "level_ge_opt0": Out(1),
                "clear": In(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        ib, cap = self.in_bytes, self.cap
        buf = Signal(8 * cap)
        cnt = Signal(range(cap + 1))
        # thermometer code of cnt (bit j: cnt >= j), a register set with cnt from compares made
        # beside its adders; room (cnt <= cap - ib) is one of its bits, so the merge decision
        # that gates the input register is one gate after registers
        cnt_ge = Signal(cap + 1, init=1)
        room = Signal()
        m.d.comb += [
            room.eq(~cnt_ge[cap - ib + 1]),
            self.level_ge.eq(cnt_ge[: self.win_bytes + 1]),
            self.window.eq(buf[: 8 * self.win_bytes]),
            self.level.eq(cnt),
        ]
        # input register: the pushed beat's useful bytes, aligned to byte 0
        pend, pend_n, pend_v, merge = _input_register(m, self.push, ib, room)

        new = Signal(8 * ib)
        m.d.comb += new.eq(Mux(merge, pend, 0))
        # per option: the buffer shifted by it, and the merge position after it (cnt - option,
        # registered with cnt; wraps if unused). After reset cnt is 0, and so is any option a
        # pop may use then (the pop must not exceed the level).
        opts = [self.pop_opts[i] for i in range(self.early_opts)]
        at_r = [Signal(range(cap + 1), name=f"at_pop{i}") for i in range(self.early_opts)]
        sel = self.pop_sel
        late = self.pop_late if self.late_bytes else Const(0, 1)  # 0 when no late pop

        def pick(values):
            out = values[0]
            for i in range(1, len(values)):
                out = Mux(sel == i, values[i], out)
            return out

        at_pop = Signal(range(cap + 1))  # merge position after the early pop
        # after a pop the new bytes land at at_pop - pop_late: a small subtraction in front of
        # the merge shifter, in parallel with the late shift of the held bytes (timing: the
        # merge shifter followed by the late shifter, in series, was the block's critical path;
        # pop_late comes from registers in the LOAD engine)
        at_late = Signal(range(cap + 1))
        m.d.comb += [at_pop.eq(pick(at_r)), at_late.eq(at_pop - late)]

        def moved(lanes, new_lanes, lw, name):
            """A buffer of ``lw``-bit lanes, one per held byte, with ``new_lanes`` merged behind:
            (kept, popped), its next value without and with a pop (the bytes, and the counts kept
            beside them, move alike)."""
            kept, popped = Signal(lw * cap, name=f"{name}_kept"), Signal(lw * cap, name=f"{name}_popped")
            m.d.comb += [
                kept.eq(lanes | shl_units(new_lanes, cnt, cap, lw)),
                popped.eq((pick([lanes >> (o * lw) for o in opts]) >> (late * lw))
                          | shl_units(new_lanes, at_late, cap, lw)),
            ]
            return kept, popped

        kept, popped = moved(buf, new, 8, "buf")
        # the next cnt and merge positions: each sum is formed from registers before the late
        # pop_late is subtracted and pop_en selects, so neither meets an adder after them.
        # After a pop the next cnt is at_pop + merged bytes - pop_late: the sum and its thermometer
        # code (compares with constants) are formed per option from registers (at_r[i] + pend_n),
        # and pop_sel selects after them, so it meets no adder or compare (timing: pop_sel comes
        # from the writer's registers through a few gates, and the level code is a late input of
        # the writer's decisions); the code is then shifted down by pop_late.
        # Each sum and its code are formed for both merge outcomes (+ pend_n and + 0) from
        # registers, and merge selects after them (timing: merge ran into the adders).
        early_w = cap + 1 + self.late_bytes

        def therm(v, width):
            return Cat(Const(1, 1), *[v >= j for j in range(1, width)])

        def merged(name, base, width):
            """(base + the merged bytes, its thermometer code of ``width`` bits), merge selecting last."""
            with_p = Signal(range(2 * cap + 1), name=f"{name}_p")
            val, ge = Signal(range(2 * cap + 1), name=name), Signal(width, name=f"{name}_ge")
            m.d.comb += [with_p.eq(base + pend_n),
                         val.eq(Mux(merge, with_p, base)),
                         ge.eq(Mux(merge, therm(with_p, width), therm(base, width)))]
            return val, ge

        sums, ges = zip(*[merged(f"early_n{i}", a, early_w) for i, a in enumerate(at_r)])
        early_n = Signal(range(2 * cap + 1))
        kept_n, kept_ge = merged("kept_n", cnt, cap + 1)
        m.d.comb += early_n.eq(pick(sums))
        early_ge = Signal(early_w)
        m.d.comb += early_ge.eq(pick(ges))
        # level >= pop_opts[0], registered with cnt: after a pop, per pop_late value l the
        # early sums' compares with opts[0] + l (from registers), selected by pop_sel, then l
        ge0 = Signal()
        ge0_ok = Signal()  # bit opts[0] of level_ge exists
        m.d.comb += self.level_ge_opt0.eq(ge0)
        if (1 << len(opts[0])) - 1 > self.win_bytes:
            m.d.comb += ge0_ok.eq(opts[0] <= self.win_bytes)
        else:  # every value fits (a compare would be constant)
            m.d.comb += ge0_ok.eq(1)
        ge0_pop = Cat(*[pick([s >= opts[0] + j for s in sums]) for j in range(self.late_bytes + 1)])
        with m.If(self.clear):
            m.d.sync += ge0.eq(ge0_ok & (opts[0] == 0))
        with m.Elif(self.pop_en):
            m.d.sync += ge0.eq(ge0_ok & ge0_pop.bit_select(late, 1))
        with m.Else():
            m.d.sync += ge0.eq(ge0_ok & (kept_n >= opts[0]))
        with m.If(self.clear):
            m.d.sync += [buf.eq(0), pend_v.eq(0), cnt.eq(0), cnt_ge.eq(1)]
            m.d.sync += [a.eq(-o) for a, o in zip(at_r, opts)]
        with m.Elif(self.pop_en):
            m.d.sync += [buf.eq(popped), cnt.eq(early_n - late), cnt_ge.eq(early_ge >> late)]
            m.d.sync += [a.eq(pick([s - o for s in sums]) - late) for a, o in zip(at_r, opts)]
        with m.Else():
            m.d.sync += [buf.eq(kept), cnt.eq(kept_n), cnt_ge.eq(kept_ge)]
            m.d.sync += [a.eq(kept_n - o) for a, o in zip(at_r, opts)]

        if self.count_at:
            # Per-byte popcounts (of each byte's low cb bits), one lane of lw bits per byte,
            # moved exactly like the bytes: so a count is a register, not a popcount of the
            # buffer in front of the pop decision and the late shift that follow from it (timing:
            # buffer -> popcount -> pop -> late shift -> buffer was the compressed loop).
            cb = min(self.count_bits, 8)
            # lanes of a power-of-two width, so moving them by a variable number of lanes is a
            # shifter, not a multiply (a 3-bit lane put a DSP multiplier into the pop loop)
            lw = 1 << (cb.bit_length() - 1).bit_length()
            p = self.push.payload
            beat_c = Cat(*[popcount(p.data[8 * i : 8 * i + cb])[:lw] for i in range(ib)])
            cbuf = Signal(lw * cap)
            pend_c = Signal(lw * ib)
            with m.If(self.push.valid & self.push.ready):
                m.d.sync += pend_c.eq(take_units(beat_c >> (p.off * lw), p.n, ib, lw))
            new_c = Signal(lw * ib)
            m.d.comb += new_c.eq(Mux(merge, pend_c, 0))
            kept_c, popped_c = moved(cbuf, new_c, lw, "cbuf")
            with m.If(self.clear):
                m.d.sync += cbuf.eq(0)
            with m.Elif(self.pop_en):
                m.d.sync += cbuf.eq(popped_c)
            with m.Else():
                m.d.sync += cbuf.eq(kept_c)
            nb = max(1, self.count_bits // 8)
            for i, h in enumerate(self.count_at):
                terms = [cbuf[lw * j : lw * j + lw] for j in range(h, h + nb)]
                total = terms[0]
                for t in terms[1:]:
                    total = total + t
                m.d.comb += self.counts[i].eq(total)
        return m


class LineWindow(wiring.Component):
    """Byte realigner for pops of a fixed size: bytes pushed from aligned beats, a window of the
    oldest bytes, pops of ``pop_n`` bytes decided late in the cycle (uncompressed lines).

    Timing: as in :class:`ByteWindow`, a pushed beat is aligned into an input register and merged
    behind the held bytes in the next cycle, and ``push.ready`` depends on registers only. A pop is
    applied to the buffer one cycle late: after a pop the buffer still holds the popped bytes in
    front (``lag``, a register) and ``window`` shows it shifted by ``pop_n``; the buffer's next
    value (the held bytes, shifted by ``pop_n`` when ``lag`` is set, with the input register
    merged behind them) is formed from registers only. So ``pop_en`` drives the ``lag`` flag and
    the level's flags (a few compares formed from registers, selected by it), not the
    ``8*(in_bytes + win_bytes)`` flip-flops of the buffer.

    Parameters
    ----------
    in_bytes : int
        Bytes per pushed beat (the memory port width).
    win_bytes : int
        Bytes visible in ``window`` (the largest ``pop_n``).

    Ports
    -----
    push : In(stream {data, off, n})
        Append bytes ``[off, off+n)`` of ``data``. ``ready`` when the input register is empty or
        is merged this cycle (merged when at most ``win_bytes`` bytes are held; capacity
        ``win_bytes + in_bytes`` plus the input register).
    pop_n : In(range(win_bytes + 1))
        Bytes a pop removes. The flags below are registered with the value of the cycle before,
        so change it only when no pop follows in the next cycle (e.g. while ``clear`` is held).
    pop_en : In(1)
        Remove ``pop_n`` bytes (must be <= ``level``) this cycle.
    window : Out(8*win_bytes)
        The oldest ``win_bytes`` bytes (byte 0 oldest); bytes at and above ``level`` are zero.
    level : Out(range(cap + 1))
        Bytes held (not counting the input register).
    level_ge_n : Out(1)
        ``level >= pop_n``, a register.
    clear : In(1)
        Empty the window and the input register (takes precedence).
    """

    def __init__(self, in_bytes: int, win_bytes: int):
        if not isinstance(in_bytes, int) or in_bytes < 1:
            raise ValueError(f"in_bytes must be a positive int, not {in_bytes!r}")
        if not isinstance(win_bytes, int) or win_bytes < 1:
            raise ValueError(f"win_bytes must be a positive int, not {win_bytes!r}")
        self.in_bytes, self.win_bytes = in_bytes, win_bytes
        self.cap = in_bytes + win_bytes
        super().__init__(
            {
                "push": In(stream.Signature(push_layout(in_bytes))),
                "pop_n": In(range(win_bytes + 1)),
                "pop_en": In(1),
                "window": Out(8 * win_bytes),
                "level": Out(range(self.cap + 1)),
                "level_ge_n": Out(1),
                "clear": In(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        ib, wb, cap = self.in_bytes, self.win_bytes, self.cap
        n = self.pop_n
        buf = Signal(8 * cap)  # bytes beyond the held ones (and the popped ones when lag) are zero
        lag = Signal()  # the last cycle popped: buf's first pop_n bytes are gone
        cnt = Signal(range(cap + 1))  # bytes held (after the pops)
        room = Signal(init=1)  # cnt <= win_bytes (a register)
        ge_n = Signal()  # cnt >= pop_n (a register)
        pend, pend_n, pend_v, merge = _input_register(m, self.push, ib, room)
        held = Signal(8 * cap)  # the held bytes, oldest at byte 0
        m.d.comb += [
            held.eq(Mux(lag, buf >> (n * 8), buf)),
            self.window.eq(held[: 8 * wb]),
            self.level.eq(cnt),
            self.level_ge_n.eq(ge_n),
        ]
        # the next level is cnt + merged bytes, less pop_n after a pop: its flags are compares
        # of both sums (from registers) with both thresholds, selected by merge, then pop_en
        wide = range(2 * cap + 2)
        summed = Signal(wide)
        m.d.comb += summed.eq(cnt + pend_n)

        def flag(cmp):
            return Mux(merge, cmp(summed), cmp(cnt))

        with m.If(self.clear):
            m.d.sync += [buf.eq(0), lag.eq(0), pend_v.eq(0), cnt.eq(0), room.eq(1), ge_n.eq(n == 0)]
        with m.Else():
            m.d.sync += [
                buf.eq(held | shl_bytes(Mux(merge, pend, 0), cnt, cap)),
                lag.eq(self.pop_en),
                cnt.eq(Mux(merge, summed, cnt) - Mux(self.pop_en, n, 0)),
            ]
            with m.If(self.pop_en):
                m.d.sync += [room.eq(flag(lambda v: v <= wb + n)), ge_n.eq(flag(lambda v: v >= 2 * n))]
            with m.Else():
                m.d.sync += [room.eq(flag(lambda v: v <= wb)), ge_n.eq(flag(lambda v: v >= n))]
        return m


def _clog2(n):
    return (n - 1).bit_length()


class LoadEngine(wiring.Component):
    """The LOAD engine (see module docstring).

    Parameters
    ----------
    cfg : HwConfig

    Ports
    -----
    instr, done, busy, error
        Engine control (``hdl/engine_port.py``); only LOAD instructions arrive.
    bus : Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes))
        Membus master (reads only; ``wdata`` idle, ``wresp`` ignored).
    act_wr, wgt_wr, acc_wr : Out(WritePortSignature)
        Scratchpad write ports (lines of ``act_line(cols)``, ``act_line(cols)``, ``acc_line(cols)``).
    bytes, bytes_raw : Out(32)
        Bus bytes per the spec (uncompressed ``LB`` per line; compressed ``2 + N`` per row) and
        the uncompressed equivalent (``rows*row_lines*LB``), accumulated as lines land.
    busy_cycles : Out(32)
        Cycles with an instruction in progress.
    stall_cycles : Out(32)
        Busy cycles in which nothing moved (no command, read beat or line write accepted).
    """

    def __init__(self, cfg):
        if not isinstance(cfg, HwConfig):
            raise ValueError(f"cfg must be a sparrow.config.HwConfig, not {type(cfg).__name__}")
        self.cfg = cfg
        c = cfg.cols
        super().__init__(
            {
                **engine_control_members(),
                "bus": Out(MemBusSignature(cfg.dram_addr_bits, cfg.mem_bytes)),
                "act_wr": Out(WritePortSignature(cfg.act_addr_bits, act_line(c))),
                "wgt_wr": Out(WritePortSignature(cfg.wgt_addr_bits, act_line(c))),
                "acc_wr": Out(WritePortSignature(cfg.acc_addr_bits, acc_line(c))),
                "bytes": Out(32),
                "bytes_raw": Out(32),
                "busy_cycles": Out(32),
                "stall_cycles": Out(32),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C, MB = cfg.cols, cfg.mem_bytes
        LMB = _clog2(MB)
        MBK = mask_bytes(C)
        ACCW = 4 * C
        CWIN = 2 + MBK + C  # largest compressed pop: a count + a compressed line
        WIN = max(ACCW, CWIN)  # largest pop: a line, or a count + a compressed line
        DRAM = cfg.dram_bytes

        ins = self.instr.payload.body.load

        # ---- latched instruction --------------------------------------------------------------
        spad = Signal(Spad)
        spad_addr = Signal(14)
        dram_addr = Signal(ADDR_W)
        rows = Signal(10)
        rl = Signal(10)
        stride = Signal(16)
        lb = Signal(range(ACCW + 1))
        pt, pb, pl, pr = (Signal(4, name=n) for n in ("pt", "pb", "pl", "pr"))
        comp = Signal()
        # derived at CHECK
        cap = Signal(16)  # rl*(MBK + C), clamped to 0xffff (a count has 16 bits)
        prow_t = Signal(11)  # padded rows
        pcol_t = Signal(11)  # padded lines per row
        pt_rows = Signal(11)
        pl_rl = Signal(11)
        rlb = Signal(15)  # rl*lb (registered at ck 0)
        dram_a = Signal(ADDR_W + 1)  # dram_addr + rl*lb: the end of row 0 (registered at ck 1)

        err = Signal(ErrorCode)
        m.d.comb += self.error.eq(err)
        halted = Signal()  # err != NONE, a register of its own (set with err; it fans out widely)

        LW = max(1, LMB)  # width of a byte offset in a beat
        LD = DRAM.bit_length() - 1  # DRAM is a power of two

        def lim_step(v, neg, amount):
            """Statements that move a memory limit (``DRAM - 2 - slot``, kept as its low ``LD`` bits
            ``v`` and a sticky sign ``neg``) to the slot ``amount`` bytes on: a limit >= 0 is below
            ``DRAM``, so it goes negative exactly when the narrow subtraction borrows."""
            d = Signal(signed(LD + 2), name=f"{v.name}_step")
            m.d.comb += d.eq(v - amount)
            return [v.eq(d[:LD]), neg.eq(neg | d[-1])]

        # precomputed at CHECK (one add per step), so the walkers start from registers: the slots
        # of rows 1 (a1) and the memory limits DRAM - 2 - slot of rows 0..2 (l0..l2, negative when
        # the row's count bytes lie beyond memory); a row's beats from a byte offset lo are
        # rs_hi + carry (rs_hi1 when lo + rs_lo >= MB), the last ending at byte (lo + rs_lo) % MB + 1
        a1 = Signal(ADDR_W)
        l0, l1, l2 = (Signal(signed(ADDR_W + 2), name=n) for n in ("l0", "l1", "l2"))
        rs_hi, rs_hi1 = Signal(16, name="rs_hi"), Signal(16, name="rs_hi1")  # (row_bytes - 1) >> LMB, + 1
        rs_lo = Signal(LW)  # (row_bytes - 1) % MB
        rs_z0 = Signal()  # rs_hi == 0
        rs_le0, rs_le1 = Signal(name="rs_le0"), Signal(name="rs_le1")  # rs_hi, rs_hi1 <= max_burst - 1

        # ---- submodules -----------------------------------------------------------------------
        # two windows, one per kind of transfer (only the instruction's one is pushed): lines of
        # lb bytes, popped on a decision from registers (uncompressed), and a narrow one for a
        # mask or a count and a mask (early options), then the mask's popcount (late)
        m.submodules.uwin = uwin = LineWindow(MB, ACCW)
        # the mask's popcount is kept by the window (count registers) when it is deeper than one
        # LUT level (cols > 4); a popcount of 4 bits is one LUT4 per output bit, and the count
        # lanes would only add a wide fan-out to the pop (measured: small LOAD 84.9 -> 81.3 MHz)
        kept_counts = C > 4
        m.submodules.cwin = cwin = ByteWindow(MB, CWIN, late_bytes=C, early_opts=2,
                                              count_bits=C if kept_counts else 0,
                                              count_at=(0, 2) if kept_counts else ())
        push_valid, push_ready = Signal(), Signal()
        push = Signal(push_layout(MB))
        for w, on in ((uwin, ~comp), (cwin, comp)):
            m.d.comb += [w.push.payload.eq(push), w.push.valid.eq(push_valid & on)]
        m.d.comb += push_ready.eq(Mux(comp, cwin.push.ready, uwin.push.ready))
        m.submodules.expand = expand = ZeroExpand(C)

        # ---- command walker -------------------------------------------------------------------
        # Compressed rows are fetched with one row of look-ahead on the counts: the order of
        # reads is C0 C1 P0 C2 P1 C3 ... (Cy: beats holding row y's count, Py: the rest of its
        # 2 + N bytes), so the count of the next row is known before its payload is needed.
        CW_IDLE, CW_ROW, CW_RANGE, CW_WAITN, CW_STOP, CW_FIRST, CW_AHEAD = range(7)
        RET_NEXT, RET_AHEAD, RET_WAITN = range(3)
        cw_st = Signal(range(7))
        cw_ret = Signal(range(3))
        cw_rl = Signal(10)  # rows after the current one
        cw_end = Signal()  # every row is issued (the current row is past the last)
        cw_more = Signal()  # cw_rl >= 1
        cw_base = Signal(ADDR_W)
        # the range being issued: its next beat (a beat address) and the beats left after it;
        # the beats to the 4 KiB boundary are the inverted low bits of cw_cur, so a burst's
        # length needs no address subtraction (only small compares)
        REM_W = 22  # beats - 1 of a range: (MB - 1 + 2**20) >> LMB fits
        cw_cur = Signal(ADDR_W - LMB)
        cw_rem = Signal(REM_W)
        # counts: unpacker -> walker (wq) and unpacker -> its own drain step (uq), with what each
        # needs of them computed in the count stage (below), so neither adds after the read:
        # more: the payload goes on past the count beat(s) (n > count_room(slot)); pm1: the beats
        # of the payload after the count beat(s) - 1 (when more), ple: pm1 <= max_burst - 1,
        # pe: the bytes of its last beat, plast: pm1 == 0; dn: the bytes of the last count beat
        # that belong to the group (from the count's first byte or the beat's start)
        wq_layout = data.StructLayout({"ok": 1, "more": 1, "pm1": 16, "ple": 1})
        uq_layout = data.StructLayout({"ok": 1, "more": 1, "pm1": 16, "pe": range(MB + 1), "plast": 1,
                                       "dn": range(MB + 1)})
        m.submodules.wq = wq = fifo.SyncFIFO(width=wq_layout.size, depth=4)
        m.submodules.uq = uq = fifo.SyncFIFOBuffered(width=uq_layout.size, depth=4)
        wq_out = data.View(wq_layout, wq.r_data)
        uq_out = data.View(uq_layout, uq.r_data)
        # counts and their checks: unpacker -> writer (registered output)
        # (bad: the count fails a check, cap_bad: the capacity one; so DRAM_RANGE is bad & ~cap_bad)
        # ge: the count's compares with the few thresholds the writer needs (small_ge, a
        # thermometer code computed in the count stage)
        TW = MBK + C + 2

        def ge_code(v, base, width):
            """Bit i: ``v >= base + i`` (i < ``width``), a table of the low bits and an OR of the
            rest (no adder or compare)."""
            tb = (base + width - 1).bit_length()
            hi = v[tb:].any() if len(v) > tb else Const(0, 1)
            table = Array(Const(sum(1 << i for i in range(width) if x >= base + i), width) for x in range(1 << tb))
            return Mux(hi, (1 << width) - 1, table[v[:tb]])

        def small_ge(v):
            return ge_code(v, 0, TW)

        xq_layout = data.StructLayout({"n": 16, "cap_bad": 1, "bad": 1, "ge": TW})
        m.submodules.xq = xq = fifo.SyncFIFOBuffered(width=xq_layout.size, depth=8)
        xq_out = data.View(xq_layout, xq.r_data)

        def lo_bits(a):
            return a[:LMB] if LMB else Const(0, 1)

        def count_room(lo):
            """Bytes of the count beat(s) of a slot after its two count bytes (from its low bits
            ``lo``): the row's payload goes on past those beats exactly when its count exceeds this."""
            return Mux(lo == MB - 1, MB - 1, MB - 2 - lo)

        def row_span(lo):
            """(beats - 1, bytes of the last beat, one beat only, beats - 1 <= max_burst - 1) of a
            row's ``row_bytes`` from byte ``lo`` of a beat: two candidates precomputed at CHECK,
            chosen by the carry of a small add."""
            s = Signal(LW + 1, name="rs_sum")
            m.d.comb += s.eq(lo + rs_lo)
            carry = s[LMB] if LMB else Const(0, 1)
            return (Mux(carry, rs_hi1, rs_hi), lo_bits(s) + 1, ~carry & rs_z0, Mux(carry, rs_le1, rs_le0))

        to4k_m1 = Signal(12 - LMB)  # beats to the 4 KiB boundary - 1
        blen = Signal(8)
        m.d.comb += to4k_m1.eq(~cw_cur[: 12 - LMB])
        # cw_rem <= max_burst - 1 is a register (cw_rem_le, set with cw_rem), so the burst length
        # needs one small compare, and whether the burst ends the range none: then cw_rem is
        # small and ends it exactly when it fits before the 4 KiB boundary
        MBU = cfg.max_burst
        cw_rem_le = Signal()
        rem_lo = cw_rem[: max(1, (MBU - 1).bit_length())]  # cw_rem itself when cw_rem_le
        lim = Signal(8)
        cut4k = Signal()  # the burst ends at the 4 KiB boundary
        m.d.comb += [lim.eq(Mux(cw_rem_le, rem_lo, MBU - 1)), cut4k.eq(to4k_m1 < lim)]
        m.d.comb += blen.eq(Mux(cut4k, to4k_m1, lim))
        reach_last = Signal()
        m.d.comb += reach_last.eq(cw_rem_le & (rem_lo <= to4k_m1))
        # after a burst that does not end the range: it ended at the 4 KiB boundary (cut4k), or
        # it was max_burst beats long; both next beats and both remainders are adders from
        # registers, and cut4k selects (no adder after the burst length)
        B4 = 12 - LMB
        nxt_cur = Signal(len(cw_cur))
        nxt_rem = Signal(REM_W)
        m.d.comb += [
            nxt_cur.eq(Mux(cut4k, Cat(Const(0, B4), cw_cur[B4:] + 1), cw_cur + MBU)),
            nxt_rem.eq(Mux(cut4k, cw_rem + cw_cur[:B4] - (1 << B4), cw_rem - MBU)),
        ]
        # the next remainder is <= max_burst - 1: cw_rem <= max_burst + to4k_m1 and cw_rem <=
        # 2*max_burst - 1, the first a small compare (to4k_m1 >= max_burst - 1 makes it follow
        # from the second)
        TB = max(1, (MBU - 1).bit_length())
        RB = (2 * MBU - 1).bit_length()
        nxt_le = Signal()
        m.d.comb += nxt_le.eq((cw_rem <= 2 * MBU - 1)
                              & ((to4k_m1 >= MBU - 1) | (cw_rem[:RB] <= MBU + to4k_m1[:TB])))

        cmd = self.bus.cmd
        m.d.comb += [
            cmd.payload.addr.eq(Cat(Const(0, LMB), cw_cur)),
            cmd.payload.write.eq(0),
            cmd.payload.len.eq(blen),
            cmd.valid.eq((cw_st == CW_RANGE) & ~halted),
        ]
        cmd_fire = Signal()
        m.d.comb += cmd_fire.eq(cmd.valid & cmd.ready)

        # the next row's slot and whether each slot's count bytes lie inside memory are
        # registers, advanced with cw_base; the next row's is kept as its memory limit
        # (DRAM - 2 - slot, low bits and a sticky sign), so advancing it is one narrow subtract
        # whose borrow is the flag, and no 32-bit adder and compare precede the decisions
        cw_ahead = Signal(ADDR_W)  # cw_base + stride
        cw_ok = Signal()  # cw_base + 2 <= DRAM
        cw_l1, cw_l1n = Signal(LD, name="cw_l1"), Signal(name="cw_l1n")  # limit of cw_ahead
        # the beat after the count beat(s) of cw_base, registered from cw_base every cycle (it
        # is used in CW_WAITN, at least two cycles after cw_base moves)
        cw_cend = Signal(ADDR_W - LMB)
        m.d.sync += cw_cend.eq(cw_base[LMB:] + Mux(lo_bits(cw_base) == MB - 1, 2, 1))

        def cw_range(beat, rem_m1, le, ret):
            """Issue the beats from ``beat``; ``rem_m1``: their number - 1, ``le``: rem_m1 <= max_burst - 1."""
            return [cw_cur.eq(beat), cw_rem.eq(rem_m1), cw_rem_le.eq(le), cw_ret.eq(ret), cw_st.eq(CW_RANGE)]

        def cw_count(addr, ret):
            """Range of a slot's two count bytes."""
            return cw_range(addr[LMB:], lo_bits(addr) == MB - 1, 1, ret)

        def cw_row(addr, ret):
            """Range of an uncompressed row from ``addr``."""
            rm1, _, _, le = row_span(lo_bits(addr))
            return cw_range(addr[LMB:], rm1, le, ret)

        cw_next = [cw_rl.eq(cw_rl - 1), cw_end.eq(cw_rl == 0), cw_more.eq(cw_rl >= 2),
                   cw_base.eq(cw_ahead), cw_ahead.eq(cw_ahead + stride),
                   cw_ok.eq(~cw_l1n), *lim_step(cw_l1, cw_l1n, stride), cw_st.eq(CW_ROW)]

        cw_init = Signal()  # pulsed by the control FSM (at ck 3, from a register) to start the walkers
        cw_go = Signal()
        m.d.sync += cw_go.eq(0)
        m.d.comb += cw_init.eq(cw_go)

        with m.If(cw_init):
            # uncompressed: row 0's range straight away
            m.d.sync += [cw_rl.eq(rows - 1), cw_end.eq(0), cw_more.eq(rows >= 2), cw_base.eq(dram_addr),
                         cw_ahead.eq(a1), cw_ok.eq(~l0[-1]), cw_l1.eq(l1[:LD]), cw_l1n.eq(l1[-1])]
            with m.If(comp):
                m.d.sync += cw_st.eq(CW_FIRST)
            with m.Else():
                m.d.sync += cw_row(dram_addr, RET_NEXT)
        with m.Elif(cw_st == CW_ROW):
            with m.If(cw_end):
                m.d.sync += cw_st.eq(CW_IDLE)
            with m.Elif(~comp):
                m.d.sync += cw_row(cw_base, RET_NEXT)
            with m.Elif(~cw_ok):
                m.d.sync += cw_st.eq(CW_STOP)
            with m.Else():
                m.d.sync += cw_st.eq(CW_AHEAD)
        with m.Elif(cw_st == CW_FIRST):
            with m.If(~cw_ok):
                m.d.sync += cw_st.eq(CW_STOP)
            with m.Else():
                m.d.sync += cw_count(cw_base, RET_AHEAD)
        with m.Elif(cw_st == CW_AHEAD):
            with m.If(cw_more & ~cw_l1n):
                m.d.sync += cw_count(cw_ahead, RET_WAITN)
            with m.Else():
                m.d.sync += cw_st.eq(CW_WAITN)
        with m.Elif(cw_st == CW_RANGE):
            with m.If(cmd_fire):
                m.d.sync += [cw_cur.eq(nxt_cur), cw_rem.eq(nxt_rem), cw_rem_le.eq(cw_rem_le | nxt_le)]
                with m.If(reach_last):
                    with m.Switch(cw_ret):
                        with m.Case(RET_NEXT):
                            m.d.sync += cw_next
                        with m.Case(RET_AHEAD):
                            m.d.sync += cw_st.eq(CW_AHEAD)
                        with m.Case(RET_WAITN):
                            m.d.sync += cw_st.eq(CW_WAITN)
        with m.Elif(cw_st == CW_WAITN):
            m.d.comb += wq.r_en.eq(1)
            with m.If(wq.r_rdy):
                with m.If(~wq_out.ok):
                    m.d.sync += cw_st.eq(CW_STOP)
                with m.Elif(wq_out.more):  # stored with the count (no adder here)
                    m.d.sync += cw_range(cw_cend, wq_out.pm1, wq_out.ple, RET_NEXT)
                with m.Else():
                    m.d.sync += cw_next

        # ---- unpacker -------------------------------------------------------------------------
        UP_IDLE, UP_DATA, UP_RECV, UP_STOP, UP_FIRST, UP_AHEAD, UP_DRAIN = range(7)
        up_st = Signal(range(7))
        up_ret_drain = Signal()  # after RECV: DRAIN (else AHEAD)
        up_rl = Signal(10)  # rows after the current one
        up_m1, up_m2 = Signal(name="up_m1"), Signal(name="up_m2")  # up_rl >= 1, >= 2
        # the row's data in beats: byte offset in the next beat, beats left after it, the end of
        # the last beat, and (registered with them, so the beat's byte count and the step to the
        # next row follow from flags, not from compares after them; timing: the step enables the
        # row registers) whether the next beat is the last and its byte count either way
        up_off = Signal(LW)
        up_bl = Signal(16)
        up_le = Signal(range(MB + 1))
        up_last = Signal(init=1)
        up_nf = Signal(range(MB + 1))  # MB - up_off
        up_nl = Signal(range(MB + 1))  # up_le - up_off

        def up_span(off, bm1, le, last):
            """Statements that set the row's data: ``bm1 + 1`` beats from byte ``off`` of the next
            one, the last ending at byte ``le`` (``last``: bm1 == 0)."""
            return [up_off.eq(off), up_bl.eq(bm1), up_le.eq(le), up_last.eq(last), up_nf.eq(MB - off),
                    up_nl.eq(le - off)]

        def up_row_span(lo):
            bm1, le, last, _ = row_span(lo)
            return up_span(lo, bm1, le, last)

        rc_lo = Signal(LW)  # low bits of the slot whose count is being received
        # the largest count that passes both checks, min(cap, DRAM - 2 - slot) (<= 0xffff as
        # cap is clamped), registered when the count read starts from a register (so a count's
        # pass/fail is one 16-bit compare with the read data, not two compares and a gate)
        rc_lim = Signal(16)
        rc_second = Signal()  # waiting for the count's high byte in the next beat
        rc_nlow = Signal(8)
        dr_left = Signal(2)  # stashed count beats of the current row still to drain
        dr_last = Signal()
        m.d.comb += dr_last.eq(dr_left == 1)

        # stashed count beats, with their first byte and byte count (to the beat's end; the last
        # beat's count comes from uq), read from registers
        stash_layout = data.StructLayout({"data": 8 * MB, "off": range(MB), "nf": range(MB + 1)})
        m.submodules.stash = stash = fifo.SyncFIFOBuffered(width=stash_layout.size, depth=4)
        st_in = data.View(stash_layout, stash.w_data)
        st_out = data.View(stash_layout, stash.r_data)

        rd = self.bus.rdata
        beat_n = Signal(range(MB + 1))
        m.d.comb += beat_n.eq(Mux(up_last, up_nl, up_nf))
        dr_go = Signal()  # the drain can push: a stashed beat, and for the last one its count
        m.d.comb += dr_go.eq(stash.r_rdy & (~dr_last | uq.r_rdy) & ~halted)
        with m.If(up_st == UP_DRAIN):
            # a row's count beats up to the end of its group: the bytes of the last one beyond
            # the group are not pushed
            m.d.comb += [
                push.data.eq(st_out.data),
                push.off.eq(st_out.off),
                push.n.eq(Mux(dr_last, uq_out.dn, st_out.nf)),
                push_valid.eq(dr_go),
                stash.r_en.eq(push_ready & dr_go),
            ]
        with m.Else():
            m.d.comb += [
                push.data.eq(rd.payload.data),
                push.off.eq(up_off),
                push.n.eq(beat_n),
                push_valid.eq(rd.valid & (up_st == UP_DATA) & ~halted),
            ]
        rc_off = Signal(LW)
        m.d.comb += rc_off.eq(Mux(rc_second, 0, rc_lo))
        m.d.comb += [
            st_in.data.eq(rd.payload.data),
            st_in.off.eq(rc_off),
            st_in.nf.eq(MB - rc_off),
            stash.w_en.eq(rd.valid & (up_st == UP_RECV) & xq.w_rdy & ~halted),
        ]
        m.d.comb += rd.ready.eq(
            Mux(up_st == UP_DATA, push_ready, Mux(up_st == UP_RECV, stash.w_rdy & xq.w_rdy, 0)) | halted
        )
        rd_fire = Signal()
        m.d.comb += rd_fire.eq(rd.valid & rd.ready)
        push_fire = Signal()
        m.d.comb += push_fire.eq(push_valid & push_ready)

        # count extraction while receiving count beats. The count lies at byte lo = rc_lo of the
        # beat (lo <= MB - 2), or, for lo = MB - 1, is rc_nlow (the last byte of the previous
        # beat) and byte 0 of this one: one candidate per lo, each checked straight from the read
        # data (its room is a constant), and the register lo selects the results, so no byte
        # select precedes the compares. The count and its checks are registered (the count
        # stage), and what the walker and the drain need of them is computed from those registers
        # in the next cycle, when they enter wq, uq and xq.
        rdd = rd.payload.data
        cands = [Cat(rdd[8 * o : 8 * o + 8], rdd[8 * o + 8 : 8 * o + 16]) for o in range(MB - 1)]
        cands.append(Cat(rc_nlow, rdd[:8]))
        rooms = [MB - 2 - o for o in range(MB - 1)] + [MB - 1]  # count_room of each lo
        cnt_done = Signal()
        m.d.comb += cnt_done.eq(rc_second | (rc_off + 2 <= MB))
        c_val, c_cap_bad, c_bad, c_more = [], [], [], []
        for o, (v, room) in enumerate(zip(cands, rooms)):
            sv = Signal(16, name=f"rc_cand{o}")
            m.d.comb += sv.eq(v)
            c_val.append(sv)
            c_cap_bad.append(sv > cap)
            c_bad.append(sv > rc_lim)
            c_more.append(sv > room)
        cnt_push = Signal()  # a row's count is complete: into the count stage
        m.d.comb += cnt_push.eq((up_st == UP_RECV) & rd_fire & ~halted & cnt_done)
        cq_v = Signal()
        cq_n = Signal(16)
        cq_cap_bad, cq_bad, cq_more = Signal(), Signal(), Signal()
        cq_lo = Signal(LW)
        m.d.sync += cq_v.eq(cnt_push & ~halted)
        with m.If(cnt_push):
            m.d.sync += [
                cq_n.eq(Cat(*c_val).word_select(rc_lo, 16)),
                cq_cap_bad.eq(Cat(*c_cap_bad).bit_select(rc_lo, 1)),
                cq_bad.eq(Cat(*c_bad).bit_select(rc_lo, 1)),
                cq_more.eq(Cat(*c_more).bit_select(rc_lo, 1)),
                cq_lo.eq(rc_lo),
            ]
        # payload after the count beat(s): n - room bytes (when more), from byte 0
        cq_x = Signal(signed(18))  # n - room - 1
        cq_pm1 = Signal(16)
        cq_dn = Signal(range(MB + 1))
        m.d.comb += [
            cq_x.eq(cq_n - count_room(cq_lo) - 1),
            cq_pm1.eq(cq_x[LMB:]),
            # the last count beat: from the count (one beat) or byte 0 (two) to the group's end
            cq_dn.eq(Mux(cq_lo == MB - 1, Mux(cq_n + 1 < MB, cq_n + 1, MB),
                         Mux(cq_n + 2 < MB - cq_lo, cq_n + 2, MB - cq_lo))),
        ]
        wqi = data.View(wq_layout, wq.w_data)
        uqi = data.View(uq_layout, uq.w_data)
        xqi = data.View(xq_layout, xq.w_data)
        m.d.comb += [
            wqi.ok.eq(~cq_bad), wqi.more.eq(cq_more), wqi.pm1.eq(cq_pm1), wqi.ple.eq(cq_pm1 <= MBU - 1),
            uqi.ok.eq(~cq_bad), uqi.more.eq(cq_more), uqi.pm1.eq(cq_pm1), uqi.pe.eq(lo_bits(cq_x) + 1),
            uqi.plast.eq(cq_pm1 == 0), uqi.dn.eq(cq_dn),
            xqi.n.eq(cq_n), xqi.cap_bad.eq(cq_cap_bad), xqi.bad.eq(cq_bad), xqi.ge.eq(small_ge(cq_n)),
            wq.w_en.eq(cq_v), uq.w_en.eq(cq_v), xq.w_en.eq(cq_v),
        ]

        # The low bits of the slots of the next two rows and the memory limits of the three
        # (DRAM - 2 - slot: low bits and a sticky sign, negative when the count bytes lie beyond
        # memory) are registers, advanced with the row (only the low bits of a slot are used
        # here), so the row-to-row decisions are flags and the step is narrow adders. The limits
        # clamped to the capacity (rc_lim) are registers too: the first two set at the start
        # (used only then), the third registered from its limit every cycle (used at a row step,
        # two or more cycles after the step before it).
        up_lo, up_lo1, up_lo2 = (Signal(LW, name=n) for n in ("up_lo", "up_lo1", "up_lo2"))
        ul0, ul1, ul2 = (Signal(LD, name=n) for n in ("ul0", "ul1", "ul2"))
        ul0n, ul1n, ul2n = (Signal(name=n) for n in ("ul0n", "ul1n", "ul2n"))
        ulc0, ulc1, ulc2 = (Signal(16, name=n) for n in ("ulc0", "ulc1", "ulc2"))

        def clamp(v):
            return Mux(v > cap, cap, v[:16])

        m.d.sync += ulc2.eq(clamp(ul2))
        up_adv = [up_lo.eq(up_lo1), up_lo1.eq(up_lo2), up_lo2.eq(lo_bits(up_lo2 + stride)),
                  ul0.eq(ul1), ul0n.eq(ul1n), ul1.eq(ul2), ul1n.eq(ul2n), *lim_step(ul2, ul2n, stride),
                  up_rl.eq(up_rl - 1), up_m1.eq(up_m2), up_m2.eq(up_rl >= 3)]

        def drain_beats(lo):
            return Mux(lo + 2 <= MB, 1, 2)

        def recv_count(lo, limc, ret_drain):
            """Statements that start receiving the count of the slot with low bits ``lo``
            (``limc``: its clamped limit); afterwards drain (``ret_drain``) or go on to the
            look-ahead step."""
            return [rc_lo.eq(lo), rc_lim.eq(limc), rc_second.eq(0), up_ret_drain.eq(ret_drain), up_st.eq(UP_RECV)]

        def up_next_row():
            """Move to the next row without a bubble (its look-ahead count read decided here)."""
            with m.If(~up_m1):
                m.d.sync += up_st.eq(UP_IDLE)
            with m.Elif(~comp):
                m.d.sync += [*up_adv, *up_row_span(up_lo1), up_st.eq(UP_DATA)]
            with m.Elif(ul1n):
                m.d.sync += up_st.eq(UP_STOP)
            with m.Else():
                m.d.sync += [*up_adv, dr_left.eq(drain_beats(up_lo1))]
                with m.If(up_m2 & ~ul2n):
                    m.d.sync += recv_count(up_lo2, ulc2, ret_drain=1)
                with m.Else():
                    m.d.sync += up_st.eq(UP_DRAIN)

        with m.If(cw_init):
            lo0 = lo_bits(dram_addr)
            m.d.sync += [
                up_rl.eq(rows - 1), up_m1.eq(rows >= 2), up_m2.eq(rows >= 3),
                up_lo.eq(lo0), up_lo1.eq(lo_bits(a1)), up_lo2.eq(lo_bits(a1 + stride)),
                ul0.eq(l0[:LD]), ul0n.eq(l0[-1]), ul1.eq(l1[:LD]), ul1n.eq(l1[-1]), ul2.eq(l2[:LD]), ul2n.eq(l2[-1]),
                ulc0.eq(clamp(l0[:LD])), ulc1.eq(clamp(l1[:LD])), ulc2.eq(clamp(l2[:LD])),
            ]
            with m.If(comp):
                m.d.sync += up_st.eq(UP_FIRST)
            with m.Else():
                m.d.sync += [*up_row_span(lo0), up_st.eq(UP_DATA)]
        with m.Elif(up_st == UP_FIRST):
            with m.If(ul0n):
                m.d.sync += up_st.eq(UP_STOP)
            with m.Else():
                m.d.sync += recv_count(up_lo, ulc0, ret_drain=0)
        with m.Elif(up_st == UP_AHEAD):
            m.d.sync += dr_left.eq(drain_beats(up_lo))
            with m.If(up_m1 & ~ul1n):
                m.d.sync += recv_count(up_lo1, ulc1, ret_drain=1)
            with m.Else():
                m.d.sync += up_st.eq(UP_DRAIN)
        with m.Elif(up_st == UP_RECV):
            with m.If(rd_fire):
                with m.If(cnt_done):
                    m.d.sync += [rc_second.eq(0), up_st.eq(Mux(up_ret_drain, UP_DRAIN, UP_AHEAD))]
                with m.Else():
                    m.d.sync += [rc_second.eq(1), rc_nlow.eq(rdd[8 * (MB - 1) :])]
        with m.Elif(up_st == UP_DRAIN):
            with m.If(push_fire):
                m.d.sync += dr_left.eq(dr_left - 1)
                with m.If(dr_last):
                    m.d.comb += uq.r_en.eq(1)
                    with m.If(~uq_out.ok):
                        m.d.sync += up_st.eq(UP_STOP)
                    with m.Elif(uq_out.more):
                        # the payload from the beat after the count beat(s)
                        m.d.sync += [*up_span(0, uq_out.pm1, uq_out.pe, uq_out.plast), up_st.eq(UP_DATA)]
                    with m.Else():
                        up_next_row()
        with m.Elif(up_st == UP_DATA):
            with m.If(push_fire):
                with m.If(up_last):
                    up_next_row()
                with m.Else():
                    # the next beat from byte 0
                    m.d.sync += [up_off.eq(0), up_nf.eq(MB), up_nl.eq(up_le), up_bl.eq(up_bl - 1),
                                 up_last.eq(up_bl == 1)]

        # ---- writer ---------------------------------------------------------------------------
        # Two stages. The decode stage (D) walks the padded region in row-major order and, one
        # line per cycle, decides the line from the window and pops its bytes; the line (or the
        # error found at it) goes to the line register (S), which the scratchpad port takes in
        # the next cycle. Compressed rows cost no extra cycle: the count is popped together with
        # the row's first line (the unpacker does not push the count beat's bytes beyond the
        # group); the count itself and its checks come from the unpacker (xq), so D only looks
        # at the mask: the bytes a line pops are ``pop`` (count and mask bytes, from registers)
        # + ``pop_late`` (its non-zero count, a popcount of the mask). D's position in the
        # region (data row/column, last line, end of row, finished) is kept in flags computed
        # a cycle ahead, so the control of the pop comes from registers.
        # A fault found at a line goes to S instead of the line and is reported from there, so
        # every line before it is written first. A trailing-bytes fault is found with the last
        # line, which is written (the fault is at line row_lines), and reported after it.
        # D's position (wx, wy), the line address and the next data row's slot are kept lazily,
        # so that advance (late: it follows the mask's popcount and the port's ready) enables a
        # few flags instead of ~80 flip-flops: the position is the one registered after the last
        # cycle's move (*_n) when D advanced then (w_lag), else the one held (*_h); the address
        # is waddr_r + w_lag and the slot cs_r + cs_lag*stride, the pending increment added in
        # the next cycle whatever happens then (timing: fan-out of advance)
        w_lag = Signal()  # D advanced in the last cycle
        wx_n, wx_h, wy_n, wy_h = (Signal(11, name=n) for n in ("wx_n", "wx_h", "wy_n", "wy_h"))
        wy = Signal(11)
        wx = Signal(11)
        m.d.comb += [wx.eq(Mux(w_lag, wx_n, wx_h)), wy.eq(Mux(w_lag, wy_n, wy_h))]
        waddr_r = Signal(15)
        waddr = Signal(15)
        m.d.comb += waddr.eq(waddr_r + w_lag)
        m.d.sync += [waddr_r.eq(waddr), w_lag.eq(0), wx_h.eq(wx), wy_h.eq(wy)]
        cfirst = Signal()  # next data line is the first of its row (count ahead)
        # the payload bytes left in the row (crem) and their thermometer code (crem_ge) are kept
        # lazily like the position: both values after a taken line are registered every cycle
        # (*_n) and c_lag (a line was taken in the last cycle) selects them, else the ones held
        # (timing: fan-out of the take decision)
        c_lag = Signal()
        crem_n, crem_h = Signal(17, name="crem_n"), Signal(17, name="crem_h")
        crem = Signal(17)
        m.d.comb += crem.eq(Mux(c_lag, crem_n, crem_h))
        # The next data row's slot is r + cs_lag*stride; only whether its count bytes lie beyond
        # memory is kept: of r (cs_b) and of r + stride (cs_l2n, with its memory limit cs_l2, low
        # bits and sticky sign), advanced every cycle D moved past a data row in the cycle before,
        # so the row's flag is a mux of registers and the stride's subtraction runs from
        # registers into a register (timing: it ran through a 32-bit adder and compare)
        cs_lag = Signal()  # D moved past a data row in the last cycle
        cs_b = Signal()
        cs_l2, cs_l2n = Signal(LD, name="cs_l2"), Signal(name="cs_l2n")
        m.d.sync += cs_lag.eq(0)
        with m.If(cs_lag):
            m.d.sync += [cs_b.eq(cs_l2n), *lim_step(cs_l2, cs_l2n, stride)]
        cs_nbad = Signal()  # the next data row's count bytes lie beyond DRAM (slot + 2 > DRAM)
        m.d.comb += cs_nbad.eq(Mux(cs_lag, cs_l2n, cs_b))
        cs_bad = Signal()  # the current data row's count bytes lie beyond DRAM (slot + 2 > DRAM)
        trail_err = Signal()

        finished = Signal()  # wy == prow_t
        row_in = Signal()  # pt <= wy < pt_rows
        col_in = Signal()  # pl <= wx < pl_rl
        last_line = Signal()  # wx == pl_rl - 1
        col_end = Signal()  # wx == pcol_t - 1
        in_data = Signal()
        m.d.comb += in_data.eq(row_in & col_in)
        nwx = Signal(11)
        nwy = Signal(11)
        m.d.comb += [nwx.eq(Mux(col_end, 0, wx + 1)), nwy.eq(Mux(col_end, wy + 1, wy))]
        m.d.sync += [wx_n.eq(nwx), wy_n.eq(nwy)]
        set_err = Signal(ErrorCode)
        w_ready = Signal()
        run = Signal()

        # line register S, and its skid register K: D hands its result to S when S is free and
        # K is empty, else to K (so D goes on while K is empty, a register, not after the port's
        # ready; timing: the port's ready ran into D's pop and so into the window), and S takes
        # K's entry first when it frees; order is kept. Both hold a decode result (d_res):
        # valid, the error found at the line, the line, its address, and the bus and
        # uncompressed bytes it accounts for.
        # (ok: valid without an error, i.e. D advanced past the line; kept so the port's valid is
        # one gate after registers, not behind a decode of err)
        line_layout = data.StructLayout({"valid": 1, "ok": 1, "err": ErrorCode, "line": 8 * ACCW, "addr": 15,
                                         "bytes": range(WIN + 2), "raw": range(ACCW + 1)})
        s_reg = Signal(line_layout)
        k_reg = Signal(line_layout)
        d_res = Signal(line_layout)
        s_valid, s_err, s_line, s_addr, s_bytes, s_raw = (s_reg.valid, s_reg.err, s_reg.line, s_reg.addr,
                                                           s_reg.bytes, s_reg.raw)
        k_valid = k_reg.valid
        wvalid = Signal()
        wfire = Signal()
        s_free = Signal()
        m.d.comb += [
            wvalid.eq(s_reg.ok & ~halted),
            wfire.eq(wvalid & w_ready),
            s_free.eq(~s_valid | wfire),
        ]
        with m.If(s_valid & (s_err != ErrorCode.NONE)):
            m.d.comb += set_err.eq(s_err)

        # decode stage D
        d_go = Signal()
        m.d.comb += d_go.eq(run & ~halted & ~k_valid)
        emit = Signal()
        e_err = Signal(ErrorCode)
        e_line = Signal(8 * ACCW)
        e_bytes = Signal(range(WIN + 2))
        e_raw = Signal(range(ACCW + 1))
        advance = Signal()

        head = Signal(range(3))  # count bytes in front of this line's mask
        rem_eff = Signal(17)  # payload bytes left for this and later lines
        m.d.comb += [
            head.eq(Mux(cfirst, 2, 0)),
            rem_eff.eq(Mux(cfirst, xq_out.n, crem)),
            expand.data.eq(Mux(cfirst, cwin.window[16 : 16 + 8 * (MBK + C)], cwin.window[: 8 * (MBK + C)])),
        ]
        # The line's checks against its non-zero count k (the mask's popcount, kept by the
        # window) are bits selected by k from thermometer codes of registers, instead of
        # compares after it: the line fits when
        # level >= head + MBK + k, and its bytes overrun the row's payload when MBK + k > rem_eff.
        lv_ge = cwin.level_ge  # bit j: level >= j (a register)
        fit_k = Signal(C + 1)  # bit k: level >= head + MBK + k
        rem_ok = Signal(C + 1)  # bit k: rem_eff >= MBK + k
        # rem_eff's compares with the few thresholds D needs (0 .. MBK + C + 1) are a thermometer
        # code: of the queued count (queued with it, computed in the count stage) or a
        # register kept with crem (the codes of rem_eff - MBK - k for every k, selected by k)

        crem_ge_n, crem_ge_h = Signal(TW, name="crem_ge_n"), Signal(TW, name="crem_ge_h")
        crem_ge = Signal(TW)  # bit t: crem >= t
        m.d.comb += crem_ge.eq(Mux(c_lag, crem_ge_n, crem_ge_h))
        rem_ge = Signal(TW)  # bit t: rem_eff >= t
        m.d.comb += [
            rem_ge.eq(Mux(cfirst, xq_out.ge, crem_ge)),
            fit_k.eq(Mux(cfirst, lv_ge[2 + MBK : 3 + MBK + C], lv_ge[MBK : MBK + C + 1])),
            rem_ok.eq(rem_ge[MBK : MBK + C + 1]),
        ]
        # k (the mask's popcount) is kept by the window at both mask positions (byte 0; byte 2
        # after a count), as registers (per-byte counts that move with the bytes), and each late
        # decision is a bit of a register-built vector selected by the count at its position,
        # then by cfirst: fits, over (the line's bytes overrun the row's payload), fits without
        # overrunning (the line is taken) and fits or overruns (D emits: the line or the fault).
        if kept_counts:
            k_at = [cwin.counts[0], cwin.counts[1]]
        else:
            k_at = [popcount(cwin.window[8 * h : 8 * h + C]) for h in (0, 2)]
        k = Signal(range(C + 1))
        n_k = Signal(range(MBK + C + 1))  # the line's encoded bytes
        m.d.comb += [k.eq(Mux(cfirst, k_at[1], k_at[0])), n_k.eq(MBK + k)]

        def by_k(vec):
            return Mux(cfirst, vec.bit_select(k_at[1], 1), vec.bit_select(k_at[0], 1))

        fits = Signal()
        over = Signal()
        take = Signal()
        emit_c = Signal()
        m.d.comb += [
            fits.eq(by_k(fit_k)),
            over.eq(~by_k(rem_ok)),
            take.eq(by_k(fit_k & rem_ok)),
            emit_c.eq(by_k(fit_k | ~rem_ok)),
        ]
        rem_ne = Signal(C + 1)  # bit k: rem_eff != MBK + k (trailing bytes after a row's last line)
        m.d.comb += rem_ne.eq(~(rem_ge[MBK : MBK + C + 1] & ~rem_ge[MBK + 1 : MBK + C + 2]))
        # The next line's code (of rem_eff - MBK - k) is bits k .. k + TW - 1 of a thermometer
        # code of rem_eff at the thresholds MBK .. MBK + C + TW - 1, formed by a table on each
        # source register (the queued count, the two payload-left registers) and selected by
        # the registers that choose among them (timing: a 17-bit subtraction per k, then a
        # compare, was behind cfirst's select; the table needs neither)
        def th_code(v, name):
            """Bit i: ``v >= MBK + i`` (i < C + TW)."""
            code = Signal(C + TW, name=name)
            m.d.comb += code.eq(ge_code(v, MBK, C + TW))
            return code

        rem_th = Signal(C + TW)
        m.d.comb += rem_th.eq(Mux(cfirst, th_code(xq_out.n, "th_xq"),
                                  Mux(c_lag, th_code(crem_n, "th_crem_n"), th_code(crem_h, "th_crem_h"))))
        # The pop amounts only matter when pop_en is set, so they are driven whatever D decides:
        # the early part is an option chosen from registers (lb is constant while the window is
        # in use: it is set before CHECK, which clears the window), the late part the mask's
        # popcount. Only pop_en depends on the scratchpad port's ready and the checks below.
        m.d.comb += [
            uwin.pop_n.eq(lb),
            cwin.pop_opts[0].eq(MBK),
            cwin.pop_opts[1].eq(2 + MBK),
            cwin.pop_sel.eq(cfirst),
            cwin.pop_late.eq(k),
        ]

        # The line, its bytes and raw bytes are D's result at a data line (zero at padding) and
        # matter only when S holds a line without error, so they are driven whatever D decides.
        m.d.comb += [
            e_line.eq(Mux(in_data, Mux(comp, expand.line, take_bytes(uwin.window, lb, ACCW)), 0)),
            e_bytes.eq(Mux(in_data, Mux(comp, head + n_k, lb), 0)),
            e_raw.eq(Mux(in_data, Mux(comp, C, lb), 0)),
        ]
        # D's decisions: everything that follows from registers is decided first (a padding line,
        # an uncompressed line with its bytes held, a compressed row's faults found before its
        # mask is looked at, in priority order, or the wait for its count); the popcount only
        # enters through fits / over / take / emit_c, and the port's ready through d_go, last.
        live = Signal()  # D has a line to decide: not finished, no trailing-bytes fault pending
        u_go = Signal()  # padding line, or an uncompressed line whose bytes are held
        c_err = Signal(ErrorCode)  # a compressed row's fault found from registers
        c_stall = Signal()  # waiting for the row's count
        c_try = Signal()  # a compressed line that depends on its popcount
        m.d.comb += [
            live.eq(~trail_err & ~finished),
            u_go.eq(live & (~in_data | (~comp & uwin.level_ge_n))),  # level >= lb
        ]
        with m.If(cfirst & cs_bad):
            m.d.comb += c_err.eq(ErrorCode.DRAM_RANGE)
        with m.Elif(cfirst & ~xq.r_rdy):
            m.d.comb += c_stall.eq(1)
        with m.Elif(cfirst & xq_out.cap_bad):
            m.d.comb += c_err.eq(ErrorCode.CORRUPT_DATA)
        with m.Elif(cfirst & xq_out.bad):  # not cap_bad: beyond memory
            m.d.comb += c_err.eq(ErrorCode.DRAM_RANGE)
        with m.Elif(~rem_ge[MBK]):  # rem_eff < MBK
            m.d.comb += c_err.eq(ErrorCode.CORRUPT_DATA)
        c_row = Signal()  # a compressed data line is being decided
        c_early = Signal()  # ... and a fault is found from registers
        m.d.comb += [
            c_row.eq(live & in_data & comp),
            c_early.eq(c_row & (c_err != ErrorCode.NONE)),
            c_try.eq(c_row & (c_err == ErrorCode.NONE) & ~c_stall & Mux(cfirst, lv_ge[2 + MBK], lv_ge[MBK])),
        ]
        c_take = Signal()  # a compressed line is taken
        m.d.comb += [
            emit.eq(d_go & (trail_err | u_go | c_early | (c_try & emit_c))),
            advance.eq(d_go & (u_go | (c_try & take))),
            # popping a corrupt line's bytes is harmless: S reports it and nothing moves
            uwin.pop_en.eq(d_go & u_go & in_data),
            cwin.pop_en.eq(d_go & c_try & fits),
            c_take.eq(d_go & c_try & take),
            xq.r_en.eq(c_take & cfirst),
        ]
        with m.If(trail_err):
            m.d.comb += e_err.eq(ErrorCode.CORRUPT_DATA)
        with m.Elif(c_early):
            m.d.comb += e_err.eq(c_err)
        with m.Elif(c_row & over):
            m.d.comb += e_err.eq(ErrorCode.CORRUPT_DATA)
        m.d.sync += [c_lag.eq(0), crem_h.eq(crem), crem_ge_h.eq(crem_ge),
                     crem_n.eq(rem_eff - n_k), crem_ge_n.eq(rem_th.bit_select(k, TW))]
        with m.If(c_take):
            m.d.sync += [c_lag.eq(1), cfirst.eq(last_line)]
            with m.If(last_line & by_k(rem_ne)):
                m.d.sync += trail_err.eq(1)
        with m.If(advance):
            m.d.sync += [
                w_lag.eq(1),
                col_in.eq((nwx >= pl) & (nwx < pl_rl)),
                last_line.eq(nwx == pl_rl - 1),
                col_end.eq(nwx == pcol_t - 1),
                row_in.eq((nwy >= pt) & (nwy < pt_rows)),
                finished.eq(nwy == prow_t),
            ]
            with m.If(col_end & row_in):
                m.d.sync += [cs_lag.eq(1), cs_bad.eq(cs_nbad)]
        # S (when free and K is empty) or K (when S is held and K is empty) takes D's result
        # (without emit it empties), so only the valid bits and the error depend on D's checks,
        # not the enables of the line registers
        # (a line is written exactly when D advances past it: a padding line, or a data line that
        # fits and is within the row's payload; an emitted fault does not advance)
        m.d.comb += [d_res.valid.eq(emit), d_res.ok.eq(advance), d_res.err.eq(e_err), d_res.line.eq(e_line),
                     d_res.addr.eq(waddr), d_res.bytes.eq(e_bytes), d_res.raw.eq(e_raw)]
        # K loads D's result in every cycle it is empty and only its valid bits depend on whether
        # S took the result instead (timing: the port's ready ran into K's wide enable)
        with m.If(~k_valid):
            m.d.sync += k_reg.eq(d_res)
        with m.If(s_free):
            m.d.sync += [s_reg.eq(Mux(k_valid, k_reg, d_res)), k_valid.eq(0), k_reg.ok.eq(0)]

        add_bytes = Signal(range(WIN + 2))
        add_raw = Signal(range(ACCW + 1))
        # registered, so the byte counters count a cycle late (timing: the write handshake ran
        # into the counters' carry chains)
        m.d.sync += [add_bytes.eq(Mux(wfire, s_bytes, 0)), add_raw.eq(Mux(wfire, s_raw, 0))]

        # write ports
        for name, sp, width in (("act_wr", Spad.ACT, C), ("wgt_wr", Spad.WGT, C), ("acc_wr", Spad.ACC, ACCW)):
            port = getattr(self, name)
            sel = spad == sp
            m.d.comb += [
                port.cmd.valid.eq(wvalid & sel),
                port.cmd.payload.addr.eq(s_addr),
                port.cmd.payload.data.eq(s_line[: 8 * width]),
            ]
            with m.If(sel):
                m.d.comb += w_ready.eq(port.cmd.ready)

        # membus write channels unused
        m.d.comb += [self.bus.wdata.valid.eq(0), self.bus.wresp.ready.eq(1)]

        # ---- control --------------------------------------------------------------------------
        depth = Signal(15)
        m.d.comb += depth.eq(
            Mux(spad == Spad.ACT, cfg.act_depth, Mux(spad == Spad.WGT, cfg.wgt_depth, cfg.acc_depth))
        )
        # Start-time checks in four steps (ck = 0..3), one add or one multiply per term and
        # cycle, registered: region = (pt+rows+pb)*(pl+rl+pr) and the last byte
        # dram_addr + rl*lb + (rows-1)*stride; the ends are compared as they are summed (ck 2), so
        # at ck 3 the decision reads two registered flags (the walkers' start, cw_init, is a register).
        ck = Signal(3)
        ptb, plr = Signal(11), Signal(11)
        rows_m1 = Signal(10)
        region = Signal(22)
        span = Signal(26)
        spad_bad = Signal()  # spad_addr + region > depth (registered at ck 2)
        dram_bad = Signal()  # uncompressed and dram_a + span > DRAM (registered at ck 2)
        line_size = Mux(ins.spad == Spad.ACC, ACCW, C)
        cap_full = Signal(len(rl) + (MBK + C).bit_length())  # a row's largest group payload
        m.d.comb += cap_full.eq(rl * (MBK + C))
        with m.If(ck == 0):
            m.d.sync += [ptb.eq(pt + rows + pb), plr.eq(pl + rl + pr), rows_m1.eq(rows - 1), rlb.eq(rl * lb),
                         cap.eq(cap_full if len(cap_full) <= 16 else Mux(cap_full[16:].any(), 0xFFFF, cap_full)),
                         a1.eq(dram_addr + stride), l0.eq(DRAM - 2 - dram_addr)]
        with m.If(ck == 1):
            m.d.sync += [region.eq(ptb * plr), span.eq(rows_m1 * stride), dram_a.eq(dram_addr + rlb),
                         l1.eq(l0 - stride), rs_hi.eq((rlb - 1) >> LMB), rs_lo.eq(lo_bits(rlb - 1))]
        with m.If(ck == 2):
            m.d.sync += [spad_bad.eq(spad_addr + region > depth), dram_bad.eq(~comp & (dram_a + span > DRAM)),
                         l2.eq(l1 - stride), rs_hi1.eq(rs_hi + 1), rs_z0.eq(rs_hi == 0),
                         rs_le0.eq(rs_hi <= MBU - 1), rs_le1.eq(rs_hi + 1 <= MBU - 1)]

        # a read beat with an error is reported a cycle after it was taken, from a register
        # (timing: on the whole design the beat's acceptance, behind the count FIFO's level and
        # the unpacker's state, ran into the error register's enable, 12.4 ns, the critical
        # path). Its bytes reach a line register two cycles after it was taken at the earliest,
        # and the halt that follows blocks their write; D's completion waits for the report.
        rd_err = Signal()
        m.d.sync += rd_err.eq(rd_fire & rd.payload.err & ~halted)
        with m.If(rd_err):
            m.d.comb += set_err.eq(ErrorCode.DRAM_RANGE)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.instr.ready.eq(~halted)
                with m.If(self.instr.valid & ~halted):
                    m.d.sync += [
                        spad.eq(ins.spad),
                        spad_addr.eq(ins.spad_addr),
                        dram_addr.eq(ins.dram_addr),
                        rows.eq(ins.rows),
                        rl.eq(ins.row_lines),
                        stride.eq(ins.dram_stride),
                        lb.eq(Mux(ins.line_bytes == 0, line_size, ins.line_bytes)),
                        pt.eq(ins.pad_top),
                        pb.eq(ins.pad_bottom),
                        pl.eq(ins.pad_left),
                        pr.eq(ins.pad_right),
                        comp.eq(ins.compressed),
                    ]
                    m.d.sync += ck.eq(0)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [
                    self.busy.eq(1),
                    uwin.clear.eq(1),
                    cwin.clear.eq(1),
                ]
                # the walkers and the writer are started at ck 3 whatever the checks find (cw_init
                # is a register; timing: it fans out to every walker register): after a failed
                # check halted is set with them, and it stops them all
                m.d.sync += cw_go.eq(ck == 2)
                with m.If(ck != 3):
                    m.d.sync += ck.eq(ck + 1)
                with m.Else():
                    m.d.sync += [
                        prow_t.eq(pt + rows + pb),
                        pcol_t.eq(pl + rl + pr),
                        pt_rows.eq(pt + rows),
                        pl_rl.eq(pl + rl),
                        wy_h.eq(0),
                        wx_h.eq(0),
                        col_in.eq((pl == 0) & (rl != 0)),
                        last_line.eq(pl + rl == 1),
                        col_end.eq(pl + rl + pr == 1),
                        row_in.eq((pt == 0) & (rows != 0)),
                        finished.eq(pt + rows + pb == 0),
                        waddr_r.eq(spad_addr),
                        w_lag.eq(0),
                        cfirst.eq(1),
                        trail_err.eq(0),
                        cs_lag.eq(1),
                        cs_b.eq(l0[-1]),
                        cs_l2.eq(l1[:LD]),
                        cs_l2n.eq(l1[-1]),
                        cs_bad.eq(l0[-1]),
                        s_valid.eq(0),
                        s_reg.ok.eq(0),
                        k_valid.eq(0),
                        k_reg.ok.eq(0),
                    ]
                    with m.If(spad_bad):
                        m.d.sync += [err.eq(ErrorCode.SPAD_RANGE), halted.eq(1)]
                        m.next = "HALT"
                    with m.Elif(dram_bad):
                        m.d.sync += [err.eq(ErrorCode.DRAM_RANGE), halted.eq(1)]
                        m.next = "HALT"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), run.eq(1)]
                # done follows from registers (not from a read beat's err: once D has finished,
                # every beat of the transfer has been taken, so none can be outstanding)
                with m.If(finished & ~trail_err & ~s_valid & ~k_valid & ~halted & ~rd_err):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(set_err != ErrorCode.NONE):
                    m.d.sync += [err.eq(set_err), halted.eq(1)]
                    m.next = "HALT"
            with m.State("HALT"):
                m.d.comb += self.busy.eq(1)
                with m.If((set_err != ErrorCode.NONE) & ~halted):
                    m.d.sync += [err.eq(set_err), halted.eq(1)]

        # ---- counters -------------------------------------------------------------------------
        m.d.sync += [self.bytes.eq(self.bytes + add_bytes), self.bytes_raw.eq(self.bytes_raw + add_raw)]
        with m.If(self.busy & ~halted):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
            with m.If(~(cmd_fire | rd_fire | wfire)):
                m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        return m
