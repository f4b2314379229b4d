"""The on-disk adapter contract, writer and reader side by side.

An adapter directory holds `run.json` (the run's record and spec), a model card `README.md`, and either PEFT's
`adapter_config.json` + `adapter_model.safetensors` (methods with a PEFT config) or `trainable.safetensors`
(the trained tensors of methods that change base weights). `save_adapter` writes it; `read_adapter` validates
it; `load_adapter_model` and `check_fits` put it back onto a base model.
"""
from __future__ import annotations

import json
from pathlib import Path

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.engine import models


# -- writer ------------------------------------------------------------------------------------------
def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, spec: RunSpec, out: Path, record: dict) -> None:
    """PEFT adapters via save_pretrained; other methods save their trainable tensors as safetensors."""
    method = methods.get_method(spec.method)
    if method.make_config is not None:
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        from safetensors.torch import save_file

        state = {n: t.contiguous() for n, t in trainable_state(model).items()}
        save_file(state, str(out / "trainable.safetensors"), metadata={"method": spec.method})
    (out / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
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
seed {spec.seed}, precision {record.get('precision')}. Best epoch: {record.get('best_epoch')}.
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
def read_adapter(path: str | Path) -> dict:
    """run.json of an adapter directory, validated; ValueError naming what is wrong."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"adapter: {p.name} does not exist")
    meta = p / "run.json"
    if not meta.is_file():
        raise ValueError(f"adapter: {p.name} has no run.json (incomplete or not made by peftcompare)")
    try:
        record = json.loads(meta.read_text())
        spec = RunSpec.from_dict(record["spec"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"adapter: {p.name}/run.json is corrupt ({str(exc).splitlines()[0][:120]})") from None
    m = methods.get_method(spec.method)
    weights = "adapter_model.safetensors" if m.make_config is not None else "trainable.safetensors"
    if not (p / weights).is_file():
        raise ValueError(f"adapter: {p.name} has no {weights} (incomplete adapter)")
    if m.make_config is not None and not (p / "adapter_config.json").is_file():
        raise ValueError(f"adapter: {p.name} has no adapter_config.json (incomplete adapter)")
    from peftcompare.service.integrity import adapter_problems

    problems = adapter_problems(p)  # pickles (never loaded), links, truncated or malformed safetensors
    if problems:
        raise ValueError(f"adapter: {p.name}: {problems[0]}")
    record["_spec"] = spec
    record["_dir"] = p
    record["_weights"] = p / weights
    return record


def load_adapter_model(path: str | Path):
    """A standalone model with the adapter applied (for scripts; the app uses CompareEngine)."""
    rec = read_adapter(path)
    spec = rec["_spec"]
    loaded = models.load_model(spec.model_name)
    check_fits(rec, loaded)
    if methods.get_method(spec.method).make_config is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(loaded.model, str(rec["_dir"]))
    from safetensors.torch import load_file

    loaded.model.load_state_dict(load_file(str(rec["_weights"])), strict=False)
    return loaded.model


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
    path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return None
    module = getattr(module, "base_layer", module)
    p = getattr(module, leaf, None)
    import torch

    return p if isinstance(p, torch.nn.Parameter) else None


def check_fits(rec: dict, loaded: models.Loaded) -> None:
    """ValueError unless the adapter's tensors fit this base model (checked before anything is attached:
    a failed PEFT load would leave half-injected layers in the shared base)."""
    spec, model = rec["_spec"], loaded.model
    name = rec["_dir"].name

    def refuse(what: str, got, need):
        raise ValueError(f"adapter: {name} was made for another base model than {loaded.name} "
                         f"({what} has shape {tuple(got)}, {loaded.name} needs {tuple(need)})")

    shapes = _shapes(rec["_weights"])
    if methods.get_method(spec.method).make_config is None:
        for key, shape in shapes.items():
            param = base_parameter(model, key)
            if param is None:
                raise ValueError(f"adapter: {name} was made for another base model than {loaded.name} "
                                 f"(it has no parameter {key})")
            if tuple(param.shape) != shape:
                refuse(key, shape, param.shape)
        return
    cfg = json.loads((rec["_dir"] / "adapter_config.json").read_text())
    if "prompt_embeddings" in shapes:
        shape = shapes["prompt_embeddings"]
        if cfg.get("peft_type") == "PREFIX_TUNING":
            heads, head_dim, layers = loaded.family.attention_geometry(model.config)
            need = 2 * layers * heads * head_dim
        else:
            need = model.get_input_embeddings().weight.shape[1]
        if shape[-1] != need:
            refuse("prompt_embeddings", shape, (shape[0], need))
        return
    for key, shape in shapes.items():
        path = key.removeprefix("base_model.model.")
        for marker in (".lora_A", ".lora_B", ".lora_E", ".ia3_l"):
            if marker in path:
                path, part = path.split(marker, 1)[0], marker
                break
        else:
            continue
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"adapter: {name} was made for another base model than {loaded.name} "
                             f"(no module {path})") from None
        fin, fout = _features(module)
        if part == ".lora_A" and fin is not None and shape[-1] != fin:
            refuse(key, shape, (shape[0], fin))
        if part == ".lora_B" and fout is not None and shape[0] != fout:
            refuse(key, shape, (fout, shape[-1]))
        if part == ".ia3_l" and fin is not None and max(shape) not in (fin, fout):
            refuse(key, shape, (fout, 1))


# a LoRA adapter the bank can hold: plain low-rank updates on linear layers, nothing else
