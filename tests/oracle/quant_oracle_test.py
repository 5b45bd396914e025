"""Oracle: the CPU backend on weights kept in every supported GGUF block format.

For each type, the default model's weights (dequantised with gguf-py) are requantised with
gguf-py (Q4_0, Q4_1, Q8_0, F16, BF16) or kquants.py (Q4_K, Q5_K, Q6_K) into a new GGUF file
with the same metadata; K-quant rows must be a whole number of 256-element blocks, so matrices
of 576-wide rows (SmolLM2's d_model) fall back to Q8_0 there, as llama.cpp's quantizer does.
`semshare forward` then runs each file twice:

- `--matmul float`: every projection on exactly dequantised weights in float32; its logits must
  match the float64 reference (llama_ref.py on the same file) within forward_oracle's bound, so
  the loader reads each block format right;
- `--matmul quant`: the serving kernels. After the prefill (dequantised tiles + sgemm) only the
  lm_head's single-row product runs the dot kernels, whose activation quantization
  (engine/cpu/quant_dot.h: 22 bits, d = max|h| / 2080768) moves logit r by at most
  ||w_r||_1 * max|h| * (1 / 4161536 + 2^-23). RMSNorm bounds max|h| <= sqrt(d_model) * max|gamma| (no
  element of x / rms(x) exceeds sqrt(d)), so the bound needs no hidden state. That bound is a
  worst case (every rounding error aligned); the measured move is ~100x smaller. Greedy tokens
  must equal the float path's up to the first step whose top-2 margin is below
  tau = 2 * sqrt(n_layers + 1) * (largest logit move measured after the prefill): a decode step
  runs all n_layers' projections and the lm_head through the same kernels, each moving its
  output by about as much relative to its scale as the lm_head's one product did, and
  independent errors add like a random walk (forward_oracle_test.py's argument for float
  rounding); the two top logits can move in opposite directions, hence the 2.
"""

import json
import math
import subprocess

import numpy as np
import pytest

import gguf
from gguf import quants

import kquants
import llama_ref

N_GREEDY = 16
EPS32 = float(np.finfo(np.float32).eps)
TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"]
K_QUANTIZERS = {"Q4_K": kquants.quantize_q4_k, "Q5_K": kquants.quantize_q5_k,
                "Q6_K": kquants.quantize_q6_k}


@pytest.fixture(scope="module")
def source(model_path):
    reader = gguf.GGUFReader(str(model_path))
    floats = {t.name: np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
              for t in reader.tensors}
    return reader, floats


def _quantize(name, x, qtype):
    """Returns (bytes array, raw dtype) of float32 matrix x [rows, cols] as `qtype`."""
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    if qtype in K_QUANTIZERS:
        if x.shape[1] % kquants.QK_K != 0:
            return _quantize(name, x, "Q8_0")
        b = K_QUANTIZERS[qtype](x).reshape(x.shape[0], -1)
        back = quants.dequantize(b, qt)
        # The packer round-trips through gguf-py: every element within one quantization step
        # of its sub-block (range / 15 at worst, Q4_K) plus the 6-bit scale rounding.
        step = (x.max(axis=1) - np.minimum(x.min(axis=1), 0)) / 15.0
        assert np.all(np.abs(back - x) <= 2 * step[:, None] + 1e-6), f"{qtype} packer: {name}"
        return b, qt
    if qtype == "F16":
        return x.astype(np.float16), None
    return quants.quantize(x, qt), qt


def _write(reader, floats, qtype, path):
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(str(path), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    types = {}
    for t in reader.tensors:
        x = floats[t.name]
        if x.ndim == 1:
            w.add_tensor(t.name, x)
            continue
        data, raw = _quantize(t.name, x, qtype)
        types[t.name] = raw.name if raw is not None else "F16"
        if raw is None:
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_dtype=raw)  # shape: rows x bytes per row
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


