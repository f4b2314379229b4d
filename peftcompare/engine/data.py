"""Examples from the Hub, local files or the bundled samples; deterministic subsets; cached tokenization."""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from peftcompare.core import spec as spec_mod
from peftcompare.core import tasks
from peftcompare.engine.runtime import hub_reachable


@dataclass
class Example:
    text: str  # the raw input column, before the prompt template
    target: str  # label word or reference summary


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    # carved from the training data, disjoint from `train`: what best-epoch and hyper-parameter selection see
    # (empty with selection=validation, the original experiment's protocol)
    dev: list[Example] = field(default_factory=list)
    label_words: list[str] = field(default_factory=list)  # classification only
    source: str = ""  # hub | file | sample
    notice: str = ""  # one line for the user when we fell back to the bundled samples

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        # without a dev split the fingerprint is what it was before dev splits existed
        for part in (self.train, self.validation, *([self.dev] if self.dev else [])):
            for ex in part:
                h.update(ex.text.encode())
                h.update(b"\x1f")
                h.update(ex.target.encode())
                h.update(b"\x1e")
            h.update(b"\x1d")
        return h.hexdigest()[:16]


def example_key(ex: Example) -> str:
    """A short content key of one example: two runs' answers are paired on the examples whose keys match."""
    return hashlib.sha256(ex.text.encode() + b"\x1f" + ex.target.encode()).hexdigest()[:12]


def read_table(path: str, what: str = "file"):
    """A local JSONL/CSV/parquet file as a DataFrame; one-line ValueError for every user mistake."""
    import pandas as pd

    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise ValueError(f"{what}: {path} does not exist")
    if p.suffix.lower() not in tasks.FORMATS:
        raise ValueError(f"{what}: {p.name} is not JSONL, CSV or parquet (expected {', '.join(tasks.FORMATS)})")
    if p.stat().st_size > tasks.MAX_UPLOAD_BYTES:
        raise ValueError(f"{what}: {p.name} is larger than {tasks.MAX_UPLOAD_BYTES // 2**20} MB")
    if p.stat().st_size == 0:
        raise ValueError(f"{what}: {p.name} is empty")
    try:
        if p.suffix.lower() == ".parquet":
            df = pd.read_parquet(p)
        elif p.suffix.lower() == ".csv":
            df = pd.read_csv(p, encoding="utf-8", keep_default_na=False)
        else:
            raw = p.read_text(encoding="utf-8")
            if p.suffix.lower() == ".json" and raw.lstrip().startswith("["):
                df = pd.DataFrame(json.loads(raw))
            else:
                df = pd.DataFrame([json.loads(line) for line in raw.splitlines() if line.strip()])
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {p.name} is not UTF-8 text") from None
    except Exception as exc:  # parser errors of three libraries: one line for the user
        raise ValueError(f"{what}: {p.name} could not be parsed ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else 'bad format'})") from None
    if len(df) == 0:
        raise ValueError(f"{what}: {p.name} has no rows")
    return df


