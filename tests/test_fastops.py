"""fastops keeps the model's function: dropout's statistics and scaling, GELU's and T5 norm's values and
gradients, LoRA's eval outputs. Speed is measured in bench/bench_train.py, not here."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from peftcompare.engine import fastops, models, train
from peftcompare.core.spec import RunSpec


def _dropout(p: float) -> nn.Dropout:
    d = nn.Dropout(p)
    assert fastops.swap_dropout(d) == 1 and isinstance(d, fastops.PoolDropout)
    return d.train()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_dropout_drops_p_and_scales_as_torch_does(dtype):
    d = _dropout(0.1)
    x = torch.ones(1000, 1000, dtype=dtype)
    y = d(x)
    assert y.dtype == dtype and y.shape == x.shape
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 1e6 draws: the standard error is 0.0003
    kept = y[y != 0].unique()
    # the value torch's own dropout multiplies by, in the same dtype
    assert kept.tolist() == torch.ones(1, dtype=dtype).div_(0.9).tolist()
    assert d.eval()(x) is x


def test_pool_dropout_masks_are_independent_and_reproducible():
    d = _dropout(0.5)
    x = torch.ones(256, 1024)
    torch.manual_seed(7)
    a, b = d(x) != 0, d(x) != 0
    assert not torch.equal(a, b)
    agree = (a == b).float().mean().item()
    assert abs(agree - 0.5) < 0.01  # independent masks agree half the time
    rows = a.float().mean(1)  # each row is 1024 Bernoulli(0.5) draws: std 0.0156
    assert 0.01 < rows.std().item() < 0.022
    torch.manual_seed(7)
    assert torch.equal(d(x) != 0, a)  # the same seed, the same masks, whatever ran before
    d(torch.ones(8 * 1024, 1024))  # a larger mask grows the pool ...
    torch.manual_seed(7)
    assert torch.equal(d(x) != 0, a)  # ... without changing the smaller masks


def test_pool_dropout_gradient_is_its_noise():
    d = _dropout(0.2)
    x = torch.ones(64, 64, requires_grad=True)
    y = d(x)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())


def test_pool_dropout_p_zero_and_one():
    x = torch.randn(8, 8)
    assert fastops.swap_dropout(nn.Dropout(0.0)) == 0  # p = 0 is left alone
    assert torch.equal(_dropout(1.0)(x), torch.zeros_like(x))


def test_swap_reaches_lora_dropout_and_the_base_model():
    spec = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4).resolved()
    loaded = models.load_model(spec.model_name)
    for m in loaded.model.modules():  # tiny-t5 is built without dropout; flan-t5 has 0.1
        if isinstance(m, nn.Dropout):
            m.p = 0.1
    model = train.prepare_model(spec, loaded)
    pooled = [n for n, m in model.named_modules() if isinstance(m, fastops.PoolDropout)]
    assert any("lora_dropout" in n for n in pooled) and any("lora" not in n for n in pooled)
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())


def test_fused_kernels_keep_the_model_output():
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (4, 12))
    labels = torch.randint(3, 500, (4, 5))
    plain = models.load_model("builtin:tiny-t5", fast_kernels=False)
    fast = models.load_model("builtin:tiny-t5")
    assert fast.kernels["fused_gelu"] > 0 and fast.kernels["fused_t5_norm"] > 0 and not plain.kernels
    for m in (plain.model, fast.model):
        m.train()  # gradients through every replaced module; dropout off so both see the same function
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    out = [m.model(input_ids=ids, labels=labels) for m in (plain, fast)]
    torch.testing.assert_close(out[1].logits, out[0].logits, atol=2e-5, rtol=1e-5)
    for o in out:
        o.loss.backward()
    grads = [dict((n, p.grad) for n, p in m.model.named_parameters()) for m in (plain, fast)]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_t5_norm_function_gradients():
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: fastops._RMSNorm.apply(x, w, 1e-6), (x, w))


def test_t5_norm_hands_autocast_its_dtype():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    norm = T5LayerNorm(16)
    assert fastops.cast_norm_outputs(norm) == 1
    x = torch.randn(2, 16)
    assert norm(x).dtype == torch.float32
    with torch.autocast("cpu", torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    reference = T5LayerNorm(16)(x)
    assert torch.equal(out, reference.to(torch.bfloat16))


def test_lora_inputs_left_in_bf16_give_the_same_eval_outputs():
    spec = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4).resolved()
    model = train.prepare_model(spec, models.load_model(spec.model_name)).eval()
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # a trained adapter: lora_B is zero only at initialisation
    train.cast_frozen_linears(model, torch.bfloat16)
    ids = torch.randint(3, 500, (3, 10))
    dec = torch.zeros(3, 1, dtype=torch.long)

    def logits():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            return model(input_ids=ids, decoder_input_ids=dec).logits

    before = logits()
    # q and v in every attention: self-attention in each encoder layer, self and cross in each decoder layer
    assert fastops.lora_inputs_in_autocast_dtype(model) == 2 * (2 + 2 * 2)
    assert torch.equal(logits(), before)
