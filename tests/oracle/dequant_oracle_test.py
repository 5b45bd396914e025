"""Oracle: our dequantisation (engine/model/dequant.cc via tests/tools/dequant_dump) against gguf-py's
numpy port of ggml's reference `dequantize_row_*` (gguf.quants.dequantize).

Why bit-exact equality is the right check: each output element is a short float32 expression of
an f16 scale (widened exactly) and small integers: Q4_0/Q5_0/Q8_0 `q * d`, Q4_1/Q5_1
`q * d + m`, Q4_K/Q5_K `(d * sc) * q - dmin * m`, Q6_K `(d * sc) * q`. Every product is exact in
float32 (11 significand bits of d times integer factors of at most 12 significant bits together,
e.g. Q6_K's |sc| <= 128 and |q| <= 32: at most 23 bits),
so the only rounding is the one final addition, correctly rounded by IEEE-754 in both numpy and
C++. The result is therefore the same whatever the evaluation order or FMA contraction; both
also group as ggml does, which fixes the sign of zero results. F16 and BF16 are exact widenings
and F32 a copy. Hence equal bit patterns (compared as uint32, so that -0.0 vs 0.0 and NaN
payloads count too), not a tolerance.

Inputs are random raw blocks from a seeded generator: all bytes random, except that the f16 scale
fields are random *finite* f16 values (all signs, subnormals and zeros included), because an inf
scale makes NaN whose sign and payload are not specified by IEEE. The F16 and BF16 cases cover
all 65536 bit patterns, NaN and inf included. A few real tensors of the default model are
compared too.
"""

import os
import subprocess

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT

# Byte offsets of the f16 scale fields within a block, per type (engine/model/dequant.cc layouts).
SCALE_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
QUANT_TYPES = list(SCALE_FIELDS)
N_BLOCKS = {"Q4_K": 2048, "Q5_K": 2048, "Q6_K": 2048}  # 256-element blocks; others 8192


@pytest.fixture(scope="module")
def dump_bin(binary_dir):
    path = binary_dir / "tests" / "dequant_dump"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build target `dequant_dump` in {binary_dir}")
    return path


def run_dump(dump_bin, tmp_path, type_name: str, n: int, raw: bytes) -> np.ndarray:
    src, dst = tmp_path / f"{type_name}.bin", tmp_path / f"{type_name}.f32"
    src.write_bytes(raw)
    proc = subprocess.run([str(dump_bin), type_name, str(n), str(src), str(dst)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = np.fromfile(dst, dtype=np.float32)
    assert out.size == n
    return out


def assert_bits_equal(ours: np.ndarray, ref: np.ndarray, what: str):
    ours = np.ascontiguousarray(ours, dtype=np.float32).reshape(-1)
    ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
    assert ours.shape == ref.shape, what
    a, b = ours.view(np.uint32), ref.view(np.uint32)
    if not np.array_equal(a, b):
        bad = np.flatnonzero(a != b)
        i = bad[0]
        pytest.fail(f"{what}: {bad.size} of {a.size} elements differ; first at {i}: "
                    f"ours {ours[i]!r} (0x{a[i]:08x}) vs gguf-py {ref[i]!r} (0x{b[i]:08x})")


def finite_f16_bits(rng, size) -> np.ndarray:
    bits = rng.integers(0, 1 << 16, size=size, dtype=np.uint16)
    inf_or_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_or_nan] ^= 0x4000  # clear the top exponent bit: a finite value of the same sign
    return bits


def random_blocks(type_name: str, seed: int) -> tuple[np.ndarray, int]:
    qt = QT[type_name]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qt]
    n_blocks = N_BLOCKS.get(type_name, 8192)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_FIELDS[type_name]:
        raw[:, off:off + 2] = finite_f16_bits(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1), n_blocks * block_size


@pytest.mark.parametrize("type_name", QUANT_TYPES)
def test_random_blocks_bit_exact(dump_bin, tmp_path, type_name):
    raw, n = random_blocks(type_name, seed=1234 + QUANT_TYPES.index(type_name))
    ref = gguf.quants.dequantize(raw, QT[type_name])
    ours = run_dump(dump_bin, tmp_path, type_name, n, raw.tobytes())
    # Non-trivial inputs: finite, both signs, many distinct values.
    assert np.all(np.isfinite(ref)) and (ref < 0).any() and (ref > 0).any()
    assert np.unique(ref).size > n // 10
    assert_bits_equal(ours, ref, type_name)


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_every_16_bit_pattern(dump_bin, tmp_path, type_name):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    raw = bits.view(np.uint8)
    ref = gguf.quants.dequantize(raw, QT[type_name])
    ours = run_dump(dump_bin, tmp_path, type_name, bits.size, raw.tobytes())
    assert np.isnan(ref).any() and np.isinf(ref).any()
    assert_bits_equal(ours, ref, type_name)


def test_f32_copies_bits(dump_bin, tmp_path):
    bits = np.random.default_rng(7).integers(0, 1 << 32, size=100_000, dtype=np.uint32)
    raw = bits.view(np.uint8)
    ref = gguf.quants.dequantize(raw, QT.F32)
    ours = run_dump(dump_bin, tmp_path, "F32", bits.size, raw.tobytes())
    assert_bits_equal(ours, ref, "F32")


def test_dump_rejects_wrong_size(dump_bin, tmp_path):
    # The harness itself can fail: a size that does not match the count is an error.
    src = tmp_path / "short.bin"
    src.write_bytes(bytes(33))
    proc = subprocess.run([str(dump_bin), "Q8_0", "32", str(src), str(tmp_path / "o.f32")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "expected 34" in proc.stderr


REAL_TENSORS = {
    "token_embd.weight": "Q8_0",
    "blk.0.ffn_down.weight": "Q4_1",
    "blk.29.attn_q.weight": "Q4_1",
    "blk.0.attn_norm.weight": "F32",
    "output_norm.weight": "F32",
}


@pytest.fixture(scope="module")
def model_reader(model_path):
    return gguf.GGUFReader(str(model_path))  # parses the vocabulary: a few seconds, done once


@pytest.mark.parametrize("name", list(REAL_TENSORS))
def test_default_model_tensors(dump_bin, tmp_path, model_path, model_reader, name):
    reader = model_reader
    tensor = next((t for t in reader.tensors if t.name == name), None)
    assert tensor is not None, f"{name} not in {model_path}"
    assert tensor.tensor_type.name == REAL_TENSORS[name]
    n = int(np.prod(tensor.shape))
    data = np.ascontiguousarray(tensor.data)
    ref = gguf.quants.dequantize(data, tensor.tensor_type)
    ours = run_dump(dump_bin, tmp_path, tensor.tensor_type.name, n, data.tobytes())
    assert np.all(np.isfinite(ref)) and ref.min() < ref.max()
    assert_bits_equal(ours, ref, name)
