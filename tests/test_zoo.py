"""The PEFT zoo (issue 14), parametrized over the method registry so a new registration is picked up:
every method trains a few steps on builtin:tiny-t5, its record counts what PEFT counts (trainable and
stored), its saved adapter reloads to the recorded metric, and the Compare engine serves it (all of them in
one comparison, each answering as it does alone, the shared base left untouched). Plus parameter counts on
flan-t5-small shapes against PEFT's own, the families a method is said not to work on failing for real, the
refused PEFT types and bad capacities refused in one line, and adapters on a wrong-shape base refused."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors import safe_open  # noqa: E402

from peftcompare import cli as cli_mod  # noqa: E402
from peftcompare.core import methods  # noqa: E402
from peftcompare.core.spec import RunSpec  # noqa: E402
from peftcompare.engine import adapters, models, train  # noqa: E402
from peftcompare.engine import compare as infer  # noqa: E402
from peftcompare.engine import data as data_mod  # noqa: E402
from peftcompare.engine import evaluate as eval_mod  # noqa: E402
from peftcompare.service import execution, runs  # noqa: E402
from peftcompare.service.store import Store  # noqa: E402
from pipeline_helpers import cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")  # PEFT warns freely about experimental methods
TINY = "builtin:tiny-t5"
SMALL = "builtin:random-flan-t5-small"
TEXT = "a warm , funny and surprisingly moving film"
TRAINABLE = methods.trainable_methods()
PEFT_METHODS = [n for n in TRAINABLE if methods.get_method(n).make_config is not None]


def tiny_capacity(name: str) -> int:
    m = methods.get_method(name)
    return (m.offline_grid or m.capacities or (8,))[0] if m.capacity_name else 8


def zoo_spec(name: str) -> RunSpec:
    return RunSpec(model_name=TINY, method=name, capacity=tiny_capacity(name), train_samples=16, eval_samples=8,
                   num_train_epochs=1, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                   learning_rate=1e-2, precision="fp32", selection="validation")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Every trainable method, trained once into one store: {method: run record}."""
    store = Store(tmp_path_factory.mktemp("zoo-home"))
    out = {}
    for name in TRAINABLE:
        spec = zoo_spec(name)
        run_id = store.create_run(spec.resolved(), status="running")
        assert execution.execute(spec, store, run_id) == 0, (name, store.get(run_id).get("error"))
        out[name] = store.get(run_id)
    return store, out


@pytest.fixture(scope="module")
def compared(zoo):
    """One comparison of every trained adapter, zero-shot included."""
    store, runs_ = zoo
    engine = infer.CompareEngine(store, device="cpu", precision="fp32")
    out = engine.compare(TEXT, [r["run_id"] for r in runs_.values()])
    return engine, {c["key"]: c for c in out["columns"]}


def _rescore(model, spec: RunSpec) -> dict:
    spec = spec.resolved()
    loaded = models.load_model(spec.model_name)
    task_data = data_mod.load_task_data(spec)
    feats = data_mod.tokenized(spec, loaded.family, loaded.tokenizer, task_data.validation, False)
    return eval_mod.evaluate(model, loaded.family, loaded.tokenizer, spec, task_data.validation, feats,
                             task_data.label_words, "cpu", None, generate_protocol=False)


def _answer(model, rec: dict) -> tuple[str, float]:
    spec = rec["_spec"]
    loaded = models.load_model(spec.model_name)
    feats = loaded.family.encode_inputs([data_mod.render(spec.prompt_template, TEXT)], loaded.tokenizer,
                                        spec.max_source_length)
    labels, probs = eval_mod.classify(model.eval(), loaded.family, loaded.tokenizer, feats, rec["label_words"], 4)
    return labels[0], probs[0]


def _alone(run: dict) -> tuple[str, float]:
    """The adapter by itself: a fresh base with only it applied, answering TEXT."""
    return _answer(adapters.load_adapter_model(run["adapter_dir"]), adapters.read_adapter(run["adapter_dir"]))


def _stored_elements(adapter_dir: str) -> int:
    total = 0
    for f in os.listdir(adapter_dir):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(adapter_dir, f), "pt") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


# -- every method on the tiny model: trains, counts exactly, reloads, is served ---------------------------
@pytest.mark.parametrize("name", TRAINABLE)
def test_trains_counts_reloads_and_is_served(zoo, compared, name):
    _, runs_ = zoo
    run = runs_[name]
    spec = zoo_spec(name)
    assert run["status"] == "completed" and run["trainable_params"] > 0
    # the record's count is what `params` says before training, and what PEFT itself counts
    assert run["trainable_params"] == runs.count_parameters(spec)[0]
    if name in PEFT_METHODS:
        model = train.prepare_model(spec.resolved(), models.load_model(TINY), total_steps=2)
        assert run["trainable_params"] == model.get_nb_trainable_parameters()[0]
    assert run["stored_params"] == _stored_elements(run["adapter_dir"]) > 0
    # the adapter alone, reloaded onto a fresh base, scores what the run recorded
    stored = run["metrics"]["mean_probability"]
    again = _rescore(adapters.load_adapter_model(run["adapter_dir"]), spec)["mean_probability"]
    assert math.isclose(again, stored, rel_tol=1e-4, abs_tol=1e-6), (again, stored)
    # and the Compare engine, serving every method at once, answers for it as it answers alone
    engine, columns = compared
    label, prob = _alone(run)
    col = columns[run["run_id"]]
    assert col["method"] == name and col["output"] == label
    assert col["probability"] == pytest.approx(prob, abs=1e-4)


