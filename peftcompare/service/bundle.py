"""Bundles: selected runs and their adapters in one zip, to move results between machines.

Layout: manifest.json (format, version, schema, one entry per run: its record, its steps, and every file
with its sha256 and size) plus adapters/<run_id>/<file>. Import trusts nothing in the zip: names, sizes,
links, checksums, records and adapters are all checked before anything reaches the store, and an existing
run is only replaced when asked.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.service import integrity
from peftcompare.service import policy as public
from peftcompare.service.store import (
    _COLUMNS,
    FINAL,
    SCHEMA_VERSION,
    Store,
    check_run_id,
)

FORMAT = "peftcompare-bundle"
VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # one path component inside an adapter directory


@dataclass(frozen=True)
class Limits:
    max_bundle_bytes: int = 2 * 2**30
    max_file_bytes: int = 1 * 2**30
    max_total_bytes: int = 4 * 2**30
    max_files: int = 5000
    max_manifest_bytes: int = 64 * 2**20
    max_ratio: int = 200  # uncompressed / compressed: more than this is a zip bomb, not an adapter


LIMITS = Limits()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- export -----------------------------------------------------------------------------------------------
def export_bundle(store: Store, run_ids: list[str], out: str | os.PathLike) -> dict:
    """Write the runs (and their adapters) to `out`; returns the manifest."""
    if not run_ids:
        raise ValueError("export: name at least one run")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"export: {out.name} should end in .zip")
    entries, files = [], []
    for run_id in dict.fromkeys(run_ids):
        check_run_id(run_id)
        with store._conn() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            steps = [list(s) for s in conn.execute(
                "SELECT step, epoch, loss, learning_rate, t FROM steps WHERE run_id=? ORDER BY step", (run_id,))]
        if row is None:
            raise ValueError(f"run_id: no run {run_id}")
        record = dict(row)
        if record["status"] not in FINAL:
            raise ValueError(f"run {run_id} is {record['status']}: export it when it has finished")
        record.update(pid=None, heartbeat=None, adapter_dir=None)
        listed = {}
        adir = store.adapter_path(run_id)
        if record["status"] == "completed" and adir.is_dir():
            problems = integrity.adapter_problems(adir, run_id)
            if problems:
                raise ValueError(f"run {run_id}: adapter is damaged ({problems[0]}); see python -m peftcompare check")
            for f in sorted(adir.rglob("*")):
                if f.is_file():
                    arc = f"adapters/{run_id}/{f.relative_to(adir).as_posix()}"
                    listed[arc] = {"sha256": _sha256_file(f), "size": f.stat().st_size}
                    files.append((arc, f))
        entries.append({"run_id": run_id, "record": record, "steps": steps, "files": listed})
    manifest = {"format": FORMAT, "version": VERSION, "schema_version": SCHEMA_VERSION,
                "created_at": time.time(), "runs": entries}
    tmp = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            for arc, f in files:
                z.write(f, arc)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


# -- import -----------------------------------------------------------------------------------------------
def import_bundle(store: Store, path: str | os.PathLike, overwrite: bool = False,
                  limits: Limits = LIMITS) -> list[str]:
    """Validate a bundle completely, then add its runs to the store. Returns the imported run ids.

    Every refusal is a ValueError with one line; nothing is written to the store before all checks pass.
    """
    public.check_import()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"bundle: {path.name} does not exist")
    if path.stat().st_size > limits.max_bundle_bytes:
        raise ValueError(f"bundle: {path.name} is larger than {limits.max_bundle_bytes // 2**20} MB")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ValueError(f"bundle: {path.name} is not a zip file") from None
    with z:
        members = _check_members(z, limits)
        manifest = _read_manifest(z, members, limits)
        plans = _check_runs(store, manifest, members, overwrite)
        staged: dict[str, Path] = {}
        try:
            for run_id, files in plans:
                if files:
                    staged[run_id] = _extract(z, store, run_id, files, limits)
            for run_id, _ in plans:
                if run_id in staged:
                    problems = integrity.adapter_problems(staged[run_id], run_id)
                    if problems:
                        raise ValueError(f"bundle: adapter of {run_id} is not usable ({problems[0]})")
        except BaseException:
            for d in staged.values():
                _rmtree(d)
            raise
    imported = []
    entries = {e["run_id"]: e for e in manifest["runs"]}
    for run_id, _ in plans:
        e = entries[run_id]
        store.import_run(e["record"], [tuple(s) for s in e["steps"]], staged.pop(run_id, None), overwrite)
        imported.append(run_id)
    return imported


def _check_members(z: zipfile.ZipFile, limits: Limits) -> dict[str, zipfile.ZipInfo]:
    infos = z.infolist()
    if len(infos) > limits.max_files:
        raise ValueError(f"bundle: more than {limits.max_files} files")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ValueError(f"bundle: {name!r} is a symbolic link")
        if info.is_dir():
            continue
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # writers that set no type bits write plain files
            raise ValueError(f"bundle: {name!r} is not a regular file")
        _check_name(name)
        if name in members:
            raise ValueError(f"bundle: {name!r} appears twice")
        if info.flag_bits & 0x1:
            raise ValueError(f"bundle: {name!r} is encrypted")
        if info.file_size > limits.max_file_bytes:
            raise ValueError(f"bundle: {name!r} is larger than {limits.max_file_bytes // 2**20} MB")
        if info.file_size > 1024 and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise ValueError(f"bundle: {name!r} is compressed {info.file_size // max(1, info.compress_size)}:1 "
                             "(a zip bomb?)")
        total += info.file_size
        members[name] = info
    if total > limits.max_total_bytes:
        raise ValueError(f"bundle: more than {limits.max_total_bytes // 2**20} MB once unpacked")
    return members


def _check_name(name: str) -> None:
    """Zip-slip guard: relative POSIX paths of plain components only."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"bundle: {name!r} is an absolute or malformed path")
    parts = PurePosixPath(name).parts
    if any(p in ("", ".", "..") for p in parts) or name != "/".join(parts):
        raise ValueError(f"bundle: {name!r} leaves its folder")
    if name == MANIFEST:
        return
    if len(parts) != 3 or parts[0] != "adapters" or not all(_NAME.match(p) for p in parts[1:]):
        raise ValueError(f"bundle: {name!r} is not adapters/<run_id>/<file>")


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    # the declared size may lie: read at most cap + 1 bytes whatever the header says
    try:
        with z.open(info) as f:
            data = f.read(cap + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"bundle: {info.filename!r} cannot be read ({type(exc).__name__})") from None
    if len(data) > cap:
        raise ValueError(f"bundle: {info.filename!r} is larger than declared")
    return data


