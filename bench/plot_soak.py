#!/usr/bin/env python3
"""Plot of a soak run: `semshare loadgen --json FILE --server-pid PID --window-s W` (scripts/soak).

Two panels over the run's time: p50 and p99 TTFT per window (ms), and the server's resident
memory (MB, every one-second sample, with each window's maximum). Errors per window are marked
on the TTFT panel. Also prints a one-line summary: requests, ok, errors by code, RSS growth from
the end of the first window to the end of the run.

usage: plot_soak.py --json FILE --out PNG [--title TEXT]
Exit status 2 on an unreadable or malformed JSON file.
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--json", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--title", default="semshare soak")
  a = ap.parse_args()
  try:
    with open(a.json) as f:
      d = json.load(f)
    windows = d["windows"]
    rss = d.get("rss", [])
  except (OSError, ValueError, KeyError) as e:
    print(f"plot_soak.py: {a.json}: {e}", file=sys.stderr)
    sys.exit(2)

  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
  # Each window's figures sit at its middle (the last window may be cut short by the run's end).
  width = windows[1]["start_s"] - windows[0]["start_s"] if len(windows) > 1 else d["elapsed_s"]
  mid = [(w["start_s"] + min(w["start_s"] + width, d["elapsed_s"])) / 2 / 60 for w in windows]
  # Windows with no successful request report -1 (or 0) as their percentiles: leave them out.
  pts = [(m, w["ttft_ms_p50"], w["ttft_ms_p99"]) for m, w in zip(mid, windows)
         if w["requests"] > w["errors"] and w["ttft_ms_p50"] > 0]
  ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="p50 TTFT")
  ax1.plot([p[0] for p in pts], [p[2] for p in pts], "s-", label="p99 TTFT")
  err = [(m, w["errors"]) for m, w in zip(mid, windows) if w["errors"] > 0]
  if err:
    ax1b = ax1.twinx()
    ax1b.bar([e[0] for e in err], [e[1] for e in err], width=0.3, color="tab:red", alpha=0.4,
             label="errors")
    ax1b.set_ylabel("errors per window")
  ax1.set_ylabel("TTFT (ms)")
  ax1.set_ylim(bottom=0)
  ax1.grid(alpha=0.3)
  ax1.legend(loc="upper left")
  ax1.set_title(f"{a.title}: {d['requests']} requests, {d['ok']} ok, concurrency "
                f"{d['concurrency']}, {d['max_tokens']} tokens each")
  if rss:
    ax2.plot([r["t_s"] / 60 for r in rss], [r["rss_bytes"] / 1e6 for r in rss], "-",
             lw=1, label="resident memory (1 s samples)")
  wr = [(m, w["rss_bytes_max"] / 1e6) for m, w in zip(mid, windows) if w["rss_bytes_max"] > 0]
  if wr:
    ax2.plot([x[0] for x in wr], [x[1] for x in wr], "o", label="window max")
  ax2.set_ylabel("server RSS (MB)")
  ax2.set_xlabel("minutes since start")
  ax2.set_ylim(bottom=0)
  ax2.grid(alpha=0.3)
  ax2.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(a.out, dpi=110)

  codes = ", ".join(f"{k} {v}" for k, v in sorted(d.get("codes", {}).items()))
  growth = ""
  if rss and len(windows) > 1:
    w1_end = windows[1]["start_s"]
    after = [r["rss_bytes"] for r in rss if r["t_s"] >= w1_end]
    if after:
      growth = (f"; RSS {after[0] / 1e6:.1f} MB after the first window -> "
                f"{rss[-1]['rss_bytes'] / 1e6:.1f} MB at the end (max {max(after) / 1e6:.1f})")
  print(f"{a.json}: {d['requests']} requests, {d['ok']} ok ({codes}); cache "
        f"{d.get('cache', {})}; TTFT p50 {d['ttft_ms']['p50']:.1f} ms, p99 "
        f"{d['ttft_ms']['p99']:.1f} ms{growth}; plot {a.out}")


if __name__ == "__main__":
  main()
