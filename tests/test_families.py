"""The model families behind one interface: causal LMs (GPT-2 style), encoder classifiers (BERT style) and
the built-in models of each, tested on the tiny built-ins with real tokenizers and real forward passes."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peftcompare.engine import builtin, families, models, train  # noqa: E402
from peftcompare.engine.families import IGNORE_INDEX  # noqa: E402
from peftcompare.core.spec import RunSpec  # noqa: E402
from peftcompare.service.execution import execute  # noqa: E402
from peftcompare.service.store import Store  # noqa: E402

TINY = {"builtin:tiny-t5": "seq2seq", "builtin:tiny-bart": "seq2seq", "builtin:tiny-gpt2": "causal",
        "builtin:tiny-bert": "encoder"}


@pytest.mark.parametrize("name, family", TINY.items())
def test_builtins_load_deterministically(name, family):
    a, b = models.load_model(name), models.load_model(name)
    assert a.family.name == family
    assert name in models.builtin_names()
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
    assert models.load_model(name).model.config.vocab_size == len(builtin.tokenizer())


@pytest.mark.parametrize("name, total", [("builtin:random-gpt2", 124_439_808),
                                         ("builtin:random-t5-small", 60_506_624),
                                         ("builtin:random-bert-base", 109_482_240 + 768 * 2 + 2)])
def test_public_shapes(name, total):
    assert models.count_parameters(models.load_model(name, meta=True).model)[1] == total


def test_family_instances_are_per_model():
    a = families.family_for_config(models.load_config("builtin:tiny-bert"))
    b = families.family_for_config(models.load_config("builtin:tiny-bert"))
    assert a is not b and a.model_type == "bert"  # label words attached to one never leak to another


def test_unsupported_model_type():
    from transformers import AutoConfig

    with pytest.raises(ValueError, match="model type 'vit' is not supported"):
        families.family_for_config(AutoConfig.for_model("vit"))


def test_target_module_names_per_family():
    gpt2 = families.family_for_config(models.load_config("builtin:tiny-gpt2"))
    bert = families.family_for_config(models.load_config("builtin:tiny-bert"))
    bart = families.family_for_config(models.load_config("builtin:tiny-bart"))
    assert gpt2.target_modules(["q", "v"]) == ["c_attn"]
    assert gpt2.target_modules(["q", "k", "v", "o"]) == ["c_attn", "attn.c_proj"]
    assert bert.target_modules(["q", "v"]) == ["query", "value"]
    assert bart.target_modules(["q", "v"]) == ["q_proj", "v_proj"]
    assert bart.ia3_modules([])[1] == ["fc2"]


# -- causal LMs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2():
    return models.load_model("builtin:tiny-gpt2")


def test_causal_encode_masks_the_prompt(gpt2):
    fam, tok = gpt2.family, gpt2.tokenizer
    prompt = tok("sst2: a fine film", add_special_tokens=False)["input_ids"]
    target = tok("positive", add_special_tokens=False)["input_ids"]
    (f,) = fam.encode(["sst2: a fine film"], ["positive"], tok, 256, 8)
    assert f["input_ids"] == prompt + target + [tok.eos_token_id]  # no eos between prompt and answer
    assert f["labels"] == [IGNORE_INDEX] * len(prompt) + target + [tok.eos_token_id]
    (short,) = fam.encode(["sst2: a fine film"], ["positive"], tok, 3, 8)
    assert short["input_ids"][:3] == prompt[:3] and len(short["input_ids"]) == 3 + len(target) + 1


def test_causal_collate_pads_right_for_training_left_for_generation(gpt2):
    fam, tok = gpt2.family, gpt2.tokenizer
    feats = fam.encode(["a", "a much longer prompt than the other"], ["x", "y"], tok, 64, 8)
    train_batch = fam.collate(feats, tok)
    assert train_batch["attention_mask"][0, 0] == 1 and train_batch["attention_mask"][0, -1] == 0
    assert (train_batch["labels"][0][train_batch["attention_mask"][0] == 0] == IGNORE_INDEX).all()
    gen = fam.collate([{"input_ids": f["input_ids"]} for f in feats], tok)
    assert gen["attention_mask"][0, 0] == 0 and gen["attention_mask"][0, -1] == 1 and "labels" not in gen


def test_causal_label_scores_are_padding_invariant_and_exact(gpt2):
    fam, tok, model = gpt2.family, gpt2.tokenizer, gpt2.model.eval()
    feats = fam.encode_inputs(["sst2: great", "sst2: a long and tedious film with no story at all"], tok, 64)
    labels = [tok(w, add_special_tokens=False)["input_ids"] for w in ("negative", "positive", "so so")]
    with torch.no_grad():
        both = fam.label_logprobs(model, fam.collate(feats, tok), labels)
        alone = fam.label_logprobs(model, fam.collate(feats[:1], tok), labels)
        # by hand: the label's tokens appended to the prompt, summed log-probabilities
        ids = feats[0]["input_ids"] + labels[2]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        n = len(feats[0]["input_ids"])
        manual = sum(logp[n + j - 1, t] for j, t in enumerate(labels[2]))
    assert torch.allclose(both[0], alone[0], atol=1e-4)
    assert torch.isclose(alone[0, 2], manual, atol=1e-4)


def test_causal_generation_excludes_the_prompt_and_ignores_padding(gpt2):
    fam, tok, model = gpt2.family, gpt2.tokenizer, gpt2.model.eval()
    feats = fam.encode_inputs(["summarize: hello there my friend", "summarize: hi"], tok, 64)
    both = fam.generate(model, fam.collate(feats, tok), tok, 6)
    alone = fam.generate(model, fam.collate(feats[1:], tok), tok, 6)
    assert both[1] == alone[0]
    assert not both[0].startswith("summarize")


def test_causal_pad_token_falls_back_to_eos(gpt2):
    tok = builtin.tokenizer()
    tok.pad_token = None
    families.family_for_config(gpt2.model.config).prepare_tokenizer(tok, gpt2.model)
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"


# -- encoder classifiers ---------------------------------------------------------------------------------
def test_encoder_head_follows_the_labels():
    loaded = models.load_model("builtin:tiny-bert")
    fam, tok = loaded.family, loaded.tokenizer
    words = ["anger", "joy", "sadness"]
    fam.attach_labels(loaded, words)
    assert loaded.model.classifier.out_features == 3 and loaded.model.config.id2label[1] == "joy"
    feats = fam.encode(["i am happy", "i am sad"], ["joy", "sadness"], tok, 32, 8)
    batch = fam.collate(feats, tok)
    assert batch["labels"].tolist() == [1, 2]
    assert float(loaded.model(**batch).loss) > 0  # the head trains on those indices
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    logp = fam.label_logprobs(loaded.model, {k: v for k, v in batch.items() if k != "labels"}, ids)
    assert logp.shape == (2, 3) and torch.allclose(logp.exp().sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="head has 3 outputs for 2 labels"):
        fam.label_logprobs(loaded.model, batch, ids[:2])
    with pytest.raises(ValueError, match="cannot generate"):
        fam.generate(loaded.model, batch, tok, 4)


def test_encoder_head_counts_as_trainable():
    loaded = models.load_model("builtin:tiny-bert")
    model = train.prepare_model(RunSpec(model_name="builtin:tiny-bert", method="lora", capacity=2).resolved(),
                                loaded)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable) and any("lora_" in n for n in trainable)


def test_encoder_cannot_summarize(tmp_path):
    store = Store(tmp_path)
    spec = RunSpec(task="summarization", model_name="builtin:tiny-bert", method="lora", train_samples=4,
                   eval_samples=2)
    run_id = store.create_run(spec.resolved(), status="running")
    assert execute(spec, store, run_id) == 1
    assert store.get(run_id)["error"] == "task: builtin:tiny-bert is an encoder classifier and cannot summarize"


# -- prompt-learning methods generate as they score ------------------------------------------------------
def _greedy_without_cache(model, family, ids: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding by full forward passes (the training path, no KV cache): the reference that
    `generate` with its cache must reproduce, virtual tokens and prefixes included."""
    out: list[int] = []
    forced_eos = getattr(model.generation_config, "forced_eos_token_id", None)  # BART ends on eos at max length
    for step in range(n):
        if step == n - 1 and forced_eos is not None:
            out.append(forced_eos)
            break
        if family.name == "causal":
            row = torch.tensor([ids + out])
            logits = model(input_ids=row, attention_mask=torch.ones_like(row)).logits
        else:
            row, dec = torch.tensor([ids]), torch.tensor([[family._start(model)] + out])
            logits = model(input_ids=row, attention_mask=torch.ones_like(row), decoder_input_ids=dec).logits
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt == eos:
            break
    return out


