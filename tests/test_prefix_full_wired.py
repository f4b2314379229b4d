"""prefix_full through the project's own paths (registry, prepare_model, save_adapter, load_adapter_model,
Compare's swap): needs the wiring of Method.engine_hooks."""
from __future__ import annotations

import json

import torch

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.engine import adapters, models, train
from peftcompare.engine import prefix_full as pf
from peftcompare.engine.method_hooks import attached


def test_registered_and_trained_through_prepare_model(tmp_path):
    m = methods.get_method("prefix_full")
    assert m.serve == methods.SERVE_SWAP and m.engine_hooks == "peftcompare.engine.prefix_full"
    spec = RunSpec(method="prefix_full", capacity=6, model_name="builtin:tiny-t5")
    loaded = models.load_model(spec.model_name)
    model = train.prepare_model(spec, loaded)
    assert model is loaded.model and pf.bank_of(model) is not None
    trainable, _ = models.count_parameters(model)
    cfg = model.config
    assert trainable == (cfg.num_layers + 2 * cfg.num_decoder_layers) * 2 * 6 * cfg.num_heads * cfg.d_kv
    with torch.no_grad():
        for p in model.prefix_full.parameters():
            p.normal_()
    batch = dict(loaded.tokenizer(["hello there"], return_tensors="pt"))
    dec = torch.tensor([[0, 5]])
    with torch.no_grad():
        want = model(**batch, decoder_input_ids=dec).logits
    out = tmp_path / "a"
    out.mkdir()
    record = {"run_id": "a", "spec": spec.to_dict(), "metrics": {}, "trainable_params": trainable,
              "total_params": 1, "notes": []}
    adapters.save_adapter(model, spec, out, record)
    back = adapters.load_adapter_model(out)
    with torch.no_grad():
        assert torch.equal(back(**batch, decoder_input_ids=dec).logits, want)
    # check_fits and the Compare-style swap on a plain base
    fresh = models.load_model(spec.model_name)
    rec = adapters.read_adapter(out)
    adapters.check_fits(rec, fresh)
    assert pf.bank_of(fresh.model) is None
    from safetensors.torch import load_file

    with attached(m, fresh.model, spec):
        fresh.model.load_state_dict(load_file(str(out / "trainable.safetensors")), strict=False)
        with torch.no_grad():
            assert torch.equal(fresh.model(**batch, decoder_input_ids=dec).logits, want)
    assert pf.bank_of(fresh.model) is None