def test_the_comparison_tells_the_methods_apart_and_leaves_the_base_untouched(zoo, compared):
    engine, columns = compared
    probs = {round(c["probability"], 4) for k, c in columns.items() if k != infer.BASE}
    assert len(probs) > len(columns) // 2, "the adapters answer alike: the comparison would prove nothing"
    # PiSSA and OLoRA rewrite the layers they adapt when they load: the base is put back after their pass
    _, fresh = _answer(models.load_model(TINY).model, adapters.read_adapter(zoo[1]["lora"]["adapter_dir"]))
    assert columns[infer.BASE]["probability"] == pytest.approx(fresh, abs=1e-5)
    again = engine.compare(TEXT, [zoo[1]["lora"]["run_id"]])["columns"][0]
    assert again["probability"] == pytest.approx(fresh, abs=1e-5)


def test_stored_and_trainable_counts_differ_where_the_method_says_so(zoo):
    _, runs_ = zoo
    # VeRA and RandLoRA store their shared random projections, SHiRA its indices: more than trains
    for name in ("vera", "randlora", "shira"):
        assert runs_[name]["stored_params"] > runs_[name]["trainable_params"], name
    # a plain LoRA stores exactly what trained
    assert runs_["lora"]["stored_params"] == runs_["lora"]["trainable_params"]


# -- counts on flan-t5-small shapes against PEFT's own -------------------------------------------------------
@pytest.mark.parametrize("name", PEFT_METHODS)
def test_params_equal_pefts_count_on_flan_t5_small(name):
    m = methods.get_method(name)
    # a method that must read the weights builds flan-t5-small for real: its smallest capacity keeps it quick
    cap = (min(m.capacities) if m.reads_weights else methods.zoo_budget().get(name) or m.capacities[0]) \
        if m.capacity_name else 8
    spec = RunSpec(model_name=SMALL, method=name, capacity=cap).resolved()
    loaded = models.load_model(SMALL, meta=not m.reads_weights)
    model = train.prepare_model(spec, loaded, total_steps=100)
    ours = models.count_parameters(model)[0]
    assert ours == model.get_nb_trainable_parameters()[0] > 0
    if not m.reads_weights:
        assert ours == runs.count_parameters(spec)[0]


def test_zoo_budgets_are_comparable():
    """The zoo preset's capacities train 100k..600k parameters on flan-t5-small, except for the methods whose
    knob cannot get there (they take their largest reference capacity) or have none."""
    small_by_design = {"lokr", "vera", "road", "unilora", "psoft", "fourierft", "waveft", "ln_tuning", "beft"}
    for name, cap in methods.zoo_budget().items():
        m = methods.get_method(name)
        if m.reads_weights:  # counted on real weights in test_params_equal_pefts_count_on_flan_t5_small
            continue
        n = runs.count_parameters(RunSpec(model_name=SMALL, method=name, capacity=cap or 8))[0]
        if name in small_by_design:
            assert n < 300_000, (name, n)
        else:
            assert 100_000 <= n <= 600_000, (name, cap, n)


# -- the families a method is said not to work on ---------------------------------------------------------
FAMILY_MODEL = {"seq2seq": "builtin:tiny-bart", "causal": "builtin:tiny-gpt2", "encoder": "builtin:tiny-bert"}
NOT_ON = [(n, f) for n in PEFT_METHODS for f in methods.FAMILIES if f not in methods.get_method(n).works_on]


@pytest.mark.parametrize("name, family", NOT_ON)
def test_a_family_a_method_is_said_not_to_work_on_really_fails(name, family):
    """works_on is truthful: without the family check, PEFT itself fails on that family's tiny model (in
    get_peft_model, the forward pass or the backward pass)."""
    import torch

    m = methods.get_method(name)
    assert m.not_on_reason
    loaded = models.load_model(FAMILY_MODEL[family])
    if family == "encoder":
        loaded.family.attach_labels(loaded, ["negative", "positive"])
    spec = RunSpec(model_name=loaded.name, method=name, capacity=tiny_capacity(name)).resolved()
    tok = loaded.tokenizer
    batch = loaded.family.collate(loaded.family.encode(["a fine film", "dull"], ["positive", "negative"], tok,
                                                       32, 8), tok)
    if family == "encoder":
        batch["labels"] = torch.tensor([1, 0])
    with pytest.raises((TypeError, ValueError, RuntimeError, NotImplementedError)):
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        from peft import get_peft_model

        model = get_peft_model(loaded.model, m.make_config(spec, loaded.model, tok, loaded.family))
        model(**batch).loss.backward()


