"""Scratchpad memories: banked (ACT, ACC) and replicated (WGT).

Both blocks expose the *scratchpad side* (flipped) of the port contract in ``hdl/spad_port.py``:
a read port takes line addresses on ``cmd`` and returns lines on ``rsp`` in request order; a
write port takes ``{addr, data}`` on ``cmd``. Engines own ports, never memories.

Timing (both blocks)
--------------------
* A command is accepted (``cmd.ready``) in the cycle its bank is granted to it; ``ready`` is a
  combinational function of the ``valid``/``payload`` of all ports (the stream rule "valid must
  not depend on ready" is respected: nothing here looks at a port's ``ready`` to drive ``valid``).
* Read latency is exactly **1 cycle** from acceptance to ``rsp.valid``, always (bank conflicts
  show up as ``cmd.ready`` low, never as extra response latency), so responses are trivially in
  request order. ``rsp`` is never back-pressured. Exception: a port named in ``sliced_reads``
  passes its commands through a register slice first (``cmd.ready`` is then a register); its
  responses come 2 cycles after acceptance at the earliest, more under bank conflicts, still
  in order, and its read sees the line as of the cycle the slice's command is granted. A port
  named in ``registered_reads`` gets its response a cycle later, from a register. A port named
  in ``sliced_writes`` accepts a write into a register slice; the write reaches memory when the
  slice's command is granted (the next cycle at the earliest), and ``wr_pending`` is high until
  then.
* A write accepted in cycle *t* (on an unsliced port) is visible to reads accepted in cycle
  *t + 1* and later. A read
  and a write of the **same line accepted in the same cycle: the read returns the old data** in
  simulation; on the FPGA build the read's data is undefined (see "Collisions" below).

Collisions
----------
A memory read and write of one line in one cycle is a *collision*. ECP5 block RAM leaves the
read data undefined then, and yosys makes it "old data" with soft logic around every block RAM
(the write registered a cycle, a bypass register, an address compare and a multiplexer behind
the RAM's already slow output: about 70 flip-flops and 45 LUTs per 36-bit RAM, in the read and
write paths). No engine collides with itself (an engine writes a line after it read it, and a
MATMUL accumulate reads a row after the previous instruction's writes landed); two engines
touching one line in one cycle are racing, which the compiler's semaphores exclude. So the
memories carry the attribute :data:`COLLISION_ATTR` and the FPGA flow tells yosys a collision's
read data is undefined (no emulation). To keep that honest, both blocks flag a collision on
``collision`` (sticky until reset); the top shows it in STATUS, where tests check that no
program collides.

Banking and double buffering
----------------------------
:class:`BankedScratchpad` interleaves lines over ``banks`` simple-dual-port memories by line
address (``bank = addr % banks``, row ``addr // banks``). Every bank serves one read *and* one
write per cycle, so clients conflict only when two readers (or two writers) hit the same bank in
the same cycle; consecutive lines sit in different banks, so streaming clients spread out.
Double buffering is not a hardware mode: the compiler places the tile being filled by LOAD and
the tile being consumed by MATMUL/VECTOR in separate regions (semaphores order them). LOAD's
writes use the banks' write ports and the consumers' reads their read ports, so filling one
buffer never stalls reading the other; only readers compete with readers (and writers with
writers) for a bank, and only when they hit the same bank in the same cycle.

Arbitration is per bank and per direction with :class:`sparrow.hdl.round_robin.RoundRobin`: a
client whose command waits is granted after at most ``n - 1`` grants of that bank to others (the
priority pointer moves past every winner), so nobody starves. Reads are *merged*: every reader
asking for the very line the bank's winner reads is served in the same cycle (lanes reading a
broadcast line do not serialise). Writers never merge; two writes to one line are ordered by
the arbiter (the later grant wins).

Clients must not derive any port's ``valid`` or ``payload`` combinationally from any ``ready``
of this scratchpad (``ready`` depends on all ports' requests, so that would form a loop).
"""

