#!/usr/bin/env python3
"""Plots of `semshare bench --suite reuse --json FILE` (run by `--plots DIR`, or by hand).

Writes into --out:
  ttft_vs_length.png       median TTFT vs target length, one line per mode, one panel per kind
  quality_vs_speedup.png   every (pair, mode): perplexity ratio and ROUGE-L vs speedup over full
  ablation_retention.png   perplexity ratio vs retention ratio rho per schedule (if measured)
  ablation_ecache.png      per-layer deviation of the rearranged KV, E-cache RoPE on vs off
                           (if measured)
With --sweep, the JSON files are runs of one pair set that differ in one ReuseConfig knob
(their "config"), and it writes instead:
  knob_sweep.png           per length, median perplexity ratio vs median speedup of semshare
                           over full, one point per run, labelled with the knob's value
Exit status 2 on an unreadable or malformed JSON file, or sweep runs that differ in no knob.
"""
import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# "served": the server's hit rule and path per pair (exact / hybrid / semantic / miss).
MODES = ["full", "prefix", "snapkv", "semshare", "served"]
COLORS = {"full": "tab:gray", "prefix": "tab:blue", "snapkv": "tab:orange", "semshare": "tab:green",
          "served": "tab:red"}
MARKERS = {"paraphrase": "o", "reorder": "s", "repeat": "D", "user": "^", "chat": "v"}


def save(fig, out, name):
    """Writes the figure as out/name and returns that path."""
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ttft_vs_length(data, out):
    kinds = sorted({s["kind"] for s in data["summary"]})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for mode in MODES:
            rows = sorted((s["length"], s["ttft_ms"]) for s in data["summary"]
                          if s["kind"] == kind and s["mode"] == mode)
            if rows:
                ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=mode,
                        color=COLORS[mode])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("target tokens")
        ax.set_ylabel("TTFT (ms, median over pairs)")
        ax.set_title(f"TTFT vs length: {kind}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save(fig, out, "ttft_vs_length.png")


def quality_vs_speedup(data, out):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for field, ax, label in (("ppl_ratio", axes[0], "perplexity of full's output / full's"),
                             ("rouge_l", axes[1], "ROUGE-L F1 vs full's output")):
        for mode in MODES:
            for kind, marker in MARKERS.items():
                pts = [(r["speedup"], r[field]) for r in data["records"]
                       if r["mode"] == mode and r["kind"] == kind]
                if pts:
                    ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                               color=COLORS[mode], label=f"{mode} / {kind}", alpha=0.75)
        ax.axvline(1.0, color="black", lw=0.5)
        ax.set_xlabel("TTFT speedup vs full")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].axhline(1.10, color="red", lw=0.8, ls="--", label="target 1.10")
    axes[1].legend(fontsize=7)
    fig.suptitle("quality vs speedup (every pair)")
    return save(fig, out, "quality_vs_speedup.png")


def ablation_retention(data, out):
    rows = data.get("ablation_retention") or []
    if not rows:
        return None
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for sched in ("constant", "increasing", "exponential"):
            rhos = sorted({r["rho"] for r in rows if r["mode"] == mode and r["schedule"] == sched})
            ys = [statistics.median(r["ppl_ratio"] for r in rows if r["mode"] == mode
                                    and r["schedule"] == sched and r["rho"] == rho) for rho in rhos]
            if rhos:
                ax.plot(rhos, ys, marker="o", label=sched)
        ax.set_xlabel("retention ratio rho")
        ax.set_ylabel("perplexity ratio vs full (median)")
        ax.set_title(f"retention schedules: {mode}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save(fig, out, "ablation_retention.png")


def ablation_ecache(data, out):
    rows = data.get("ablation_ecache") or []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for rope in (True, False):
        per = [r["deviation_per_layer"] for r in rows if r["ecache_rope"] == rope]
        if not per:
            continue
        layers = range(len(per[0]))
        ax.plot(list(layers), [statistics.median(p[l] for p in per) for l in layers], marker=".",
                label=f"E-cache RoPE {'on' if rope else 'off'}")
    ax.set_xlabel("layer")
    ax.set_ylabel("||K - K~|| + ||V - V~|| (median over pairs)")
    ax.set_title("rearranged KV vs true KV")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save(fig, out, "ablation_ecache.png")


def knob_sweep(runs, out):
    """runs: [(name, data)] of one pair set, differing in one ReuseConfig knob."""
    keys = sorted({k for _, d in runs for k in d["config"]})
    knobs = [k for k in keys if len({json.dumps(d["config"].get(k)) for _, d in runs}) > 1]
    if not knobs:
        raise ValueError("the sweep's runs differ in no ReuseConfig knob")
    lengths = sorted({r["length"] for _, d in runs for r in d["records"] if r["mode"] == "semshare"})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for length, color in zip(lengths, ["tab:blue", "tab:orange", "tab:green", "tab:red",
                                       "tab:purple", "tab:brown"]):
        pts = []
        for _, d in runs:
            rs = [r for r in d["records"] if r["mode"] == "semshare" and r["length"] == length]
            if rs:
                label = ", ".join(f"{d['config'][k]}" for k in knobs)
                pts.append((statistics.median(r["speedup"] for r in rs),
                            statistics.median(r["ppl_ratio"] for r in rs), label))
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color,
                label=f"{length} tokens")
        for x, y, label in pts:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("TTFT speedup vs full (median over pairs)")
    ax.set_ylabel("perplexity ratio (median over pairs)")
    ax.set_title(f"semshare by {', '.join(knobs)}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save(fig, out, "knob_sweep.png")


def load(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("suite") != "reuse" or "summary" not in data or "records" not in data:
        raise ValueError("not the JSON of `semshare bench --suite reuse`")
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="output of semshare bench --suite reuse --json")
    ap.add_argument("--out", required=True, help="directory for the PNG files")
    ap.add_argument("--sweep", action="store_true",
                    help="the files are runs differing in one knob: plot knob_sweep.png")
    a = ap.parse_args()
    if len(a.json) > 1 and not a.sweep:
        print("plot_reuse.py: several JSON files need --sweep", file=sys.stderr)
        return 2
    runs = []
    for path in a.json:
        try:
            runs.append((path, load(path)))
        except (OSError, ValueError) as e:
            print(f"plot_reuse.py: {path}: {e}", file=sys.stderr)
            return 2
    os.makedirs(a.out, exist_ok=True)
    if a.sweep:
        try:
            print(f"wrote {knob_sweep(runs, a.out)}")
        except ValueError as e:
            print(f"plot_reuse.py: {e}", file=sys.stderr)
            return 2
        return 0
    data = runs[0][1]
    for fn in (ttft_vs_length, quality_vs_speedup, ablation_retention, ablation_ecache):
        path = fn(data, a.out)
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
