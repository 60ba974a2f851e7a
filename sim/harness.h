/* Sparrow fast simulation harness: C API of the shared library built by
 * sparrow.sim.verilator_build (Verilated Sparrow(cfg, bus="membus") + C++ membus memory model).
 *
 * One handle = one simulated device (its own VerilatedContext). Every call that advances the
 * clock keeps the memory model serving the membus, so CSR accesses cost real cycles exactly as
 * a host bus would. Cycle counts returned here are harness clock cycles since creation.
 */
#ifndef SPARROW_HARNESS_H
#define SPARROW_HARNESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* sp_run stop reasons */
#define SP_STOP_DONE 0     /* STATUS.done, not busy */
#define SP_STOP_ERROR 1    /* STATUS.error != 0 (and not busy, or 256 cycles later) */
#define SP_STOP_HALTED 2   /* an engine newly halted (breakpoint / step / halt-all) */
#define SP_STOP_LIMIT 3    /* cycle budget used up */

/* Create a device: memory of mem_bytes (accesses beyond answer err), read data offered
 * read_latency (>= 1) cycles after its command is accepted. The design is reset. */
void *sp_create(uint64_t mem_bytes, uint32_t read_latency);
void sp_destroy(void *h);

/* Host access to the external memory (no simulated cycles). 0 on success, -1 out of range. */
int sp_mem_write(void *h, uint64_t addr, const uint8_t *data, uint64_t n);
int sp_mem_read(void *h, uint64_t addr, uint8_t *data, uint64_t n);

/* CSR access over the csr bus: a write takes 1 cycle, a read 1 cycle (+ data next cycle). */
void sp_csr_write(void *h, uint32_t addr, uint32_t value);
uint32_t sp_csr_read(void *h, uint32_t addr);

/* Advance n clock cycles with idle CSR bus. */
void sp_step(void *h, uint64_t n);

/* Run until done / error / a newly halted engine / max_cycles more cycles. Polls STATUS every
 * cycle through the CSR bus (status_addr). Returns an SP_STOP_* code; *ran = cycles simulated. */
int sp_run(void *h, uint32_t status_addr, uint64_t max_cycles, uint64_t *ran);

/* Harness cycles since creation. */
uint64_t sp_cycles(void *h);

/* Memory-model statistics: read beats, write beats, commands. */
void sp_bus_stats(void *h, uint64_t *read_beats, uint64_t *write_beats, uint64_t *commands);

/* Waveforms (only in the --trace-fst variant; returns -1 otherwise): dump an FST of harness
 * cycles [start, end) to path. Call before the cycles to be dumped. */
int sp_trace(void *h, const char *path, uint64_t start, uint64_t end);
/* Close (flush) the FST file. */
void sp_trace_close(void *h);
int sp_has_trace(void);

/* 1 if this build evaluates the model once per clock cycle (see harness.cpp), else 0. */
int sp_one_eval(void);

#ifdef __cplusplus
}
#endif

#endif
