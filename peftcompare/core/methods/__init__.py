"""The method registry. Adding a method is one `register_method(Method(...))` call in one of the modules
below (or a new module imported here) plus one line in the parametrized tests; no module outside this
package compares a method name.

A method either returns a PEFT config (the adapter is saved with `save_pretrained` and loads with plain
`PeftModel.from_pretrained`) or freezes/unfreezes parts of the base model itself (`prepare`).
"""
from __future__ import annotations

from peftcompare.core.methods import baselines, low_rank, prefix_full, selective, soft_prompts  # noqa: F401 - they register
from peftcompare.core.methods.base import (KNOB_RANK, KNOB_TOKENS, METHODS, ROLE_ADAPTER, ROLE_BASELINE,
                                           ROLE_FULL, SERVE_LORA_BANK, SERVE_NONE, SERVE_PREFIX,
                                           SERVE_PEFT, SERVE_SOFT_PROMPT, SERVE_SWAP, Method, register_method, target_names)
from peftcompare.core.methods.low_rank import adalora_init_r

__all__ = ["KNOB_RANK", "KNOB_TOKENS", "METHODS", "ROLE_ADAPTER", "ROLE_BASELINE", "ROLE_FULL", "SERVE_LORA_BANK",
           "SERVE_NONE", "SERVE_PEFT", "SERVE_PREFIX", "SERVE_SOFT_PROMPT", "SERVE_SWAP", "Method", "adalora_init_r",
           "get_method", "register_method", "target_names", "trainable_methods", "by_role", "offline_sweep",
           "served", "method_names"]

BASELINE = "zero_shot"  # the name a sweep gives its baseline run

# the order the app lists them in: the methods of the published experiments first, then by kind; a method
# registered elsewhere (not named here) follows in registration order
_FIRST = ("zero_shot", "lora", "prefix", "prompt", "ptuning", "ia3", "adalora", "full", "last_layers", "bitfit")
_ordered = {n: METHODS[n] for n in _FIRST if n in METHODS} | {n: m for n, m in METHODS.items() if n not in _FIRST}
METHODS.clear()
METHODS.update(_ordered)


def get_method(name: str) -> Method:
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
    """The sweep the app proposes offline on the tiny models: method -> capacities."""
    return {m.name: m.offline_grid for m in METHODS.values() if m.offline_grid}


def title(name: str) -> str:
    """A method's display title; the name itself for a method this version does not know (old records)."""
    return METHODS[name].title if name in METHODS else name


def is_reference(name: str) -> bool:
    return name in METHODS and METHODS[name].reference_line


def trains(name: str) -> bool:
    """Unknown methods (records from another version) are taken to train."""
    return METHODS[name].trains if name in METHODS else True
