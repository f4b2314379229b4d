"""Prefix-Tuning as Li & Liang (2021) describe it for encoder-decoders: learned key/value prefixes in the
encoder's self-attention, the decoder's self-attention AND the decoder's cross-attention.

PEFT's prefix tuning hands its prefix to the model as a KV cache, so on T5 and BART it reaches the decoder's
self-attention only (the encoder's outputs stay the base model's). Here every attention module of the three
kinds gets `n_tokens` learned keys and values of its own:

    model.prefix_full.enc_self.<layer>.key / .value     (n_tokens, heads * head_dim)
    model.prefix_full.dec_self.<layer>.key / .value
    model.prefix_full.dec_cross.<layer>.key / .value

(20 tokens on flan-t5-small: 24 modules x 2 x 20 x 384 = 368,640 parameters.) The bank is a submodule of the
model, so `model.named_parameters()` lists those names, `model.to()` moves it and `state_dict` round-trips it.

How the prefix gets in: each patched attention module's `config` becomes a view of its real config whose
attention implementation routes through `_prefix_attention`, which prepends the prefix to the keys and values
the module computed (after its KV cache was read and updated, so the cache never holds the prefix and nothing
is re-prepended at a decoding step), extends the attention mask so that the prefix is always attended (a
causal decoder mask left implicit is made explicit, aligned to the real keys), gives T5's relative position
bias zeros for the prefix columns, and then calls the implementation the model really uses (eager or sdpa).
The position bias a T5 layer hands on to the next stays the one over the real keys.

Reparametrization (the paper's MLP over a smaller prefix) is a module option, off by default (`REPARAM`, or
`install(..., reparam=True)`): the prefix is then trained through the MLP and `merge` stores its output, so a
saved adapter has the same tensors either way.

Compare serving: `attach(model, spec)` installs an all-zero bank of the spec's size (its tensors are then
swapped in by name like any SERVE_SWAP method's) and returns a handle whose `detach()` restores the base model.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

ATTRIBUTE = "prefix_full"  # where the bank hangs on the model (the first part of its parameter names)
GROUPS = ("enc_self", "dec_self", "dec_cross")
IMPLEMENTATION = "peftcompare_prefix_full"  # the attention implementation the patched modules route through
REPARAM = False  # train the prefix through the paper's MLP (stored as its output all the same)
REPARAM_HIDDEN = 512  # the MLP's hidden width
SUPPORTED = ("eager", "sdpa")  # attention implementations whose mask and bias formats are handled here


class PrefixKV(nn.Module):
    """The prefix of one attention module: `key` and `value`, each (n_tokens, heads * head_dim)."""

    def __init__(self, n_tokens: int, heads: int, head_dim: int, device=None, dtype=torch.float32,
                 parametrized: bool = True):
        super().__init__()
        self.n_tokens, self.heads, self.head_dim = n_tokens, heads, head_dim
        if parametrized:  # without reparametrization the tensors are the parameters themselves
            self.key = nn.Parameter(torch.zeros(n_tokens, heads * head_dim, device=device, dtype=dtype))
            self.value = nn.Parameter(torch.zeros(n_tokens, heads * head_dim, device=device, dtype=dtype))


class Reparam(nn.Module):
    """Li & Liang's reparametrization of one group: P = MLP(P'), P' a smaller (n_tokens, d_model) table, the
    MLP's output every layer's keys and values at once."""

    def __init__(self, n_tokens: int, d_model: int, hidden: int, layers: int, width: int, device=None):
        super().__init__()
        self.layers, self.width = layers, width
        self.embedding = nn.Parameter(torch.randn(n_tokens, d_model, device=device))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden, device=device), nn.Tanh(),
                                 nn.Linear(hidden, layers * 2 * width, device=device))

    def forward(self) -> torch.Tensor:  # (layers, 2, n_tokens, width)
        out = self.mlp(self.embedding)
        return out.view(out.shape[0], self.layers, 2, self.width).permute(1, 2, 0, 3)


class PrefixBank(nn.Module):
    """Every patched attention module's prefix, by group and layer."""

    def __init__(self):
        super().__init__()
        self.enc_self = nn.ModuleList()
        self.dec_self = nn.ModuleList()
        self.dec_cross = nn.ModuleList()
        self.reparam = nn.ModuleDict()  # group -> Reparam, while the prefix trains through the MLP
        # added to the prefix columns' attention scores, per group: 0 lets them be attended as learned,
        # -inf takes a group's prefix out of the model (an ablation, and the check that masks line up)
        self.column_bias = {g: 0.0 for g in GROUPS}
        object.__setattr__(self, "_patched", [])  # (attention module, its real config): not submodules
        object.__setattr__(self, "_computed", {})  # group -> this pass's MLP output (reparametrized)

    @property
    def n_tokens(self) -> int:
        return next(kv.n_tokens for g in GROUPS for kv in getattr(self, g))

    def prefix(self, group: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if group in self.reparam:
            # computed afresh when a stack's first layer asks (every pass runs layer 0 first), then shared
            # by its other layers: one MLP evaluation per stack pass, each with its own autograd graph
            if layer == 0 or group not in self._computed:
                self._computed[group] = self.reparam[group]()
            out = self._computed[group][layer]
            return out[0], out[1]
        kv = getattr(self, group)[layer]
        return kv.key, kv.value


# -- the attention routing ---------------------------------------------------------------------------
class _AttentionConfig:
    """An attention module's view of its config: everything is the real config's, except the attention
    implementation, which routes through the prefix. Holds which prefix the module takes."""

    _attn_implementation = IMPLEMENTATION

    def __init__(self, real, bank: PrefixBank, group: str, layer: int, eager):
        d = self.__dict__
        d["_real"], d["_bank"], d["_group"], d["_layer"], d["_eager"] = real, bank, group, layer, eager

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["_real"], name)

    def __setattr__(self, name, value):
        setattr(self._real, name, value)


