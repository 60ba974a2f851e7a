"""Small emission helpers shared by the kernels (field limits, row splitting)."""

from __future__ import annotations

from .builder import ProgramBuilder

MAX_ROWS = 1023          # LOAD/STORE rows (10 bits)
MAX_ROW_LINES = 1023     # LOAD/STORE row_lines (10 bits)
MAX_STRIDE = 0xFFFF      # dram_stride (16 bits)
MAX_M_INNER = 255
MAX_A_STRIDE = 255
MAX_K = 4095
MAX_LB = 127


def cdiv(a, b):
    return -(-a // b)


def line_bytes_field(b: ProgramBuilder, spad: str, nbytes: int, what: str) -> int:
    """``line_bytes`` for moving ``nbytes`` of each line (0 = the whole line)."""
    full = b.cfg.spad_line_bytes(spad)
    if nbytes == full:
        return 0
    if not 1 <= nbytes <= min(full, MAX_LB):
        raise ValueError(f"{what}: {nbytes} bytes per line cannot be encoded (line is {full} bytes)")
    return nbytes


def check_stride(stride: int, what: str):
    if not 0 <= stride <= MAX_STRIDE:
        raise ValueError(f"{what}: row stride {stride} bytes exceeds the 16-bit dram_stride field")


def load(b: ProgramBuilder, spad: str, spad_addr: int, dram_addr: int, rows: int, row_lines: int,
         dram_stride: int, line_bytes: int = 0, **pads):
    """LOAD, split into several instructions when ``rows`` exceeds the field (no padding then)."""
    if rows <= MAX_ROWS:
        b.emit("load", spad=spad, spad_addr=spad_addr, dram_addr=dram_addr, rows=rows, row_lines=row_lines,
               dram_stride=dram_stride, line_bytes=line_bytes, **pads)
        return
    if any(pads.values()):
        raise ValueError("rows: padded LOADs cannot be split")
    for r0 in range(0, rows, MAX_ROWS):
        n = min(MAX_ROWS, rows - r0)
        b.emit("load", spad=spad, spad_addr=spad_addr + r0 * row_lines,
               dram_addr=dram_addr + r0 * dram_stride, rows=n, row_lines=row_lines,
               dram_stride=dram_stride, line_bytes=line_bytes)


def store(b: ProgramBuilder, spad: str, spad_addr: int, dram_addr: int, rows: int, row_lines: int,
          dram_stride: int, line_bytes: int = 0, spad_stride: int = 0):
    s = spad_stride or row_lines
    for r0 in range(0, rows, MAX_ROWS):
        n = min(MAX_ROWS, rows - r0)
        b.emit("store", spad=spad, spad_addr=spad_addr + r0 * s, dram_addr=dram_addr + r0 * dram_stride,
               rows=n, row_lines=row_lines, dram_stride=dram_stride, line_bytes=line_bytes,
               spad_stride=spad_stride)


def move_lines(b: ProgramBuilder, op: str, spad: str, spad_addr: int, dram_addr: int, n: int,
               nbytes: int, dram_stride: int):
    """LOAD (``op="load"``) or STORE ``n`` consecutive scratchpad lines, line ``i`` <-> the ``nbytes``
    bytes at ``dram_addr + i*dram_stride``.

    When the lines are contiguous in memory (``dram_stride == nbytes``) they move as long rows
    (one row-setup per 1023 lines) instead of one row per line.
    """
    lb = line_bytes_field(b, spad, nbytes, "line_bytes")
    fn = load if op == "load" else store
    if dram_stride == nbytes:
        for i0 in range(0, n, MAX_ROW_LINES):
            k = min(MAX_ROW_LINES, n - i0)
            fn(b, spad, spad_addr + i0, dram_addr + i0 * nbytes, 1, k, 0, lb)
    else:
        fn(b, spad, spad_addr, dram_addr, n, 1, dram_stride, lb)


def zero_fill(b: ProgramBuilder, spad: str, spad_addr: int, lines: int):
    """Zero ``lines`` scratchpad lines.

    Each LOAD reads one zero line of the builder's zero block and writes the rest as padding
    (``(pad_top + 1 + pad_bottom) x (pad_left + 1 + pad_right)`` lines, up to 31 x 31), so the
    bus moves one line per 961 zeroed lines instead of every line.
    """
    z = b.zero_line_addr()
    a, left = spad_addr, lines
    while left > 0:
        if left >= 31:
            h = min(31, left // 31)
            w = 31
        else:
            h, w = 1, left
        pt, pb = (h - 1) // 2, (h - 1) - (h - 1) // 2
        pl, pr = (w - 1) // 2, (w - 1) - (w - 1) // 2
        b.emit("load", spad=spad, spad_addr=a, dram_addr=z, rows=1, row_lines=1, dram_stride=0,
               pad_top=pt, pad_bottom=pb, pad_left=pl, pad_right=pr)
        a += h * w
        left -= h * w


def load_params(b: ProgramBuilder, params_addr: int, acc_line: int):
    """LOAD the 3 requant parameter lines (bias, mult, shift) of one column tile into ACC."""
    b.emit("load", spad="acc", spad_addr=acc_line, dram_addr=params_addr, rows=1, row_lines=3,
           dram_stride=0)


def store_rows(b: ProgramBuilder, o: int, out, row0: int, nrows: int, line: int, nbytes: int):
    """STORE ACT lines ``o .. o+nrows-1``: line ``i`` is line ``line`` (column tile of ``cols``
    channels, ``nbytes`` of them valid) of row ``row0 + i`` of the int8 tensor ``out`` (last axis
    = channels). Dense tensors get the ``nbytes`` at ``row*C + line*cols``; compressed ones
    (``out.slot``) one zero-mask group per line in slot ``row*lpp + line``."""
    C = out.shape[-1]
    cols = b.cfg.cols
    if not out.slot:
        move_lines(b, "store", "act", o, out.addr + row0 * C + line * cols, nrows, nbytes, C)
        return
    lpp = cdiv(C, cols)
    for r0 in range(0, nrows, MAX_ROWS):
        n = min(MAX_ROWS, nrows - r0)
        b.emit("store", spad="act", spad_addr=o + r0, dram_addr=out.addr + ((row0 + r0) * lpp + line) * out.slot,
               rows=n, row_lines=1, dram_stride=lpp * out.slot, compressed=1)


def load_compressed_lines(b: ProgramBuilder, spad_addr: int, x, line0: int, nlines: int):
    """LOAD ``nlines`` consecutive lines (pixel-major, ``ceil(C/cols)`` per pixel) of the
    compressed tensor ``x`` starting at its line ``line0`` into ACT lines ``spad_addr ..``."""
    for i0 in range(0, nlines, MAX_ROWS):
        n = min(MAX_ROWS, nlines - i0)
        b.emit("load", spad="act", spad_addr=spad_addr + i0, dram_addr=x.addr + (line0 + i0) * x.slot,
               rows=n, row_lines=1, dram_stride=x.slot, compressed=1)
