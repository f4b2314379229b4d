"""Where the parts PEFT methods touch sit in any transformers model, read from its module tree and config.

No per-model-type tables: the transformer blocks are the model's largest list of identical modules, a
block's attention projections are named by what they are (q, q_proj, query, q_lin, Wq, ... or one fused
c_attn/qkv_proj/Wqkv), the feed-forward output is the block's last projection outside the attention back
to the hidden size, and each is handed to PEFT as the shortest name suffix that matches nothing else (PEFT matches
target modules by suffix). PEFT's own per-architecture defaults (peft.utils.constants) answer where the
tree has no such names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# leaf names of attention projections, by role (the last component of a module's name)
ROLE_LEAVES: dict[str, tuple[str, ...]] = {
    "q": ("q", "q_proj", "query", "query_proj", "q_lin", "Wq", "wq"),
    "k": ("k", "k_proj", "key", "key_proj", "k_lin", "Wk", "wk"),
    "v": ("v", "v_proj", "value", "value_proj", "v_lin", "Wv", "wv"),
    # BERT's attention output is attention.output.dense, GPT-2's attn.c_proj: "dense"/"c_proj" count only
    # under an attention module
    "o": ("o", "o_proj", "out_proj", "out_lin", "Wo", "wo", "c_proj", "dense", "dense_proj"),
}
ROLES = tuple(ROLE_LEAVES)
# one projection computing queries, keys and values together: any of q, k, v means it
FUSED_QKV = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv", "W_pack", "in_proj")


def _is_attention(path: list[str]) -> bool:
    return any("attn" in c.lower() or "attention" in c.lower() for c in path[:-1])


def linear_dims(module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer: torch's Linear or transformers' Conv1D (GPT-2), else None."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        return None
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]  # Conv1D stores (in, out)
    return None


def block_lists(module) -> list[torch.nn.ModuleList]:
    """Lists of identical modules not nested in another such list (a stack's layers, not a block's experts)."""
    found: list[tuple[str, torch.nn.ModuleList]] = []
    for name, child in module.named_modules():
        if not isinstance(child, torch.nn.ModuleList) or len(child) == 0:
            continue
        if len({type(c) for c in child}) != 1:
            continue  # T5's block.layer holds an attention and a feed-forward layer: not a stack
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, child))
    return [lst for _, lst in found]


def _size(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_list(stack) -> torch.nn.ModuleList:
    lists = block_lists(stack)
    if not lists:
        raise ValueError("method: cannot find the transformer blocks of this model")
    return max(lists, key=_size)


def layer_list(stack) -> list:
    """The transformer blocks of one stack (a decoder, an encoder, a causal LM): its largest block list."""
    return list(_block_list(stack))


def final_norms(stack) -> list:
    """The norms a stack applies after its blocks (GPT-2's ln_f, Llama's norm, T5's final_layer_norm): norm
    modules beside the block list. Embedding norms (BART's layernorm_embedding) sit below the blocks."""
    blocks = _block_list(stack)
    holder = next(m for m in stack.modules() if any(c is blocks for c in m.children()))
    return [c for n, c in holder.named_children()
            if "norm" in type(c).__name__.lower() and "emb" not in n.lower()]


@dataclass
class Layout:
    """Block-level module names of one model, grouped by what they do."""
    linear: list[str]  # every linear layer of the model, full names
    roles: dict[str, list[str]] = field(default_factory=dict)  # q/k/v/o/qkv -> full names inside blocks
    ffn_out: list[str] = field(default_factory=list)  # the feed-forward projections back to the hidden size

    def names(self, members: list[str]) -> list[str]:
        """The shortest suffixes (PEFT's matching) that select `members` and no other linear layer; where a
        block-relative path is itself a suffix of another path (BERT's output.dense of
        attention.output.dense), that path: the closest PEFT's suffix matching can come."""
        wanted, out = set(members), []
        for full in members:
            parts = _block_relative(full)
            chosen = ".".join(parts)
            for k in range(1, len(parts) + 1):
                suffix = ".".join(parts[-k:])
                if all(n in wanted for n in self.linear if n == suffix or n.endswith("." + suffix)):
                    chosen = suffix
                    break
            if chosen not in out:
                out.append(chosen)
        return out


def _block_relative(name: str) -> list[str]:
    """The name's components after its block index: encoder.block.3.layer.0.SelfAttention.q -> layer.0.
    SelfAttention.q."""
    parts = name.split(".")
    at = next((i for i, p in enumerate(parts) if p.isdigit()), -1)
    return parts[at + 1:]


def read_layout(model, hidden_size: int) -> Layout:
    """The layout of `model` (meta device is enough) whose blocks work at width `hidden_size`."""
    names = {id(m): n for n, m in model.named_modules()}
    layout = Layout([n for n, m in model.named_modules() if n and linear_dims(m) is not None])
    for lst in block_lists(model):  # embeddings, heads and poolers are no method's default target
        for block in lst:
            ffn_out = None
            for rel, module in block.named_modules():
                dims = linear_dims(module) if rel else None
                if dims is None:
                    continue
                full, parts = f"{names[id(block)]}.{rel}", rel.split(".")
                if _is_attention(parts):
                    leaf = parts[-1]
                    role = "qkv" if leaf in FUSED_QKV else next((r for r, ls in ROLE_LEAVES.items() if leaf in ls),
                                                                None)
                    if role is not None:
                        layout.roles.setdefault(role, []).append(full)
                elif dims[1] == hidden_size:
                    ffn_out = full  # the last one back to the hidden size (after gate/up or wi)
            if ffn_out is not None:
                layout.ffn_out.append(ffn_out)
    return layout
