#!/usr/bin/env python3
"""Plots a sluice-loadgen --json report as a PNG.

  plot_loadgen.py REPORT.json [-o REPORT.png] [--budget NAME] [--title TEXT]

Four panels against the offered load (concurrency in closed mode, arrival rate in Poisson
mode): TTFT, inter-token latency and end-to-end latency (p50, p90, p99 each), and the
throughput (output tokens/s; completed and good requests/s on the right axis). A figure the
report leaves out (no sample in that level's window) is not drawn: the line has a gap there.
The image is 1200 x 800 pixels. Needs matplotlib (scripts/setup-venv.sh installs it).
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter  # noqa: E402

WIDTH_IN, HEIGHT_IN, DPI = 12, 8, 100  # 1200 x 800 pixels
PERCENTILES = (("p50", "#1f77b4", "o"), ("p90", "#ff7f0e", "s"), ("p99", "#d62728", "^"))


def _reject_constant(name):
    raise ValueError(f"the report holds {name}; sluice-loadgen never writes NaN or infinity")


def load_report(path):
    with open(path) as f:
        return json.load(f, parse_constant=_reject_constant)


def figures_of(level, budget):
    """The figures of one level: the totals, or those of one budget of the mix."""
    if budget is None:
        return level
    for b in level.get("by_budget", []):
        if b.get("budget") == budget:
            return b
    names = [b.get("budget") for b in level.get("by_budget", [])]
    raise SystemExit(f"plot_loadgen: no budget {budget!r} in the report (it has: {', '.join(names)})")


def series(points):
    """(xs, ys) of the points whose y is present."""
    kept = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def set_load_axis(ax, loads, label):
    lo, hi = min(loads), max(loads)
    log = lo > 0 and hi / lo >= 8
    if log:
        ax.set_xscale("log", base=2 if all(float(x).is_integer() for x in loads) else 10)
        ax.set_xlim(lo / 1.25, hi * 1.25)  # every level's place, even where a figure is absent
    elif hi > lo:
        ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(loads))))
    ax.xaxis.set_minor_locator(NullLocator())
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)
    if lo == hi:
        ax.set_xlim(lo * 0.5 if lo > 0 else lo - 1, hi * 1.5 if hi > 0 else hi + 1)
    ax.set_xlabel(label)
    ax.grid(True, which="major", alpha=0.3)


def latency_panel(ax, loads, figs, key, scale, title, unit, xlabel):
    drawn = 0
    for pct, color, marker in PERCENTILES:
        xs, ys = series([(x, f.get(key, {}).get(pct)) for x, f in zip(loads, figs)])
        if xs:
            ax.plot(xs, [y * scale for y in ys], marker=marker, color=color, label=pct)
            drawn += 1
    ax.set_title(title)
    ax.set_ylabel(unit)
    set_load_axis(ax, loads, xlabel)
    if drawn:
        values = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if values and max(values) / min(values) > 30:  # p99 far above p50: a log axis keeps both readable
            ax.set_yscale("log")
            ax.set_ylabel(unit + " (log)")
        else:
            ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no samples in any window", transform=ax.transAxes, ha="center", va="center",
                color="gray")
    counts = [f.get(key, {}).get("count", 0) for f in figs]
    absent = [x for x, n in zip(loads, counts) if n == 0]
    if absent and drawn:
        ax.text(0.99, 0.02, "no samples at " + ", ".join(f"{x:g}" for x in absent), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="gray")


def throughput_panel(ax, loads, figs, xlabel, goodput, closed):
    xs, ys = series([(x, f.get("throughput", {}).get("output_tokens_per_s")) for x, f in zip(loads, figs)])
    handles = []
    if xs:
        handles += ax.plot(xs, ys, marker="o", color="#2ca02c", label="output tokens/s")
    ax.set_ylabel("output tokens/s")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    xs, ys = series([(x, f.get("throughput", {}).get("completed_per_s")) for x, f in zip(loads, figs)])
    if xs:
        handles += right.plot(xs, ys, marker="s", color="#9467bd", linestyle="--", label="completed requests/s")
    if goodput:
        xs, ys = series([(x, f.get("goodput", {}).get("requests_per_s")) for x, f in zip(loads, figs)])
        if xs:
            handles += right.plot(xs, ys, marker="^", color="#8c564b", linestyle=":", label="good requests/s")
    if not closed:  # open loop: what was offered, to see where completions fall behind
        handles += right.plot(loads, loads, color="gray", linewidth=0.8, label="offered requests/s")
    right.set_ylabel("requests/s")
    right.set_ylim(bottom=0)
    ax.set_title("Throughput")
    set_load_axis(ax, loads, xlabel)
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=9)
    errors = []
    for x, f in zip(loads, figs):
        codes = f.get("errors_by_code") or {}
        if codes:
            errors.append(f"{x:g}: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
    if errors:  # failed requests have no latency; say how many there were
        text = "errors at " + "; ".join(errors[:3]) + (f"; {len(errors) - 3} more levels" if len(errors) > 3 else "")
        ax.text(0.99, 0.02, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="#d62728",
                wrap=True)


def describe(report, budget):
    cfg = report.get("config", {})
    model = report.get("model", {})
    mix = ", ".join(f"{m['weight'] * 100:.0f}% {m['budget']}" for m in cfg.get("budget_mix", [])) or "dense"
    parts = [f"sluice-loadgen, {report.get('mode', '?')} loop" if report.get("mode") == "closed"
             else "sluice-loadgen, Poisson arrivals"]
    if model:
        parts.append(f"{model.get('model_type', '?')} on {model.get('device', '?')}")
    parts.append(f"prompt {cfg.get('prompt_tokens', '?')}, output {cfg.get('max_tokens', '?')} tokens")
    parts.append(f"budget {budget}" if budget else f"mix {mix}")
    parts.append(f"{cfg.get('seconds', 0):g} s windows after {cfg.get('warmup_seconds', 0):g} s warm-up")
    targets = cfg.get("goodput_targets_s") or {}
    if targets:
        parts.append("goodput: " + ", ".join(f"{k} <= {v:g} s" for k, v in targets.items()))
    lines = [parts[0]]
    for part in parts[1:]:  # break between parts, never inside one
        if len(lines[-1]) + 3 + len(part) > 150:
            lines.append(part)
        else:
            lines[-1] += " | " + part
    return "\n".join(lines)


def plot(report, out, budget=None, title=None):
    levels = report.get("levels", [])
    if not levels:
        raise SystemExit("plot_loadgen: the report has no levels")
    closed = report.get("mode") == "closed"
    xlabel = "concurrent streams" if closed else "offered load (requests/s)"
    loads = [float(level["offered_load"]) for level in levels]
    figs = [figures_of(level, budget) for level in levels]
    goodput = bool(report.get("config", {}).get("goodput_targets_s"))

    fig, axes = plt.subplots(2, 2, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    latency_panel(axes[0][0], loads, figs, "ttft_ms", 1.0, "Time to first token", "ms", xlabel)
    latency_panel(axes[0][1], loads, figs, "itl_ms", 1.0, "Inter-token latency", "ms", xlabel)
    e2e_max = max((f.get("e2e_ms", {}).get("max", 0) for f in figs), default=0)
    e2e_scale, e2e_unit = (1e-3, "s") if e2e_max >= 1000 else (1.0, "ms")
    latency_panel(axes[1][0], loads, figs, "e2e_ms", e2e_scale, "End-to-end latency", e2e_unit, xlabel)
    throughput_panel(axes[1][1], loads, figs, xlabel, goodput, closed)
    fig.suptitle(title or describe(report, budget), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=DPI)  # no bbox_inches="tight": the size stays WIDTH_IN x HEIGHT_IN at DPI
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="JSON written by sluice-loadgen --json")
    p.add_argument("-o", "--out", help="PNG to write (default: the report's name with .png)")
    p.add_argument("--budget", help="plot the figures of this budget of the mix instead of the totals")
    p.add_argument("--title", help="title instead of the one made from the report")
    args = p.parse_args(argv)
    out = args.out or os.path.splitext(args.report)[0] + ".png"
    plot(load_report(args.report), out, budget=args.budget, title=args.title)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
