"""Zero-mask compression: the format the STORE engine writes and the LOAD engine reads.

A compressed transfer is a sequence of *groups*, one per transfer row, each in its own *slot*
(``dram_addr + row * dram_stride``) so that any row can be fetched without reading the rest::

    slot:  N (uint16, little-endian) | payload (N bytes) | unused up to the slot size
    payload: for each of the row's ``row_lines`` lines:
             mask (ceil(cols/8) bytes; bit i, LSB first, set <=> element i is non-zero)
             the non-zero elements of the line, in order

Bytes moved on the bus for a row are ``2 + N``; the worst case (all non-zero) is
``2 + row_lines * (mask_bytes + cols)`` which is the minimum slot size a compressed STORE
needs (``dram_stride``). A LOAD rejects a group (:class:`~sparrow.errors.CorruptDataError`) when

* ``N`` exceeds the worst case for ``row_lines`` lines (count overflow),
* a line's mask claims more non-zero bytes than remain in the ``N``-byte payload (mask overrun),
* the lines decode to fewer than ``N`` bytes (trailing bytes).
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptDataError

__all__ = ["mask_bytes", "group_capacity", "compress_group", "decompress_group", "group_size",
           "compressed_size", "line_masks"]

COUNT_BYTES = 2


def mask_bytes(cols: int) -> int:
    return (cols + 7) // 8


def group_capacity(row_lines: int, cols: int) -> int:
    """Largest legal payload ``N`` for a group of ``row_lines`` lines."""
    return row_lines * (mask_bytes(cols) + cols)


def line_masks(lines: np.ndarray) -> np.ndarray:
    """Mask bytes of each line: ``[n, cols] int8`` -> ``[n, mask_bytes] uint8``."""
    lines = np.asarray(lines)
    nz = (lines != 0).astype(np.uint8)
    cols = lines.shape[-1]
    pad = mask_bytes(cols) * 8 - cols
    if pad:
        nz = np.concatenate([nz, np.zeros(nz.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.packbits(nz, axis=-1, bitorder="little")


def compress_group(lines: np.ndarray) -> bytes:
    """Compress one row (``[row_lines, cols]`` int8) into ``N`` + payload."""
    lines = np.asarray(lines, dtype=np.int8)
    if lines.ndim != 2:
        raise ValueError("compress_group expects [row_lines, cols]")
    masks = line_masks(lines)
    out = bytearray()
    for line, m in zip(lines, masks):
        out += m.tobytes()
        out += line[line != 0].tobytes()
    n = len(out)
    if n >= 1 << 16:
        raise ValueError(f"group payload of {n} bytes does not fit the 16-bit count")
    return n.to_bytes(COUNT_BYTES, "little") + bytes(out)


def group_size(lines: np.ndarray) -> int:
    """Bytes ``compress_group(lines)`` produces (count included), computed without building it."""
    lines = np.asarray(lines)
    return COUNT_BYTES + lines.shape[0] * mask_bytes(lines.shape[1]) + int(np.count_nonzero(lines))


def compressed_size(rows: np.ndarray) -> int:
    """Bus bytes of a compressed transfer of ``[rows, row_lines, cols]``."""
    rows = np.asarray(rows)
    return rows.shape[0] * (COUNT_BYTES + rows.shape[1] * mask_bytes(rows.shape[2])) + int(np.count_nonzero(rows))


def decompress_group(data, row_lines: int, cols: int):
    """Decode one group from ``data`` (bytes starting at the slot).

    Returns ``(lines [row_lines, cols] int8, bytes_consumed)`` where ``bytes_consumed = 2 + N``.
    Raises :class:`CorruptDataError` (with ``.line``: lines decoded before the fault) on a bad group.
    """
    data = memoryview(bytes(data))
    if len(data) < COUNT_BYTES:
        raise CorruptDataError("group shorter than its count")
    n = int.from_bytes(data[:COUNT_BYTES], "little")
    cap = group_capacity(row_lines, cols)
    if n > cap:
        err = CorruptDataError(f"group count {n} exceeds the capacity {cap} of {row_lines} lines")
        err.line = 0
        raise err
    if len(data) < COUNT_BYTES + n:
        raise CorruptDataError(f"group claims {n} bytes but only {len(data) - COUNT_BYTES} follow")
    mb = mask_bytes(cols)
    out = np.zeros((row_lines, cols), dtype=np.int8)
    pos, end = COUNT_BYTES, COUNT_BYTES + n
    for i in range(row_lines):
        if pos + mb > end:
            err = CorruptDataError(f"line {i}: mask runs past the group's {n} bytes")
            err.line = i
            raise err
        bits = np.unpackbits(np.frombuffer(data[pos:pos + mb], np.uint8), bitorder="little")[:cols]
        pos += mb
        k = int(bits.sum())
        if pos + k > end:
            err = CorruptDataError(f"line {i}: mask claims {k} bytes, {end - pos} remain in the group")
            err.line = i
            raise err
        out[i, bits.astype(bool)] = np.frombuffer(data[pos:pos + k], np.int8)
        pos += k
    if pos != end:
        err = CorruptDataError(f"group has {end - pos} trailing bytes after {row_lines} lines")
        err.line = row_lines
        raise err
    return out, end