def _run(semshare_bin, path, ids, mode, tmp_path):
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps([int(t) for t in ids]))
    logits_file = tmp_path / f"logits_{mode}.f32"
    cmd = [str(semshare_bin), "forward", "--model", str(path), "--ids-file", str(ids_file),
           "--greedy", str(N_GREEDY), "--logits-out", str(logits_file), "--matmul", mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), np.fromfile(logits_file, dtype="<f4").astype(np.float64)


@pytest.mark.parametrize("qtype", TYPES)
def test_block_format_matches_float_path(qtype, source, semshare_bin, hf_tokenizer, tmp_path):
    reader, floats = source
    path = tmp_path / f"model.{qtype}.gguf"
    types = _write(reader, floats, qtype, path)
    ids = hf_tokenizer.encode("The history of the printing press begins in the fifteenth "
                              "century, when a goldsmith in Mainz", add_special_tokens=False)
    # Longer than kDotMaxRows (engine/cpu/quant_matmul.h, 8): the prefill runs dequantised
    # tiles + sgemm, so after it only the lm_head's one-row product differs between the modes.
    assert len(ids) > 8, len(ids)

    # 1. Float path against the float64 reference on the same file (forward_oracle's bound).
    ref = llama_ref.LlamaRef.from_path(str(path))
    cfg = ref.cfg
    want = ref.prefill(ids)
    del ref
    out_f, got_f = _run(semshare_bin, path, ids, "float", tmp_path)
    k_max = max(cfg.intermediate_size, cfg.hidden_size, len(ids) + N_GREEDY)
    scale = float(np.max(np.abs(want)))
    tol_f = EPS32 * math.sqrt(k_max) * math.sqrt(cfg.num_layers) * scale
    err_f = float(np.max(np.abs(got_f - want)))
    assert err_f <= tol_f, f"{qtype}: float path vs float64 reference {err_f:.3e} > {tol_f:.3e}"

    # 2. Serving kernels against the float path: the lm_head bound above, per logit.
    out_i, got_i = _run(semshare_bin, path, ids, "quant", tmp_path)
    moved = float(np.max(np.abs(got_i - got_f)))
    head = floats.get("output.weight", floats["token_embd.weight"])
    gamma = float(np.max(np.abs(floats["output_norm.weight"])))
    h_max = math.sqrt(cfg.hidden_size) * gamma
    bound = np.sum(np.abs(head.astype(np.float64)), axis=1) * h_max * (1 / 4161536.0 + 2.0**-23)
    bound += 2 * cfg.hidden_size * EPS32 * np.sum(np.abs(head), axis=1) * h_max  # rounding
    ratio = np.abs(got_i - got_f) / bound
    worst = int(np.argmax(ratio))
    print(f"{qtype} (matrices: {sorted(set(types.values()))}): float vs ref {err_f:.2e} "
          f"(tol {tol_f:.2e}); quant vs float max {moved:.2e}, "
          f"worst/bound {ratio[worst]:.2e} at {worst}")
    assert ratio[worst] <= 1.0, (
        f"{qtype}: logit {worst} moved {abs(got_i[worst] - got_f[worst]):.3e} by the quant path, "
        f"bound {bound[worst]:.3e}")
    assert moved > 0, "the quant path gave float-identical logits: were its kernels run?"

    # 3. Greedy tokens: identical up to the first near-tie the bound allows.
    tau = 2 * math.sqrt(cfg.num_layers + 1) * moved
    g_f, g_i, margins = out_f["greedy"], out_i["greedy"], out_f["margins"]
    first_tie = next((i for i, m in enumerate(margins) if m < tau), len(margins))
    diverge = next((i for i, (a, b) in enumerate(zip(g_f, g_i)) if a != b), len(g_f))
    print(f"{qtype}: greedy equal for {diverge}/{len(g_f)} tokens; first margin < tau "
          f"({tau:.2e}) at {first_tie}")
    assert diverge >= first_tie, (
        f"{qtype}: greedy tokens differ at {diverge} (float {g_f[diverge]}, quant "
        f"{g_i[diverge]}, margin {margins[diverge]:.4f}) before the first near-tie at {first_tie}")
