"""The PEFT zoo, selective parts and a KV cartridge: methods that train existing parts of the model (norms,
biases, chosen embedding rows) and CARTRIDGE's trained key/value cache. One table row per method."""
from __future__ import annotations

from peftcompare.core.methods.base import SERVE_PREFIX
from peftcompare.core.methods.soft_prompts import PREFIX_NOTE
from peftcompare.core.methods.zoo_common import Zoo, register
from peftcompare.core.tasks import get_dataset

_SELECTIVE = "selective"
_NO_CONV1D = ("PEFT implements it for torch.nn.Linear layers only, not the Conv1D layers of GPT-2-style "
              "decoders")


def _norms(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """Every normalisation layer of the model (PEFT knows the names for a few architectures only)."""
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and "norm" in type(m).__name__.lower()]
    return {**kwargs, "target_modules": list(dict.fromkeys(names))}


def _token_rows(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """The embedding rows that train: the prompt template's and the label words' tokens first, then the
    vocabulary in order (tokenizers number their commonest pieces first)."""
    embedding = model.get_input_embeddings()
    vocab = embedding.num_embeddings
    if spec.capacity > vocab:
        raise ValueError(f"capacity: {spec.model_name} has {vocab:,} tokens, got {spec.capacity:,}")
    words = " ".join([spec.prompt_template.replace("{text}", " "), *get_dataset(spec.dataset).label_names])
    first = [i for i in tokenizer(words, add_special_tokens=False)["input_ids"] if i < vocab]
    rows = list(dict.fromkeys(first + list(range(vocab))))[: spec.capacity]
    name = next(n for n, m in model.named_modules() if m is embedding).rsplit(".", 1)[-1]
    return {**kwargs, "token_indices": sorted(rows), "target_modules": [name]}


def _cartridge(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """The attention geometry given explicitly, as for prefix tuning (flan-t5-small's 512-wide model has 6
    heads of 64); the first virtual token stays frozen (PEFT's default), so at least two."""
    if spec.capacity < 2:
        raise ValueError("capacity: a cartridge keeps its first virtual token frozen; give at least 2")
    heads, head_dim, layers = family.attention_geometry(model.config)
    return {**kwargs, "token_dim": heads * head_dim, "num_attention_heads": heads, "num_layers": layers}


def _cartridge_notes(spec, loaded) -> list[str]:
    return [PREFIX_NOTE] if loaded.family.name == "seq2seq" else []


for row in [
    Zoo("ln_tuning", "LN tuning", "LNTuningConfig", family=_SELECTIVE,
        paper="Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning (arXiv:2312.11420)",
        help="Only the normalisation layers train (a copy of each, swapped in).", color="#b8e186",
        adjust=_norms, targets=False, method={"learning_rate": 1e-3}),
    Zoo("beft", "BEFT", "BeftConfig", family=_SELECTIVE,
        paper="BEFT: Bias-Efficient Fine-Tuning of Language Models in Low-Data Regimes (arXiv:2509.15974)",
        help="A trained bias added to each adapted projection (T5 has none of its own).", color="#4d9221",
        works_on=("seq2seq", "encoder"), not_on_reason=_NO_CONV1D, method={"learning_rate": 1e-3}),
    Zoo("trainable_tokens", "Trainable tokens", "TrainableTokensConfig", None, "trained embedding rows",
        (100, 600, 3000), 1 << 20, (16, 64), 600, _SELECTIVE, "none: a PEFT method (trainable_token_indices)",
        "Only the embedding rows of chosen tokens train: the prompt's and labels' tokens, then the commonest.",
        "#c51b7d", adjust=_token_rows, targets=False, works_on=("seq2seq", "causal"),
        not_on_reason="PEFT's trainable tokens cannot also train the new classification head an encoder "
                      "classifier needs (no modules_to_save)"),
    Zoo("cartridge", "Cartridge", "CartridgeConfig", "num_virtual_tokens", "virtual tokens", (10, 50, 100, 250),
        1024, (8, 16), 50, "soft prompts",
        "Cartridges: Lightweight and general-purpose long context representations via self-study "
        "(arXiv:2506.06266)",
        "A trained key/value cache prepended in every attention layer, its first token frozen.", "#fdb863",
        adjust=_cartridge, targets=False,
        method={"serve": SERVE_PREFIX, "notes": _cartridge_notes, "note": PREFIX_NOTE,
                "note_families": ("t5", "seq2seq"), "learning_rate": 1e-2}),
]:
    register(row)
