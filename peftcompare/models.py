"""Model loading: Hub ids, local paths and built-in models, behind one family interface.

Built-in models are built in memory from a seeded initialisation, so every process that asks for
`builtin:tiny-t5` gets the same weights without the Hub and without shipping weights in the repo.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import families
from .runtime import hub_reachable  # noqa: F401 - re-exported; lives in a torch-free module

BUILTIN_PREFIX = "builtin:"
TOKENIZER_DIR = Path(__file__).parent / "builtin_tokenizer"

# exact shapes of the public checkpoints (untied lm_head, like the real files)
FLAN_T5_SHAPES = {
    "random-flan-t5-small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8,
                                 num_decoder_layers=8, vocab_size=32128),
    "random-flan-t5-base": dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12,
                                num_decoder_layers=12, vocab_size=32128),
    "random-flan-t5-large": dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24,
                                 num_decoder_layers=24, vocab_size=32128),
}
TINY_T5 = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)


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
    return [BUILTIN_PREFIX + n for n in ["tiny-t5", *FLAN_T5_SHAPES, *families.EXTRA_BUILTINS]]


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
        return families.builtin_config(name[len(BUILTIN_PREFIX):], _tokenizer_vocab_size())
    from transformers import AutoConfig

    return _from_hub(AutoConfig, name, "config")


def load_tokenizer(name: str):
    if name.startswith(BUILTIN_PREFIX):
        return builtin_tokenizer()
    from transformers import AutoTokenizer

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
        model = _build_builtin(name, config, family)
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
    family.prepare_tokenizer(tokenizer, model)
    kernels = {}
    if fast_kernels and not meta:
        from . import fastops

        kernels = {"fused_gelu": fastops.fuse_gelu(model), "fused_t5_norm": fastops.cast_norm_outputs(model)}
    if device and not meta:
        model.to(device)
    return Loaded(model, tokenizer, family, name, kernels)


def _build_builtin(name: str, config, family):
    import torch

    # a fixed seed makes the weights identical in every process; the caller's RNG stays untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = family.from_config(config)
    family.untie_lm_head(model)
    model.eval()
    return model


@lru_cache(maxsize=1)
def _tokenizer_vocab_size() -> int:
    return len(builtin_tokenizer())


def builtin_tokenizer():
    """The built-in tokenizer (a small BPE shipped in the repo), T5-style: pad 0, eos 1, unk 2."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    return tok


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
