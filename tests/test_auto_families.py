"""Any checkpoint transformers can load: the family from transformers' auto-model mappings, the modules PEFT
methods touch from the module tree, the attention geometry from the config; causal prompts end in an
answer cue. Tiny configs built here (no Hub): shapes on the meta device, a few real tiny checkpoints
trained through the CLI, reloaded and compared."""
import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoConfig  # noqa: E402

from peftcompare.core.spec import RunSpec  # noqa: E402
from peftcompare.engine import builtin, families, models, preflight  # noqa: E402
from peftcompare.engine.families import IGNORE_INDEX, layout  # noqa: E402

V = len(builtin.tokenizer())
IDS = dict(vocab_size=V, pad_token_id=0, eos_token_id=1, bos_token_id=1)  # the built-in tokenizer's
DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **IDS)

# name -> (model type, config, family, PEFT names of q,v / q,k,v,o, IA3 (targets, feed-forward),
#          (key/value heads, head dim, layers))
CASES = {
    # an explicit head_dim (32, not 64 / 4) and grouped-query attention (2 key/value heads)
    "gemma3_text": ("gemma3_text", dict(DECODER, num_key_value_heads=2, head_dim=32), "causal",
                    ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
                    (["k_proj", "v_proj", "down_proj"], ["down_proj"]), (2, 32, 2)),
    "qwen3": ("qwen3", dict(DECODER, num_key_value_heads=2, head_dim=32), "causal",
              ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
              (["k_proj", "v_proj", "down_proj"], ["down_proj"]), (2, 32, 2)),
    "llama": ("llama", dict(DECODER, num_key_value_heads=4), "causal",
              ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
              (["k_proj", "v_proj", "down_proj"], ["down_proj"]), (4, 16, 2)),
    # one fused qkv projection: any of q, k, v means it
    "phi3": ("phi3", dict(DECODER, num_key_value_heads=2), "causal",
             ["qkv_proj"], ["qkv_proj", "o_proj"], (["qkv_proj", "down_proj"], ["down_proj"]), (2, 16, 2)),
    # SmolLM: a Llama with tied embeddings, 3 query heads per key/value head
    "smollm": ("llama", dict(DECODER, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                             tie_word_embeddings=True), "causal",
               ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
               (["k_proj", "v_proj", "down_proj"], ["down_proj"]), (2, 16, 2)),
    "mt5": ("mt5", dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, decoder_start_token_id=0,
                        **IDS), "seq2seq",
            ["q", "v"], ["q", "k", "v", "o"], (["k", "v", "wo"], ["wo"]), (4, 16, 2)),
    "bart": ("bart", dict(d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                          decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, **IDS), "seq2seq",
             ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "out_proj"],
             (["k_proj", "v_proj", "fc2"], ["fc2"]), (2, 32, 3)),  # the decoder's attention: prefixes go there
    "modernbert": ("modernbert", dict(DECODER, global_attn_every_n_layers=1), "encoder",
                   ["Wqkv"], ["Wqkv", "attn.Wo"], (["Wqkv", "mlp.Wo"], ["mlp.Wo"]), (4, 16, 2)),
    "deberta-v2": ("deberta-v2", dict(DECODER), "encoder",
                   ["query_proj", "value_proj"], ["query_proj", "key_proj", "value_proj", "attention.output.dense"],
                   (["key_proj", "value_proj", "output.dense"], ["output.dense"]), (4, 16, 2)),
    "distilbert": ("distilbert", dict(dim=64, hidden_dim=128, n_layers=2, n_heads=4, vocab_size=V, pad_token_id=0),
                   "encoder", ["q_lin", "v_lin"], ["q_lin", "k_lin", "v_lin", "out_lin"],
                   (["k_lin", "v_lin", "lin2"], ["lin2"]), (4, 16, 2)),
}


def _config(name):
    model_type, kwargs = CASES[name][:2]
    return AutoConfig.for_model(model_type, **kwargs)


