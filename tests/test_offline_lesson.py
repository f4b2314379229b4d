"""Issue 12, the lesson offline: one recipe for the built-in tiny models (the same through the CLI, the
presets and the Train page, and never over a field the user set), generated sample sets and pretraining
text that never contain or come near a validation text, a deterministic and cached pretraining build,
and a LoRA run with the offline recipe that beats the zero-shot model by 0.2 F1 on the bundled SST-2
validation set (through the real training entry point)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peftcompare import cli
from peftcompare.service import presets
from peftcompare.engine import pretrain, synth  # noqa: E402
from peftcompare.core.spec import OFFLINE_RECIPE, OFFLINE_SWEEP, TINY_RECIPES, RunSpec, offline_recipe, spec_fields
from pipeline_helpers import ROOT, SAMPLES, run_in_process  # noqa: E402

TINY = sorted(TINY_RECIPES)
RECIPE_FIELDS = sorted({k for r in TINY_RECIPES.values() for k in r} | {"learning_rate"})


def from_cli(*argv: str) -> RunSpec:
    """The spec the CLI builds for these arguments (the verb's own overrides included)."""
    args = cli.build_parser().parse_args(list(argv))
    overrides = {"train": {}, "enqueue": {}, "params": {}, "zero-shot": {"method": "zero_shot"},
                 "sweep": {"method": "lora"}}[args.command]
    return cli._spec_from_args(args, **overrides)


def recipe_view(spec: RunSpec) -> dict:
    return {k: getattr(spec, k) for k in RECIPE_FIELDS}


def expected(model: str, task: str = "classification", method: str = "lora") -> dict:
    return recipe_view(RunSpec.from_dict({"model_name": model, "task": task, "method": method,
                                          **offline_recipe(model, task, method)}))


# -- one recipe ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", TINY)
def test_cli_verbs_apply_the_recipe_without_flags(model):
    want = expected(model)
    for argv in (["train", "--model_name", model], ["enqueue", "--model_name", model],
                 ["params", "--model_name", model], ["sweep", "--model_name", model]):
        assert recipe_view(from_cli(*argv)) == want, argv
    assert recipe_view(from_cli("zero-shot", "--model_name", model)) == expected(model, method="zero_shot")
    summ = from_cli("train", "--model_name", model, "--task", "summarization", "--dataset", "samsum") \
        if model != "builtin:tiny-bert" else None
    if summ is not None:
        assert recipe_view(summ) == expected(model, "summarization")


def test_flags_and_spec_files_win_over_the_recipe(tmp_path):
    spec = from_cli("train", "--model_name", "builtin:tiny-t5", "--learning_rate", "0.001", "--num_train_epochs", "2")
    assert (spec.learning_rate, spec.num_train_epochs) == (0.001, 2)
    rest = {k: v for k, v in OFFLINE_RECIPE.items() if k not in ("learning_rate", "num_train_epochs")}
    assert rest and all(getattr(spec, k) == v for k, v in rest.items())  # the fields not given: the recipe's
    every = [a for k in OFFLINE_RECIPE for a in (f"--{k}", str(getattr(RunSpec(), k)))]
    assert from_cli("train", "--model_name", "builtin:tiny-t5", *every) == RunSpec(model_name="builtin:tiny-t5")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"model_name": "builtin:tiny-t5", "train_samples": 40, "lora_alpha": 0}))
    spec = from_cli("train", "--spec", str(path))
    assert (spec.train_samples, spec.lora_alpha) == (40, 0)  # set in the file: kept
    assert spec.learning_rate == OFFLINE_RECIPE["learning_rate"]
    # any other model keeps the reference defaults, and so does the library's RunSpec
    assert from_cli("train", "--model_name", "google/flan-t5-small") == RunSpec()
    assert from_cli("train") == RunSpec()
    assert RunSpec(model_name="builtin:tiny-t5") == RunSpec().replace(model_name="builtin:tiny-t5")
    assert offline_recipe("builtin:random-flan-t5-small") == {}


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_offline_presets_take_the_same_recipe(name):
    p = presets.get_preset(name)
    hub = {(s.dataset, s.method, s.capacity): s for s in presets.preset_specs(name)}
    for s in presets.preset_specs(name, offline=True):
        assert s.model_name == p.offline_model
        assert recipe_view(s) == {**expected(s.model_name, s.task, s.method),
                                  **{k: v for k, v in p.spec.items() if k in RECIPE_FIELDS}}
        h = hub[(s.dataset, s.method, s.capacity)]
        strip = lambda x: {k: v for k, v in x.to_dict().items() if k not in ("model_name", *RECIPE_FIELDS)}  # noqa
        assert strip(s) == strip(h)  # the preset's own fields (template, lengths, capacities) stay
        # the same run as `train` on that model with the preset's fields as flags
        flags = [a for k, v in {"task": s.task, "dataset": s.dataset, "method": s.method, "capacity": s.capacity,
                                **p.spec}.items() for a in (f"--{k}", str(v))]
        assert from_cli("train", "--model_name", s.model_name, *flags).spec_hash() == s.spec_hash()
    # the quick budget stays a smoke test, the same on both sides
    quick = {s.replace(model_name="-").to_json() for s in presets.preset_specs(name, offline=True, quick=True)}
    assert quick == {s.replace(model_name="-").to_json() for s in presets.preset_specs(name, quick=True)}


