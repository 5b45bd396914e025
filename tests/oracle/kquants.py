"""Numpy quantizers for ggml's Q4_K, Q5_K and Q6_K blocks (gguf-py only dequantizes these).

Simple min/max (Q4_K, Q5_K) and absmax (Q6_K) scale choices, not ggml's error-minimising
search: the oracle needs valid blocks of each layout, not the best ones. Layouts are ggml's
(engine/model/dequant.cc documents them); quant_oracle_test.py checks each packer by a round
trip through gguf-py's dequantizer before using it.
"""

import numpy as np

QK_K = 256


def _f16_bytes(x):
    return np.asarray(x, dtype="<f2").reshape(-1, 1).view(np.uint8)


def _scale_min_k4(sc, mn):
    """Packs 8 six-bit scales and mins per block ([nb, 8] each) into 12 bytes."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    return out


def _k45(x, bits):
    """x: [nb, 256] float32 -> (d, dmin, packed scales, q [nb, 8, 32] codes)."""
    nb = x.shape[0]
    qmax = (1 << bits) - 1
    sub = x.reshape(nb, 8, 32).astype(np.float64)
    lo = np.minimum(sub.min(axis=2), 0.0)  # the offset is subtracted: min clipped at 0
    hi = sub.max(axis=2)
    step = (hi - lo) / qmax  # [nb, 8]
    mval = -lo
    d = step.max(axis=1) / 63.0
    dmin = mval.max(axis=1) / 63.0
    d16 = d.astype(np.float16).astype(np.float64)
    dmin16 = dmin.astype(np.float16).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d16[:, None] > 0, np.rint(step / d16[:, None]), 0).clip(0, 63)
        m = np.where(dmin16[:, None] > 0, np.rint(mval / dmin16[:, None]), 0).clip(0, 63)
        scale = d16[:, None] * sc
        off = dmin16[:, None] * m
        q = np.where(scale[:, :, None] > 0,
                     np.rint((sub + off[:, :, None]) / scale[:, :, None]), 0).clip(0, qmax)
    return d16, dmin16, _scale_min_k4(sc, m), q.astype(np.uint8)


def quantize_q4_k(x):
    x = np.asarray(x, dtype=np.float32).reshape(-1, QK_K)
    d, dmin, scales, q = _k45(x, 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)  # group g: subs 2g, 2g+1
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qs], axis=1)


def quantize_q5_k(x):
    x = np.asarray(x, dtype=np.float32).reshape(-1, QK_K)
    d, dmin, scales, q = _k45(x, 5)
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for s in range(8):
        qh |= ((q[:, s, :] >> 4) & 1) << s
    low = q & 0xF
    qs = (low[:, 0::2, :] | (low[:, 1::2, :] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qh, qs], axis=1)


def quantize_q6_k(x):
    x = np.asarray(x, dtype=np.float32).reshape(-1, QK_K)
    nb = x.shape[0]
    sub = x.reshape(nb, 16, 16).astype(np.float64)
    step = np.abs(sub).max(axis=2) / 31.0  # codes q - 32 in [-31, 31]
    d = step.max(axis=1) / 127.0
    d16 = d.astype(np.float16).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d16[:, None] > 0, np.rint(step / d16[:, None]), 0).clip(-128, 127)
        scale = d16[:, None] * sc
        q = np.where(scale[:, :, None] != 0, np.rint(sub / scale[:, :, None]), 0).clip(-32, 31)
    q = (q + 32).astype(np.uint8).reshape(nb, 2, 4, 32)  # [block, half, chunk, l]
    ql = np.zeros((nb, 2, 64), dtype=np.uint8)
    ql[:, :, 0:32] = (q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:64] = (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
          | ((q[:, :, 3] >> 4) << 6)).astype(np.uint8)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64),
                           sc.astype(np.int8).view(np.uint8), _f16_bytes(d16)], axis=1)
