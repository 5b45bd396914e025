#!/usr/bin/env python3
"""Prompts for `semshare loadgen` / scripts/soak from a paraphrase corpus in MRPC's format:
by default the one shipped in data/paraphrase (data/paraphrase/README.md), or --corpus FILE
(e.g. the MRPC train file).

Writes one prompt per line ("\\n" escapes newlines). Each of --passages passages is an
instruction followed by --sentences corpus sentences; every passage appears --variants times: the
original, then versions where a different subset of its sentences is replaced by their
paraphrase (label 1 pairs). Served in a loop, the first request of a passage misses and publishes
a reference; its variants are lexically different but similar, so they can hit it; and
--unique passages appear once each (misses). Deterministic for a given --seed.

usage: make_loadgen_prompts.py [--corpus FILE] --out FILE [--passages 8] [--variants 4]
       [--sentences 12] [--unique 8] [--seed 1]
"""
import argparse
import pathlib
import random

SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "data" / "paraphrase" / "paraphrase_pairs.txt"


def read_pairs(path):
  pairs = []
  with open(path, encoding="utf-8-sig") as f:
    next(f)
    for line in f:
      cols = line.rstrip("\r\n").split("\t")
      if len(cols) == 5 and cols[0] == "1":
        pairs.append((cols[3], cols[4]))
  return pairs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--corpus", "--mrpc", dest="corpus", default=str(SHIPPED),
                  help="paraphrase pairs in MRPC's format (default: %(default)s)")
  ap.add_argument("--out", required=True)
  ap.add_argument("--passages", type=int, default=8)
  ap.add_argument("--variants", type=int, default=4)
  ap.add_argument("--sentences", type=int, default=12)
  ap.add_argument("--unique", type=int, default=8)
  ap.add_argument("--seed", type=int, default=1)
  a = ap.parse_args()
  rng = random.Random(a.seed)
  pairs = read_pairs(a.corpus)
  rng.shuffle(pairs)
  need = (a.passages + a.unique) * a.sentences
  if len(pairs) < need:
    raise SystemExit(f"{a.corpus}: {len(pairs)} paraphrase pairs, {need} needed")
  head = "Summarize the following news in two sentences.\n\n"
  lines = []
  for p in range(a.passages):
    chunk = pairs[p * a.sentences:(p + 1) * a.sentences]
    for v in range(a.variants):
      swap = set(rng.sample(range(len(chunk)), len(chunk) // 4)) if v else set()
      body = " ".join(b if i in swap else s for i, (s, b) in enumerate(chunk))
      lines.append(head + body)
  base = a.passages * a.sentences
  for u in range(a.unique):
    chunk = pairs[base + u * a.sentences:base + (u + 1) * a.sentences]
    lines.append(head + " ".join(s for s, _ in chunk))
  rng.shuffle(lines)
  with open(a.out, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line.replace("\\", "\\\\").replace("\n", "\\n") + "\n")
  print(f"{a.out}: {len(lines)} prompts ({a.passages} passages x {a.variants} variants, "
        f"{a.unique} unique)")


if __name__ == "__main__":
  main()