def _shown(name) -> str:
    """A column name as typed where it is printable, else quoted: the message stays one readable line."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def _examples(df, text_col: str, target_col: str, label_names: tuple[str, ...], what: str) -> list[Example]:
    missing = [c for c in (text_col, target_col) if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)} (found: "
                         f"{', '.join(_shown(c) for c in df.columns[:12])})")
    out = []
    for text, target in zip(df[text_col].tolist(), df[target_col].tolist()):
        if text is None or (isinstance(text, float) and text != text):
            continue
        if label_names and not isinstance(target, str):
            try:
                idx = int(target)
            except (TypeError, ValueError):
                raise ValueError(f"{what}: label {target!r} is not an integer class index") from None
            if idx < 0:
                continue  # GLUE's hidden test labels are -1
            if idx >= len(label_names):
                raise ValueError(f"{what}: label {idx} out of range for {len(label_names)} classes")
            target = label_names[idx]
        out.append(Example(str(text), str(target)))
    if not out:
        raise ValueError(f"{what}: no usable rows")
    return out


def _sample_file(ds: tasks.Dataset, split: str) -> Path:
    for name in (split, "validation", "test"):
        p = tasks.SAMPLES_DIR / f"{ds.sample_prefix}_{name}.jsonl"
        if p.is_file():
            return p
    raise ValueError(f"dataset: no bundled sample for {ds.name}")


def _hub_split(ds: tasks.Dataset, split: str):
    import datasets

    d = datasets.load_dataset(ds.hub_id, ds.hub_config, split=split)
    return d.to_pandas()


def load_task_data(spec) -> TaskData:
    """The spec's training and validation examples (spec must be resolved())."""

    ds = tasks.get_dataset(spec.dataset)
    label_names = ds.label_names if tasks.get_task(spec.task).scores_labels else ()
    source, notice = "hub", ""
    frames = {}
    for split, path in (("train", spec.train_file), ("validation", spec.validation_file)):
        if path:
            frames[split] = ("file", read_table(path, f"{split}_file"))
    need = [s for s in ("train", "validation") if s not in frames]
    if need and ds.sample_prefix and not hub_reachable():
        notice = (f"The Hugging Face Hub is unreachable: using the bundled {ds.name} sample "
                  f"({tasks.SAMPLES_DIR.name}/{ds.sample_prefix}_*.jsonl) instead of {ds.hub_id}.")
        for split in need:
            frames[split] = ("sample", read_table(str(_sample_file(ds, split)), "sample"))
    elif need:
        if not ds.hub_id:
            raise ValueError("dataset: give --train_file and --validation_file, or a dataset preset")
        for split in need:
            try:
                frames[split] = ("hub", _hub_split(ds, ds.train_split if split == "train" else
                                                  ds.validation_split))
            except Exception as exc:
                raise ValueError(f"dataset: could not load {ds.hub_id} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    sources = {kind for kind, _ in frames.values()}
    source = "+".join(sorted(sources))
    train = _examples(frames["train"][1], spec.text_column, spec.target_column, label_names, "train_file"
                      if frames["train"][0] == "file" else "train data")
    val = _examples(frames["validation"][1], spec.text_column, spec.target_column, label_names,
                    "validation_file" if frames["validation"][0] == "file" else "validation data")
    label_words: list[str] = []
    if tasks.get_task(spec.task).scores_labels:
        seen = {e.target for e in train}
        # a file with its own label words ("bad"/"good") under a preset with integer labels keeps its words
        label_words = (list(label_names) if label_names and seen | {e.target for e in val} <= set(label_names)
                       else sorted(seen))
        if len(label_words) < 2:
            raise ValueError("train_file: classification needs at least two distinct labels")
        unknown = {e.target for e in val} - set(label_words)
        if unknown:
            raise ValueError(f"validation_file: labels {sorted(unknown)[:5]} never seen in training")
    train, dev = split_dev(train, spec)
    val = val[: spec.eval_samples] if spec.eval_samples else val
    return TaskData(train, val, dev, label_words, source, notice)


_DEV_SALT = 7919  # the dev draw has its own random stream, so it never replays the training subsample's
dev_size = spec_mod.dev_size  # the rule (10 % of train_samples, at least 100) lives with the spec


def split_dev(examples: list, spec) -> tuple[list, list]:
    """(train, dev). The training subsample is drawn exactly as without a dev split (same seed, same
    examples: selection=validation reproduces the original experiment), and the dev set comes from the
    examples it left out, deterministic by seed. Where the subsample is the whole training set (or leaves
    fewer than asked), the dev set is carved out of it and the subsample shrinks by as many. The two never
    share an example."""
    train = subsample(examples, spec.train_samples, spec.seed)
    _, n_dev = spec_mod.split_sizes(spec, len(examples))  # the counts, by the rule the app's estimates use
    if n_dev == 0:
        return train, []
    chosen = set(_subsample_indices(len(examples), spec.train_samples, spec.seed))
    rest = [i for i in range(len(examples)) if i not in chosen]
    rng = random.Random(spec.seed * _DEV_SALT + 1)
    if len(rest) >= n_dev:
        return train, [examples[i] for i in sorted(rng.sample(rest, n_dev))]
    # too few left over: take the rest, then carve the remainder out of the subsample (which keeps half)
    need = n_dev - len(rest)
    carved = set(rng.sample(sorted(chosen), need)) if need > 0 else set()
    dev_idx = sorted(set(rest) | carved)
    return [examples[i] for i in sorted(chosen - carved)], [examples[i] for i in dev_idx]


def _subsample_indices(total: int, n: int, seed: int) -> list[int]:
    if not n or n >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), n))


def subsample(examples: list, n: int, seed: int) -> list:
    """n examples chosen by seed, kept in their original order; all of them when n is 0 or too large."""
    return [examples[i] for i in _subsample_indices(len(examples), n, seed)]


def render(template: str, text: str) -> str:
    return template.replace("{{", "\x00").replace("}}", "\x01").replace("{text}", text) \
        .replace("\x00", "{").replace("\x01", "}")


def tokenized(spec, family, tokenizer, examples: list[Example], with_targets: bool = True,
              cache_dir: Path | None = None) -> list[dict]:
    """Tokenize once per (data, tokenizer, lengths); later runs of a sweep read the cache."""
    sources = [render(spec.prompt_template, e.text) for e in examples]
    key = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(json.dumps([family.name, getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                             spec.max_source_length, spec.max_target_length, with_targets]).encode())
        for s, e in zip(sources, examples):
            h.update(s.encode() + b"\x1f" + e.target.encode() + b"\x1e")
        key = cache_dir / f"{h.hexdigest()[:24]}.json"
        if key.is_file():
            try:
                return json.loads(key.read_text())
            except (OSError, ValueError):
                pass  # a torn cache file is rebuilt below
    if with_targets:
        feats = family.encode(sources, [e.target for e in examples], tokenizer, spec.max_source_length,
                              spec.max_target_length)
    else:
        feats = family.encode_inputs(sources, tokenizer, spec.max_source_length)
    if key is not None:
        try:
            key.parent.mkdir(parents=True, exist_ok=True)
            tmp = key.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(feats))
            os.replace(tmp, key)
        except OSError:
            pass  # the cache is an optimisation; a read-only or full disk must not fail the run
    return feats


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, mega: int = 50) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), longest batch first to surface OOM early."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = batch_size * mega
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if not batches:
        return []
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length, longest first (deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