def _read_manifest(z: zipfile.ZipFile, members: dict, limits: Limits) -> dict:
    if MANIFEST not in members:
        raise ValueError("bundle: no manifest.json (not a peftcompare bundle)")
    raw = _read_member(z, members[MANIFEST], limits.max_manifest_bytes)
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("bundle: manifest.json is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError("bundle: manifest.json is not a peftcompare bundle manifest")
    if m.get("version") != VERSION:
        raise ValueError(f"bundle: format version {m.get('version')!r} is not supported (this peftcompare "
                         f"reads version {VERSION})")
    schema = m.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > SCHEMA_VERSION or schema < 1:
        raise ValueError(f"bundle: made by a store with schema {schema!r}; this peftcompare reads up to "
                         f"{SCHEMA_VERSION}")
    if not isinstance(m.get("runs"), list) or not m["runs"]:
        raise ValueError("bundle: manifest.json lists no runs")
    return m


def _check_runs(store: Store, m: dict, members: dict, overwrite: bool) -> list[tuple[str, dict]]:

    plans, seen, claimed = [], set(), set()
    for e in m["runs"]:
        if not isinstance(e, dict) or not isinstance(e.get("record"), dict):
            raise ValueError("bundle: a run entry is malformed")
        run_id = e.get("run_id")
        try:
            check_run_id(run_id)
        except ValueError:
            raise ValueError(f"bundle: {str(run_id)[:80]!r} is not a safe run id") from None
        if run_id in seen:
            raise ValueError(f"bundle: run {run_id} appears twice")
        seen.add(run_id)
        rec = e["record"]
        _check_record(run_id, rec)
        try:
            RunSpec.from_json(rec["spec_json"])
        except ValueError as exc:
            raise ValueError(f"bundle: run {run_id} has a bad spec ({exc})") from None
        e["steps"] = _check_steps(run_id, e.get("steps", []))
        files = e.get("files", {})
        if not isinstance(files, dict):
            raise ValueError(f"bundle: run {run_id} has a malformed file list")
        for name, meta in files.items():
            if not isinstance(name, str) or not name.startswith(f"adapters/{run_id}/"):
                raise ValueError(f"bundle: {str(name)[:120]!r} is outside run {run_id}'s folder")
            _check_name(name)
            if name not in members:
                raise ValueError(f"bundle: {name!r} is listed but missing")
            if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                    and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]) and isinstance(meta.get("size"), int)
                    and meta["size"] == members[name].file_size):
                raise ValueError(f"bundle: {name!r} has no valid checksum or size")
            claimed.add(name)
        if rec["status"] == "completed" and not files and _trains(rec):
            raise ValueError(f"bundle: run {run_id} is completed but carries no adapter")
        existing = store.get(run_id)
        if existing is not None and not overwrite:
            raise ValueError(f"bundle: run {run_id} already exists in this store (use --overwrite to replace it)")
        if existing is None and store.adapter_path(run_id).exists() and not overwrite:
            raise ValueError(f"bundle: adapters/{run_id}/ already exists in this store (use --overwrite)")
        if existing is not None and existing["status"] in ("queued", "running"):
            raise ValueError(f"bundle: run {run_id} is {existing['status']} here; it cannot be replaced")
        plans.append((run_id, files))
    extra = sorted(set(members) - claimed - {MANIFEST})
    if extra:
        raise ValueError(f"bundle: {extra[0]!r} is not listed in the manifest")
    return plans


