// Sparrow fast simulation harness: C++ clock loop around the Verilated Sparrow top
// (bus="membus") and an external-memory model serving its membus port (hdl/membus.py).
//
// Port names: Verilator escapes "__" in Amaranth's flattened names as "___05F"
// (mem__cmd__ready -> mem___05Fcmd___05Fready).
//
// Built by sparrow.sim.verilator_build with -DSP_AW=<cmd address bits> -DSP_MB=<bytes per beat>
// -DSP_CSR_RL=<CSR read latency>
// (and -DSP_TRACE for the --trace-fst variant). C API in harness.h.
//
// The Verilated top is verilator_build's wrapper `harness_top` around sparrow_top: same ports,
// but `rst` is registered once inside (so no combinational logic depends on a top-level reset
// input, and Verilator's input-combinational region only holds logic fed by the bus inputs).
// The SP_TRACE build Verilates sparrow_top itself (its FST keeps the design's hierarchy); the
// reset sequence below suits both (the design sees 4 or 5 reset edges).
//
// Clocking. Two-eval mode (default, and always with SP_TRACE so waveforms show a normal
// clock): per cycle, eval with clk=0 and this cycle's inputs (settle), sample the handshakes,
// eval with clk=1 (rising edge). One-eval mode (-DSP_ONE_EVAL): the wrapper's flops are
// sensitive to both clock edges, and each cycle toggles clk once and evaluates once. Verilator
// evaluates the input-combinational logic before the edge's sequential logic, so the flops see
// this cycle's inputs exactly as in two-eval mode. The handshakes are sampled before that eval,
// from the outputs as the previous eval left them; verilator_build only selects this mode when
// no output port is written by Verilator's input-combinational region, i.e. every output is a
// function of the state alone and those values are the ones the edge will see.
//
// Memory model (slave side of membus): commands always accepted; a read command queues len+1
// beats, each offered read_latency cycles after acceptance (one beat per cycle, in order);
// write data is accepted while a write command is pending, honouring strb; one write response
// per command after its last beat. A beat whose bytes leave the memory answers err (reads
// return 0, writes are dropped).

#include "harness.h"

#if defined(SP_TRACE) && defined(SP_ONE_EVAL)
#error "SP_ONE_EVAL is not used with SP_TRACE (waveforms need both clock levels)"
#endif

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "Vtop.h"
#include "verilated.h"
#ifdef SP_TRACE
#include "verilated_fst_c.h"
#endif

#ifndef SP_AW
#error "SP_AW (membus address width) must be defined"
#endif
#ifndef SP_MB
#error "SP_MB (membus bytes per beat) must be defined"
#endif
#ifndef SP_CSR_RL
#error "SP_CSR_RL (CSR read latency, sparrow.regmap.READ_LATENCY) must be defined"
#endif

double sc_time_stamp() { return 0; }

