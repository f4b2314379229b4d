"""Model loading: Hub ids, local paths and built-in models, behind one family interface.

Built-in models are built from a seeded initialisation, so every process that asks for `builtin:tiny-t5`
gets the same weights without the Hub and without shipping weights in the repo; the tiny ones
(tiny-t5, -bart, -gpt2, -bert) are then pretrained once per machine by engine/pretrain.py and read from
its cache.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from peftcompare.engine import builtin, families, pretrain
from peftcompare.engine.runtime import hub_reachable  # noqa: F401 - re-exported; lives in a torch-free module

BUILTIN_PREFIX = builtin.PREFIX


class ModelUnavailable(ValueError):
    """A model that cannot be loaded for a reason the user can fix (offline, bad path)."""


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    family: "families.Family"
    name: str
    kernels: dict = field(default_factory=dict)  # fastops rewrites applied: {"fused_gelu": n, ...}


def builtin_names() -> list[str]:
    return builtin.names()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_name(name: str) -> str:
    """Raise ModelUnavailable with one line for names that can never load; return the kind of source."""
    if name.startswith(BUILTIN_PREFIX):
        if name not in builtin_names():
            raise ModelUnavailable(f"model_name: unknown built-in model {name!r} "
                                   f"(choose from {', '.join(builtin_names())})")
        return "builtin"
    if os.path.isdir(os.path.expanduser(name)):
        if not os.path.isfile(os.path.join(os.path.expanduser(name), "config.json")):
            raise ModelUnavailable(f"model_name: {name} has no config.json (not a saved model directory)")
        return "local"
    looks_like_path = name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name or name.count("/") > 1
    if looks_like_path or not _HUB_ID.match(name) or ".." in name:
        raise ModelUnavailable(f"model_name: the path {name} does not exist")
    return "hub"


def _offline_message(name: str) -> str:
    return (f"model_name: {name} is not in the local cache and the Hugging Face Hub is unreachable; "
            "use builtin:tiny-t5 to work offline")


def _hub_kwargs(name: str) -> dict:
    kind = check_model_name(name)
    kwargs: dict = {}
    if kind == "hub" and not hub_reachable():
        kwargs["local_files_only"] = True
    return kwargs


def _from_hub(auto_class, name: str, what: str):
    """auto_class.from_pretrained for a Hub id or local path; offline or missing -> one-line ModelUnavailable."""
    kwargs = _hub_kwargs(name)
    try:
        return auto_class.from_pretrained(os.path.expanduser(name), trust_remote_code=False, **kwargs)
    except OSError:
        raise ModelUnavailable(_offline_message(name) if kwargs.get("local_files_only")
                               else f"model_name: could not load a {what} for {name}") from None


def load_config(name: str):
    """The model's config without its weights (for parameter counts and the Train page)."""
    if name.startswith(BUILTIN_PREFIX):
        check_model_name(name)
        return builtin.config(name[len(BUILTIN_PREFIX):])
    from transformers import AutoConfig

    try:
        return _from_hub(AutoConfig, name, "config")
    except ModelUnavailable:
        raise
    except (ValueError, KeyError) as exc:  # a model type transformers does not know: a page of advice
        kind = re.search(r"model type `([^`]*)`", str(exc))
        what = f"model type {kind.group(1)!r}" if kind else "a config"
        raise ModelUnavailable(f"model_name: {name} has {what} that this version of transformers does not "
                               "know, so no model family can load it") from None


# what a saved tokenizer is made of (fast, sentencepiece, WordPiece, BPE); a directory with none of them is
# not a model a tokenizer can come from: transformers 5 would build an empty one that maps every word to unk
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.txt",
                   "vocab.json")


