"""Security: public mode, names and paths that never escape the store, safetensors only, no remote code,
uploaded data never executed."""
from __future__ import annotations

import ast
import json
import re
import struct
from pathlib import Path

import pytest

from peftcompare.engine import adapters
from peftcompare.service import bundle, integrity, jobs, policy as public, runs
from peftcompare import cli
from peftcompare.engine import data, models
from peftcompare.core import tasks
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store, check_run_id

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "peftcompare").rglob("*.py"), *(REPO / "pages").glob("*.py"), *REPO.glob("app.py")])
OK_SPEC = dict(model_name="builtin:tiny-t5", train_samples=100, eval_samples=50, num_train_epochs=2, capacity=8)


def safetensors_bytes(tensors: dict[str, list[int]]) -> bytes:
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def fake_adapter(path: Path, run_id: str = "r1", **spec) -> Path:
    path.mkdir(parents=True)
    s = RunSpec(**{**OK_SPEC, **spec}).resolved()
    (path / "run.json").write_text(json.dumps({"run_id": run_id, "spec": s.to_dict()}))
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(safetensors_bytes({"a.lora_A.weight": [4, 64]}))
    return path


# -- code that must never appear ----------------------------------------------------------------------------
def test_trust_remote_code_is_never_true():
    seen = 0
    for f in SOURCES:
        for m in re.finditer(r"trust_remote_code\s*=\s*([^,)\s]+)", f.read_text()):
            seen += 1
            assert m.group(1) == "False", f"{f.name}: trust_remote_code={m.group(1)}"
    assert seen >= 2  # the shared Hub loader (config, tokenizer) and model loading both say it explicitly


def test_weights_load_from_safetensors_only():
    text = (REPO / "peftcompare" / "engine" / "models.py").read_text()
    calls = re.findall(r"auto_class\(\)\.from_pretrained\((.*?)\)\n", text, re.S)
    assert calls and all("use_safetensors=True" in c for c in calls)


def test_no_code_execution_paths_in_the_package():
    """No eval/exec, no pickle-based loaders: uploaded data and bundles are only ever parsed."""
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_modules = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
    banned_attrs = {"read_pickle", "load_pickle", "unsafe_load"}
    found = []
    for f in SOURCES:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in banned_calls:
                found.append(f"{f.name}:{node.lineno} {node.func.id}()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{f.name}:{node.lineno} import {n}" for n in names if n and n.split(".")[0] in banned_modules]
            if isinstance(node, ast.Attribute) and node.attr in banned_attrs:
                found.append(f"{f.name}:{node.lineno} .{node.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "yaml")):
                found.append(f"{f.name}:{node.lineno} {node.func.value.id}.load")
    assert not found, found


# -- names and paths ----------------------------------------------------------------------------------------
BAD_IDS = ["../x", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", "", ".hidden", ".tmp-x-1", "..", "a..b",
           "x" * 200, "a\x00b", "-rf", "a b", "run\n2", "~root"]


def test_run_ids_never_become_paths_outside_the_store(tmp_path, capsys):
    store = Store(tmp_path)
    for bad in BAD_IDS:
        for fn in (check_run_id, store.adapter_path, store.log_path, store.spec_path, store.staging_path,
                   store.delete):
            with pytest.raises(ValueError):
                fn(bad)
    assert cli.main(["--home", str(tmp_path), "delete", "../../etc"]) == 2
    assert capsys.readouterr().err.startswith("error: run_id:")
    with pytest.raises(ValueError):
        store.create_run(RunSpec(**OK_SPEC), run_id="../escape")
    assert store.list_runs() == [] and not (tmp_path.parent / "escape").exists()
    for name in ["../../etc", "/etc", "~/x/../y", "a/b/c", "a/../../b"]:
        with pytest.raises(ValueError):
            models.check_model_name(name)
    print(f"\nunsafe run ids tried: {len(BAD_IDS)} x 6 store entry points, refused: all")


def test_uploaded_files_get_generated_names(tmp_path, monkeypatch):
    ui = pytest.importorskip("peftcompare.webui.ui")  # the app's upload path (needs streamlit)

    store = Store(tmp_path / "home")
    saved = ui.save_upload(store, "../../../evil.csv", b"sentence,label\nfine,1\nbad,0\n")
    uploads = store.results_dir / "uploads"
    assert saved.parent == uploads and "evil" not in saved.name and saved.suffix == ".csv"
    assert not (tmp_path / "evil.csv").exists()
    assert data.read_table(str(saved)).shape == (2, 2)
    for name in ["run.py", "evil.csv/../../x", "x.pkl", "", "noext"]:
        with pytest.raises(ValueError, match="upload"):
            ui.save_upload(store, name, b"a,b\n")
    with pytest.raises(ValueError, match="empty"):
        ui.save_upload(store, "a.csv", b"")
    monkeypatch.setattr(tasks, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(ValueError, match="larger"):
        ui.save_upload(store, "a.csv", b"x" * 11)
    assert len(list(uploads.iterdir())) == 1


def test_uploaded_data_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [f"__import__('os').system('touch {marker}')", f"=cmd|' /C touch {marker}'!A0",
                "{text.__class__.__mro__}", "${jndi:ldap://x}", "\x00\x01"]
    csv = tmp_path / "d.csv"
    csv.write_text("sentence,label\n" + "\n".join(f'"{p}",1' for p in payloads if "\x00" not in p))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"sentence": p, "label": 0}) for p in payloads))
    for f in (csv, jsonl):
        df = data.read_table(str(f))
        assert set(df["sentence"]) <= set(payloads)
    assert data.render("sst2: {text}", payloads[2]) == "sst2: " + payloads[2]  # substituted, never formatted
    assert not marker.exists()