namespace {

// -- bit-field access on Verilator port types (integral or VlWide<N>) -----------------------
inline uint64_t mask(int w) { return w >= 64 ? ~0ULL : ((1ULL << w) - 1); }

template <typename T>
inline uint64_t getb(const T &v, int lsb, int w) {
    return (static_cast<uint64_t>(v) >> lsb) & mask(w);
}
template <std::size_t N>
inline uint64_t getb(const VlWide<N> &v, int lsb, int w) {
    uint64_t r = 0;
    for (int i = 0; i < w; ++i) {
        int b = lsb + i;
        r |= static_cast<uint64_t>((v[b >> 5] >> (b & 31)) & 1u) << i;
    }
    return r;
}
template <typename T>
inline void setb(T &v, int lsb, int w, uint64_t x) {
    uint64_t cur = static_cast<uint64_t>(v);
    cur = (cur & ~(mask(w) << lsb)) | ((x & mask(w)) << lsb);
    v = static_cast<T>(cur);
}
template <std::size_t N>
inline void setb(VlWide<N> &v, int lsb, int w, uint64_t x) {
    for (int i = 0; i < w; ++i) {
        int b = lsb + i;
        uint32_t bit = 1u << (b & 31);
        if ((x >> i) & 1) v[b >> 5] |= bit;
        else v[b >> 5] &= ~bit;
    }
}
// byte-granular (fast path for data fields, which start at bit 0)
template <typename T>
inline uint8_t getbyte(const T &v, int i) { return static_cast<uint8_t>(getb(v, 8 * i, 8)); }
template <std::size_t N>
inline uint8_t getbyte(const VlWide<N> &v, int i) { return static_cast<uint8_t>(v[i >> 2] >> (8 * (i & 3))); }
template <typename T>
inline void setbyte(T &v, int i, uint8_t x) { setb(v, 8 * i, 8, x); }
template <std::size_t N>
inline void setbyte(VlWide<N> &v, int i, uint8_t x) {
    uint32_t sh = 8 * (i & 3);
    v[i >> 2] = (v[i >> 2] & ~(0xFFu << sh)) | (static_cast<uint32_t>(x) << sh);
}

constexpr int AW = SP_AW;
constexpr int MB = SP_MB;
constexpr int DBITS = 8 * MB;

struct ReadBeat {
    uint64_t due;
    uint64_t addr;
    bool last;
};
struct WriteCmd {
    uint64_t addr;
    uint32_t beats_left;
    bool err;
};

struct Device {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vtop> top;
    std::vector<uint8_t> mem;
    uint32_t latency = 2;
    uint64_t cycle = 0;
    std::deque<ReadBeat> reads;
    std::deque<WriteCmd> writes;
    std::deque<bool> wresps;
    uint64_t read_beats = 0, write_beats = 0, commands = 0;
#ifdef SP_TRACE
    std::unique_ptr<VerilatedFstC> fst;
    uint64_t tr_start = 0, tr_end = 0;
    bool tr_open = false;
#endif

    bool in_range(uint64_t addr) const { return addr + MB <= mem.size(); }

    // Drive the slave outputs from the model state (before the rising edge).
    void drive() {
        Vtop &t = *top;
        t.mem___05Fcmd___05Fready = 1;
        if (!reads.empty() && reads.front().due <= cycle) {
            const ReadBeat &b = reads.front();
            t.mem___05Frdata___05Fvalid = 1;
            bool err = !in_range(b.addr);
            for (int i = 0; i < MB; ++i) setbyte(t.mem___05Frdata___05Fpayload, i, err ? 0 : mem[b.addr + i]);
            setb(t.mem___05Frdata___05Fpayload, DBITS, 1, b.last);
            setb(t.mem___05Frdata___05Fpayload, DBITS + 1, 1, err);
        } else {
            t.mem___05Frdata___05Fvalid = 0;
        }
        t.mem___05Fwdata___05Fready = writes.empty() ? 0 : 1;
        t.mem___05Fwresp___05Fvalid = wresps.empty() ? 0 : 1;
        t.mem___05Fwresp___05Fpayload = (!wresps.empty() && wresps.front()) ? 1 : 0;
    }

