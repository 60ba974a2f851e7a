"""Layout helpers: NHWC tensors <-> scratchpad lines (channels padded to ``cols``).

In every scratchpad a pixel (or matrix row) of ``C`` channels is ``lpp = ceil(C/cols)`` lines:
channel ``c`` is element ``c % cols`` of line ``c // cols``; channels ``C .. lpp*cols-1`` are
padding (zero when loaded with a short ``line_bytes``). In external memory tensors are dense,
channels not padded.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lines_per_pixel", "pad_channels", "to_lines", "from_lines"]


def lines_per_pixel(channels: int, cols: int) -> int:
    if channels < 1 or cols < 1:
        raise ValueError(f"channels/cols must be >= 1, got {channels}/{cols}")
    return -(-channels // cols)


def pad_channels(x: np.ndarray, cols: int) -> np.ndarray:
    """Zero-pad the last axis of ``x`` to a multiple of ``cols``."""
    x = np.asarray(x)
    c = x.shape[-1]
    p = lines_per_pixel(c, cols) * cols - c
    if not p:
        return x.copy()
    return np.concatenate([x, np.zeros(x.shape[:-1] + (p,), x.dtype)], axis=-1)


def to_lines(x: np.ndarray, cols: int) -> np.ndarray:
    """``[..., C]`` -> ``[prod(...)*lpp, cols]``: the scratchpad lines of every pixel in order."""
    return pad_channels(x, cols).reshape(-1, cols)


def from_lines(lines: np.ndarray, shape, cols: int) -> np.ndarray:
    """Inverse of :func:`to_lines`: ``[n*lpp, cols]`` lines -> array of ``shape`` (drops padding)."""
    shape = tuple(shape)
    c = shape[-1]
    lpp = lines_per_pixel(c, cols)
    n = int(np.prod(shape[:-1], dtype=np.int64))
    lines = np.asarray(lines)
    if lines.shape != (n * lpp, cols):
        raise ValueError(f"lines: expected shape {(n * lpp, cols)} for {shape}, got {lines.shape}")
    return lines.reshape(n, lpp * cols)[:, :c].reshape(shape)