# -- refusals in one line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(methods.REFUSED))
def test_refused_peft_types_are_refused_in_one_line(name):
    with pytest.raises(ValueError, match=f"^method: {name} does not work on encoder-decoder models: ") as exc:
        RunSpec(method=name)
    assert "\n" not in str(exc.value)


def test_refused_type_and_bad_capacities_on_the_command_line(tmp_path, capsys):
    proc = cli("train", "--model_name", TINY, "--method", "shadow", home=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "shadow does not work on encoder-decoder models" in proc.stderr
    assert Store(tmp_path).list_runs() == []
    for method, capacity, says in [("vera", "0", "must be > 0"), ("oft", "-4", "must be > 0"),
                                   ("fourierft", str(2**21), "must be <="), ("cartridge", "1", "at least 2"),
                                   ("trainable_tokens", "5000", "has 2,048 tokens")]:
        code = cli_mod.main(["--home", str(tmp_path), "params", "--model_name", TINY, "--method", method,
                             "--capacity", capacity])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and says in err, (method, err)


def test_methods_listing(capsys):
    assert cli_mod.main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in listing["methods"]}
    assert list(rows) and set(rows) == set(methods.METHODS)
    for name, r in rows.items():
        m = methods.get_method(name)
        assert r["family"] in methods.METHOD_FAMILIES
        assert r["works_on"] == {f: f in m.works_on for f in methods.FAMILIES}
        assert r["capacities"] == list(m.capacities) and (r["knob"] is None) == (m.capacity_name is None)
        assert not (set(methods.FAMILIES) - set(m.works_on)) or r["not_on_reason"]
    assert {r["name"] for r in listing["refused"]} == set(methods.REFUSED)
    assert all(r["reason"] for r in listing["refused"])
    assert cli_mod.main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "frequency/sparse:" in text and "not available" in text and "shadow" in text


def test_the_train_pages_pickers_group_methods_by_family():
    from peftcompare.webui import ui

    names = ui.method_choices()
    assert sorted(names) == sorted(methods.METHODS)
    order = list(methods.METHOD_FAMILIES)
    ranks = [order.index(methods.get_method(n).method_family) for n in names]
    assert ranks == sorted(ranks)  # one block per family, in METHOD_FAMILIES' order
    assert ui.method_choices(trainable=True) == [n for n in names if methods.get_method(n).trains]
    assert ui.method_choice_label("dora") == "DoRA · additive low-rank"
    guide = ui.method_families_markdown()
    assert all(f"**{f}**: {d}" in guide for f, d in methods.METHOD_FAMILIES.items())


# -- a wrong-shape base -------------------------------------------------------------------------------------
# FourierFT and WaveFT are left out: they store n coefficients and regenerate their frequencies from a seed
# for whatever layer they land on, so any base with the same layer names takes them
WRONG_BASE = ["loha", "oft", "vera", "trainable_tokens", "cartridge", "dora", "osf", "frod"]


def test_an_adapter_for_another_base_is_refused_in_one_line(zoo, tmp_path):
    """An adapter whose record names flan-t5-small though its tensors were trained on the tiny model: refused
    before anything touches the shared base (FRoD, which needs the weights to be checked, when PEFT fails to
    load it: the engine drops the half-loaded base), and the engine serves a good adapter afterwards."""
    _, runs_ = zoo
    fake = Store(tmp_path / "fake")
    engine = infer.CompareEngine(fake, device="cpu", precision="fp32")
    for name in WRONG_BASE:
        spec = zoo_spec(name).replace(model_name=SMALL)
        run_id = fake.create_run(spec, status="running")
        staging = fake.staging_path(run_id)
        for f in os.listdir(runs_[name]["adapter_dir"]):
            shutil.copy(os.path.join(runs_[name]["adapter_dir"], f), staging / f)
        record = json.loads((staging / "run.json").read_text())
        record["spec"]["model_name"] = SMALL
        (staging / "run.json").write_text(json.dumps(record))
        fake.transition(run_id, "completed", ("running",), adapter_dir=str(fake.commit_adapter(run_id, staging)))
        with pytest.raises(ValueError, match="(another base model|does not fit)") as exc:
            engine.compare(TEXT, [run_id])
        assert "\n" not in str(exc.value), name
    # the refusals left nothing behind: zero-shot on that base is still the untouched model
    out = engine.compare(TEXT, [], model_name=SMALL)["columns"][0]
    fresh = infer.CompareEngine(None, device="cpu", precision="fp32").compare(TEXT, [], model_name=SMALL)
    assert out["probability"] == pytest.approx(fresh["columns"][0]["probability"], abs=1e-5)
