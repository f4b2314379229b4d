"""The on-disk adapter contract, writer and reader side by side.

An adapter directory holds `run.json` (the run's record and spec), a model card `README.md`, and either PEFT's
`adapter_config.json` + `adapter_model.safetensors` (methods with a PEFT config) or `trainable.safetensors`
(the trained tensors of methods that change base weights). `save_adapter` writes it; `read_adapter` parses and
validates it into the record the engine uses (the only reader of run.json and adapter_config.json);
`adapter_problems` lists what is wrong without raising; `load_adapter_model` and `check_fits` put it back onto
a base model. Torch-free at import: the integrity check reads adapters without loading any.
"""
from __future__ import annotations

import json
import math
import struct
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.engine import method_hooks

if TYPE_CHECKING:  # models imports torch; this module stays torch-free for service.integrity
    from peftcompare.engine import models

RUN_FILE = "run.json"
CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"  # methods with a PEFT config
SWAP_WEIGHTS = "trainable.safetensors"  # methods that change base weights
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # formats that can execute code on load
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20
PEFT_PREFIX = "base_model.model."  # PEFT's name for the wrapped model in a saved state dict
KV_PROMPTS = ("PREFIX_TUNING", "CARTRIDGE")  # prompt learning stored as keys and values of every layer


# -- writer ------------------------------------------------------------------------------------------
def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, spec: RunSpec, out: Path, record: dict, adapter_name: str | None = None) -> None:
    """PEFT adapters via save_pretrained; other methods save their trainable tensors as safetensors.
    `adapter_name`: the one adapter of a model that holds several (a LoRA pack) to save, as a plain adapter
    that `PeftModel.from_pretrained` loads like any other."""
    method = methods.get_method(spec.method)
    if method.make_config is not None and adapter_name is not None:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(dir=out) as tmp:  # PEFT writes a named adapter into a subfolder
            model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[adapter_name])
            for f in (Path(tmp) / adapter_name).iterdir():
                shutil.move(str(f), str(out / f.name))
    elif method.make_config is not None:
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        from safetensors.torch import save_file


        method_hooks.merge(method, model)  # a prefix trained through an MLP is saved as its output
        state = {n: t.contiguous() for n, t in trainable_state(model).items()}
        save_file(state, str(out / SWAP_WEIGHTS), metadata={"method": spec.method})
    (out / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    (out / "README.md").write_text(model_card(spec, record))


def model_card(spec: RunSpec, record: dict) -> str:
    m = methods.get_method(spec.method)
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if not k.startswith("_")}
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    load = ("from peft import PeftModel\nfrom peftcompare.engine.models import load_model\n"
            f"base = load_model({spec.model_name!r}).model\nmodel = PeftModel.from_pretrained(base, 'adapters/"
            f"{record['run_id']}')" if m.make_config is not None else
            "from peftcompare.engine.adapters import load_adapter_model\nmodel = load_adapter_model('adapters/"
            f"{record['run_id']}')")
    return f"""---
base_model: {spec.model_name}
library_name: {'peft' if m.make_config is not None else 'transformers'}
tags: [peftcompare, {spec.method}, {spec.task}]
---
# {m.title}{f' ({m.capacity_name} = {spec.capacity})' if m.capacity_name else ''} on {spec.dataset}

Trained by peftcompare run `{record['run_id']}` on `{spec.model_name}`: {spec.train_samples or 'all'} training
examples, {spec.num_train_epochs} epochs, learning rate {spec.learning_rate}, batch {spec.per_device_train_batch_size},
seed {spec.seed}, precision {record.get('precision')}. Best epoch: {record.get('best_epoch')}, chosen on the
{(record.get('selection') or {}).get('on', spec.selection)} split{
    " (the original experiment's protocol: optimistic)" if spec.selection == "validation" else
    " carved from the training data; the metrics below are the validation split's, scored once"}.
Trainable parameters: {record.get('trainable_params'):,} of {record.get('total_params'):,}.
Data: {record.get('data_source')} (fingerprint `{record.get('data_fingerprint')}`).
{"".join(f"Note: {n}." + chr(10) for n in record.get("notes") or [])}
| metric | value |
|---|---|
{rows}

```python
{load}
```

The full spec, library versions and per-epoch metrics are in `run.json`.
"""


