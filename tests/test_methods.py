"""Every method: its parameter count against the closed form on the exact public shapes (meta device),
and a few training steps on each family's tiny built-in model followed by a reload that scores the same."""
import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peftcompare.service import execution  # noqa: E402
from peftcompare.engine import adapters
from peftcompare.engine import data as data_mod  # noqa: E402
from peftcompare.engine import evaluate as eval_mod  # noqa: E402
from peftcompare.engine import families, models, runtime, train
from peftcompare.core import methods  # noqa: E402
from peftcompare.core.spec import RunSpec  # noqa: E402
from peftcompare.service.store import Store  # noqa: E402
from peftcompare.cli import main as cli_main  # noqa: E402

# PEFT warns that AdaLoRA's saved rank_pattern keys match no module on reload; it resizes by them anyway
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
H = 128  # the p-tuning prompt encoder's hidden size


def ptuning(n, d):
    return n * d + (d * H + H) + (H * H + H) + (H * d + d)


def init_r(r):
    return methods.adalora_init_r(r)


# -- closed forms per shape ------------------------------------------------------------------------------
def t5(d, ff, inner, enc, dec, gated, n_ff_mats=None):
    ffp = (3 if gated else 2) * d * ff
    enc_block = 4 * d * inner + d + ffp + d
    dec_block = 8 * d * inner + 3 * d + ffp
    qv = 2 * enc + 4 * dec  # q and v of every self- and cross-attention
    return {
        ("lora", 8): qv * 8 * (d + inner),
        ("prompt", 20): 20 * d,
        ("prefix", 20): 20 * dec * 2 * inner,  # the decoder's self-attention only
        ("ptuning", 20): ptuning(20, d),
        ("ia3", 0): enc * (2 * inner + ff) + dec * (4 * inner + ff),
        ("adalora", 8): qv * init_r(8) * (d + inner + 1),
        ("last_layers", 2): 2 * (enc_block + dec_block) + 2 * d,  # + both final layer norms
        ("bitfit", 0): (2 * enc + 3 * dec + 2) * d,  # no biases in T5: every LayerNorm weight
    }


def gpt2(d=768, layers=12):
    block = 12 * d * d + 13 * d
    return {
        ("lora", 8): layers * 8 * (d + 3 * d),  # c_attn fuses q, k, v
        ("prompt", 70): 70 * d,
        ("prefix", 20): 20 * layers * 2 * d,
        ("ptuning", 20): ptuning(20, d),
        ("ia3", 0): layers * (3 * d + 4 * d),  # c_attn outputs + mlp.c_proj inputs
        ("adalora", 8): layers * init_r(8) * (d + 3 * d + 1),
        ("last_layers", 2): 2 * block + 2 * d,  # + ln_f
        ("bitfit", 0): layers * 11 * d + d,
    }


def bert(d=768, layers=12):
    head = 2 * d + 2  # the classification head trains with every method
    block = 12 * d * d + 13 * d
    return {
        ("lora", 8): layers * 2 * 8 * 2 * d + head,
        ("prompt", 20): 20 * d + head,
        ("prefix", 20): 20 * layers * 2 * d + head,
        ("ptuning", 20): ptuning(20, d) + head,
        ("ia3", 0): layers * (2 * d + d + 4 * d) + head,  # key, value, attention and ffn output.dense inputs
        ("adalora", 8): layers * 2 * init_r(8) * (2 * d + 1) + head,
        ("last_layers", 2): 2 * block + (d * d + d) + head,  # + pooler
        ("bitfit", 0): d + layers * 11 * d + d + head,  # embeddings LN, blocks, pooler, head
    }


SHAPES = {
    "builtin:random-flan-t5-small": (76_961_152, t5(512, 1024, 384, 8, 8, True)),
    "builtin:random-t5-small": (60_506_624, t5(512, 2048, 512, 6, 6, False)),
    "builtin:random-gpt2": (124_439_808, gpt2()),
    "builtin:random-bert-base": (109_482_240 + 2 * 768 + 2, bert()),
}
CASES = [(model, method, cap, expected) for model, (_, forms) in SHAPES.items()
         for (method, cap), expected in forms.items()]
CASES += [(model, "full", 0, total) for model, (total, _) in SHAPES.items()]