def _prefix_attention(module, query, key, value, attention_mask, **kwargs):
    view = module.config
    real_impl = view._real._attn_implementation
    if real_impl not in SUPPORTED:
        raise ValueError(f"method: prefix_full supports the eager and sdpa attention, not {real_impl}")
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = ALL_ATTENTION_FUNCTIONS.get_interface(real_impl, view._eager)
    bank = view._bank
    pk, pv = bank.prefix(view._group, view._layer)
    batch, heads, q_len, k_len = query.shape[0], key.shape[1], query.shape[2], key.shape[2]
    n = pk.shape[0]

    def heads_first(t):  # (n, heads * head_dim) -> (batch, heads, n, head_dim)
        return t.to(key.dtype).view(n, heads, -1).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)

    key = torch.cat([heads_first(pk), key], dim=2)
    value = torch.cat([heads_first(pv), value], dim=2)
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: zeros for the prefix columns
        kwargs["position_bias"] = torch.cat([bias.new_zeros((*bias.shape[:-1], n)), bias], dim=-1)
    causal = getattr(module, "is_causal", False) and kwargs.get("is_causal", True) is not False
    if attention_mask is None and causal and q_len > 1:
        # sdpa leaves a causal mask implicit (is_causal): with prefix columns in front it must be explicit,
        # aligned to the real keys (the query at i sees the past and itself)
        past = k_len - q_len
        rows = torch.arange(q_len, device=query.device)[:, None] + past
        attention_mask = (torch.arange(k_len, device=query.device)[None, :] <= rows).view(1, 1, q_len, k_len)
    fill = float(bank.column_bias.get(view._group, 0.0))
    if fill != 0.0:  # a muted prefix: an additive float mask carries the prefix columns' score
        if attention_mask is None:
            attention_mask = query.new_zeros((1, 1, q_len, k_len))
        elif attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device) \
                .masked_fill(~attention_mask, torch.finfo(query.dtype).min)
        pad = attention_mask.new_full((*attention_mask.shape[:-1], n), fill)
        attention_mask = torch.cat([pad, attention_mask], dim=-1)
    elif attention_mask is not None:  # the prefix is always attended: True / 0 in its columns
        if attention_mask.dtype == torch.bool:
            pad = attention_mask.new_ones((*attention_mask.shape[:-1], n))
        else:
            pad = attention_mask.new_zeros((*attention_mask.shape[:-1], n))
        attention_mask = torch.cat([pad, attention_mask], dim=-1)
    return inner(module, query, key, value, attention_mask, **kwargs)