    // One clock cycle: inputs for this cycle are already set on the CSR bus.
    void tick() {
        Vtop &t = *top;
#ifdef SP_ONE_EVAL
        drive();
#else
        t.clk = 0;
        drive();
        t.eval();
#endif
#ifdef SP_TRACE
        bool dump = fst && cycle >= tr_start && cycle < tr_end;
        if (dump) fst->dump(2 * cycle);
#endif
        // sample handshakes as the rising edge will see them
        bool cmd_fire = t.mem___05Fcmd___05Fvalid && t.mem___05Fcmd___05Fready;
        uint64_t caddr = 0, clen = 0;
        bool cwrite = false;
        if (cmd_fire) {
            caddr = getb(t.mem___05Fcmd___05Fpayload, 0, AW);
            cwrite = getb(t.mem___05Fcmd___05Fpayload, AW, 1);
            clen = getb(t.mem___05Fcmd___05Fpayload, AW + 1, 8);
        }
        bool r_fire = t.mem___05Frdata___05Fvalid && t.mem___05Frdata___05Fready;
        bool w_fire = t.mem___05Fwdata___05Fvalid && t.mem___05Fwdata___05Fready;
        uint8_t wbytes[MB];
        uint64_t wstrb = 0;
        if (w_fire) {
            for (int i = 0; i < MB; ++i) wbytes[i] = getbyte(t.mem___05Fwdata___05Fpayload, i);
            wstrb = getb(t.mem___05Fwdata___05Fpayload, DBITS, MB);
        }
        bool b_fire = t.mem___05Fwresp___05Fvalid && t.mem___05Fwresp___05Fready;

#ifdef SP_ONE_EVAL
        t.clk = !t.clk;
#else
        t.clk = 1;
#endif
        t.eval();
#ifdef SP_TRACE
        if (dump) fst->dump(2 * cycle + 1);
#endif
        ++cycle;

        // update the model state
        if (r_fire) {
            reads.pop_front();
            ++read_beats;
        }
        if (w_fire) {
            WriteCmd &w = writes.front();
            if (in_range(w.addr)) {
                for (int i = 0; i < MB; ++i)
                    if ((wstrb >> i) & 1) mem[w.addr + i] = wbytes[i];
            } else {
                w.err = true;
            }
            w.addr += MB;
            ++write_beats;
            if (--w.beats_left == 0) {
                wresps.push_back(w.err);
                writes.pop_front();
            }
        }
        if (b_fire) wresps.pop_front();
        if (cmd_fire) {
            ++commands;
            if (cwrite) {
                writes.push_back(WriteCmd{caddr, static_cast<uint32_t>(clen + 1), false});
            } else {
                uint64_t due = cycle + latency - 1;
                if (!reads.empty() && reads.back().due >= due) due = reads.back().due + 1;
                for (uint64_t i = 0; i <= clen; ++i)
                    reads.push_back(ReadBeat{due + i, caddr + i * MB, i == clen});
            }
        }
    }

    void idle_bus() {
        top->csr___05Fr_stb = 0;
        top->csr___05Fw_stb = 0;
    }
};

}  // namespace

