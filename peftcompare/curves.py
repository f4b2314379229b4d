"""DataFrame -> Altair charts for the app: efficiency curves and training-loss curves.

Pure functions (no Streamlit): the Curves and Train pages draw what these return, and the tests check
the chart specs directly.
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from . import methods

X_FIELDS = {"capacity": "Capacity (rank / virtual tokens / blocks)", "trainable_params": "Trainable parameters"}
# one fixed colour per method on every chart (Streamlit's default palette gives near-identical blues)
PALETTE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#79706e"]
METRIC_TITLES = {"accuracy": "Accuracy", "f1": "F1", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                 "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}


def split_references(agg: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve points, reference rows): zero-shot and full fine-tuning are horizontal rules, not points."""
    is_ref = agg["method"].map(lambda m: methods.get_method(m).reference_line if m in methods.METHODS else False)
    return agg[~is_ref.astype(bool)].copy(), agg[is_ref.astype(bool)].copy()


def curve_points(agg: pd.DataFrame, x: str, spread: str = "std", pareto: pd.Series | None = None) -> pd.DataFrame:
    """The plotted table: one row per (method, capacity) with x, mean, the error bar ends and labels."""
    pts = agg.copy()
    if x == "capacity":  # methods without a capacity knob have no place on a capacity axis
        pts = pts[pts["capacity"].fillna(0) > 0]
    pts = pts[pts[x].fillna(0) > 0].copy()  # log scale
    if spread == "minmax":
        pts["lo"], pts["hi"] = pts["min"], pts["max"]
    else:
        pts["lo"], pts["hi"] = pts["mean"] - pts["std"], pts["mean"] + pts["std"]
    pts["method_title"] = pts["method"].map(lambda m: methods.get_method(m).title if m in methods.METHODS else m)
    pts["pareto"] = pareto.reindex(pts.index).fillna(False).astype(bool) if pareto is not None else False
    pts["x"] = pts[x].astype(float)
    return pts.reset_index(drop=True)


def efficiency_chart(agg: pd.DataFrame, metric: str, x: str = "trainable_params", spread: str = "std",
                     pareto: pd.Series | None = None, title: str = "", width: int | str = "container",
                     height: int = 380) -> alt.LayerChart:
    """Mean metric per method vs capacity or trainable parameters (log x), seed spread as error bars,
    reference methods as horizontal rules and the Pareto front ringed and joined."""
    curve, refs = split_references(agg)
    pts = curve_points(curve, x, spread, pareto)
    y_title = METRIC_TITLES.get(metric, metric)
    xe = alt.X("x:Q", scale=alt.Scale(type="log"), title=X_FIELDS.get(x, x))
    ye = alt.Y("mean:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3f"))
    titles = [m.title for m in methods.METHODS.values()]
    color = alt.Color("method_title:N", title="Method",
                      scale=alt.Scale(domain=titles, range=(PALETTE * 2)[:len(titles)]),
                      legend=alt.Legend(values=sorted(set(pts["method_title"]), key=titles.index)))
    tips = [alt.Tooltip("method_title:N", title="method"), alt.Tooltip("capacity:Q", title="capacity"),
            alt.Tooltip("trainable_params:Q", title="trainable params", format=","),
            alt.Tooltip("mean:Q", title=f"{y_title} (mean)", format=".4f"),
            alt.Tooltip("std:Q", title="std over seeds", format=".4f"), alt.Tooltip("n:Q", title="seeds"),
            alt.Tooltip("run_ids:N", title="runs")]
    base = alt.Chart(pts)
    layers = [
        base.mark_line(strokeWidth=2).encode(x=xe, y=ye, color=color, detail="method:N"),
        base.mark_rule(strokeWidth=1.5).encode(x=xe, y=alt.Y("lo:Q"), y2="hi:Q", color=color),
        base.mark_point(filled=True, size=70).encode(x=xe, y=ye, color=color, tooltip=tips),
    ]
    front = pts[pts["pareto"]].sort_values("x")
    if len(front):
        fb = alt.Chart(front)
        layers.append(fb.mark_line(strokeDash=[2, 3], color="#444", strokeWidth=1).encode(x=xe, y=ye))
        layers.append(fb.mark_point(shape="circle", size=260, color="#111", strokeWidth=1.5, filled=False)
                      .encode(x=xe, y=ye, tooltip=[alt.Tooltip("method_title:N", title="Pareto front"),
                                                   *tips[1:]]))
    if len(refs):
        r = refs.assign(ref_label=refs.apply(lambda row: f"{methods.get_method(row['method']).title} "
                                             f"{row['mean']:.3f}", axis=1))
        rb = alt.Chart(r)
        layers.append(rb.mark_rule(strokeDash=[6, 4], strokeWidth=1.5, color="#888").encode(
            y="mean:Q", tooltip=[alt.Tooltip("ref_label:N", title="reference"),
                                 alt.Tooltip("run_ids:N", title="runs")]))
        layers.append(rb.mark_text(align="left", dx=4, dy=-7, color="#555", fontSize=11).encode(
            y="mean:Q", x=alt.value(2), text="ref_label:N"))
    return alt.layer(*layers).properties(width=width, height=height, title=title)


def loss_chart(steps: pd.DataFrame, labels: dict[str, str] | None = None, width: int | str = "container",
               height: int = 260) -> alt.Chart:
    """Training loss by step, one line per run (steps: run_id, step, epoch, loss)."""
    df = steps.copy()
    df["run"] = df["run_id"].map(lambda r: (labels or {}).get(r, r))
    return alt.Chart(df).mark_line(strokeWidth=1.5).encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)), y=alt.Y("loss:Q", title="training loss", scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title="Run", scale=alt.Scale(range=PALETTE),
                        legend=alt.Legend(orient="bottom", columns=1, labelLimit=400)),
        tooltip=["run:N", "step:Q", alt.Tooltip("epoch:Q", format=".2f"), alt.Tooltip("loss:Q", format=".4f")],
    ).properties(width=width, height=height)


def _fixed_width(chart, width: int = 720):
    # a file has no container to stretch into
    return chart.properties(width=width) if getattr(chart, "width", None) in ("container", alt.Undefined) else chart


def to_png(chart, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(_fixed_width(chart).to_json(), scale=scale)


def to_svg(chart) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(_fixed_width(chart).to_json())