def test_train_page_defaults_are_the_recipe(app_home):
    """Offline, the Train page's form starts on builtin:tiny-t5 with the recipe: the spec it builds is the
    one `train --model_name builtin:tiny-t5 --method M --capacity C` builds."""
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    state = {f.name: at.session_state[f"tr_{f.name}"] for f in spec_fields()}
    assert state["model_name"] == "builtin:tiny-t5"
    page = RunSpec.from_dict(state)
    assert recipe_view(page) == expected("builtin:tiny-t5")
    assert page == from_cli("train", "--model_name", "builtin:tiny-t5", "--method", page.method, "--capacity",
                            str(page.capacity))
    assert set(OFFLINE_SWEEP) == {"lora", "prefix", "prompt"} and all(OFFLINE_SWEEP.values())


# -- the data and the pretraining text -----------------------------------------------------------------
def _shipped(name: str) -> dict[str, list[dict]]:
    out = {}
    for path in sorted(SAMPLES.glob(f"{name}_*.jsonl")):
        out[path.stem[len(name) + 1:]] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def test_samples_are_the_generators_output_and_deterministic():
    synth._CACHE.clear()
    first = {n: synth.sample_rows(n) for n in synth.SIZES}
    synth._CACHE.clear()
    assert {n: synth.sample_rows(n) for n in synth.SIZES} == first
    for name, splits in first.items():
        assert _shipped(name) == splits, f"{name}: run python scripts/make_samples.py"
        n_train, n_val = synth.SIZES[name]
        assert [len(v) for v in splits.values()] == [n_train, n_val]
    assert len(first["sst2"]["train"]) >= OFFLINE_RECIPE["train_samples"]  # the recipe's 500 exist
    labels = [r["label"] for r in first["sst2"]["validation"]]
    assert labels.count(1) == labels.count(0)
    proc = subprocess.run([sys.executable, "scripts/make_samples.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _brute_near(units_a: list[str], units_b: list[str]) -> tuple[float, str, str]:
    """Largest word-set Jaccard similarity (or 1.0 for equal normalized text) by brute force."""
    sim, a, b = synth.closest(units_a, units_b)
    norm_b = {synth.normalized(u): u for u in units_b}
    for u in units_a:
        if synth.normalized(u) in norm_b:
            return 1.0, u, norm_b[synth.normalized(u)]
    return sim, a, b


def test_no_training_text_equals_or_nears_a_validation_text():
    held = [u for name in synth.SIZES for split, rows in _shipped(name).items() if split != "train"
            for r in rows for u in synth.row_units(name, r)]
    assert len(held) > 500
    for name in synth.SIZES:
        train = [u for r in _shipped(name)["train"] for u in synth.row_units(name, r)]
        sim, a, b = _brute_near(train, held)  # every shipped training unit against every held-out unit
        assert sim < synth.NEAR_DUPLICATE, (name, sim, a, b)


def test_pretraining_text_never_nears_a_validation_text():
    held = [u for name in synth.SIZES for split, rows in _shipped(name).items() if split != "train"
            for r in rows for u in synth.row_units(name, r)]
    items = pretrain.texts()
    units = [u for kind, xs in items.items() for x in xs
             for u in (["\n".join(synth.person_tags(x)), synth.person_tags(x)[1]] if kind == "tagged" else x.units())]
    assert len(units) > 15000
    index = synth.NearDuplicateIndex(held)
    assert not any(index.near([u]) for u in units)
    # the index is exact: a brute-force pass over a slice agrees, and it finds planted near duplicates
    sim, a, b = _brute_near(units[::25], held)
    assert sim < synth.NEAR_DUPLICATE, (sim, a, b)
    planted = held[3].replace(".", " !")
    assert index.near([planted]) and index.near([held[7].upper()])
    sentence = held[0].split(" ")
    assert index.near([" ".join(sentence[:-2] + ["indeed"] + sentence[-2:])]) == \
        (_brute_near([" ".join(sentence[:-2] + ["indeed"] + sentence[-2:])], held)[0] >= synth.NEAR_DUPLICATE)
    # and no pretraining example carries the SST-2 template
    assert not any("sst2:" in s for s, _ in pretrain.examples(n=4000))


def test_pretrained_weights_do_not_depend_on_the_cpu_the_caller_runs_on(tmp_path):
    """The build runs with portable kernels whatever the calling process uses: callers that pick AVX2 or
    AVX-512 kernels and MKL's fastest path get the same bits (an in-process build would not: it rounds the
    way the CPU's widest kernels do, and the offline lesson would change with the machine)."""
    code = ("import hashlib; from peftcompare.engine import pretrain; s = pretrain.build_portable('tiny-t5', "
            "steps=12); h = hashlib.sha256(); [h.update(s[k].numpy().tobytes()) for k in sorted(s)]; "
            "print(h.hexdigest())")
    digests = set()
    for caps in ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}, {"ATEN_CPU_CAPABILITY": "", "MKL_CBWR": ""}):
        env = {**os.environ, **caps, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=240)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1, digests
    # while the same 12 steps in a process of its own kernels give other bits: the property above is not free
    import hashlib

    import torch

    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        own = pretrain.build("tiny-t5", steps=12)
        h = hashlib.sha256()
        for k in sorted(own):
            h.update(own[k].numpy().tobytes())
        assert h.hexdigest() not in digests


