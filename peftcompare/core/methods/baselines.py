"""The two references every comparison needs: the untouched base model, and full fine-tuning."""
from __future__ import annotations

from peftcompare.core.methods.base import ROLE_BASELINE, ROLE_FULL, SERVE_NONE, Method, register_method


def _full(spec, model, family):
    for p in model.parameters():
        p.requires_grad_(True)


register_method(Method(
    "zero_shot", "Zero-shot", role=ROLE_BASELINE, serve=SERVE_NONE,
    color="#79706e", method_family="reference",
    help="The untouched base model on the same evaluation set: the baseline."))

# full fine-tuning of a text-to-text or causal tiny model moves every weight and is unstable at the tiny
# recipe's 2e-2 (a sweep, one learning rate for its grid, takes the recipe of the method it is built for)
_TINY_FULL = {"learning_rate": 2e-3}
register_method(Method(
    "full", "Full fine-tuning", prepare=_full, role=ROLE_FULL, heavy=True, learning_rate=5e-5,
    tiny_recipe={"builtin:tiny-t5": _TINY_FULL, "builtin:tiny-bart": _TINY_FULL, "builtin:tiny-gpt2": _TINY_FULL},
    color="#9d755d", method_family="reference",
    help="Every weight trains: the reference adapters are measured against."))
