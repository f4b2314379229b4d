"""Which runs can train together in one pass over a shared frozen base model (engine/packing.py trains
them): the same base model, data and its processing, batch size and budget, so that their batches stack and
their epochs end together, the same selection protocol, so that their evaluation passes stack too, and a method
with a packed path (Method.pack)."""
from __future__ import annotations

from peftcompare.core import methods


def pack_key(spec) -> tuple | None:
    """Runs with the same key can train in one pack; None: this run trains alone (`why_alone` says why)."""
    if why_alone(spec):
        return None
    s = spec.resolved()
    kind = methods.get_method(s.method).pack
    # prefixes join the decoder's cache: rows of a pack share its length, so a prefix pack is of one length
    return (kind, s.capacity if kind == methods.PACK_PREFIX else None, s.task, s.model_name, s.dataset,
            s.train_file, s.validation_file, s.text_column, s.target_column, s.prompt_template, s.answer_cue,
            s.train_samples, s.eval_samples, s.num_train_epochs, s.per_device_train_batch_size,
            s.per_device_eval_batch_size, s.max_source_length, s.max_target_length, s.target_modules,
            s.lora_dropout, s.precision, s.selection, s.selection_metric, s.dev_samples, s.budget, s.budget_value)


def why_alone(spec) -> str:
    """Why a run cannot join a pack ('' when it can), in the user's words."""
    m = methods.get_method(spec.method)
    if not m.pack:
        return f"{m.title} has no packed training path: it trains alone"
    if spec.budget != "epochs":
        return "packs train for a number of epochs: a budget of steps, seconds or FLOPs trains alone"
    return ""


def plan_key(spec) -> tuple | None:
    """What plan_packs groups by: pack_key (what CAN train together; prefixes of one length only), and for soft
    prompts the number of virtual tokens too (what SHOULD). A pack pads every row's prompt to the longest; on the
    2-core CPU the rows of a {10, 20, 50, 100}-token sweep then cost 1.6x their FLOPs alone and the pack trained
    0.61x as fast as the runs one after another (bench/bench_pack.py), while equal prompts (seeds, learning rates)
    waste nothing."""
    key = pack_key(spec)
    if key is not None and key[0] == methods.PACK_PROMPT:
        key += (spec.resolved().capacity,)
    return key


def alone_reason(spec) -> str:
    """Why a run queued to train together trained by itself: its method or budget (why_alone), else no other
    queued run could share its pass."""
    return why_alone(spec) or ("no other run queued with it shares its model, data and budget"
                               + (" and its number of virtual tokens"
                                  if methods.get_method(spec.method).pack in (methods.PACK_PROMPT, methods.PACK_PREFIX)
                                  else ""))


def plan_packs(specs: list, k: int) -> list[list]:
    """The specs in packs of at most k (order kept within a pack) by plan_key; a run that cannot pack, or has no
    partner, is a pack of one."""
    groups: dict[tuple, list] = {}
    out: list[list] = []
    for s in specs:
        key = plan_key(s) if k > 1 else None
        if key is None:
            out.append([s])
            continue
        group = groups.setdefault(key, [])
        group.append(s)
        if len(group) == k:
            out.append(groups.pop(key))
    out.extend(groups.values())
    return out
