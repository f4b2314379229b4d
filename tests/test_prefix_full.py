"""prefix_full: Li & Liang's prefix tuning for encoder-decoders, on the real tiny T5 (and BART).

Prefixes in the encoder's self-attention, the decoder's self-attention and the cross-attention (PEFT's prefix
reaches the decoder's self-attention only), masks that always attend the prefix, generation with the KV cache
equal to step-by-step greedy decoding, exact parameter counts on flan-t5-small shapes, save -> fresh base ->
identical logits, and training that lowers the loss."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from peftcompare.core import methods
from peftcompare.engine import models
from peftcompare.engine import prefix_full as pf
from peftcompare.engine.adapters import trainable_state

T5 = "builtin:tiny-t5"
BART = "builtin:tiny-bart"
SMALL = "builtin:random-flan-t5-small"
MUTED = float("-inf")


@pytest.fixture(scope="module")
def pristine():
    cache = {}

    def get(name=T5):
        if name not in cache:
            cache[name] = models.load_model(name)
        return cache[name]
    return get


@pytest.fixture
def loaded(pristine):
    """A fresh copy of the tiny T5 (the pristine one is never touched)."""
    base = pristine(T5)
    return models.Loaded(copy.deepcopy(base.model).eval(), base.tokenizer, base.family, base.name)


def _batch(tok, texts=("translate the weather: it is sunny and warm today", "hi there")):
    b = tok(list(texts), return_tensors="pt", padding=True)
    assert b["attention_mask"].min() == 0  # a padded row: the encoder mask is exercised
    return dict(b)


def _dec(model, bsz=2):
    start = model.config.decoder_start_token_id
    return torch.tensor([[start, 11, 12, 13]] * bsz)


def _forward(model, batch, dec):
    with torch.no_grad():
        return model(**batch, decoder_input_ids=dec, output_hidden_states=True)


def _randomize(bank, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def test_names_and_geometry(loaded):
    model = loaded.model
    bank = pf.install(model, 5)
    cfg = model.config
    inner = cfg.num_heads * cfg.d_kv
    names = {n: tuple(p.shape) for n, p in model.named_parameters() if n.startswith("prefix_full.")}
    want = {f"prefix_full.{g}.{i}.{kv}": (5, inner) for g, n in
            (("enc_self", cfg.num_layers), ("dec_self", cfg.num_decoder_layers), ("dec_cross", cfg.num_decoder_layers))
            for i in range(n) for kv in ("key", "value")}
    assert names == want
    assert model.prefix_full is bank and bank.n_tokens == 5
    assert all(p.requires_grad for p in bank.parameters())
    # the real-word initialisation: non-zero, in the scale of the module's own keys
    assert all(p.abs().max() > 0 for p in bank.parameters())
    with pytest.raises(ValueError, match="already has a prefix_full bank"):
        pf.install(model, 5)


def test_uninstall_restores_the_base_model(loaded):
    model, tok = loaded.model, loaded.tokenizer
    batch, dec = _batch(tok), _dec(model)
    base = _forward(model, batch, dec)
    configs = [m.config for m in model.modules() if hasattr(m, "key_value_proj_dim")]
    _randomize(pf.install(model, 4))
    assert not torch.allclose(_forward(model, batch, dec).logits, base.logits, atol=1e-3)
    pf.uninstall(model)
    assert not hasattr(model, "prefix_full")
    assert not any(n.startswith("prefix_full") for n, _ in model.named_parameters())
    assert [m.config for m in model.modules() if hasattr(m, "key_value_proj_dim")] == configs
    assert torch.equal(_forward(model, batch, dec).logits, base.logits)


def test_encoder_outputs_change_unlike_peft_prefix(pristine, loaded):
    """PEFT's prefix leaves the encoder's outputs exactly the base model's (it reaches the decoder's
    self-attention only); prefix_full changes them."""
    from peft import get_peft_model

    batch, dec = _batch(loaded.tokenizer), _dec(loaded.model)
    base = _forward(loaded.model, batch, dec)

    peft_base = copy.deepcopy(pristine(T5).model).eval()
    config = methods.get_method("prefix").make_config(SimpleNamespace(capacity=4), peft_base, loaded.tokenizer,
                                                      loaded.family)
    peft_model = get_peft_model(peft_base, config).eval()
    peft_out = _forward(peft_model, batch, dec)
    assert torch.equal(peft_out.encoder_last_hidden_state, base.encoder_last_hidden_state)
    assert not torch.allclose(peft_out.logits, base.logits, atol=1e-3)  # the decoder did see PEFT's prefix

    pf.install(loaded.model, 4)
    ours = _forward(loaded.model, batch, dec)
    assert (ours.encoder_last_hidden_state - base.encoder_last_hidden_state).abs().max() > 1e-2
    assert not torch.allclose(ours.logits, base.logits, atol=1e-3)


def test_cross_attention_sees_the_prefix(loaded):
    """Only the cross-attention prefix active (the two self-attention ones masked out): the encoder's outputs
    are the base model's, the decoder's are not."""
    model, tok = loaded.model, loaded.tokenizer
    batch, dec = _batch(tok), _dec(model)
    base = _forward(model, batch, dec)
    bank = pf.install(model, 4)
    _randomize(bank)
    bank.column_bias.update(enc_self=MUTED, dec_self=MUTED)
    out = _forward(model, batch, dec)
    torch.testing.assert_close(out.encoder_last_hidden_state, base.encoder_last_hidden_state, rtol=0, atol=1e-6)
    assert (out.decoder_hidden_states[-1] - base.decoder_hidden_states[-1]).abs().max() > 1e-2
    # and the decoder's self-attention prefix on its own changes the decoder too
    bank.column_bias.update(dec_self=0.0, dec_cross=MUTED)
    out = _forward(model, batch, dec)
    torch.testing.assert_close(out.encoder_last_hidden_state, base.encoder_last_hidden_state, rtol=0, atol=1e-6)
    assert (out.decoder_hidden_states[-1] - base.decoder_hidden_states[-1]).abs().max() > 1e-2


@pytest.mark.parametrize("name", [T5, BART])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_masked_out_prefix_leaves_the_model_unchanged(pristine, name, impl):
    """Every prefix column scored -inf: outputs equal the base model's (float64, to 1e-6), for both mask
    formats (sdpa's boolean / implicit causal masks, eager's additive ones). A misaligned mask or bias would
    hide real keys instead and change everything."""
    src = pristine(name)
    model = copy.deepcopy(src.model).double().eval()
    model.set_attn_implementation(impl)
    batch, dec = _batch(src.tokenizer), _dec(model)
    base = _forward(model, batch, dec)
    bank = pf.install(model, 6)
    _randomize(bank, 3.0)
    active = _forward(model, batch, dec)
    assert (active.encoder_last_hidden_state - base.encoder_last_hidden_state).abs().max() > 1e-2
    bank.column_bias.update({g: MUTED for g in pf.GROUPS})
    out = _forward(model, batch, dec)
    for got, want in [(out.encoder_last_hidden_state, base.encoder_last_hidden_state),
                      (out.decoder_hidden_states[-1], base.decoder_hidden_states[-1]), (out.logits, base.logits)]:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_parameter_count_on_flan_t5_small_shapes():
    """24 attention modules x (key + value) x 20 tokens x 384 (6 heads of 64) = 368,640, and nothing else
    trains."""
    loaded = models.load_model(SMALL, meta=True)
    model = loaded.model
    pf.prepare(SimpleNamespace(capacity=20), model, loaded.family)
    trainable, _ = models.count_parameters(model)
    assert trainable == 24 * 2 * 20 * 384 == 368_640
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"prefix_full.{g}.{i}.{kv}" for g in pf.GROUPS for i in range(8) for kv in ("key", "value")}
    assert all(tuple(p.shape) == (20, 384) for p in model.prefix_full.parameters())


def _greedy_no_cache(model, batch, steps, eos, pad):
    """Greedy decoding the slow way: the whole decoder prefix recomputed at every step, no cache (and BART's
    forced end-of-sequence token at the last step, as generate's logits processor puts it)."""
    start = model.config.decoder_start_token_id
    forced = model.generation_config.forced_eos_token_id
    dec = torch.full((batch["input_ids"].shape[0], 1), start)
    done = torch.zeros(dec.shape[0], dtype=torch.bool)
    logits = []
    with torch.no_grad():
        for step in range(steps):
            last = model(**batch, decoder_input_ids=dec, use_cache=False).logits[:, -1]
            logits.append(last)
            best = last.argmax(-1)
            if forced is not None and step == steps - 1:
                best = torch.full_like(best, forced)
            nxt = torch.where(done, torch.full_like(best, pad), best)
            dec = torch.cat([dec, nxt[:, None]], 1)
            done |= nxt == eos
            if done.all():
                break
    return dec, torch.stack(logits, 1)


@pytest.mark.parametrize("name", [T5, BART])
def test_generate_with_kv_cache_equals_step_by_step_greedy(pristine, name):
    src = pristine(name)
    model, tok = copy.deepcopy(src.model).eval(), src.tokenizer
    batch = _batch(tok)
    with torch.no_grad():
        plain = model.generate(**batch, max_new_tokens=10, do_sample=False, num_beams=1, output_logits=True,
                               return_dict_in_generate=True)
    bank = pf.install(model, 5)
    _randomize(bank, 1.0, seed=3)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=10, do_sample=False, num_beams=1, use_cache=True,
                             output_logits=True, return_dict_in_generate=True)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    slow, slow_logits = _greedy_no_cache(model, batch, 10, eos, model.generation_config.pad_token_id)
    assert torch.equal(out.sequences, slow)
    cached_logits = torch.stack(out.logits, 1)
    torch.testing.assert_close(cached_logits, slow_logits, rtol=1e-4, atol=1e-4)
    # the prefix matters during generation (a prefix dropped after the first step would fail the equality)
    first = min(len(plain.logits), len(out.logits))
    assert not torch.allclose(torch.stack(plain.logits[:first], 1), cached_logits[:, :first], atol=1e-2)


