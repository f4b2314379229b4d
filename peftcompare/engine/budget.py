"""Training budgets: how much training a run gets (epochs, optimizer steps, wall-clock seconds or estimated
FLOPs), and the FLOPs estimate itself.

The estimate (recorded with every run, so a reader can redo it): per token, a matmul weight costs 2 FLOPs
forward and 2 backward for the activations' gradient, and a trainable weight 2 more for its own gradient,
i.e. (4·N + 2·T) per token, the usual 6·N for full fine-tuning. N and T are counted per side of the model: an
encoder-decoder's encoder weights see the source tokens, its decoder weights (LM head included) the target
tokens; a decoder-only or encoder-only model's weights see every token. Tokens are the examples' own tokens,
padding left out, plus the virtual tokens of an input-embedding prompt. Attention's sequence-length term
and the cheaper backward of methods that stop the gradient early are left out: an estimate that ranks
methods by their real cost, not a profiler.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from peftcompare.core import methods

FORMULA = ("(4*N + 2*T) FLOPs per token, per side: encoder weights x source tokens, decoder weights (LM head "
           "included) x target tokens (decoder-only and encoder models: all weights x all tokens); padding "
           "excluded, input-embedding virtual tokens included, attention's quadratic term excluded")


@dataclass(frozen=True)
class FlopModel:
    """Matmul weights (N) and trainable weights (T) on each side of the model, and the virtual tokens an
    input-embedding prompt adds to every source."""
    n_source: int
    t_source: int
    n_target: int
    t_target: int
    virtual_tokens: int = 0

    def example(self, feature: dict) -> float:
        """Training FLOPs of one example (forward and backward)."""
        src = len(feature["input_ids"]) + self.virtual_tokens
        tgt = sum(1 for t in feature.get("labels", ()) if t != -100)
        return (4 * self.n_source + 2 * self.t_source) * src + (4 * self.n_target + 2 * self.t_target) * tgt

    def as_dict(self) -> dict:
        return {"n_source": self.n_source, "t_source": self.t_source, "n_target": self.n_target,
                "t_target": self.t_target, "virtual_tokens": self.virtual_tokens, "formula": FORMULA}


def flop_model(model, family, spec) -> FlopModel:
    """Count a (possibly PEFT-wrapped) model's weights per side. Linear layers are matmuls; an embedding
    table is a lookup, unless it is tied to the LM head (then it is the head's matmul, on the target side)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    split = family.name == "seq2seq" and hasattr(base, "get_encoder")
    encoder_ids = {id(m) for m in base.get_encoder().modules()} if split else set()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    counts = {"n_source": 0, "t_source": 0, "n_target": 0, "t_target": 0}
    seen: set[int] = set()
    for module in base.modules():
        linear = isinstance(module, torch.nn.Linear) or module is head
        side = "source" if (not split or id(module) in encoder_ids) else "target"
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if linear:
                counts[f"n_{side}"] += p.numel()
            if p.requires_grad:  # prompts, prefixes, biases, norms: their gradient is paid per token too
                counts[f"t_{side}"] += p.numel()
    if not split:  # one side: every weight sees every token
        counts = {"n_source": counts["n_source"] + counts["n_target"], "t_source": counts["t_source"] +
                  counts["t_target"], "n_target": 0, "t_target": 0}
    virtual = spec.capacity if methods.get_method(spec.method).serve == methods.SERVE_SOFT_PROMPT else 0
    return FlopModel(**counts, virtual_tokens=virtual)


class Clock:
    """Where a run stands against its budget: steps taken, training seconds (evaluation excluded) and FLOPs
    spent, and whether the budget is spent. `progress()` (0 to 1) drives the learning-rate schedule of the
    budgets whose number of steps is not known in advance (seconds, flops)."""

    def __init__(self, spec, steps_per_epoch: int):
        self.kind = spec.budget
        self.value = float(spec.budget_value)
        self.epochs = spec.num_train_epochs
        self.steps_per_epoch = steps_per_epoch
        self.steps = 0
        self.flops = 0.0
        self.seconds = 0.0  # of finished stretches of training
        self._since: float | None = None  # start of the stretch running now

    def start(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def train_seconds(self) -> float:
        return self.seconds + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def step(self, flops: float) -> None:
        self.steps += 1
        self.flops += flops

    def progress(self) -> float:
        used = {"epochs": self.steps / max(1, self.epochs * self.steps_per_epoch),
                "steps": self.steps / max(1.0, self.value),
                "seconds": self.train_seconds() / self.value if self.value else 1.0,
                "flops": self.flops / self.value if self.value else 1.0}[self.kind]
        return min(1.0, used)

    def spent(self) -> bool:
        if self.kind == "epochs":
            return self.steps >= self.epochs * self.steps_per_epoch
        return self.progress() >= 1.0

    def planned_steps(self, flops_per_epoch: float) -> int:
        """The number of steps the budget buys: exact for epochs and steps, estimated for flops (from the
        training set's FLOPs per epoch), and the epochs' worth for seconds (a progress bar's guess, refined
        as the run goes)."""
        if self.kind == "steps":
            return int(self.value)
        if self.kind == "flops" and flops_per_epoch > 0:
            return max(1, math.ceil(self.value / flops_per_epoch * self.steps_per_epoch))
        return self.epochs * self.steps_per_epoch

    def record(self, model: FlopModel, tokens: int, train_examples: int) -> dict:
        return {"kind": self.kind, "value": self.value if self.kind != "epochs" else self.epochs,
                "steps": self.steps, "train_seconds": round(self.train_seconds(), 3),
                "train_flops": self.flops, "tokens": tokens, "train_examples": train_examples,
                "flop_model": model.as_dict()}