@pytest.mark.parametrize("name, method, capacity", [
    ("builtin:tiny-gpt2", "prompt", 70),  # the gpt2_news preset's prompt run
    ("builtin:tiny-gpt2", "ptuning", 8),
    ("builtin:tiny-gpt2", "prefix", 8),
    ("builtin:tiny-bart", "prefix", 8),
    ("builtin:tiny-t5", "prefix", 8),
    ("builtin:tiny-t5", "prompt", 8),
])
def test_prompt_learning_generation_matches_full_forward_decoding(name, method, capacity):
    # transformers 5.24 renamed the KV cache (past_key_values -> cache); PEFT's generation must still see
    # it, or every step looks like the first: virtual tokens re-prepended (positions overflow), prefix dropped
    loaded = models.load_model(name)
    spec = RunSpec(model_name=name, method=method, capacity=capacity, task="summarization",
                   dataset="samsum").resolved()
    model = train.prepare_model(spec, loaded).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a prefix far from its initialisation, so that dropping it shows
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 1.0)
    fam, tok = loaded.family, loaded.tokenizer
    feats = fam.encode_inputs(["summarize: the cat sat on the mat", "summarize: hi"], tok, 64)
    new = 12
    with torch.no_grad():
        got = fam.generate(model, fam.collate(feats, tok), tok, new)
        want = [tok.decode(_greedy_without_cache(model, fam, f["input_ids"], new, tok.eos_token_id),
                           skip_special_tokens=True) for f in feats]
        base = [tok.decode(_greedy_without_cache(loaded.model, fam, f["input_ids"], new, tok.eos_token_id),
                           skip_special_tokens=True) for f in feats]
    assert got == want
    assert want != base  # the virtual tokens do change what is generated


@pytest.mark.parametrize("name", TINY)
def test_loaded_models_keep_their_class_and_speak_peft_names(name, tmp_path):
    import inspect
    import json
    import warnings

    from transformers import PreTrainedModel

    model = models.load_model(name).model
    original = type(model).__mro__[1] if getattr(type(model), "_speaks_peft", False) else type(model)
    assert type(model).__name__ == original.__name__ and isinstance(model, original)
    assert model.can_generate() == original.can_generate()
    # the alias PEFT reads tells the truth, without the deprecation warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert model.is_gradient_checkpointing is False
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        assert model.is_gradient_checkpointing is True
    # PEFT finds the KV cache under the name it knows, on the model and on the backbone it calls directly
    for module in [model, *model.children()]:
        if isinstance(module, PreTrainedModel) and "cache" in inspect.signature(module.forward).parameters:
            assert "past_key_values" in inspect.signature(module.forward).parameters
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [original.__name__]