def test_pretraining_is_deterministic_and_cached_once_under_concurrent_first_use(tmp_path):
    """Two processes ask for the weights of a fresh cache at once: one builds (a 3-step build here), the
    other waits for it and reads the same file; a rebuild by seed gives the same tensors."""
    import torch
    from safetensors.torch import load_file

    env = {**os.environ, "PEFTCOMPARE_CACHE": str(tmp_path), "PEFTCOMPARE_PRETRAIN_STEPS": "3",
           "PYTHONPATH": str(ROOT)}
    code = ("import sys; from peftcompare.engine import pretrain; s = pretrain.pretrained_state('tiny-t5'); "
            "print(pretrain.weights_path('tiny-t5'), sum(float(t.double().sum()) for t in s.values()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]  # the same file, the same weights
    assert sum(err.count("pretraining the built-in model once") for _, err in outs) == 1
    files = list(tmp_path.glob("tiny-t5-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    cached = load_file(str(files[0]))
    again = pretrain.build_portable("tiny-t5", steps=3)
    assert cached.keys() == again.keys() and all(torch.equal(cached[k], again[k]) for k in cached)
    from peftcompare.engine import builtin

    random = builtin.random_model("tiny-t5").state_dict()
    assert not any(torch.equal(cached[k], random[k]) for k in cached if "weight" in k)  # three steps moved it


# -- the lesson ----------------------------------------------------------------------------------------
def test_lora_with_the_offline_recipe_beats_zero_shot_on_the_bundled_validation_set(tmp_path):
    """The default offline run, as `train --model_name builtin:tiny-t5 --method lora --capacity 8` builds
    it, through the training entry point, against the zero-shot model it starts from, on all 200
    validation sentences."""
    from peftcompare.service.store import Store

    store = Store(tmp_path)
    zero = run_in_process(store, from_cli("zero-shot", "--model_name", "builtin:tiny-t5"))
    lora = run_in_process(store, from_cli("train", "--model_name", "builtin:tiny-t5", "--method", "lora",
                                          "--capacity", str(max(OFFLINE_SWEEP["lora"]))))
    assert zero["metrics"]["eval_samples"] == lora["metrics"]["eval_samples"] == 200
    assert lora["data_source"] == "sample" and lora["spec"].learning_rate == OFFLINE_RECIPE["learning_rate"]
    assert lora["metrics"]["f1"] >= zero["metrics"]["f1"] + 0.2, (zero["metrics"]["f1"], lora["metrics"]["f1"])
    assert lora["metrics"]["accuracy"] >= 0.8
