#!/usr/bin/env python3
"""Pairs for the hybrid-selective reuse plan (issue 15), as `semshare bench --suite reuse
--pairs FILE` JSON lines {"reference": ..., "target": ...}.

Each pair shares an exact prefix (an instruction and a report of `--report` sentences) and then
differs in a long remainder that matches another part of the reference: the reference's notes
(`--notes` sentences, in passages of 4) come back in the target with the passages shuffled, as a
retrieval-augmented prompt reorders retrieved chunks after a fixed document. Sentences are the
first sentences of label-1 pairs of the shipped corpus (data/paraphrase/paraphrase_pairs.txt),
each pair from its own slice of the corpus. Deterministic for a seed.

  bench/make_hybrid_pairs.py --report 48 --notes 32 --pairs 2 > /tmp/hybrid_long_prefix.jsonl
"""
import argparse
import pathlib
import random
import sys


def sentences(path):
    out = []
    with open(path, encoding="utf-8-sig") as f:
        next(f)  # header
        for line in f:
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) >= 5 and cols[0] == "1":
                out.append(cols[3])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    ap.add_argument("--corpus", default=str(root / "data/paraphrase/paraphrase_pairs.txt"))
    ap.add_argument("--report", type=int, default=48, help="sentences in the shared report")
    ap.add_argument("--notes", type=int, default=32, help="sentences in the reordered notes")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    pool = sentences(a.corpus)
    need = a.report + a.notes
    if need * a.pairs > len(pool):
        sys.exit(f"the corpus has {len(pool)} sentences; {need * a.pairs} needed")
    rng = random.Random(a.seed)
    import json
    for p in range(a.pairs):
        s = pool[p * need:(p + 1) * need]
        report, notes = s[:a.report], s[a.report:]
        passages = [notes[i:i + 4] for i in range(0, len(notes), 4)]
        shuffled = passages[:]
        while len(shuffled) > 1 and shuffled == passages:
            rng.shuffle(shuffled)
        head = "Read the report and the notes, then answer the question.\nReport:\n"
        head += "".join(x + "\n" for x in report) + "Notes:\n"
        tail = "Question: which event in the notes matters most, and why?\nAnswer:"
        ref = head + "".join(x + "\n" for g in passages for x in g) + tail
        tgt = head + "".join(x + "\n" for g in shuffled for x in g) + tail
        print(json.dumps({"reference": ref, "target": tgt}))


if __name__ == "__main__":
    main()
