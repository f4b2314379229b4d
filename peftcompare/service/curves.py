"""DataFrame -> Altair charts for the app: efficiency curves and training-loss curves.

Pure functions (no Streamlit): the Curves and Train pages draw what these return, and the tests check
the chart specs directly.
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from peftcompare.service import analysis
from peftcompare.core import methods
from peftcompare.core.labels import method_title, metric_title

X_FIELDS = {"capacity": "Capacity (rank / virtual tokens / blocks)", "trainable_params": "Trainable parameters",
            # a budget-matched comparison: what the training cost (mean over seeds)
            "train_runtime": "Training time (s)", "train_flops": "Training FLOPs (estimated)",
            # what the saved adapter holds: VeRA's shared projections, SHiRA's indices, ... (run.stored_params)
            "stored_params": "Stored parameters (saved adapter tensors)"}
# one fixed colour per method on every chart (Streamlit's default palette gives near-identical blues)
PALETTE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#79706e"]
# THE colour of each method is its registration's (Method.color): the efficiency curves, the loss overlays,
# the Presets charts and the CLI's PNG (plotting.py) all draw a method in it, so LoRA is the same blue everywhere
OTHER_COLOR = "#444444"  # a method this version does not know (an imported record), or one without a colour


def method_colors() -> dict[str, str]:
    """Every registered method's colour, in registry order."""
    return {n: method_color(n) for n in methods.METHODS}


def method_color(name: str) -> str:
    m = methods.METHODS.get(name)
    return (m.color if m is not None else "") or OTHER_COLOR


