"""Bundles: export runs + adapters to a zip, import them elsewhere; every hostile or damaged zip refused."""
from __future__ import annotations

import hashlib
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from peftcompare.service import bundle, integrity
from peftcompare import cli
from peftcompare.service.store import Store

TRAIN = ["--model_name", "builtin:tiny-t5", "--method", "lora", "--capacity", "4", "--num_train_epochs", "1",
         "--train_samples", "16", "--eval_samples", "8", "--per_device_train_batch_size", "8"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store with one trained LoRA run and one failed run, and its exported bundle."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = tmp_path_factory.mktemp("src")
    assert cli.main(["--home", str(home), "train", *TRAIN]) == 0
    store = Store(home)
    (lora,) = [r["run_id"] for r in store.list_runs()]
    failed = store.create_run(store.get(lora)["spec"].replace(seed=7), status="running")
    store.transition(failed, "failed", ("running",), error="out of memory: injected")
    out = home / "bundle.zip"
    assert cli.main(["--home", str(home), "export", lora, failed, "--out", str(out)]) == 0
    return store, lora, failed, out


def _parts(path: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return json.loads(files.pop("manifest.json")), files


def _zip(path: Path, manifest, files: dict, infos: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest))
        for name, data in files.items():
            z.writestr((infos or {}).get(name) or name, data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_roundtrip_keeps_records_steps_and_adapters(source, tmp_path, capsys):
    src, lora, failed, out = source
    dst_home = tmp_path / "dst"
    assert cli.main(["--home", str(dst_home), "import", str(out)]) == 0
    assert f"imported {lora}" in capsys.readouterr().out
    dst = Store(dst_home)
    for run_id in (lora, failed):
        a, b = src.get(run_id), dst.get(run_id)
        for key in ("status", "spec_json", "metrics", "epochs", "trainable_params", "error", "spec_hash"):
            assert a[key] == b[key], key
        assert src.steps(run_id) == dst.steps(run_id)
    assert dst.get(lora)["adapter_dir"] == str(dst.adapter_path(lora))
    assert dst.get(failed)["adapter_dir"] is None and not dst.adapter_path(failed).exists()
    for f in src.adapter_path(lora).iterdir():
        assert (dst.adapter_path(lora) / f.name).read_bytes() == f.read_bytes()
    assert integrity.check(dst) == [] and integrity.check(src) == []

    from peftcompare.engine.compare import CompareEngine  # the imported adapter really works

    result = CompareEngine(dst).compare("a warm and funny film", [lora])
    assert [c["key"] for c in result["columns"]] == ["__base__", lora]

    # a second import is refused unless asked to overwrite
    assert cli.main(["--home", str(dst_home), "import", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bundle:") and "already exists" in err and err.count("\n") == 1
    dst.update(lora, metrics_json={"f1": -1.0})
    assert bundle.import_bundle(dst, out, overwrite=True) == [lora, failed]
    assert dst.get(lora)["metrics"] == src.get(lora)["metrics"]


def test_export_refuses_what_it_cannot_bundle(source, tmp_path):
    src, lora, _, _ = source
    with pytest.raises(ValueError, match="no run"):
        bundle.export_bundle(src, ["no-such-run"], tmp_path / "x.zip")
    with pytest.raises(ValueError, match="run id"):
        bundle.export_bundle(src, ["../../etc/passwd"], tmp_path / "x.zip")
    with pytest.raises(ValueError, match=".zip"):
        bundle.export_bundle(src, [lora], tmp_path / "x.tar")
    active = src.create_run(src.get(lora)["spec"].replace(seed=99), status="queued")
    try:
        with pytest.raises(ValueError, match="queued"):
            bundle.export_bundle(src, [active], tmp_path / "x.zip")
    finally:
        src.transition(active, "cancelled", ("queued",))
    assert not (tmp_path / "x.zip").exists() and not list(tmp_path.glob("*.part"))


def _bad_bundles(out: Path, d: Path, lora: str) -> list[tuple[str, Path, str]]:
    """(what, zip, words the refusal must contain): each one a way a zip can be hostile or damaged."""
    m, files = _parts(out)
    weights = f"adapters/{lora}/adapter_model.safetensors"

    def variant(name, mutate=None, extra_files=None, infos=None, drop=(), raw_manifest=None):
        mm, ff = json.loads(json.dumps(m)), dict(files)
        if mutate:
            mutate(mm)
        for k in drop:
            ff.pop(k)
        ff.update(extra_files or {})
        return _zip(d / f"{name}.zip", raw_manifest if raw_manifest is not None else mm, ff, infos)

    def listed(mm, name, data):
        mm["runs"][0]["files"][name] = {"sha256": _sha(data), "size": len(data)}

    def run0(**changes):
        return lambda mm: mm["runs"][0]["record"].update(changes)

    link = zipfile.ZipInfo(f"adapters/{lora}/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    truncated = files[weights][: len(files[weights]) // 2]
    pickle = b"\x80\x04\x95cos\nsystem\n."  # what a malicious pytorch_model.bin looks like
    bomb = b"\0" * (8 * 2**20)
    out_bytes = out.read_bytes()
    (d / "text.zip").write_text("this is not a zip")
    (d / "half.zip").write_bytes(out_bytes[: len(out_bytes) // 2])
    (d / "empty.zip").write_bytes(b"")

    def rename_run(mm, new):
        mm["runs"][0]["run_id"] = new
        mm["runs"][0]["record"]["run_id"] = new

    cases = [
        ("not a zip", d / "text.zip", "not a zip"),
        ("truncated zip", d / "half.zip", "not a zip"),
        ("empty file", d / "empty.zip", "not a zip"),
        ("no manifest", _zip_without_manifest(d / "nomanifest.zip", files), "no manifest"),
        ("manifest not JSON", variant("badjson", raw_manifest="{not json"), "not valid JSON"),
        ("manifest of something else", variant("format", lambda mm: mm.update(format="other")), "not a peftcompare"),
        ("future bundle version", variant("version", lambda mm: mm.update(version=99)), "not supported"),
        ("newer store schema", variant("schema", lambda mm: mm.update(schema_version=999)), "schema"),
        ("no runs", variant("noruns", lambda mm: mm.update(runs=[])), "no runs"),
        ("zip-slip ../", variant("slip1", extra_files={"../evil.txt": b"x"}), "leaves its folder"),
        ("zip-slip inside", variant("slip2", extra_files={f"adapters/{lora}/../../evil": b"x"}), "leaves its folder"),
        ("absolute path", variant("abs", extra_files={"/tmp/evil.txt": b"x"}), "absolute"),
        ("windows path", variant("win", extra_files={"C:\\evil.txt": b"x"}), "absolute"),
        ("backslashes", variant("bs", extra_files={f"adapters\\{lora}\\..\\..\\evil": b"x"}), "absolute"),
        ("symbolic link", variant("link", extra_files={link.filename: b"/etc/passwd"},
                                  infos={link.filename: link}), "symbolic link"),
        ("deep path", variant("deep", extra_files={f"adapters/{lora}/sub/x.json": b"{}"}), "adapters/<run_id>/<file>"),
        ("file outside adapters", variant("outside", extra_files={"app.py": b"import os"}), "adapters/<run_id>/<file>"),
        ("unlisted file", variant("unlisted", extra_files={f"adapters/{lora}/extra.json": b"{}"}), "not listed"),
        ("listed file missing", variant("missing", drop=[weights]), "listed but missing"),
        ("checksum mismatch", variant("sha", extra_files={weights: files[weights][:-4] + b"\0\0\0\0"}),
         "checksum"),
        ("size mismatch", variant("size", lambda mm: mm["runs"][0]["files"][weights].update(size=1)), "size"),
        ("traversing run id", variant("rid1", lambda mm: rename_run(mm, "../../etc")), "safe run id"),
        ("run id with a slash", variant("rid2", lambda mm: rename_run(mm, "a/b")), "safe run id"),
        ("hidden run id", variant("rid3", lambda mm: rename_run(mm, ".tmp-x-1")), "safe run id"),
        ("record names another run", variant("other", run0(run_id="someone-else")), "another run"),
        ("running run", variant("running", run0(status="running")), "only finished runs"),
        ("unknown column", variant("column", run0(evil_column="x")), "unknown field"),
        ("wrong type", variant("type", run0(trainable_params="many")), "bad value"),
        ("not finite", variant("nan", run0(train_runtime=float("nan"))), "bad value"),
        ("bad spec", variant("spec", run0(spec_json='{"method": "rm -rf"}')), "bad spec"),
        ("bad json column", variant("jsoncol", run0(metrics_json="{oops")), "not valid JSON"),
        ("unknown method", variant("method", run0(method="exec")), "unknown method"),
        ("malformed steps", variant("steps", lambda mm: mm["runs"][0].update(steps=[["x"]])), "malformed step"),
        ("completed without adapter", variant("noadapter", lambda mm: mm["runs"][0].update(files={}),
                                              drop=[k for k in files if k.startswith("adapters/" + lora)]),
         "carries no adapter"),
        ("duplicate run", variant("duprun", lambda mm: mm["runs"].append(mm["runs"][0])), "appears twice"),
        ("pickle weights", variant("pickle", lambda mm: listed(mm, f"adapters/{lora}/adapter_model.bin", pickle),
                                   extra_files={f"adapters/{lora}/adapter_model.bin": pickle}), "pickle"),
        ("truncated safetensors", variant("trunc", lambda mm: listed(mm, weights, truncated),
                                          extra_files={weights: truncated}), "truncated"),
        ("zip bomb", variant("bomb", lambda mm: listed(mm, f"adapters/{lora}/pad.json", bomb),
                             extra_files={f"adapters/{lora}/pad.json": bomb}), "zip bomb"),
    ]
    return cases


def _zip_without_manifest(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_hostile_and_damaged_bundles_are_refused(source, tmp_path):
    _, lora, _, out = source
    cases = _bad_bundles(out, tmp_path, lora)
    dst = Store(tmp_path / "dst")
    refused = []
    for what, path, words in cases:
        with pytest.raises(ValueError) as info:
            bundle.import_bundle(dst, path)
        msg = str(info.value)
        assert words in msg and "\n" not in msg, (what, msg)
        assert dst.list_runs() == [] and list(dst.adapters_dir.iterdir()) == [], what
        refused.append(what)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    # limits: a small store refuses big or numerous files
    small = bundle.Limits(max_file_bytes=1000)
    with pytest.raises(ValueError, match="larger than"):
        bundle.import_bundle(dst, out, limits=small)
    with pytest.raises(ValueError, match="more than 2 files"):
        bundle.import_bundle(dst, out, limits=bundle.Limits(max_files=2))
    with pytest.raises(ValueError, match="larger than"):
        bundle.import_bundle(dst, out, limits=bundle.Limits(max_bundle_bytes=100))
    refused += ["file too big", "too many files", "bundle too big"]
    assert bundle.import_bundle(dst, out) == [lora, source[2]]  # the genuine bundle still imports
    print(f"\nbad bundles tried: {len(cases) + 3}, refused: {len(refused)} (store untouched every time)")


def test_existing_adapter_dir_is_not_overwritten(source, tmp_path):
    _, lora, _, out = source
    dst = Store(tmp_path / "dst")
    keep = dst.adapters_dir / lora
    keep.mkdir()
    (keep / "mine.txt").write_text("someone's only copy")
    with pytest.raises(ValueError, match="already exists"):
        bundle.import_bundle(dst, out)
    assert (keep / "mine.txt").read_text() == "someone's only copy"


def test_check_reports_each_kind_of_damage_and_fixes_the_safe_ones(source, tmp_path, capsys):
    _, lora, failed, out = source
    home = tmp_path / "store"
    store = Store(home)
    bundle.import_bundle(store, out)
    assert cli.main(["--home", str(home), "check"]) == 0
    assert "store is consistent" in capsys.readouterr().out

    # a second completed run whose adapter goes missing, one with a truncated weights file
    for new in ("gone-adapter", "torn-adapter"):
        shutil.copytree(store.adapter_path(lora), store.adapters_dir / new)
        rj = json.loads((store.adapters_dir / new / "run.json").read_text())
        (store.adapters_dir / new / "run.json").write_text(json.dumps({**rj, "run_id": new}))
        with store._conn(write=True) as conn:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "run_id"]
            conn.execute(f"INSERT INTO runs (run_id, {', '.join(cols)}) SELECT ?, {', '.join(cols)} FROM runs "
                         "WHERE run_id=?", (new, lora))
    shutil.rmtree(store.adapters_dir / "gone-adapter")
    w = store.adapters_dir / "torn-adapter" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    shutil.copytree(store.adapter_path(lora), store.adapters_dir / "nobody-owns-this")
    (store.adapters_dir / ".tmp-crashed-999999999").mkdir()
    stale = store.create_run(store.get(lora)["spec"].replace(seed=5), status="running")
    with store._conn(write=True) as conn:
        conn.execute("UPDATE runs SET spec_json='{broken' WHERE run_id=?", (failed,))

    assert cli.main(["--home", str(home), "check", "--json"]) == 1
    found = {(p["kind"], p["run_id"]) for p in json.loads(capsys.readouterr().out)}
    assert found == {("missing_adapter", "gone-adapter"), ("corrupt_adapter", "torn-adapter"),
                     ("extra_adapter", "nobody-owns-this"), ("orphan_staging", "crashed"),
                     ("stale_running", stale), ("corrupt_record", failed)}
    assert cli.main(["--home", str(home), "check", "--fix"]) == 1
    capsys.readouterr()
    assert store.get(stale)["status"] == "interrupted"
    assert not (store.adapters_dir / ".tmp-crashed-999999999").exists()
    assert (store.adapters_dir / "nobody-owns-this").is_dir()  # reported, never deleted
    left = {p.kind for p in integrity.check(store)}
    assert left == {"missing_adapter", "corrupt_adapter", "extra_adapter", "corrupt_record"}
    print(f"\nintegrity check: {len(found)} kinds of damage planted, found: {len(found)}; --fix repaired the 2 "
          "safe ones")
