"""Which runs can train together in one pass over a shared frozen base model (engine/packing.py trains
them): the same base model, data and its processing, batch size and budget, so that their batches stack and
their epochs end together, and a method with a packed path (Method.pack)."""
from __future__ import annotations

from peftcompare.core import methods


def pack_key(spec) -> tuple | None:
    """Runs with the same key can train in one pack; None: this run trains alone (`why_alone` says why)."""
    if why_alone(spec):
        return None
    s = spec.resolved()
    return (methods.get_method(s.method).pack, s.task, s.model_name, s.dataset, s.train_file, s.validation_file,
            s.text_column, s.target_column, s.prompt_template, s.answer_cue, s.train_samples, s.eval_samples,
            s.num_train_epochs, s.per_device_train_batch_size, s.per_device_eval_batch_size, s.max_source_length,
            s.max_target_length, s.target_modules, s.lora_dropout, s.precision, s.selection, s.dev_samples, s.budget,
            s.budget_value)


def why_alone(spec) -> str:
    """Why a run cannot join a pack ('' when it can), in the user's words."""
    m = methods.get_method(spec.method)
    if not m.pack:
        return f"{m.title} has no packed training path: it trains alone"
    if spec.budget != "epochs":
        return "packs train for a number of epochs: a budget of steps, seconds or FLOPs trains alone"
    return ""


def plan_packs(specs: list, k: int) -> list[list]:
    """The specs in packs of at most k (order kept within a pack); a run that cannot pack is a pack of one."""
    groups: dict[tuple, list] = {}
    out: list[list] = []
    for s in specs:
        key = pack_key(s) if k > 1 else None
        if key is None:
            out.append([s])
            continue
        group = groups.setdefault(key, [])
        group.append(s)
        if len(group) == k:
            out.append(groups.pop(key))
    out.extend(groups.values())
    return out