def load_tokenizer(name: str):
    if name.startswith(BUILTIN_PREFIX):
        return builtin.tokenizer()
    from transformers import AutoTokenizer

    local = os.path.expanduser(name)
    if os.path.isdir(local) and not any(os.path.isfile(os.path.join(local, f)) for f in TOKENIZER_FILES):
        raise ModelUnavailable(f"model_name: {name} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                               "save the tokenizer beside the model with tokenizer.save_pretrained")
    return _from_hub(AutoTokenizer, name, "tokenizer")


def load_model(name: str, device: str | None = None, meta: bool = False, fast_kernels: bool = True) -> Loaded:
    """Load model + tokenizer + family. `meta=True` builds the shapes only (parameter counts).

    `fast_kernels` swaps in fastops' fused GELU and T5 norm: the same function in fewer passes, used by
    training, evaluation and Compare alike so that all three compute the same numbers."""
    import torch

    config = load_config(name)
    family = families.family_for_config(config)
    tokenizer = load_tokenizer(name)
    if meta:
        with torch.device("meta"):
            model = family.from_config(config)
            if name.startswith(BUILTIN_PREFIX):
                family.untie_lm_head(model)
    elif name.startswith(BUILTIN_PREFIX):
        model = _load_builtin(name, config)
    else:
        kwargs = _hub_kwargs(name)
        try:
            model = family.auto_class().from_pretrained(os.path.expanduser(name), dtype=torch.float32,
                                                        trust_remote_code=False, use_safetensors=True,
                                                        **kwargs)
        except OSError as exc:
            if kwargs.get("local_files_only"):
                raise ModelUnavailable(_offline_message(name)) from None
            raise ModelUnavailable(f"model_name: could not load {name} ({str(exc).splitlines()[0]})") from None
    peft_compatible(model)
    family.prepare_tokenizer(tokenizer, model)
    kernels = {}
    if fast_kernels and not meta:
        from peftcompare.engine import fastops

        kernels = {"fused_gelu": fastops.fuse_gelu(model), "fused_t5_norm": fastops.cast_norm_outputs(model)}
    if device and not meta:
        model.to(device)
    return Loaded(model, tokenizer, family, name, kernels)


def _take_legacy_cache(kwargs: dict, past_key_values, where: str) -> None:
    """Move a cache given as `past_key_values` to `cache` (never two different ones)."""
    if past_key_values is None:
        return
    given = kwargs.get("cache")
    if given is not None and given is not past_key_values:
        raise ValueError(f"{where}: two different KV caches given (cache and past_key_values)")
    kwargs["cache"] = past_key_values


def _legacy_cache_forward(base: type):
    """`base.forward` that also takes the KV cache as `past_key_values`, and says so in its signature."""
    import inspect

    def forward(self, *args, past_key_values=None, **kwargs):
        _take_legacy_cache(kwargs, past_key_values, f"{base.__name__}.forward")
        return base.forward(self, *args, **kwargs)

    params = list(inspect.signature(base.forward).parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
    forward.__signature__ = inspect.Signature(params)
    forward.__doc__ = base.forward.__doc__
    return forward


def _legacy_cache_prepare(base: type):
    """`base.prepare_inputs_for_generation` that hands the cache back as `past_key_values` (and takes it so)."""

    def prepare_inputs_for_generation(self, *args, **kwargs):
        _take_legacy_cache(kwargs, kwargs.pop("past_key_values", None), f"{base.__name__}.generate")
        inputs = base.prepare_inputs_for_generation(self, *args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    return prepare_inputs_for_generation


@lru_cache(maxsize=None)
def _peft_compatible_class(base: type) -> type | None:
    """A subclass of a transformers model class that speaks the names PEFT (up to 0.21) uses, or None
    when `base` already does. Same name, same weights, same forward: only two spellings change.

    - transformers 5.24 renamed the KV cache `past_key_values` -> `cache` in every forward and in
      `generate` (the old keyword is deprecated until 5.40). PEFT's prompt-learning methods still look for
      `past_key_values`: by the forward's signature (prefix tuning of a sequence classifier refuses a model
      without it: "Model does not support past key values") and in the inputs `generate` prepares (with no
      `past_key_values` there, every decoding step looks like the first one, so prompt and p-tuning prepend
      their virtual tokens again at each step until positions run past the model's table (IndexError), and
      prefix tuning's prefix is dropped). The subclass takes `past_key_values` as `cache` and prepares
      generation inputs under the old name.
    - `is_gradient_checkpointing` is a deprecated alias that warns (FutureWarning) on every read, and
      PEFT reads it in every PeftModel's constructor; here it reads `is_activation_checkpointing` directly.
    """
    import inspect

    namespace: dict[str, Any] = {}
    if isinstance(getattr(base, "is_activation_checkpointing", None), property) and \
            isinstance(getattr(base, "is_gradient_checkpointing", None), property):
        namespace["is_gradient_checkpointing"] = property(lambda self: self.is_activation_checkpointing,
                                                          doc="Whether activation checkpointing is on.")
    params = inspect.signature(base.forward).parameters
    if "cache" in params and "past_key_values" not in params:
        namespace["forward"] = _legacy_cache_forward(base)
        if callable(getattr(base, "prepare_inputs_for_generation", None)):
            namespace["prepare_inputs_for_generation"] = _legacy_cache_prepare(base)
    if not namespace or getattr(base, "_speaks_peft", False):
        return None
    return type(base.__name__, (base,), {"__module__": base.__module__, "__qualname__": base.__qualname__,
                                         "__doc__": base.__doc__, "_speaks_peft": True, **namespace})


def peft_compatible(model):
    """Give a transformers model, and the backbone models inside it, the names PEFT reads (see
    _peft_compatible_class); a class swap like fastops' (weights untouched). Returns the model."""
    from transformers import PreTrainedModel

    for module in [model, *model.children()]:
        if isinstance(module, PreTrainedModel):
            compatible = _peft_compatible_class(type(module))
            if compatible is not None:
                module.__class__ = compatible
    return model


def _load_builtin(name: str, config):
    short = name[len(BUILTIN_PREFIX):]
    model = builtin.random_model(short, config)
    if short in pretrain.PRETRAINED:  # the tiny models: pretrained once per machine, then cached
        model.load_state_dict(pretrain.pretrained_state(short))
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), counting shared tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
