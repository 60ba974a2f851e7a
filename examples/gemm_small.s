# gemm_small.s -- one int8 GEMM tile on the `small` preset (4x4 PE array, cols = 4).
#
#   out[4, 4] = clamp(requant(A[4, 8] @ W[8, 4] + bias, mult, shift), 0, 127)   (ReLU)
#
# External memory layout the host writes before the run (all row-major, little-endian):
#   0x000  A      4 rows x 8 int8        (row stride 8 bytes)
#   0x100  W      8 rows x 4 int8        (row stride 4 bytes; row k = W[k, 0:4])
#   0x200  params 3 lines x 4 int32      (bias[4], mult[4], shift[4]; 48 bytes)
#   0x300  out    4 rows x 4 int8        (written by the program)
#
# Scratchpad map:
#   ACT 0..7    A: row m occupies lines 2m, 2m+1 (K = 8 = two lines of cols = 4)
#   ACT 32..35  the int8 result, one line per output row
#   WGT 0..7    W: line k = W[k, 0:4]
#   ACC 0..3    int32 accumulators, one line per output row
#   ACC 16..18  bias, mult, shift lines for REQUANT
#
# Semaphores order the engines (the only ordering between queues):
#   sem 0  counts finished LOADs; MATMUL waits for all three and consumes them
#   sem 1  MATMUL finished -> VECTOR may requantize
#   sem 2  REQUANT finished -> STORE may write the result back

# LOAD engine: three transfers, each signals sem 0 when its last line has landed.
load spad=act spad_addr=0  dram_addr=0x000 rows=4 row_lines=2 dram_stride=8  signal=0   # A
load spad=wgt spad_addr=0  dram_addr=0x100 rows=8 row_lines=1 dram_stride=4  signal=0   # W
load spad=acc spad_addr=16 dram_addr=0x200 rows=1 row_lines=3 dram_stride=48 signal=0   # bias/mult/shift

# MATMUL: 4 output rows (m_inner=4), activation row m starts at line 2m (a_stride=2),
# K = 8 reduction over weight lines 0..7, fresh accumulators (accumulate=0).
matmul a_addr=0 w_addr=0 acc_addr=0 k=8 m_inner=4 a_stride=2 m_outer=1 wait=0:3! signal=1

# VECTOR: requantize ACC 0..3 into ACT 32..35 with ReLU (lo=0), params at ACC 16.
requant src=0 dst=32 rows=4 dst_stride=1 param=16 lo=0 hi=127 zp=0 wait=1:1! signal=2

# STORE: 4 rows of one line each to 0x300, row stride 4 bytes.
store spad=act spad_addr=32 dram_addr=0x300 rows=4 row_lines=1 dram_stride=4 wait=2:1!

halt