# -- adapters -----------------------------------------------------------------------------------------------
def test_adapters_with_pickles_are_never_loaded(tmp_path):
    good = fake_adapter(tmp_path / "good")
    assert adapters.read_adapter(good)["run_id"] == "r1"
    both = fake_adapter(tmp_path / "both")
    (both / "adapter_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")
    only_bin = fake_adapter(tmp_path / "only_bin")
    (only_bin / "adapter_model.safetensors").unlink()
    (only_bin / "adapter_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")
    linked = fake_adapter(tmp_path / "linked")
    (linked / "adapter_model.safetensors").unlink()
    (linked / "adapter_model.safetensors").symlink_to(good / "adapter_model.safetensors")
    for bad, words in ((both, "pickle"), (only_bin, "adapter_model.safetensors"), (linked, "symbolic link")):
        with pytest.raises(ValueError, match=words):
            adapters.read_adapter(bad)
        assert integrity.adapter_problems(bad)


def test_the_adapter_contract_is_read_in_one_place(tmp_path):
    """read_adapter parses adapter_config.json into the record (the engine opens it nowhere else); a missing
    or corrupt config is one line from read_adapter and a problem for the integrity check."""
    good = fake_adapter(tmp_path / "good")
    (good / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 16}))
    rec = adapters.read_adapter(good)
    assert rec["_config"] == {"peft_type": "LORA", "lora_alpha": 16} and rec["_weights"].name.endswith(".safetensors")
    assert integrity.adapter_problems(good) == [] and integrity.adapter_problems(good, "other") != []
    for damage, words in (("not json", "adapter_config.json is corrupt"), (None, "no adapter_config.json"),
                          ("[1, 2]", "adapter_config.json is corrupt")):
        bad = fake_adapter(tmp_path / f"bad{len(list(tmp_path.iterdir()))}")
        if damage is None:
            (bad / "adapter_config.json").unlink()
        else:
            (bad / "adapter_config.json").write_text(damage)
        with pytest.raises(ValueError, match=words):
            adapters.read_adapter(bad)
        assert integrity.adapter_problems(bad) == [words + (" (incomplete adapter)" if damage is None else "")]
    engine = (REPO / "peftcompare" / "engine")
    readers = [p.name for p in engine.rglob("*.py") if "adapter_config.json" in p.read_text()]
    assert readers == ["adapters.py"]


# -- public mode --------------------------------------------------------------------------------------------
def test_public_mode_limits_training(monkeypatch):
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "1")
    assert public.is_public() and public.can_train() and not public.can_delete() and not public.can_import()
    public.check_spec(RunSpec(**OK_SPEC))
    refused = {
        "model_name": dict(model_name="google/flan-t5-xxl"),
        "num_train_epochs": dict(num_train_epochs=50),
        "train_samples": dict(train_samples=0),
        "eval_samples": dict(eval_samples=100_000),
        "train_file": dict(train_file="/etc/passwd"),
        "dataset": dict(dataset="someone/huge-dataset"),
        "capacity": dict(capacity=1024),
        "method": dict(method="full"),
        "per_device_train_batch_size": dict(per_device_train_batch_size=4096),
        "max_source_length": dict(max_source_length=8192),
    }
    for field, change in refused.items():
        with pytest.raises(ValueError, match=field):
            public.check_spec(RunSpec(**{**OK_SPEC, **change}))
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "no-train")
    assert not public.can_train()
    with pytest.raises(ValueError, match="turned off"):
        public.check_spec(RunSpec(**OK_SPEC))
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "0")
    public.check_spec(RunSpec(**{**OK_SPEC, **refused["num_train_epochs"]}))  # private: no limits
    print(f"\npublic mode: {len(refused) + 1} over-limit specs tried, refused: {len(refused) + 1}")


def test_public_mode_one_job_per_visitor_through_the_queue(tmp_path, monkeypatch):
    store = Store(tmp_path)
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "1")
    spec = RunSpec(**OK_SPEC)
    jobs.enqueue(store, spec, owner="visitor-a")
    with pytest.raises(ValueError, match="already have a run"):
        jobs.enqueue(store, spec.replace(seed=1), owner="visitor-a")
    with pytest.raises(ValueError, match="visitor id"):
        jobs.enqueue(store, spec.replace(seed=2), owner=None)
    with pytest.raises(ValueError, match="num_train_epochs"):
        jobs.enqueue(store, spec.replace(num_train_epochs=100), owner="visitor-b")
    jobs.enqueue(store, spec.replace(seed=3), owner="visitor-b")
    monkeypatch.setattr(public, "LIMITS", public.Limits(max_queue=2))
    with pytest.raises(ValueError, match="queue is full"):
        jobs.enqueue(store, spec.replace(seed=4), owner="visitor-c")
    assert len(store.list_runs()) == 2


def test_public_mode_turns_delete_and_import_off(tmp_path, monkeypatch, capsys):
    store = Store(tmp_path)
    run_id = store.create_run(RunSpec(**OK_SPEC), status="failed")
    (tmp_path / "b.zip").write_bytes(b"PK")
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "1")
    with pytest.raises(ValueError, match="turned off"):
        runs.delete_run(store, run_id)
    with pytest.raises(ValueError, match="turned off"):
        bundle.import_bundle(store, tmp_path / "b.zip")
    assert cli.main(["--home", str(tmp_path), "delete", run_id]) == 2
    assert cli.main(["--home", str(tmp_path), "import", str(tmp_path / "b.zip")]) == 2
    assert capsys.readouterr().err.count("turned off on this public instance") == 2
    assert store.get(run_id) is not None
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC")
    runs.delete_run(store, run_id)
    assert store.get(run_id) is None