@pytest.mark.parametrize("reparam", [False, True])
def test_save_then_load_into_a_fresh_base_gives_identical_logits(pristine, loaded, tmp_path, reparam):
    from safetensors.torch import load_file, save_file

    model, tok = loaded.model, loaded.tokenizer
    batch, dec = _batch(tok), _dec(model)
    model.requires_grad_(False)  # as training has it (prepare): only the prefix trains
    bank = pf.install(model, 7, reparam=reparam)
    _randomize(bank, 0.5, seed=5)
    trained = _forward(model, batch, dec).logits
    pf.merge(model)  # what a save does first: a reparametrized prefix is stored as its MLP's output
    merged = _forward(model, batch, dec).logits
    torch.testing.assert_close(merged, trained, rtol=0, atol=1e-5)
    state = trainable_state(model)
    assert set(state) == {f"prefix_full.{g}.{i}.{kv}" for g in pf.GROUPS for i in range(2) for kv in ("key", "value")}
    save_file({n: t.contiguous() for n, t in state.items()}, str(tmp_path / "trainable.safetensors"))

    fresh = copy.deepcopy(pristine(T5).model).eval()
    base = _forward(fresh, batch, dec).logits
    handle = pf.attach(fresh, SimpleNamespace(capacity=7))
    assert not any(p.requires_grad for p in fresh.prefix_full.parameters())
    result = fresh.load_state_dict(load_file(str(tmp_path / "trainable.safetensors")), strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if k.startswith("prefix_full")]
    assert torch.equal(_forward(fresh, batch, dec).logits, merged)
    handle.detach()
    assert torch.equal(_forward(fresh, batch, dec).logits, base)


@pytest.mark.parametrize("reparam", [False, True])
def test_a_few_training_steps_reduce_the_loss(loaded, reparam, monkeypatch):
    model, tok = loaded.model, loaded.tokenizer
    monkeypatch.setattr(pf, "REPARAM", reparam)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    pf.prepare(SimpleNamespace(capacity=8), model, loaded.family)
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in model.prefix_full.parameters()}
    src = tok(["review: a wonderful film", "review: dull and far too long"], return_tensors="pt", padding=True)
    labels = tok(text_target=["positive", "negative"], return_tensors="pt", padding=True)["input_ids"]
    labels[labels == tok.pad_token_id] = -100
    optimizer = torch.optim.AdamW(params, lr=3e-2 if not reparam else 3e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**src, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    for n, p in model.named_parameters():  # the base model did not move
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    if reparam:
        assert len(model.prefix_full.reparam) == 3  # trained through the MLP


def test_other_families_are_refused():
    loaded = models.load_model("builtin:tiny-gpt2", meta=True)
    with pytest.raises(ValueError, match="prefix_full needs a T5 or BART encoder-decoder"):
        pf.install(loaded.model, 4)