def _register_implementation() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _prefix_attention)


# -- which modules, for which family -----------------------------------------------------------------
def _targets(model):
    """[(group, layer, attention module, heads, head_dim, k projection, v projection)] or ValueError."""
    from transformers.models.bart.modeling_bart import BartAttention
    from transformers.models.t5.modeling_t5 import T5Attention

    kind = getattr(model.config, "model_type", type(model).__name__)
    if not getattr(model.config, "is_encoder_decoder", False) or not hasattr(model, "get_encoder"):
        raise ValueError(f"method: prefix_full needs a T5 or BART encoder-decoder, not {kind}")
    encoder, decoder = model.get_encoder(), model.get_decoder()
    out = []
    if all(hasattr(s, "block") for s in (encoder, decoder)):  # T5 (flan-t5, t5, mt5)
        for group, stack, sub, attr in (("enc_self", encoder, 0, "SelfAttention"),
                                        ("dec_self", decoder, 0, "SelfAttention"),
                                        ("dec_cross", decoder, 1, "EncDecAttention")):
            for i, block in enumerate(stack.block):
                m = getattr(block.layer[sub], attr)
                if type(m) is not T5Attention:
                    raise ValueError(f"method: prefix_full needs T5's own attention, not {type(m).__name__}")
                out.append((group, i, m, m.n_heads, m.key_value_proj_dim, m.k, m.v))
        return out
    if all(hasattr(s, "layers") for s in (encoder, decoder)):  # BART
        for group, stack, attr in (("enc_self", encoder, "self_attn"), ("dec_self", decoder, "self_attn"),
                                   ("dec_cross", decoder, "encoder_attn")):
            for i, layer in enumerate(stack.layers):
                m = getattr(layer, attr)
                if type(m) is not BartAttention:
                    raise ValueError(f"method: prefix_full needs BART's own attention, not {type(m).__name__}")
                out.append((group, i, m, m.num_heads, m.head_dim, m.k_proj, m.v_proj))
        return out
    raise ValueError(f"method: prefix_full needs a T5 or BART encoder-decoder, not {kind}")


def _eager_of(module):
    import sys

    return sys.modules[type(module).__module__].eager_attention_forward