def count(model_name, method, capacity, meta=True):
    loaded = models.load_model(model_name, meta=meta)
    spec = RunSpec(model_name=model_name, method=method, capacity=capacity or 8).resolved()
    model = train.prepare_model(spec, loaded, total_steps=100)
    if method == "adalora" and meta:
        # PEFT re-creates AdaLoRA's constant `ranknum` when moving it to the meta device, which leaves it
        # requires_grad=True there only (test_adalora_ranknum_frozen checks the real model)
        for n, p in model.named_parameters():
            if "ranknum" in n:
                p.requires_grad_(False)
    return models.count_parameters(model)


def test_known_figures():
    forms = SHAPES["builtin:random-flan-t5-small"][1]
    assert forms[("lora", 8)] == 344_064 and forms[("prompt", 20)] == 10_240
    assert forms[("prefix", 20)] == 122_880
    assert gpt2()[("lora", 8)] == 294_912  # the LoRA paper's GPT-2 figure for r=8 on c_attn


@pytest.mark.parametrize("model_name, method, capacity, expected", CASES,
                         ids=[f"{m.split(':')[1]}-{me}-{c}" for m, me, c, _ in CASES])
def test_parameter_count_closed_form(model_name, method, capacity, expected):
    trainable, total = count(model_name, method, capacity)
    assert trainable == expected
    assert total >= SHAPES[model_name][0]


def test_flan_t5_base_lora():
    assert count("builtin:random-flan-t5-base", "lora", 8)[0] == 884_736


def test_bert_base_without_head():
    loaded = models.load_model("builtin:random-bert-base", meta=True)
    body = sum(p.numel() for n, p in loaded.model.named_parameters() if not n.startswith("classifier"))
    assert body == 109_482_240


def test_adalora_ranknum_frozen():
    loaded = models.load_model("builtin:tiny-gpt2")
    model = train.prepare_model(RunSpec(model_name="builtin:tiny-gpt2", method="adalora", capacity=4).resolved(),
                                loaded, total_steps=10)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "ranknum" in n)


def test_bitfit_on_t5_tunes_layer_norms_and_says_so():
    loaded = models.load_model("builtin:tiny-t5")
    model = train.prepare_model(RunSpec(model_name="builtin:tiny-t5", method="bitfit").resolved(), loaded)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("layer_norm" in n for n in names)
    assert "LayerNorm" in methods.get_method("bitfit").note
    loaded = models.load_model("builtin:tiny-bart")
    model = train.prepare_model(RunSpec(model_name="builtin:tiny-bart", method="bitfit").resolved(), loaded)
    assert all(n.endswith(".bias") for n, p in model.named_parameters() if p.requires_grad)


# -- every method x family trains and reloads -------------------------------------------------------------
TINY = ["builtin:tiny-bart", "builtin:tiny-gpt2", "builtin:tiny-bert"]
FAMILY = {"builtin:tiny-bart": "seq2seq", "builtin:tiny-gpt2": "causal", "builtin:tiny-bert": "encoder"}
TRAINABLE = methods.trainable_methods()
# every method on every tiny model of a family it works on; the other pairs must be refused (test below)
PAIRS = [(m, t) for m in TRAINABLE for t in TINY if FAMILY[t] in methods.get_method(m).works_on]
REFUSED = [(m, t) for m in TRAINABLE for t in TINY if FAMILY[t] not in methods.get_method(m).works_on]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("methods-home"))


def _run(store, spec):
    run_id = store.create_run(spec.resolved(), status="running")
    assert execution.execute(spec, store, run_id) == 0, store.get(run_id).get("error")
    return store.get(run_id)


def _rescore(model, spec):
    spec = spec.resolved()
    task_data = data_mod.load_task_data(spec)
    family = families.family_for_config(models.load_config(spec.model_name))
    tokenizer = models.load_tokenizer(spec.model_name)
    family.prepare_tokenizer(tokenizer, model)
    feats = data_mod.tokenized(spec, family, tokenizer, task_data.validation, False)
    _, dtype = runtime.resolve_precision(spec.precision, "cpu")  # the precision the run evaluated in
    return eval_mod.evaluate(model, family, tokenizer, spec, task_data.validation, feats,
                             task_data.label_words, "cpu", dtype)


@pytest.mark.parametrize("method, model_name", PAIRS)
def test_trains_and_reloads(store, model_name, method):
    spec = RunSpec(model_name=model_name, method=method, capacity=1 if method == "last_layers" else 4,
                   train_samples=8, eval_samples=6, num_train_epochs=1, per_device_train_batch_size=4,
                   learning_rate=1e-2)
    run = _run(store, spec)
    assert run["status"] == "completed" and run["trainable_params"] > 0
    assert os.path.isdir(run["adapter_dir"])
    stored = run["metrics"]["mean_probability"]
    # the adapter alone, reloaded from disk onto a fresh base, gives the same scores
    reloaded = adapters.load_adapter_model(run["adapter_dir"])
    again = _rescore(reloaded, spec)["mean_probability"]
    assert math.isclose(again, stored, rel_tol=1e-4, abs_tol=1e-6)
    # and training changed something: the saved tensors are not the ones the method started from (the scores
    # alone cannot say: a method that starts as the identity moves them by 1e-7 in a step or two)
    assert _moved(run, spec), "the adapter saved is its initialisation: nothing trained"