def _meta(family, config):
    with torch.device("meta"):
        return family.from_config(config)


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if n and layout.linear_dims(m) is not None]


def _matches(names: list[str], target: str) -> list[str]:
    return [n for n in names if n == target or n.endswith("." + target)]


@pytest.mark.parametrize("name", CASES)
def test_family_names_and_geometry(name):
    config = _config(name)
    fam = families.family_for_config(config)
    *_, family, qv, qkvo, ia3, geometry = CASES[name]
    assert fam.name == family and fam.model_type == config.model_type
    assert fam.target_modules(["q", "v"]) == qv
    assert fam.target_modules(["q", "k", "v", "o"]) == qkvo
    assert fam.ia3_modules([]) == ia3
    assert fam.attention_geometry(config) == geometry


@pytest.mark.parametrize("name", CASES)
def test_target_modules_exist_in_the_model(name):
    config = _config(name)
    fam = families.family_for_config(config)
    model = _meta(fam, config)
    linear = _linear_names(model)
    targets, ff = fam.ia3_modules([])
    for target in fam.target_modules(["q", "k", "v", "o"]) + targets + ff:
        assert _matches(linear, target), f"{target} matches no linear layer of {name}"
    # the attention output and the feed-forward output are told apart (both Wo in ModernBERT)
    o = fam.target_modules(["o"])
    assert not set(sum((_matches(linear, t) for t in o), [])) & set(sum((_matches(linear, t) for t in ff), [])) \
        or name == "deberta-v2"  # BERT-style output.dense is a suffix of attention.output.dense: PEFT's own default
    # a name that is no role is taken as a module name
    assert fam.target_modules(["q", "zz"])[-1] == "zz"


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][0] in
                                  ("gemma3_text", "qwen3", "llama", "mt5", "bart", "deberta-v2")])
def test_default_targets_agree_with_peft(name):
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA

    fam = families.family_for_config(_config(name))
    assert fam.target_modules(["q", "v"]) == LORA[CASES[name][0]]


@pytest.mark.parametrize("name", CASES)
def test_peft_builds_every_kind_of_adapter(name):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, get_peft_model

    config = _config(name)
    fam = families.family_for_config(config)
    lora = get_peft_model(_meta(fam, config), LoraConfig(task_type=fam.peft_task_type, r=2,
                                                         target_modules=fam.target_modules(["q", "k", "v", "o"]),
                                                         modules_to_save=fam.modules_to_save))
    assert any("lora_A" in n for n, _ in lora.named_parameters())
    targets, ff = fam.ia3_modules([])
    ia3 = get_peft_model(_meta(fam, config), IA3Config(task_type=fam.peft_task_type, target_modules=targets,
                                                       feedforward_modules=ff, modules_to_save=fam.modules_to_save))
    assert any("ia3_l" in n for n, _ in ia3.named_parameters())
    # a prefix sized by our geometry is what PEFT sizes it by (it resizes for grouped-query attention)
    heads, head_dim, layers = fam.attention_geometry(config)
    prefix = get_peft_model(_meta(fam, config), PrefixTuningConfig(
        task_type=fam.peft_task_type, num_virtual_tokens=3, token_dim=heads * head_dim, num_attention_heads=heads,
        num_layers=layers, modules_to_save=fam.modules_to_save))
    emb = prefix.prompt_encoder["default"].embedding.weight
    assert tuple(emb.shape) == (3, 2 * layers * heads * head_dim)


@pytest.mark.parametrize("name", CASES)
def test_top_blocks_are_the_last_blocks(name):
    config = _config(name)
    fam = families.family_for_config(config)
    model = _meta(fam, config)
    top = fam.top_blocks(model, 1)
    stacks = (model.get_encoder(), model.get_decoder()) if fam.name == "seq2seq" else (model,)
    for stack in stacks:
        assert any(b is layout.layer_list(stack)[-1] for b in top)
    assert not any(b is layout.layer_list(stacks[0])[0] for b in top)
    heads = fam.head_parameters(model)
    if fam.name == "encoder":
        assert {id(p) for p in heads} == {id(p) for p in model.classifier.parameters()}
    elif name != "bart":  # BART's last norm is inside its blocks
        assert heads and all(p.dim() == 1 for p in heads)  # the final norms