def _trains(rec: dict) -> bool:

    return methods.get_method(rec.get("method") or "").trains


def _check_record(run_id: str, rec: dict) -> None:
    unknown = sorted(set(rec) - set(_COLUMNS))
    if unknown:
        raise ValueError(f"bundle: run {run_id} has unknown field(s) {', '.join(unknown)[:120]}")
    if rec.get("run_id") != run_id:
        raise ValueError(f"bundle: run {run_id}'s record names another run")
    if rec.get("status") not in FINAL:
        raise ValueError(f"bundle: run {run_id} has status {str(rec.get('status'))[:40]!r}; only finished runs "
                         "can be imported")
    for key, value in rec.items():
        kind = _COLUMNS[key].split()[0]
        if value is None:
            if "NOT NULL" in _COLUMNS[key]:
                raise ValueError(f"bundle: run {run_id}: {key} is missing")
            continue
        ok = {"TEXT": isinstance(value, str) and len(value) <= 4 * 2**20,
              "INTEGER": isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**62,
              "REAL": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}[kind]
        if not ok:
            raise ValueError(f"bundle: run {run_id}: {key} has a bad value")
        if key.endswith("_json"):
            try:
                json.loads(value)
            except ValueError:
                raise ValueError(f"bundle: run {run_id}: {key} is not valid JSON") from None
    try:

        methods.get_method(rec.get("method") or "")
    except ValueError:
        raise ValueError(f"bundle: run {run_id} has an unknown method") from None


def _check_steps(run_id: str, steps) -> list[list]:
    if not isinstance(steps, list) or len(steps) > 10_000_000:
        raise ValueError(f"bundle: run {run_id} has malformed steps")
    out = []
    for s in steps:
        if not (isinstance(s, list) and len(s) == 5 and isinstance(s[0], int) and not isinstance(s[0], bool)
                and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                        for v in s[1:])):
            raise ValueError(f"bundle: run {run_id} has a malformed step")
        out.append(s)
    return out


def _extract(z: zipfile.ZipFile, store: Store, run_id: str, files: dict, limits: Limits) -> Path:
    """Unpack one run's files into a staging directory, checking each checksum as it is written."""
    staging = store.staging_path(run_id)
    try:
        for name, meta in files.items():
            data = _read_member(z, z.getinfo(name), min(meta["size"], limits.max_file_bytes))
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ValueError(f"bundle: {name!r} does not match its checksum (damaged or altered)")
            target = staging / PurePosixPath(name).parts[-1]
            # O_EXCL | O_NOFOLLOW: never follow or reuse something already there
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except BaseException:
        _rmtree(staging)
        raise
    return staging


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