import operator
from functools import reduce

from amaranth import Cat, Module, Mux, Signal
from amaranth.hdl import Shape
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .round_robin import RoundRobin, one_hot_mux
from .credit_slice import CreditSlice
from .spad_port import ReadPortSignature, WritePortSignature, act_line, acc_line, write_cmd_layout

__all__ = ["BankedScratchpad", "ReplicatedScratchpad", "act_scratchpad", "acc_scratchpad", "wgt_scratchpad",
           "COLLISION_ATTR"]

#: Attribute on every scratchpad memory: a same-cycle read and write of one line may read
#: anything (see "Collisions"); ``sparrow.fpga`` passes it on to yosys.
COLLISION_ATTR = "sparrow_rdwr_undefined"


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def _check_depth(depth):
    if not _is_pow2(depth) or depth < 2:
        raise ValueError(f"depth must be a power of two >= 2, not {depth!r}")


def _check_shape(line_shape):
    try:
        Shape.cast(line_shape)
    except TypeError as e:
        raise ValueError(f"line_shape must be a shape or layout, not {line_shape!r}") from e


def _port_names(arg, argname, prefix):
    if isinstance(arg, int) and not isinstance(arg, bool):
        if arg < 1:
            raise ValueError(f"{argname} must be >= 1, not {arg!r}")
        return [f"{prefix}{i}" for i in range(arg)]
    if isinstance(arg, (list, tuple)) and arg and all(isinstance(n, str) and n for n in arg):
        if len(set(arg)) != len(arg):
            raise ValueError(f"{argname} has duplicate names: {list(arg)!r}")
        return list(arg)
    raise ValueError(f"{argname} must be a positive int or a non-empty list of unique names, not {arg!r}")