def test_feed_forward_output_is_found_when_the_mlp_is_as_wide_as_the_model():
    # gate_proj and up_proj then also end at the hidden size: the output is the last of them
    fam = families.family_for_config(AutoConfig.for_model("llama", **dict(DECODER, intermediate_size=64)))
    assert fam.ia3_modules([]) == (["k_proj", "v_proj", "down_proj"], ["down_proj"])


def test_masked_lm_encoders_with_a_decoder_head_stay_encoders():
    # BERT registers BertLMHeadModel as a causal LM (the encoder run as a decoder): still an encoder
    for model_type in ("bert", "roberta", "electra", "xlm-roberta"):
        assert families.family_name(model_type) == "encoder"
    assert families.family_name("bart") == "seq2seq" and families.family_name("gpt2") == "causal"
    assert families.family_name("vit") is None


# -- the answer cue --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2():
    return models.load_model("builtin:tiny-gpt2")


def test_causal_cue_sits_between_prompt_and_target(gpt2):
    fam, tok = gpt2.family, gpt2.tokenizer
    cue = RunSpec(model_name="builtin:tiny-gpt2").resolved().answer_cue
    assert cue == "\nSentiment:"  # the sst2 preset's
    prompt = tok("sst2: a fine film" + cue, add_special_tokens=False)["input_ids"]
    answer = tok(" positive", add_special_tokens=False)["input_ids"]
    (f,) = fam.encode(["sst2: a fine film"], ["positive"], tok, 256, 8, answer_cue=cue)
    assert f["input_ids"] == prompt + answer + [tok.eos_token_id]
    assert f["labels"] == [IGNORE_INDEX] * len(prompt) + answer + [tok.eos_token_id]
    # generation and label scoring read the same prompt, cue included
    (inp,) = fam.encode_inputs(["sst2: a fine film"], tok, 256, answer_cue=cue)
    assert inp["input_ids"] == prompt
    # a long source is cut, never the cue
    cue_ids = tok(cue, add_special_tokens=False)["input_ids"]
    (short,) = fam.encode_inputs(["sst2: " + "a very long review " * 30], tok, 16, answer_cue=cue)
    assert len(short["input_ids"]) == 16 and short["input_ids"][-len(cue_ids):] == cue_ids


def test_seq2seq_and_encoders_ignore_the_cue():
    tok = builtin.tokenizer()
    for name in ("builtin:tiny-t5", "builtin:tiny-bert"):
        fam = families.family_for_config(models.load_config(name))
        assert fam.encode_inputs(["sst2: ok"], tok, 32, answer_cue="\nSentiment:") == \
            fam.encode_inputs(["sst2: ok"], tok, 32)