def method_color_scale(present=None) -> tuple[alt.Scale, list[str] | None]:
    """(scale, legend values) for a colour channel on method *titles*: every method's fixed colour; the
    legend values are the titles in `present`, in registry order (None without `present`)."""
    names = list(methods.METHODS)
    scale = alt.Scale(domain=[method_title(m) for m in names], range=[method_color(m) for m in names])
    if present is None:
        return scale, None
    order = [method_title(m) for m in names]
    shown = sorted(set(present), key=lambda t: order.index(t) if t in order else len(order))
    return scale, shown


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
    elif spread == "ci":  # the mean's 95 % t-interval; one seed gives none (the bar shrinks to the point)
        lo = pts["ci_low"] if "ci_low" in pts else pd.Series(index=pts.index, dtype=float)
        hi = pts["ci_high"] if "ci_high" in pts else pd.Series(index=pts.index, dtype=float)
        pts["lo"] = pd.to_numeric(lo, errors="coerce").fillna(pts["mean"])
        pts["hi"] = pd.to_numeric(hi, errors="coerce").fillna(pts["mean"])
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
    reference methods as horizontal rules and the Pareto front ringed and joined.

    The front is computed over every point, the references included (`pareto` defaults to
    analysis.pareto_front(agg)): a point zero-shot or full fine-tuning beats is not ringed."""
    if pareto is None:
        pareto = analysis.pareto_front(agg)
    curve, refs = split_references(agg)
    pts = curve_points(curve, x, spread, pareto)
    y_title = metric_title(metric)
    xe = alt.X("x:Q", scale=alt.Scale(type="log"), title=X_FIELDS.get(x, x))
    ye = alt.Y("mean:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3f"))
    scale, shown = method_color_scale(pts["method_title"])
    color = alt.Color("method_title:N", title="Method", scale=scale, legend=alt.Legend(values=shown))
    tips = [alt.Tooltip("method_title:N", title="method"), alt.Tooltip("capacity:Q", title="capacity"),
            alt.Tooltip("trainable_params:Q", title="trainable params", format=","),
            *([alt.Tooltip("stored_params:Q", title="stored params", format=",")] if "stored_params" in pts else []),
            alt.Tooltip("mean:Q", title=f"{y_title} (mean)", format=".4f"),
            alt.Tooltip("std:Q", title="std over seeds", format=".4f"), alt.Tooltip("n:Q", title="seeds"),
            *[alt.Tooltip(f"{c}:{k}", title=t, **({"format": ".4f"} if k == "Q" else {}))
              for c, k, t in (("ci_low", "Q", "95 % CI low (t)"), ("ci_high", "Q", "95 % CI high (t)"),
                              ("learning_rate", "N", "learning rate"), ("selected_on", "N", "selected on"))
              if c in pts],
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
        on_front = pareto.reindex(refs.index).fillna(False).astype(bool)
        r = refs.assign(ref_label=[f"{method_title(m)} {v:.3f}" + (" (on the front)" if f else "")
                                   for m, v, f in zip(refs["method"], refs["mean"], on_front)],
                        ref_color=[method_color(m) for m in refs["method"]])
        rb = alt.Chart(r)
        ref_color = alt.Color("ref_color:N", scale=None, legend=None)
        layers.append(rb.mark_rule(strokeDash=[6, 4], strokeWidth=1.5).encode(
            y="mean:Q", color=ref_color, tooltip=[alt.Tooltip("ref_label:N", title="reference"),
                                                  alt.Tooltip("run_ids:N", title="runs")]))
        layers.append(rb.mark_text(align="left", dx=4, dy=-7, fontSize=11).encode(
            y="mean:Q", x=alt.value(2), text="ref_label:N", color=ref_color))
    return alt.layer(*layers).properties(width=width, height=height, title=title)


def loss_chart(steps: pd.DataFrame, labels: dict[str, str] | None = None, width: int | str = "container",
               height: int = 260) -> alt.Chart:
    """Training loss by step, one line per run (steps: run_id, step, epoch, loss).

    `height` is the height of the plotting area itself. The chart says so explicitly (autosize fit-x):
    without it Streamlit sizes every chart with autosize "fit", which makes `height` the whole chart, axis,
    title and legend included; at the Train page's 180 px the bottom legend and the x axis took all of it
    and the loss drew as a flat line with no room for a y axis. One run needs no legend (its card or
    title names it); several get one below the plot, which then grows instead of the plot shrinking."""
    df = steps.copy()
    df["run"] = df["run_id"].map(lambda r: (labels or {}).get(r, r))
    several = df["run"].nunique() > 1
    legend = alt.Legend(orient="bottom", columns=1, labelLimit=400) if several else None
    return alt.Chart(df).mark_line(strokeWidth=1.5).encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("loss:Q", title="training loss", scale=alt.Scale(zero=False), axis=alt.Axis(tickCount=5)),
        color=alt.Color("run:N", title="Run", scale=alt.Scale(range=PALETTE), legend=legend),
        tooltip=["run:N", "step:Q", alt.Tooltip("epoch:Q", format=".2f"), alt.Tooltip("loss:Q", format=".4f")],
    ).properties(width=width, height=height, autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))


def loss_overlay(steps: pd.DataFrame, run_methods: dict[str, str], labels: dict[str, str] | None = None,
                 smooth: bool = True, log_y: bool = True, width: int | str = "container",
                 height: int = 320) -> alt.LayerChart:
    """Training loss of many runs on one chart, readable: each line is its method's colour (the legend
    lists methods; click one to pick it out), smoothed by a centred moving average over ~5% of the run's
    steps with the raw steps faint behind, x in epochs so runs of different sizes line up, log y so the
    late, small losses are not flattened against the first steps.
    steps: run_id, step, epoch, loss; run_methods: run_id -> method name; labels: run_id -> run label."""
    df = steps[steps["run_id"].isin(run_methods)].copy()
    df["method_title"] = df["run_id"].map(lambda r: method_title(run_methods[r]))
    df["run"] = df["run_id"].map(lambda r: (labels or {}).get(r, r))
    df = df.sort_values(["run_id", "step"])
    df["raw_loss"] = df["loss"].astype(float)
    if smooth:
        df["loss"] = df.groupby("run_id")["raw_loss"].transform(
            lambda s: s.rolling(max(1, round(len(s) * 0.05)), min_periods=1, center=True).mean())
    use_epoch = "epoch" in df and df["epoch"].notna().all() and len(df)
    short = use_epoch and float(df["epoch"].max()) < 2  # one epoch: fractions of it on the axis
    x = alt.X("epoch:Q" if use_epoch else "step:Q", title="epoch" if use_epoch else "step",
              axis=alt.Axis(format="~g") if short else alt.Axis(tickMinStep=1, format="d"))
    positive = bool(len(df)) and bool((df["raw_loss"] > 0).all())
    # the data's own range: a "nice" log domain (1 to 10) would squeeze every line into a strip
    y_scale = alt.Scale(type="log", nice=False, padding=8) if log_y and positive else alt.Scale(zero=False)
    how = [w for w, on in (("log scale", log_y and positive), ("smoothed", smooth)) if on]
    y_title = "training loss" + (f" ({', '.join(how)})" if how else "")
    scale, shown = method_color_scale(df["method_title"])
    pick = alt.selection_point(fields=["method_title"], bind="legend", name="pick_method")
    color = alt.Color("method_title:N", title="Method", scale=scale,
                      legend=alt.Legend(values=shown, orient="right", labelLimit=260))
    tips = [alt.Tooltip("run:N", title="run"), alt.Tooltip("method_title:N", title="method"),
            alt.Tooltip("step:Q", title="step"), alt.Tooltip("epoch:Q", title="epoch", format=".2f"),
            alt.Tooltip("loss:Q", title="loss" + (" (smoothed)" if smooth else ""), format=".4f"),
            alt.Tooltip("raw_loss:Q", title="loss at this step", format=".4f")]
    base = alt.Chart(df)
    main = base.mark_line(strokeWidth=2).encode(
        x=x, y=alt.Y("loss:Q", title=y_title, scale=y_scale), color=color, detail="run_id:N",
        opacity=alt.condition(pick, alt.value(0.95), alt.value(0.12)), tooltip=tips).add_params(pick)
    layers = [main]
    if smooth and not df["loss"].equals(df["raw_loss"]):
        layers.insert(0, base.mark_line(strokeWidth=1).encode(
            x=x, y=alt.Y("raw_loss:Q", scale=y_scale), color=color, detail="run_id:N",
            opacity=alt.condition(pick, alt.value(0.22), alt.value(0.04))))
    return alt.layer(*layers).properties(width=width, height=height)


def epoch_chart(ep: pd.DataFrame, metric: str, height: int = 220, width: int = 330) -> alt.FacetChart:
    """Per-epoch training loss and evaluation metric side by side, one line per run, coloured by method and
    dashed by capacity (LoRA 4 and LoRA 8 of one preset would otherwise be two lines of one colour that only a
    tooltip tells apart) (ep: presets.epoch_frame: label, method, capacity, epoch, train_loss, metric)."""
    long = ep.melt(id_vars=["label", "method", "capacity", "epoch"], value_vars=["train_loss", "metric"],
                   var_name="curve")
    knob = {m: m in methods.METHODS and methods.METHODS[m].capacity_name is not None for m in set(long["method"])}
    long["size"] = [str(int(c)) if knob[m] and pd.notna(c) and c else "—"
                    for m, c in zip(long["method"], long["capacity"])]
    sizes = sorted(set(long["size"]), key=lambda v: (v == "—", int(v) if v.isdigit() else 0))
    # the split the epochs were scored on: dev under the default protocol (never the reported validation score)
    splits = set(ep["split"]) if "split" in ep else set()
    scored_on = f"{splits.pop()} " if len(splits) == 1 else "evaluation "
    long["curve"] = long["curve"].map({"train_loss": "training loss", "metric": f"{scored_on}{metric_title(metric)}"})
    long["method_title"] = long["method"].map(method_title)
    scale, shown = method_color_scale(long["method_title"])
    epochs = sorted({int(e) for e in long["epoch"]})
    # a facet cannot stretch to its container: a fixed width per panel, the legends below them. Lines and
    # points are two layers: a line mark with points would draw the capacity legend as dots, not dashes
    base = alt.Chart().encode(
        x=alt.X("epoch:Q", axis=alt.Axis(values=epochs, format="d")),  # whole epochs only, each once
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format="~g")),
        color=alt.Color("method_title:N", title="Method", scale=scale,
                        legend=alt.Legend(values=shown, orient="bottom", direction="horizontal")),
        detail="label:N",
        tooltip=[alt.Tooltip("label:N", title="run"), "epoch:Q", alt.Tooltip("value:Q", format=".4f")])
    lines = base.mark_line().encode(
        strokeDash=alt.StrokeDash("size:N", title="Capacity", sort=sizes,
                                  legend=alt.Legend(orient="bottom", direction="horizontal", symbolType="stroke",
                                                    symbolStrokeColor="#555", symbolStrokeWidth=2, symbolSize=400)))
    points = base.mark_point(filled=True, size=25)
    return alt.layer(lines, points, data=long).properties(height=height, width=width).facet(
        column=alt.Column("curve:N", title=None)).resolve_scale(y="independent")


# the evaluation set of a run: a zero-shot baseline must share it to be the same reference
EVAL_FIELDS = ("task", "model_name", "dataset", "validation_file", "eval_samples", "text_column",
               "target_column", "prompt_template", "max_source_length", "max_target_length")


def eval_key(spec) -> tuple:
    r = spec.resolved()
    return tuple(getattr(r, f) for f in EVAL_FIELDS)


def missing_zero_shot(runs: list[dict]):
    """The zero-shot spec these runs lack, or None: for the evaluation set most of their completed,
    trained runs share, the latest such run's spec as zero-shot, unless a zero-shot run on that set is
    completed, queued or running already."""
    from collections import Counter

    trained = [r for r in runs if r.get("status") == "completed" and r.get("spec") is not None
               and r["spec"].method in methods.METHODS and methods.trains(r["spec"].method)]
    if not trained:
        return None
    key = Counter(eval_key(r["spec"]) for r in trained).most_common(1)[0][0]
    if any(r.get("spec") is not None and r["spec"].method == methods.BASELINE and eval_key(r["spec"]) == key
           and r.get("status") in ("completed", "queued", "running") for r in runs):
        return None
    latest = max((r for r in trained if eval_key(r["spec"]) == key), key=lambda r: r.get("created_at") or 0)
    return latest["spec"].replace(method=methods.BASELINE)


def _fixed_width(chart, width: int = 720):
    # a file has no container to stretch into
    return chart.properties(width=width) if getattr(chart, "width", None) in ("container", alt.Undefined) else chart


def to_png(chart, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(_fixed_width(chart).to_json(), scale=scale)


def to_svg(chart) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(_fixed_width(chart).to_json())