class BankedScratchpad(wiring.Component):
    """A scratchpad of ``depth`` lines interleaved over ``banks`` banks, with named client ports.

    Parameters
    ----------
    depth : int
        Lines (power of two, >= 2, >= ``banks``).
    banks : int
        Banks (power of two); line ``a`` lives in bank ``a % banks``.
    line_shape : shape
        Shape of one line (e.g. :func:`sparrow.hdl.spad_port.act_line`).
    read_ports, write_ports : int or list of str
        Client ports: a count (named ``r0, r1, ...`` / ``w0, w1, ...``) or their names in order.
    sliced_reads : iterable of str
        Read ports whose commands pass a :class:`~sparrow.hdl.credit_slice.CreditSlice` before
        arbitration (timing: their ``cmd.ready`` is a register and their requests reach the
        arbiters from registers, so no path runs from one client's logic through the arbiters
        into another's). A sliced port's response comes at least 2 cycles after acceptance.
    sliced_writes : iterable of str
        Write ports whose commands pass a :class:`~sparrow.hdl.credit_slice.CreditSlice` before
        arbitration (timing, as ``sliced_reads``); their writes land a cycle or more after
        ``cmd`` accepts them; ``wr_pending`` tells the client when they have landed.
    registered_reads : iterable of str
        Read ports whose responses are registered once more (timing: the memory's slow
        clock-to-output does not run into the client's logic); their responses come one cycle
        later.

    Attributes
    ----------
    read_latency : int
        Cycles from an accepted read command to its response on an unsliced port: always 1.
    read_names, write_names : list of str
        Port names by index.
    read_index, write_index : dict
        Name -> index into ``rd`` / ``wr``; :meth:`read_port` / :meth:`write_port` look up by name.

    Ports
    -----
    rd : In(ReadPortSignature(addr_width, line_shape)).array(len(read_names))
        Read ports (scratchpad side). Verilog: ``rd__<i>__cmd__{valid,ready,payload}``,
        ``rd__<i>__rsp__{valid,payload}``.
    wr_pending : Out(len(write_names))
        Bit ``i``: write port ``i``'s slice holds a write not yet in memory (always 0 for an
        unsliced port). A client whose completion means "written" waits for it.
    wr : In(WritePortSignature(addr_width, line_shape)).array(len(write_names))
        Write ports (scratchpad side). Verilog: ``wr__<i>__cmd__{valid,ready,payload}``, payload
        = ``addr`` in the low ``addr_width`` bits, line data above.
    collision : Out(1)
        Sticky (until reset): a bank read and wrote one line in one cycle, three cycles before
        (see "Collisions").
    """

    def __init__(self, depth: int, banks: int, line_shape, *, read_ports, write_ports, sliced_reads=(),
                 registered_reads=(), sliced_writes=()):
        _check_depth(depth)
        if not _is_pow2(banks) or banks > depth:
            raise ValueError(f"banks must be a power of two <= depth ({depth}), not {banks!r}")
        _check_shape(line_shape)
        self.depth, self.banks, self.line_shape = depth, banks, line_shape
        self.read_names = _port_names(read_ports, "read_ports", "r")
        self.write_names = _port_names(write_ports, "write_ports", "w")
        self.read_latency = 1
        self.sliced_reads = list(sliced_reads)
        self.registered_reads = list(registered_reads)
        self.sliced_writes = list(sliced_writes)
        for arg, names, have in (("sliced_reads", self.sliced_reads, self.read_names),
                                 ("registered_reads", self.registered_reads, self.read_names),
                                 ("sliced_writes", self.sliced_writes, self.write_names)):
            for name in names:
                if name not in have:
                    raise ValueError(f"{arg}: no port {name!r}; have {have}")
        self.read_index = {n: i for i, n in enumerate(self.read_names)}
        self.write_index = {n: i for i, n in enumerate(self.write_names)}
        self.addr_width = (depth - 1).bit_length()
        self.bank_bits = (banks - 1).bit_length()
        super().__init__({
            "rd": In(ReadPortSignature(self.addr_width, line_shape)).array(len(self.read_names)),
            "wr": In(WritePortSignature(self.addr_width, line_shape)).array(len(self.write_names)),
            "wr_pending": Out(len(self.write_names)),
            "collision": Out(1),
        })

    def read_port(self, name: str):
        """The read port called ``name``."""
        try:
            return self.rd[self.read_index[name]]
        except KeyError:
            raise ValueError(f"no read port {name!r}; have {self.read_names}") from None

    def write_port(self, name: str):
        """The write port called ``name``."""
        try:
            return self.wr[self.write_index[name]]
        except KeyError:
            raise ValueError(f"no write port {name!r}; have {self.write_names}") from None

    def _bank(self, addr):
        return addr[:self.bank_bits] if self.bank_bits else 0

    def _row(self, addr):
        return addr[self.bank_bits:]

    def elaborate(self, platform):
        m = Module()
        nb, n_rd, n_wr = self.banks, len(self.rd), len(self.wr)
        # the command stream each port's arbitration sees: the port's, or its slice's output
        def commands(ports, names, sliced, kind, shape):
            out = []
            for port, name in zip(ports, names):
                if name in sliced:
                    sb = m.submodules[f"{kind}_slice_{name}"] = CreditSlice(shape)
                    wiring.connect(m, wiring.flipped(port.cmd), sb.i)
                    out.append(sb.o)
                else:
                    out.append(port.cmd)
            return out
        cmds = commands(self.rd, self.read_names, self.sliced_reads, "rd", self.addr_width)
        wcmds = commands(self.wr, self.write_names, self.sliced_writes, "wr",
                         write_cmd_layout(self.addr_width, self.line_shape))
        for i, name in enumerate(self.write_names):
            if name in self.sliced_writes:
                m.d.comb += self.wr_pending[i].eq(wcmds[i].valid)
        # Read merging: a reader of the very line the bank's winner reads is served too. Which
        # ports ask for the same row is compared pairwise, beside the arbitration rather than
        # after it (timing: comparing with the winner's muxed address put the arbiter, the mux
        # and the compare in series before every port's ready).
        rows = [self._row(cmd.payload) for cmd in cmds]
        same_row = {}
        for i in range(n_rd):
            for j in range(i + 1, n_rd):
                same_row[i, j] = same_row[j, i] = Signal(name=f"same_row_{i}_{j}")
                m.d.comb += same_row[i, j].eq(rows[i] == rows[j])
        rdata = []
        rd_ready = [[] for _ in range(n_rd)]
        wr_ready = [[] for _ in range(n_wr)]
        collide = []
        for b in range(nb):
            mem = Memory(shape=self.line_shape, depth=self.depth // nb, init=[], attrs={COLLISION_ATTR: 1})
            m.submodules[f"bank{b}"] = mem
            rp = mem.read_port()          # not transparent: same-cycle write -> old data
            wp = mem.write_port()
            rdata.append(rp.data)

            m.submodules[f"rd_arb{b}"] = ra = RoundRobin(n_rd)
            for i, cmd in enumerate(cmds):
                m.d.comb += ra.requests[i].eq(cmd.valid & (self._bank(cmd.payload) == b))
            m.d.comb += [ra.advance.eq(1), rp.en.eq(ra.valid),
                         rp.addr.eq(one_hot_mux(ra.grant, [self._row(cmd.payload) for cmd in cmds]))]
            # the winner, and every other reader of the very same line (read merging)
            for i in range(n_rd):
                hit = reduce(operator.or_, [ra.grant[j] & (same_row[i, j] if j != i else 1) for j in range(n_rd)])
                rd_ready[i].append(ra.requests[i] & hit)

            m.submodules[f"wr_arb{b}"] = wa = RoundRobin(n_wr)
            for i, cmd in enumerate(wcmds):
                m.d.comb += wa.requests[i].eq(cmd.valid & (self._bank(cmd.payload.addr) == b))
                wr_ready[i].append(wa.grant[i])
            m.d.comb += [wa.advance.eq(1), wp.en.eq(wa.valid),
                         wp.addr.eq(one_hot_mux(wa.grant, [self._row(cmd.payload.addr) for cmd in wcmds])),
                         wp.data.eq(one_hot_mux(wa.grant, [cmd.payload.data for cmd in wcmds]))]
            collide.append((rp.en, rp.addr, wp.en, wp.addr))

        _flag_collisions(m, self.collision, collide)
        for i, cmd in enumerate(wcmds):
            m.d.comb += cmd.ready.eq(reduce(operator.or_, wr_ready[i]))
        for i, (port, cmd) in enumerate(zip(self.rd, cmds)):
            m.d.comb += cmd.ready.eq(reduce(operator.or_, rd_ready[i]))
            rsp_valid = Signal(name=f"rsp_valid_{i}")
            rsp_bank = Signal(range(max(nb, 2)), name=f"rsp_bank_{i}")
            m.d.sync += rsp_valid.eq(cmd.valid & cmd.ready)
            with m.If(cmd.valid & cmd.ready):
                m.d.sync += rsp_bank.eq(self._bank(cmd.payload))
            line = Signal(self.line_shape, name=f"rsp_line_{i}")
            with m.Switch(rsp_bank):
                for b in range(nb):
                    with _case(m, b, nb):
                        m.d.comb += line.eq(rdata[b])
            if self.read_names[i] in self.registered_reads:
                m.d.sync += [port.rsp.valid.eq(rsp_valid), port.rsp.payload.eq(line)]
            else:
                m.d.comb += [port.rsp.valid.eq(rsp_valid), port.rsp.payload.eq(line)]
        return m


class ReplicatedScratchpad(wiring.Component):
    """``replicas`` identical copies behind one broadcast write port; a private read port each.

    Every write goes to all copies (``wr.cmd.ready`` is constant 1), so each matrix lane reads
    its own copy without conflicts (``rd[r].cmd.ready`` is constant 1 for ``r >= 1``). The extra
    ``shared`` read port (for the STORE DMA) reads replica 0 and is arbitrated round-robin against
    ``rd[0]`` (each waits at most one grant), or, with ``own_shared``, reads a copy of its own
    (one more memory; then every ``ready`` is constant 1). Latency 1, same-cycle read/write of a
    line returns the old data (see module docstring).

    Parameters
    ----------
    depth : int
        Lines (power of two, >= 2).
    replicas : int
        Copies (>= 1), normally ``cfg.rows``.
    line_shape : shape
        Shape of one line.
    sliced_shared : bool
        Pass the ``shared`` port's commands through a register slice (a
        :class:`~sparrow.hdl.credit_slice.CreditSlice`) before the arbitration, so neither client's
        request reaches the other's ``ready`` combinationally; its reads answer a cycle later
        (default False).
    own_shared : bool
        Give the ``shared`` port a copy of its own instead of arbitrating it against ``rd[0]``
        (timing: lane 0's read logic then meets no arbitration, like every other lane's; costs
        the memory of one more copy; default False).
    registered_shared : bool
        Register the ``shared`` port's responses once more (timing: the block RAM's slow
        clock-to-output does not run into the client's logic); they come a cycle later
        (default False).

    Ports
    -----
    wr : In(WritePortSignature(addr_width, line_shape))
        Broadcast write port. Verilog ``wr__cmd__{valid,ready,payload}``.
    rd : In(ReadPortSignature(addr_width, line_shape)).array(replicas)
        Private read ports. Verilog ``rd__<r>__cmd__*``, ``rd__<r>__rsp__*``.
    shared : In(ReadPortSignature(addr_width, line_shape))
        Shared read port on replica 0 (on a copy of its own with ``own_shared``). Verilog
        ``shared__cmd__*``, ``shared__rsp__*``.
    collision : Out(1)
        Sticky (until reset): a replica read and wrote one line in one cycle, three cycles before
        (see "Collisions").
    """

    def __init__(self, depth: int, replicas: int, line_shape, *, sliced_shared: bool = False,
                 own_shared: bool = False, registered_shared: bool = False):
        _check_depth(depth)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ValueError(f"replicas must be a positive int, not {replicas!r}")
        _check_shape(line_shape)
        if not isinstance(sliced_shared, bool):
            raise TypeError(f"sliced_shared must be a bool, not {sliced_shared!r}")
        if not isinstance(own_shared, bool):
            raise TypeError(f"own_shared must be a bool, not {own_shared!r}")
        if not isinstance(registered_shared, bool):
            raise TypeError(f"registered_shared must be a bool, not {registered_shared!r}")
        self.depth, self.replicas, self.line_shape = depth, replicas, line_shape
        self.sliced_shared, self.own_shared = sliced_shared, own_shared
        self.registered_shared = registered_shared
        self.read_latency = 1
        self.addr_width = (depth - 1).bit_length()
        super().__init__({
            "wr": In(WritePortSignature(self.addr_width, line_shape)),
            "rd": In(ReadPortSignature(self.addr_width, line_shape)).array(replicas),
            "shared": In(ReadPortSignature(self.addr_width, line_shape)),
            "collision": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.wr.cmd.ready.eq(1)
        collide = []
        shared_cmd = self.shared.cmd
        if self.sliced_shared:
            m.submodules.shared_slice = sb = CreditSlice(self.addr_width)
            wiring.connect(m, wiring.flipped(self.shared.cmd), sb.i)
            shared_cmd = sb.o
        # (command stream, response stream) of each replica's own reader
        readers = [(self.rd[r].cmd, self.rd[r].rsp) for r in range(self.replicas)]
        if self.own_shared:
            readers.append((shared_cmd, self.shared.rsp))
        for r, own in enumerate(readers):
            mem = Memory(shape=self.line_shape, depth=self.depth, init=[], attrs={COLLISION_ATTR: 1})
            m.submodules[f"replica{r}"] = mem
            rp, wp = mem.read_port(), mem.write_port()
            m.d.comb += [wp.en.eq(self.wr.cmd.valid), wp.addr.eq(self.wr.cmd.payload.addr),
                         wp.data.eq(self.wr.cmd.payload.data)]
            # (command stream, response stream) of each client of this replica
            clients = [own]
            if r == 0 and not self.own_shared:
                clients.append((shared_cmd, self.shared.rsp))
                m.submodules.shared_arb = arb = RoundRobin(2)
                m.d.comb += [arb.requests.eq(Cat(*[cmd.valid for cmd, _ in clients])), arb.advance.eq(1),
                             rp.en.eq(arb.valid),
                             rp.addr.eq(Mux(arb.grant[1], clients[1][0].payload, clients[0][0].payload))]
                readies = [arb.grant[0], arb.grant[1]]
            else:
                m.d.comb += [rp.en.eq(own[0].valid), rp.addr.eq(own[0].payload)]
                readies = [1]
            for c, (cmd, rsp) in enumerate(clients):
                m.d.comb += cmd.ready.eq(readies[c])
                rsp_valid = Signal(name=f"rsp_valid_{r}_{c}")
                m.d.sync += rsp_valid.eq(cmd.valid & cmd.ready)
                if rsp is self.shared.rsp and self.registered_shared:
                    m.d.sync += [rsp.valid.eq(rsp_valid), rsp.payload.eq(rp.data)]
                else:
                    m.d.comb += [rsp.valid.eq(rsp_valid), rsp.payload.eq(rp.data)]
            collide.append((rp.en, rp.addr, wp.en, wp.addr))
        _flag_collisions(m, self.collision, collide)
        return m


def _flag_collisions(m, flag, ports):
    """Set the sticky ``flag`` (three cycles after the event) when a memory's read and write
    ``ports`` (``(read en, read addr, write en, write addr)`` each) access one address in one
    cycle. The ports are registered before they are compared (timing: the read address is the
    arbitration's late output; compared directly it made a long path into the flag)."""
    hits = []
    for ren, raddr, wen, waddr in ports:
        ren_r, wen_r = Signal(name="coll_ren"), Signal(name="coll_wen")
        raddr_r, waddr_r = Signal.like(raddr, name="coll_raddr"), Signal.like(waddr, name="coll_waddr")
        m.d.sync += [ren_r.eq(ren), wen_r.eq(wen), raddr_r.eq(raddr), waddr_r.eq(waddr)]
        hits.append(ren_r & wen_r & (raddr_r == waddr_r))
    hit = Signal()
    m.d.sync += hit.eq(reduce(operator.or_, hits))
    with m.If(hit):
        m.d.sync += flag.eq(1)


def act_scratchpad(cfg, read_ports, write_ports, **options) -> BankedScratchpad:
    """The ACT scratchpad of ``cfg``: ``act_depth`` lines of ``cols`` int8 over ``act_banks`` banks
    (``options``: the slicing/registering keywords of :class:`BankedScratchpad`)."""
    return BankedScratchpad(cfg.act_depth, cfg.act_banks, act_line(cfg.cols),
                            read_ports=read_ports, write_ports=write_ports, **options)


def acc_scratchpad(cfg, read_ports, write_ports, **options) -> BankedScratchpad:
    """The ACC scratchpad of ``cfg``: ``acc_depth`` lines of ``cols`` int32 over ``acc_banks`` banks."""
    return BankedScratchpad(cfg.acc_depth, cfg.acc_banks, acc_line(cfg.cols),
                            read_ports=read_ports, write_ports=write_ports, **options)


def wgt_scratchpad(cfg, **options) -> ReplicatedScratchpad:
    """The WGT scratchpad of ``cfg``: ``wgt_depth`` lines of ``cols`` int8, one copy per lane (``rows``)."""
    return ReplicatedScratchpad(cfg.wgt_depth, cfg.rows, act_line(cfg.cols), **options)


def _case(m, i, n):
    """``m.Case(i)``, or ``m.Default()`` for the last of ``n`` choices (a complete case, lint-clean)."""
    return m.Case(i) if i < n - 1 else m.Default()
