"""Zero-mask codec: round trip, size formulas and each corruption case (hand-built groups)."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparrow import codec
from sparrow.errors import CorruptDataError

SEED = int(os.environ.get("SPARROW_SEED", "1"))
print(f"SPARROW_SEED={SEED}")


def sparse_lines(seed, row_lines, cols, density):
    rng = np.random.default_rng(seed)
    vals = rng.integers(-128, 128, size=(row_lines, cols)).astype(np.int8)
    keep = rng.random((row_lines, cols)) < density
    return np.where(keep, vals, 0).astype(np.int8)


@settings(max_examples=300, deadline=None)
@given(row_lines=st.integers(1, 12), cols=st.sampled_from([2, 4, 8, 16, 32, 64]),
       sparsity=st.integers(0, 100), seed=st.integers(0, 2**32 - 1))
def test_round_trip(row_lines, cols, sparsity, seed):
    lines = sparse_lines(seed ^ SEED, row_lines, cols, 1 - sparsity / 100)
    g = codec.compress_group(lines)
    n = int.from_bytes(g[:2], "little")
    assert len(g) == 2 + n
    assert len(g) == codec.group_size(lines)
    assert n <= codec.group_capacity(row_lines, cols)
    out, used = codec.decompress_group(g + b"\xaa" * 7, row_lines, cols)   # slot tail is ignored
    assert used == len(g)
    np.testing.assert_array_equal(out, lines)


@pytest.mark.parametrize("sparsity", [0, 25, 50, 90, 100])
def test_size_formulas(sparsity):
    rng = np.random.default_rng(SEED)
    rows, row_lines, cols = 6, 3, 8
    data = np.stack([sparse_lines(int(rng.integers(1 << 30)), row_lines, cols, 1 - sparsity / 100)
                     for _ in range(rows)])
    total = sum(len(codec.compress_group(r)) for r in data)
    assert codec.compressed_size(data) == total
    # independent formula: per row 2 + row_lines * ceil(cols/8) + nonzeros
    assert total == rows * (2 + row_lines * 1) + int(np.count_nonzero(data))


def test_known_encoding():
    lines = np.array([[0, 5, 0, -1], [0, 0, 0, 0]], dtype=np.int8)
    # mask of line 0: bits 1 and 3 -> 0b1010; line 1: empty
    assert codec.compress_group(lines) == bytes([4, 0, 0b1010, 5, 0xFF, 0])


def group(payload: bytes, n=None) -> bytes:
    n = len(payload) if n is None else n
    return n.to_bytes(2, "little") + payload


def test_count_overflow():
    cols, row_lines = 8, 2
    cap = row_lines * (1 + cols)
    with pytest.raises(CorruptDataError) as e:
        codec.decompress_group(group(b"\0" * (cap + 1)), row_lines, cols)
    assert e.value.line == 0
    full = group(bytes([0xFF]) + b"\1" * 8 + bytes([0xFF]) + b"\2" * 8)
    out, used = codec.decompress_group(full, row_lines, cols)
    assert used == 2 + cap and (out == [[1] * 8, [2] * 8]).all()


def test_mask_overrun_in_values():
    # line 0: mask 0x01 + 1 value; line 1: mask 0xFF claims 8 values but only 3 remain
    payload = bytes([0x01, 7, 0xFF, 1, 2, 3])
    with pytest.raises(CorruptDataError) as e:
        codec.decompress_group(group(payload), 3, 8)
    assert e.value.line == 1


def test_mask_overrun_in_mask():
    # two valid empty lines, then the third line's mask byte is missing
    payload = bytes([0x00, 0x00])
    with pytest.raises(CorruptDataError) as e:
        codec.decompress_group(group(payload), 3, 8)
    assert e.value.line == 2


def test_trailing_bytes():
    payload = bytes([0x00, 0x03, 9, 9, 0xEE])
    with pytest.raises(CorruptDataError) as e:
        codec.decompress_group(group(payload), 2, 8)
    assert e.value.line == 2


def test_mask_bits_beyond_cols_ignored():
    # cols = 4: only the low 4 mask bits count; a high bit set must not claim a value
    out, used = codec.decompress_group(group(bytes([0xF1, 5])), 1, 4)
    assert used == 4 and out.tolist() == [[5, 0, 0, 0]]