def _real_words(model, n_tokens: int, k_proj, v_proj) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's initialisation from real words: the module's own key/value projections of (RMS-normalised)
    embeddings of randomly drawn vocabulary rows, so the prefix starts in the scale and subspace of real keys."""
    emb = model.get_input_embeddings().weight
    ids = torch.randint(0, emb.shape[0], (n_tokens,)).to(emb.device)
    x = emb[ids].float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    x = x.to(k_proj.weight.dtype)
    return k_proj(x).float(), v_proj(x).float()


# -- public API --------------------------------------------------------------------------------------
def install(model, n_tokens: int, reparam: bool = False, init: str = "words",
            hidden: int = REPARAM_HIDDEN) -> PrefixBank:
    """Give every encoder self-, decoder self- and cross-attention module of a T5/BART model a learned prefix
    of `n_tokens` keys and values; returns the bank (`model.prefix_full`), its parameters trainable.

    init: "words" (real-word activations, the paper's advice), "zeros" (a bank whose tensors are loaded
    next: attach, load_adapter) or "normal" (N(0, 1), as PEFT's prefix starts)."""
    if n_tokens <= 0:
        raise ValueError(f"capacity: virtual tokens must be > 0, got {n_tokens}")
    if getattr(model, ATTRIBUTE, None) is not None:
        raise ValueError("method: this model already has a prefix_full bank (uninstall it first)")
    if init not in ("words", "zeros", "normal"):
        raise ValueError(f"prefix_full: unknown init {init!r}")
    targets = _targets(model)
    impl = model.config._attn_implementation
    if impl not in SUPPORTED:
        raise ValueError(f"method: prefix_full supports the eager and sdpa attention, not {impl}")
    _register_implementation()
    emb = model.get_input_embeddings().weight
    device, meta = emb.device, emb.is_meta
    bank = PrefixBank()
    for group, layer, m, heads, head_dim, k, v in targets:
        kv = PrefixKV(n_tokens, heads, head_dim, device=device, parametrized=not reparam)
        if not reparam and not meta and init != "zeros":
            with torch.no_grad():
                if init == "words":
                    key, val = _real_words(model, n_tokens, k, v)
                else:
                    key, val = torch.randn_like(kv.key), torch.randn_like(kv.value)
                kv.key.copy_(key)
                kv.value.copy_(val)
        getattr(bank, group).append(kv)
    if reparam:
        d_model = emb.shape[1]
        for group in GROUPS:
            layers = getattr(bank, group)
            bank.reparam[group] = Reparam(n_tokens, d_model, hidden, len(layers),
                                          layers[0].heads * layers[0].head_dim, device=device)
    model.add_module(ATTRIBUTE, bank)
    for group, layer, m, *_ in targets:
        bank._patched.append((m, m.config))
        m.config = _AttentionConfig(m.config, bank, group, layer, _eager_of(m))
    for p in bank.parameters():
        p.requires_grad_(True)
    return bank


def bank_of(model) -> PrefixBank | None:
    bank = getattr(model, ATTRIBUTE, None)
    return bank if isinstance(bank, PrefixBank) else None


def uninstall(model) -> None:
    """Take the prefix out: the attention modules get their own configs back and the bank is removed."""
    bank = bank_of(model)
    if bank is None:
        return
    for m, real in bank._patched:
        m.config = real
    bank._patched.clear()
    bank._computed.clear()
    delattr(model, ATTRIBUTE)


def merge(model) -> None:
    """Store a reparametrized prefix as its MLP's output (plain key/value parameters, the MLP dropped): what
    an adapter saves. A no-op for a bank trained without the MLP."""
    bank = bank_of(model)
    if bank is None or not len(bank.reparam):
        return
    with torch.no_grad():
        for group in GROUPS:
            out = bank.reparam[group]()
            for layer, kv in enumerate(getattr(bank, group)):
                kv.key = nn.Parameter(out[layer, 0].detach().clone().float())
                kv.value = nn.Parameter(out[layer, 1].detach().clone().float())
    bank.reparam = nn.ModuleDict()
    bank._computed.clear()


def prepare(spec, model, family) -> None:
    """Method hook for training: everything frozen, then a prefix of `spec.capacity` virtual tokens."""
    for p in model.parameters():
        p.requires_grad_(False)
    install(model, spec.capacity, reparam=REPARAM)


class Attached:
    """What `attach` returns: `detach()` puts the base model back (also as a context manager)."""

    def __init__(self, model):
        self.model = model

    def detach(self) -> None:
        uninstall(self.model)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()


def attach(model, spec) -> Attached:
    """For serving a saved adapter: an all-zero bank of the spec's size whose tensors the caller then loads
    (by name, `prefix_full.<group>.<layer>.key|value`), frozen; `.detach()` removes it again."""
    bank = install(model, spec.capacity, init="zeros")
    for p in bank.parameters():
        p.requires_grad_(False)
    return Attached(model)


@contextmanager
def attached(model, spec):
    handle = attach(model, spec)
    try:
        yield model
    finally:
        handle.detach()