def _moved(run: dict, spec: RunSpec) -> bool:
    """Whether any saved tensor differs from the method's initialisation (drawn as training draws it: the
    run's seed right before the method is applied)."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    import torch

    saved = load_file(str(adapters.read_adapter(run["adapter_dir"])["_weights"]))
    spec = spec.resolved()
    loaded = models.load_model(spec.model_name)
    torch.manual_seed(spec.seed)
    init = train.prepare_model(spec, loaded, total_steps=run["total_steps"])
    start = (get_peft_model_state_dict(init) if isinstance(init, PeftModel) else
             {n: p.detach() for n, p in init.named_parameters() if p.requires_grad})
    shared = [k for k in saved if k in start]
    assert shared, (list(saved)[:4], list(start)[:4])
    return any(not torch.equal(saved[k].float(), start[k].float()) for k in shared)


@pytest.mark.parametrize("method, model_name", REFUSED)
def test_a_method_on_a_family_it_cannot_train_is_refused_in_one_line(tmp_path, capsys, method, model_name):
    # the CLI's own entry point, in this process (the subprocess path of `train` is tested in test_cli.py)
    code = cli_main(["--home", str(tmp_path), "train", "--model_name", model_name, "--method", method,
                     "--capacity", "4", "--train_samples", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "does not work on" in err and "Traceback" not in err
    assert Store(tmp_path).list_runs() == []


def test_adalora_reallocates_ranks(store):
    # 24 steps: warm-up 2, budgeting until step 19, the final allocation at step 19 (total - tfinal)
    spec = RunSpec(model_name="builtin:tiny-gpt2", method="adalora", capacity=4, train_samples=96,
                   eval_samples=4, num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-2)
    run = _run(store, spec)
    assert run["total_steps"] == 24
    cfg = json.loads(open(os.path.join(run["adapter_dir"], "adapter_config.json")).read())
    assert cfg["total_step"] == 24 and cfg["tfinal"] >= 1 and cfg["tinit"] < 24 - cfg["tfinal"]
    pattern = cfg["rank_pattern"]
    assert pattern, "the rank allocator never ran"
    ranks = [sum(bool(x) for x in v) for v in pattern.values()]
    init = init_r(4)
    # the budget ends at target_r per matrix on average, pruned from init_r
    assert sum(ranks) == 4 * len(ranks) and min(ranks) < init
    from safetensors.torch import load_file

    saved = load_file(os.path.join(run["adapter_dir"], "adapter_model.safetensors"))
    e_shapes = [t.shape[0] for n, t in saved.items() if "lora_E" in n]
    assert sorted(e_shapes) == sorted(ranks)  # the adapter is saved pruned


@pytest.mark.parametrize("model_name", TINY)
def test_peft_triggers_no_deprecated_transformers_names(model_name):
    """PEFT reads `is_gradient_checkpointing` in every PeftModel's constructor and passes the KV cache as
    `past_key_values`; on transformers releases that deprecate those names neither may warn in a run."""
    import warnings

    import torch

    for method in ("lora", "prefix", "prompt"):
        loaded = models.load_model(model_name)
        spec = RunSpec(model_name=model_name, method=method, capacity=4).resolved()
        tok, fam = loaded.tokenizer, loaded.family
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = train.prepare_model(spec, loaded, total_steps=10)
            feats = fam.encode_inputs(["sst2: a fine film", "sst2: dull"], tok, 32)
            if fam.name == "encoder":
                fam.attach_labels(loaded, ["negative", "positive"])
            batch = fam.collate(feats, tok)
            with torch.no_grad():
                fam.label_logprobs(model, batch, [tok("positive", add_special_tokens=False)["input_ids"]] * 2)
                if fam.generative:
                    fam.generate(model, batch, tok, 3)
        deprecated = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                      if issubclass(w.category, FutureWarning)
                      and ("is_gradient_checkpointing" in str(w.message) or "past_key_values" in str(w.message))]
        assert not deprecated, (method, deprecated)
