#!/usr/bin/env python3
"""Plots quality against executed compute from sluice-bench-budget-quality --json: one
curve per budget control (each starts at the dense point), three panels: held-out
perplexity, mean KL from the dense next-token distribution, and top-1 agreement.

Usage: python3 bench/plot_budget_quality.py RESULTS.json -o PNG [--title TEXT]
(needs matplotlib; not part of CI)
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "skip_ratio": ("tab:blue", "o"),
    "experts_per_token": ("tab:orange", "s"),
    "attention_gate_floor": ("tab:green", "^"),
    "skip_layers": ("tab:red", "D"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    with open(args.results) as f:
        res = json.load(f)
    rows = res["rows"]
    dense = {r["mode"]: r for r in rows if r["control"] == "dense"}
    curves = {}
    for r in rows:
        if r["control"] == "dense":
            continue
        curves.setdefault((r["control"], r["mode"]), []).append(r)
    metrics = [("perplexity", "held-out perplexity"), ("kl", "mean KL from dense (nats)"),
               ("top1_agreement", "top-1 agreement with dense")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (key, label) in zip(axes, metrics):
        for (control, mode), pts in sorted(curves.items()):
            base = dense.get(mode, dense["prefill"])
            pts = [base] + sorted(pts, key=lambda r: -r["executed_over_dense"])
            color, marker = STYLE.get(control, ("gray", "x"))
            name = control + (" (decode, calibrated thresholds)" if mode == "decode" else "")
            ax.plot([p["executed_over_dense"] for p in pts], [p[key] for p in pts],
                    color=color, marker=marker, linestyle="--" if mode == "decode" else "-",
                    label=name)
        ax.set_xlabel("executed / dense FLOPs")
        ax.set_ylabel(label)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("symlog", linthresh=0.01)
    axes[1].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title or f"{res['model_type']}: quality vs executed compute on held-out text "
                 f"({res['windows']} windows of {res['window']} tokens)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