def _byte_level_tokenizer():
    """A GPT-2-style byte-level BPE, where ' positive' and 'positive' are different tokens."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the film is great. Sentiment: positive", "a dull film. Sentiment: negative"] * 20,
                            vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def test_labels_are_scored_as_they_are_trained():
    tok = _byte_level_tokenizer()
    assert tok(" positive")["input_ids"] != tok("positive")["input_ids"]
    config = AutoConfig.for_model("llama", **dict(DECODER, vocab_size=len(tok), pad_token_id=None,
                                                  eos_token_id=tok.eos_token_id, bos_token_id=None))
    fam = families.family_for_config(config)
    torch.manual_seed(0)
    model = fam.from_config(config).eval()
    fam.prepare_tokenizer(tok, model)
    (f,) = fam.encode(["the film is great."], ["positive"], tok, 64, 8, answer_cue="\nSentiment:")
    prompt = fam.encode_inputs(["the film is great."], tok, 64, answer_cue="\nSentiment:")
    n = len(prompt[0]["input_ids"])
    assert f["input_ids"][n:-1] == tok(" positive", add_special_tokens=False)["input_ids"]
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in ("negative", "positive")]  # as evaluate gives
    with torch.no_grad():
        scores = fam.label_logprobs(model, fam.collate(prompt, tok), words)
        logp = torch.log_softmax(model(input_ids=torch.tensor([f["input_ids"][:-1]])).logits[0], -1)
    trained = sum(logp[n + j - 1, t] for j, t in enumerate(f["input_ids"][n:-1]))
    assert torch.isclose(scores[0, 1], trained, atol=1e-4)


def test_cue_is_a_spec_field():
    assert RunSpec(dataset="samsum", task="summarization").resolved().answer_cue == "\nSummary:"
    assert RunSpec(answer_cue="\nLabel:").resolved().answer_cue == "\nLabel:"
    # the dataset's own cue hashes as a spec without the field did; another cue is another experiment
    assert RunSpec(answer_cue="\nSentiment:").spec_hash() == RunSpec().spec_hash()
    assert RunSpec(answer_cue="\nLabel:").spec_hash() != RunSpec().spec_hash()
    with pytest.raises(ValueError, match="answer_cue: must not end with a space"):
        RunSpec(answer_cue="Answer: ")


# -- real tiny checkpoints through the CLI ---------------------------------------------------------------
def _save(tmp_path, name):
    config = _config(name)
    fam = families.family_for_config(config)
    torch.manual_seed(0)
    model = fam.from_config(config)
    out = tmp_path / name
    model.save_pretrained(out)
    builtin.tokenizer().save_pretrained(out)
    return str(out)


def _cli(*args, home):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "peftcompare", *args, "--home", str(home)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", ["qwen3", "gemma3_text", "mt5", "deberta-v2"])
def test_tiny_checkpoint_trains_reloads_and_compares(tmp_path, name):
    from peftcompare.engine import adapters
    from peftcompare.engine.compare import CompareEngine
    from peftcompare.service.store import Store

    path, home = _save(tmp_path, name), tmp_path / "home"
    done = _cli("train", "--model_name", path, "--method", "lora", "--capacity", "2", "--dataset", "sst2",
                "--train_samples", "8", "--eval_samples", "4", "--num_train_epochs", "1",
                "--per_device_train_batch_size", "4", "--max_source_length", "48", home=home)
    assert done.returncode == 0, done.stderr[-2000:]
    store = Store(home)
    (run,) = store.list_runs()
    assert run["status"] == "completed" and run["trainable_params"] > 0
    model = adapters.load_adapter_model(run["adapter_dir"])
    assert any("lora_A" in n for n, _ in model.named_parameters())
    out = CompareEngine(store).compare("a gripping, beautifully acted film", [run["run_id"]])
    assert {c["output"] for c in out["columns"]} <= {"negative", "positive"} and len(out["columns"]) == 2


def test_unmapped_model_is_refused_in_one_line(tmp_path):
    from peftcompare.service.store import Store

    path = tmp_path / "vit"
    AutoConfig.for_model("vit").save_pretrained(path)
    builtin.tokenizer().save_pretrained(path)
    with pytest.raises(ValueError, match="model type 'vit', which is not supported"):
        preflight.preflight(RunSpec(model_name=str(path), method="lora"))
    home = tmp_path / "home"
    done = _cli("train", "--model_name", str(path), "--method", "lora", home=home)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "not supported" in done.stderr
    assert Store(home).list_runs() == []
    # a model type transformers does not know at all: one line too
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "not_a_model"}))
    with pytest.raises(ValueError, match="model type 'not_a_model' that this version of transformers"):
        preflight.preflight(RunSpec(model_name=str(unknown), method="lora"))
