"""How runs, methods and metrics are named to a reader: one helper each, so a table, a chart, a card and a
report never spell the same thing two ways. A method this version does not know (an imported record) is
named by its own name."""
from __future__ import annotations

from peftcompare.core import methods
from peftcompare.core.tasks import METRIC_TITLES


def method_title(name: str) -> str:
    """'LoRA', 'Prefix-Tuning', ...; the name itself for an unknown method."""
    return methods.title(name)


def method_label(name: str, capacity: int | None = None) -> str:
    """The method with its capacity where it has a knob: 'LoRA 8', 'Prompt-Tuning 20', 'Zero-shot'."""
    m = methods.METHODS.get(name)
    if m is None:
        return f"{name} {capacity}" if capacity else str(name)
    return f"{m.title} {capacity}" if m.capacity_name and capacity else m.title


def run_label(spec, run_id: str | None = None, task: bool = False) -> str:
    """'LoRA 8 · seed 42' (+ ' · classification' with task=True, + the run id's last 6 characters)."""
    parts = [method_label(spec.method, spec.capacity), f"seed {spec.seed}"]
    if task:
        parts.append(spec.task)
    if run_id:
        parts.append(run_id[-6:])
    return " · ".join(parts)


def metric_title(metric: str) -> str:
    """'F1', 'ROUGE-L', ... (what a column or an axis is called)."""
    return METRIC_TITLES.get(metric, metric)