# -- reader ------------------------------------------------------------------------------------------
def weights_file(method: methods.Method) -> str:
    return PEFT_WEIGHTS if method.make_config is not None else SWAP_WEIGHTS


def stored_params(adapter_dir: str | Path) -> int:
    """Tensor elements in an adapter's weights files (header only). It can differ from the trainable count:
    VeRA and RandLoRA store their shared random projections, SHiRA its indices, P-tuning the prompt its
    encoder produced, PiSSA-style methods nothing they re-derive from the base."""
    total = 0
    for f in sorted(Path(adapter_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        total += sum(math.prod(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def peft_config(path: str | Path) -> dict:
    """adapter_config.json of an adapter directory, parsed: the one place that opens it. ValueError naming
    what is wrong."""
    try:
        cfg = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except OSError:
        raise ValueError(f"no {CONFIG_FILE} (incomplete adapter)") from None
    except ValueError:
        raise ValueError(f"{CONFIG_FILE} is corrupt") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{CONFIG_FILE} is corrupt")
    return cfg


def _parse(p: Path) -> dict:
    """run.json (and adapter_config.json where the method has one) parsed into the record the engine uses:
    run.json's fields plus _spec, _config ({} without a PEFT config), _dir and _weights. ValueError naming
    the first thing wrong; the weights are not opened."""
    if not (p / RUN_FILE).is_file():
        raise ValueError(f"no {RUN_FILE} (incomplete or not made by peftcompare)")
    try:
        record = json.loads((p / RUN_FILE).read_text(encoding="utf-8"))
        spec = RunSpec.from_dict(record["spec"])
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ValueError(f"{RUN_FILE} is corrupt ({why})") from None
    method = methods.get_method(spec.method)
    config = peft_config(p) if method.make_config is not None else {}
    return {**record, "_spec": spec, "_config": config, "_dir": p, "_weights": p / weights_file(method)}


def _file_problems(p: Path) -> list[str]:
    """Files that are never loaded: links (they may point outside the store) and pickles (they run code)."""
    out = []
    for f in p.rglob("*"):
        if f.is_symlink():
            out.append(f"{f.relative_to(p)} is a symbolic link")
        elif f.suffix.lower() in PICKLE_SUFFIXES:
            out.append(f"{f.relative_to(p)} is a pickle file (only safetensors are loaded)")
    return out


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (None when its header and sizes add up). Reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated (no header)"
            n = struct.unpack("<Q", head)[0]
            if n > MAX_HEADER_BYTES or 8 + n > size:
                return f"{path.name} is truncated or not a safetensors file"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name} has an unreadable header ({type(exc).__name__})"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            b, e = info["data_offsets"]
            want = math.prod(int(d) for d in info["shape"]) * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            return f"{path.name}: tensor {name} has a bad header entry"
        if not (isinstance(b, int) and isinstance(e, int)) or e - b != want or b < 0:
            return f"{path.name}: tensor {name} has inconsistent offsets"
        end = max(end, e)
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} bytes, header says {8 + n + end})"
    return None


def _weights_problem(weights: Path) -> str | None:
    return f"no {weights.name} (incomplete adapter)" if not weights.is_file() else safetensors_problem(weights)


def adapter_problems(path: str | Path, run_id: str | None = None) -> list[str]:
    """Everything wrong with one adapter directory: metadata, weights, pickles, links. Opens no weights."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return [f"{p.name} is not a directory"]
    out = _file_problems(p)
    try:
        record = _parse(p)
    except ValueError as exc:
        return out + [str(exc)]
    if run_id is not None and record.get("run_id") != run_id:
        out.append(f"{RUN_FILE} belongs to run {record.get('run_id')!r}")
    bad = _weights_problem(record["_weights"])
    return out + ([bad] if bad else [])


def read_adapter(path: str | Path) -> dict:
    """The record of an adapter directory (see _parse), validated; ValueError naming what is wrong. Missing
    files are named before pickles and links, so an adapter saved as a pickle only says what it lacks."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"adapter: {p.name} does not exist")
    try:
        record = _parse(p)
        if not record["_weights"].is_file():
            raise ValueError(f"no {record['_weights'].name} (incomplete adapter)")
    except ValueError as exc:
        raise ValueError(f"adapter: {p.name}: {exc}") from None
    problems = _file_problems(p) + [w for w in [safetensors_problem(record["_weights"])] if w]
    if problems:
        raise ValueError(f"adapter: {p.name}: {problems[0]}")
    return record


def load_adapter_model(path: str | Path):
    """A standalone model with the adapter applied (for scripts; the app uses CompareEngine)."""
    from peftcompare.engine import (
        models,  # lazily: this module stays torch-free for service.integrity
    )

    rec = read_adapter(path)
    loaded = models.load_model(rec["_spec"].model_name)
    check_fits(rec, loaded)
    if methods.get_method(rec["_spec"].method).make_config is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(loaded.model, str(rec["_dir"]))
    from safetensors.torch import load_file


    method_hooks.attach(methods.get_method(rec["_spec"].method), loaded.model, rec["_spec"])  # its modules first
    loaded.model.load_state_dict(load_file(str(rec["_weights"])), strict=False)
    return loaded.model


# -- fitting an adapter onto a base model --------------------------------------------------------------------
def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _features(module) -> tuple[int | None, int | None]:
    module = getattr(module, "base_layer", module)  # a layer PEFT has wrapped already
    if hasattr(module, "nx") and hasattr(module, "nf"):  # GPT-2's Conv1D stores its weight as (in, out)
        return module.nx, module.nf
    w = getattr(module, "weight", None)
    return (getattr(module, "in_features", None) or (w.shape[1] if w is not None and w.dim() == 2 else None),
            getattr(module, "out_features", None) or (w.shape[0] if w is not None and w.dim() == 2 else None))


def base_parameter(model, name: str):
    """The base model's parameter `name`, also when PEFT has wrapped its layer (q -> q.base_layer)."""
    import torch

    path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return None
    module = getattr(module, "base_layer", module)
    p = getattr(module, leaf, None)
    return p if isinstance(p, torch.nn.Parameter) else None


def _misfit(rec: dict, loaded: models.Loaded, why: str) -> ValueError:
    return ValueError(f"adapter: {rec['_dir'].name} was made for another base model than {loaded.name} ({why})")


def _wrong_shape(rec: dict, loaded: models.Loaded, what: str, got, need) -> ValueError:
    return _misfit(rec, loaded, f"{what} has shape {tuple(got)}, {loaded.name} needs {tuple(need)}")


def check_fits(rec: dict, loaded: models.Loaded) -> None:
    """ValueError unless the adapter's tensors fit this base model (checked before anything is attached:
    a failed PEFT load would leave half-injected layers in the shared base)."""
    shapes = _shapes(rec["_weights"])
    if methods.get_method(rec["_spec"].method).make_config is None:
        _check_swapped(rec, loaded, shapes)
    elif "prompt_embeddings" in shapes:
        _check_prompt(rec, loaded, shapes["prompt_embeddings"])
    else:
        _check_injected(rec, loaded, shapes)


def _check_swapped(rec: dict, loaded: models.Loaded, shapes: dict) -> None:
    """Swapped-in tensors: each names a base parameter of the same shape (with the method's own modules in
    place for the check, e.g. prefix_full's prefixes, and taken out again after it)."""

    spec = rec["_spec"]
    with method_hooks.attached(methods.get_method(spec.method), loaded.model, spec):
        for key, shape in shapes.items():
            param = base_parameter(loaded.model, key)
            if param is None:
                raise _misfit(rec, loaded, f"it has no parameter {key}")
            if tuple(param.shape) != shape:
                raise _wrong_shape(rec, loaded, key, shape, param.shape)


def _check_prompt(rec: dict, loaded: models.Loaded, shape: tuple) -> None:
    """A soft prompt's width is the embedding width; a prefix's is keys and values of every layer."""
    if rec["_config"].get("peft_type") in KV_PROMPTS:
        heads, head_dim, layers = loaded.family.attention_geometry(loaded.model.config)
        need = 2 * layers * heads * head_dim
    else:
        need = loaded.model.get_input_embeddings().weight.shape[1]
    if shape[-1] != need:
        raise _wrong_shape(rec, loaded, "prompt_embeddings", shape, (shape[0], need))


def adapted_module(model, key: str) -> str | None:
    """The module of `model` a saved PEFT tensor belongs to: the longest prefix of its name (PEFT_PREFIX
    removed) that names a module ('' for the model itself); None for a tensor outside the wrapped model
    (a basis or vector PEFT shares across layers, e.g. FRoD's, Uni-LoRA's)."""
    if not key.startswith(PEFT_PREFIX):
        return None
    parts = key[len(PEFT_PREFIX):].split(".")
    names = _module_names(model)
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in names:
            return ".".join(parts[:end])
    return ""


def _module_names(model) -> set[str]:
    return {n for n, _ in model.named_modules()}


def _check_injected(rec: dict, loaded: models.Loaded, shapes: dict) -> None:
    """Tensors injected into named layers: each names a layer of this model; LoRA/AdaLoRA/IA3 factors have
    the features of the layer they multiply, and every other tensor the shape the adapter's method gives
    this model (its config applied to a shapes-only copy, `_expected_shapes`)."""
    for key in shapes:
        if adapted_module(loaded.model, key) == "":
            raise _misfit(rec, loaded, f"it has no layer for {key}")
    markers = (".lora_A", ".lora_B", ".lora_E", ".ia3_l")
    try:  # built only for tensors the markers below do not cover (not for plain LoRA or IA3)
        expected = (None if all(any(m in k for m in markers) for k in shapes) else _expected_shapes(rec, loaded))
    except (TypeError, RuntimeError, NotImplementedError, ValueError) as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _misfit(rec, loaded, f"its method cannot be applied to it: {why}") from None
    for key, shape in shapes.items():
        path = key.removeprefix(PEFT_PREFIX)
        for marker in markers:
            if marker in path:
                path, part = path.split(marker, 1)[0], marker
                break
        else:  # AdaLoRA's pruned ranks differ from a fresh config's; the others are compared whole
            if expected is not None and key in expected and tuple(expected[key]) != tuple(shape):
                raise _wrong_shape(rec, loaded, key, shape, expected[key])
            continue
        try:
            module = loaded.model.get_submodule(path)
        except AttributeError:
            raise _misfit(rec, loaded, f"no module {path}") from None
        fin, fout = _features(module)
        if part == ".lora_A" and fin is not None and shape[-1] != fin:
            raise _wrong_shape(rec, loaded, key, shape, (shape[0], fin))
        if part == ".lora_B" and fout is not None and shape[0] != fout:
            raise _wrong_shape(rec, loaded, key, shape, (fout, shape[-1]))
        if part == ".ia3_l" and fin is not None and max(shape) not in (fin, fout):
            raise _wrong_shape(rec, loaded, key, shape, (fout, 1))


def _expected_shapes(rec: dict, loaded: models.Loaded) -> dict[str, tuple[int, ...]] | None:
    """The saved tensors' shapes the adapter's method gives this base model; None for a method that needs the
    weights to be built (Method.reads_weights: only its layers' names are checked)."""
    spec = rec["_spec"]
    if methods.get_method(spec.method).reads_weights:
        return None
    return _shapes_for(loaded.name, spec, tuple(rec.get("label_words") or ()))


@lru_cache(maxsize=32)
def _shapes_for(model_name: str, spec: RunSpec, label_words: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from peft import get_peft_model, get_peft_model_state_dict

    from peftcompare.engine import models  # lazily: this module stays torch-free for service.integrity

    meta = models.load_model(model_name, meta=True)
    if label_words and hasattr(meta.family, "attach_labels"):  # an encoder's head is sized by the labels
        meta.family.attach_labels(meta, list(label_words))
    config = methods.get_method(spec.method).make_config(spec, meta.model, meta.tokenizer, meta.family,
                                                         total_steps=100)
    model = get_peft_model(meta.model, config)
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
