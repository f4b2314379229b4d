"""Static PNG curves for the CLI (`plot`); the app draws the same aggregates with Altair (curves.py)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from peftcompare.service import analysis
from peftcompare.core import methods
from peftcompare.core.labels import method_title, metric_title



def curve_png(df: pd.DataFrame, task: str, metric: str, path: Path, x: str = "capacity") -> Path:
    fig = curve_figure(df, task, metric, x)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def curve_figure(df: pd.DataFrame, task: str, metric: str, x: str = "capacity"):
    """The matplotlib figure of curve_png; each method in its colour of the app (Method.color)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peftcompare.service.curves import method_color

    agg = analysis.aggregate(df[df["task"] == task], metric) if not df.empty else analysis.aggregate(df, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    reference = agg["method"].isin([m for m, v in methods.METHODS.items() if v.reference_line])
    curves, refs = agg[~reference], agg[reference]
    for method, g in curves.groupby("method"):
        g = g.sort_values(x)
        title = method_title(method)
        ax.plot(g[x], g["mean"], marker="o", label=f"{title} (n={int(g['n'].max())} seed"
                f"{'s' if g['n'].max() > 1 else ''})", color=method_color(method))
        if (g["n"] > 1).any():  # the mean's 95 % t-interval over seeds (a point of one seed has none)
            ax.fill_between(g[x], g["ci_low"].fillna(g["mean"]), g["ci_high"].fillna(g["mean"]), alpha=0.2,
                            color=method_color(method))
    front = analysis.pareto_front(agg)  # zero-shot and full fine-tuning are points of the front too
    ringed = curves[front.reindex(curves.index).fillna(False).astype(bool) & (curves[x].fillna(0) > 0)]
    if len(ringed):
        ax.scatter(ringed[x], ringed["mean"], s=160, facecolors="none", edgecolors="#111", linewidths=1.2,
                   label="Pareto front", zorder=3)
    for _, r in refs.iterrows():
        ax.axhline(r["mean"], linestyle="--", color=method_color(r["method"]),
                   linewidth=1, label=f"{method_title(r['method'])}: {r['mean']:.3f}")
    if len(curves):
        ax.set_xscale("log", base=2 if x == "capacity" else 10)
        if x == "capacity":
            ticks = sorted(curves["capacity"].unique())
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(int(t)) for t in ticks])
    else:
        ax.text(0.5, 0.5, "no completed runs for this task yet", ha="center", va="center",
                transform=ax.transAxes, color="gray")
    ax.set_xlabel("capacity (LoRA rank r / virtual tokens)" if x == "capacity" else "trainable parameters")
    ax.set_ylabel(f"{metric_title(metric)} (mean over seeds; band: 95 % t-interval)")
    models_used = ", ".join(sorted(agg["model_name"].dropna().unique())) or "-"
    against = "capacity" if x == "capacity" else "trainable parameters"
    ax.set_title(f"{task}: {metric_title(metric)} vs {against}  ({models_used})", fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(agg):
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
