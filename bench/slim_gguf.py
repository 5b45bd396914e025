#!/usr/bin/env python3
"""Writes a copy of a GGUF model that keeps only its first N transformer blocks.

Everything else is copied: the tokenizer, the chat template, the embedding and output
tensors, every metadata field except `<arch>.block_count`, which becomes N. With
--embedding-q4_1 the token embedding (Q8_0 in SmolLM2's Q4_1 file, 29 MiB) is requantised to
Q4_1 (17 MiB). The result is a real model file with the real vocabulary and tokenizer but a
fraction of the weights: what scripts/gpu-check carries to the GPU machine (the transfer
allows 64 MiB; SmolLM2-135M Q4_1 is 94 MiB, its 2-block copy with a Q4_1 embedding ~19 MiB)
to run semshare-server end to end with --backend cuda. Its text is not meaningful; the check
compares the CUDA server's cache behaviour and greedy text with the CPU server's on the same
file.

usage: bench/slim_gguf.py IN.gguf OUT.gguf --blocks 2 [--embedding-q4_1]
"""
import argparse
import re
import sys

import gguf
from gguf import quants


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--blocks", type=int, default=2, help="transformer blocks to keep (>= 1)")
    ap.add_argument("--embedding-q4_1", action="store_true",
                    help="requantise token_embd.weight to Q4_1 (smaller file)")
    a = ap.parse_args()
    reader = gguf.GGUFReader(a.src)
    arch_field = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        print(f"{a.src}: no general.architecture", file=sys.stderr)
        return 1
    arch = arch_field.contents()
    count_key = f"{arch}.block_count"
    if count_key not in reader.fields:
        print(f"{a.src}: no {count_key}", file=sys.stderr)
        return 1
    have = int(reader.fields[count_key].contents())
    if not 1 <= a.blocks <= have:
        print(f"--blocks must be in 1..{have}", file=sys.stderr)
        return 2
    writer = gguf.GGUFWriter(a.dst, arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = a.blocks if field.name == count_key else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    block = re.compile(r"^blk\.(\d+)\.")
    kept = [t for t in reader.tensors
            if not (m := block.match(t.name)) or int(m.group(1)) < a.blocks]
    data = {}
    for t in kept:
        d, ttype = t.data, t.tensor_type
        q4_1 = gguf.GGMLQuantizationType.Q4_1
        if a.embedding_q4_1 and t.name == "token_embd.weight" and ttype != q4_1:
            d, ttype = quants.quantize(quants.dequantize(t.data, ttype), q4_1), q4_1
        data[t.name] = d
        writer.add_tensor_info(t.name, d.shape, d.dtype, d.nbytes, ttype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(data[t.name], tensor_endianess=reader.endianess)
    writer.close()
    print(f"{a.dst}: {a.blocks} of {have} blocks, {len(kept)} of {len(reader.tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