extern "C" {

void *sp_create(uint64_t mem_bytes, uint32_t read_latency) {
    auto *d = new Device();
    d->ctx.reset(new VerilatedContext());
#ifdef SP_TRACE
    d->ctx->traceEverOn(true);
#endif
    d->top.reset(new Vtop(d->ctx.get(), "top"));
    d->mem.assign(mem_bytes, 0);
    d->latency = read_latency < 1 ? 1 : read_latency;
    d->idle_bus();
    d->top->clk = 0;
    d->top->rst = 1;
    d->top->eval();  // initial settle: the first eval never counts as a clock edge
    // the wrapper registers rst: it reaches the design one edge later (and is set at start)
    for (int i = 0; i < 4; ++i) d->tick();
    d->top->rst = 0;
    d->tick();
    d->tick();
    return d;
}

void sp_destroy(void *h) {
    auto *d = static_cast<Device *>(h);
    if (!d) return;
#ifdef SP_TRACE
    if (d->fst) d->fst->close();
#endif
    d->top->final();
    delete d;
}

int sp_mem_write(void *h, uint64_t addr, const uint8_t *data, uint64_t n) {
    auto *d = static_cast<Device *>(h);
    if (addr > d->mem.size() || n > d->mem.size() - addr) return -1;
    std::memcpy(d->mem.data() + addr, data, n);
    return 0;
}

int sp_mem_read(void *h, uint64_t addr, uint8_t *data, uint64_t n) {
    auto *d = static_cast<Device *>(h);
    if (addr > d->mem.size() || n > d->mem.size() - addr) return -1;
    std::memcpy(data, d->mem.data() + addr, n);
    return 0;
}

void sp_csr_write(void *h, uint32_t addr, uint32_t value) {
    auto *d = static_cast<Device *>(h);
    d->top->csr___05Faddr = addr;
    d->top->csr___05Fw_data = value;
    d->top->csr___05Fw_stb = 1;
    d->tick();
    d->idle_bus();
}

uint32_t sp_csr_read(void *h, uint32_t addr) {
    auto *d = static_cast<Device *>(h);
    d->top->csr___05Faddr = addr;
    d->top->csr___05Fr_stb = 1;
    d->tick();
    d->idle_bus();
    for (int i = 1; i < SP_CSR_RL; ++i) d->tick();
    return d->top->csr___05Fr_data;  // the value at the strobe's edge, SP_CSR_RL edges ago
}

void sp_step(void *h, uint64_t n) {
    auto *d = static_cast<Device *>(h);
    d->idle_bus();
    for (uint64_t i = 0; i < n; ++i) d->tick();
}

int sp_run(void *h, uint32_t status_addr, uint64_t max_cycles, uint64_t *ran) {
    auto *d = static_cast<Device *>(h);
    Vtop &t = *d->top;
    // Keep a STATUS read strobed every cycle: after the first SP_CSR_RL edges, r_data after
    // each edge is STATUS SP_CSR_RL - 1 edges before it (the reads are pipelined).
    t.csr___05Faddr = status_addr;
    t.csr___05Fr_stb = 1;
    t.csr___05Fw_stb = 0;
    uint64_t n = 0;
    int reason = SP_STOP_LIMIT;
    uint32_t halted0 = 0xFFFFFFFFu;
    constexpr uint64_t ERR_DRAIN = 256;
    uint64_t err_cycles = 0;
    while (n < max_cycles) {
        d->tick();
        ++n;
        if (n < SP_CSR_RL) continue;  // r_data is still an earlier read's (or 0)
        uint32_t st = t.csr___05Fr_data;
        uint32_t halted = (st >> 12) & 0xF;
        if (halted0 == 0xFFFFFFFFu) halted0 = halted;  // mask when the run was entered
        bool busy = st & 1, done = (st >> 1) & 1;
        uint32_t err = (st >> 4) & 0xF;
        // after an error, give draining engines up to ERR_DRAIN cycles to go idle (an engine
        // that faulted may stay busy until the next start)
        if (err && (!busy || ++err_cycles >= ERR_DRAIN)) { reason = SP_STOP_ERROR; break; }
        if (!busy && done) { reason = SP_STOP_DONE; break; }
        if (halted & ~halted0) { reason = SP_STOP_HALTED; break; }
        halted0 &= halted;  // engines released since entry may halt again
    }
    d->idle_bus();
    if (ran) *ran = n;
    return reason;
}

uint64_t sp_cycles(void *h) { return static_cast<Device *>(h)->cycle; }

void sp_bus_stats(void *h, uint64_t *read_beats, uint64_t *write_beats, uint64_t *commands) {
    auto *d = static_cast<Device *>(h);
    if (read_beats) *read_beats = d->read_beats;
    if (write_beats) *write_beats = d->write_beats;
    if (commands) *commands = d->commands;
}

int sp_one_eval(void) {
#ifdef SP_ONE_EVAL
    return 1;
#else
    return 0;
#endif
}

int sp_has_trace(void) {
#ifdef SP_TRACE
    return 1;
#else
    return 0;
#endif
}

int sp_trace(void *h, const char *path, uint64_t start, uint64_t end) {
#ifdef SP_TRACE
    auto *d = static_cast<Device *>(h);
    if (d->fst) d->fst->close();
    d->fst.reset(new VerilatedFstC());
    d->top->trace(d->fst.get(), 99);
    d->fst->open(path);
    d->tr_start = start;
    d->tr_end = end;
    return 0;
#else
    (void)h; (void)path; (void)start; (void)end;
    return -1;
#endif
}

void sp_trace_close(void *h) {
#ifdef SP_TRACE
    auto *d = static_cast<Device *>(h);
    if (d->fst) {
        d->fst->close();
        d->fst.reset();
    }
#else
    (void)h;
#endif
}

}  // extern "C"
