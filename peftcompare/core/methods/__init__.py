"""The method registry. Adding a method is one `register_method(Method(...))` call in one of the modules
below (or a new module imported here) plus one line in the parametrized tests; no module outside this
package compares a method name.

A method either returns a PEFT config (the adapter is saved with `save_pretrained` and loads with plain
`PeftModel.from_pretrained`) or freezes/unfreezes parts of the base model itself (`prepare`).
"""
from __future__ import annotations

from peftcompare.core.methods import baselines, low_rank, prefix_full, selective, soft_prompts  # noqa: F401 - they register
from peftcompare.core.methods import zoo_low_rank, zoo_orthogonal, zoo_selective, zoo_sparse  # noqa: F401 - the PEFT zoo
from peftcompare.core.methods.base import (FAMILIES, KNOB_RANK, KNOB_TOKENS, METHOD_FAMILIES, METHODS, PACK_LORA,
                                           PACK_PREFIX, PACK_PROMPT, ROLE_ADAPTER,
                                           ROLE_BASELINE, ROLE_FULL, SERVE_LORA_BANK, SERVE_NONE, SERVE_PREFIX,
                                           SERVE_PEFT, SERVE_SOFT_PROMPT, SERVE_SWAP, Method, register_method,
                                           target_names)
from peftcompare.core.methods.low_rank import adalora_init_r
from peftcompare.core.methods.zoo_common import BUDGET, REFUSED

__all__ = ["KNOB_RANK", "KNOB_TOKENS", "METHODS", "ROLE_ADAPTER", "ROLE_BASELINE", "ROLE_FULL", "SERVE_LORA_BANK",
           "SERVE_NONE", "SERVE_PEFT", "SERVE_PREFIX", "SERVE_SOFT_PROMPT", "SERVE_SWAP", "Method", "adalora_init_r",
           "get_method", "register_method", "target_names", "trainable_methods", "by_role", "offline_sweep",
           "served", "method_names", "FAMILIES", "METHOD_FAMILIES", "REFUSED", "by_family", "catalog", "zoo_budget",
           "PACK_LORA", "PACK_PREFIX", "PACK_PROMPT"]

BASELINE = "zero_shot"  # the name a sweep gives its baseline run

# the order the app lists them in: the methods of the published experiments first, then by kind; a method
# registered elsewhere (not named here) follows in registration order
_FIRST = ("zero_shot", "lora", "prefix", "prompt", "ptuning", "ia3", "adalora", "full", "last_layers", "bitfit")
_ordered = {n: METHODS[n] for n in _FIRST if n in METHODS} | {n: m for n, m in METHODS.items() if n not in _FIRST}
METHODS.clear()
METHODS.update(_ordered)


def get_method(name: str) -> Method:
    if name in REFUSED:  # a PEFT type that cannot train an encoder-decoder: why, not "unknown"
        raise ValueError(f"method: {name} does not work on encoder-decoder models: {REFUSED[name]}")
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r} (choose from {', '.join(METHODS)})") from None


def method_names() -> list[str]:
    return list(METHODS)


def trainable_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.trains]


def by_role(role: str) -> list[str]:
    return [m.name for m in METHODS.values() if m.role == role]


def served(how: str) -> set[str]:
    """The methods the Compare engine serves `how` (SERVE_*)."""
    return {m.name for m in METHODS.values() if m.serve == how}


def offline_sweep() -> dict[str, tuple[int, ...]]:
    """The sweep the app proposes offline on the tiny models: method -> capacities. Only the methods the
    sweep flags drive (a sweep knob: LoRA ranks, virtual tokens); every other method's offline_grid is what
    it takes on a tiny model when it is chosen (the zoo's tests and preset)."""
    return {m.name: m.offline_grid for m in METHODS.values() if m.offline_grid and m.sweep_knob}


def by_family() -> dict[str, list[Method]]:
    """The registered methods grouped by METHOD_FAMILIES (in its order), registry order within a family."""
    groups: dict[str, list[Method]] = {f: [] for f in METHOD_FAMILIES}
    for m in METHODS.values():
        groups[m.method_family].append(m)
    return {f: ms for f, ms in groups.items() if ms}


def catalog() -> dict[str, list[dict]]:
    """Every method as plain data (the `methods` command, the README table): its family, capacity knob,
    grids, the model families it trains (FAMILIES) and why not the others, its paper; and the PEFT types
    refused with their reason."""
    rows = [{"name": m.name, "title": m.title, "family": m.method_family, "knob": m.capacity_name,
             "capacities": list(m.capacities), "max_capacity": m.max_capacity if m.capacity_name else None,
             "offline_grid": list(m.offline_grid), "works_on": {f: f in m.works_on for f in FAMILIES},
             "not_on_reason": m.not_on_reason if set(FAMILIES) - set(m.works_on) else "", "serve": m.serve,
             "paper": m.paper, "help": m.help} for ms in by_family().values() for m in ms]
    return {"methods": rows, "refused": [{"name": n, "reason": why} for n, why in REFUSED.items()]}


def zoo_budget() -> dict[str, int]:
    """Zoo method -> the capacity that trains about 300k parameters on flan-t5-small (0: no capacity knob)."""
    return dict(BUDGET)


def title(name: str) -> str:
    """A method's display title; the name itself for a method this version does not know (old records)."""
    return METHODS[name].title if name in METHODS else name


def is_reference(name: str) -> bool:
    return name in METHODS and METHODS[name].reference_line


def trains(name: str) -> bool:
    """Unknown methods (records from another version) are taken to train."""
    return METHODS[name].trains if name in METHODS else True
