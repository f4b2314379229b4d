"""The Compare engine: one base model in memory, many adapters attached to it.

Zero-shot and every LoRA adapter answer in ONE batched call with per-row adapter selection (PEFT's
mixed-adapter batches). Prompt-tuning adapters share one batched call too (their soft prompts are
prepended to the embeddings row by row). Other methods attach to the same base one at a time; methods
that change base weights (full, last_layers, bitfit) swap their tensors in and back out.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from . import data as data_mod
from . import evaluate as eval_mod
from . import methods, models, runtime, tasks
from .spec import RunSpec

MAX_COMPARE_CHARS = 20_000
LORA_LIKE = {"lora"}
PROMPT_LIKE = {"prompt", "prefix", "ptuning"}
INJECTED = {"ia3", "adalora"}


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
    record["_spec"] = spec
    record["_dir"] = p
    return record


def load_adapter_model(path: str | Path):
    """A standalone model with the adapter applied (for scripts; the app uses CompareEngine)."""
    rec = read_adapter(path)
    spec = rec["_spec"]
    loaded = models.load_model(spec.model_name)
    if methods.get_method(spec.method).make_config is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(loaded.model, str(rec["_dir"]))
    from safetensors.torch import load_file

    loaded.model.load_state_dict(load_file(str(rec["_dir"] / "trainable.safetensors")), strict=False)
    return loaded.model


class CompareEngine:
    def __init__(self, store=None, device: str | None = None):
        self.store = store
        self.device = device or runtime.device_name()
        self.loaded: models.Loaded | None = None
        self.lora = None  # PeftModel holding every LoRA adapter loaded so far
        self.lora_names: set[str] = set()
        self.prompt_models: dict[str, object] = {}
        self.precision, self.dtype = runtime.resolve_precision("auto", self.device)

    # -- state --------------------------------------------------------------------------------------
    def _base(self, model_name: str) -> models.Loaded:
        if self.loaded is None or self.loaded.name != model_name:
            self.loaded, self.lora, self.lora_names, self.prompt_models = None, None, set(), {}
            if self.device == "cpu":
                runtime.configure_cpu()
            self.loaded = models.load_model(model_name, device=self.device)
            self.loaded.model.eval()
        return self.loaded

    def _raw(self):
        return self.loaded.model

    def _ensure_lora(self, rec: dict):
        from peft import PeftModel

        name = rec["run_id"]
        if name in self.lora_names:
            return
        if self.lora is None:
            self.lora = PeftModel.from_pretrained(self._raw(), str(rec["_dir"]), adapter_name=name)
        else:
            self.lora.load_adapter(str(rec["_dir"]), adapter_name=name)
        self.lora.eval()
        self.lora_names.add(name)

    @contextmanager
    def _plain_base(self):
        """The base model with LoRA layers switched off (for adapters of other kinds)."""
        with (self.lora.disable_adapter() if self.lora is not None else nullcontext()):
            yield self._raw()

    def _drop_lora(self):
        if self.lora is not None:
            self.lora.unload()
            self.lora, self.lora_names = None, set()

    def records(self, run_ids: list[str]) -> list[dict]:
        out = []
        for run_id in run_ids:
            run = self.store.get(run_id) if self.store else None
            if run is None:
                raise ValueError(f"run_id: no run {run_id}")
            if run["status"] != "completed" or not run.get("adapter_dir"):
                raise ValueError(f"run {run_id} has no adapter ({run['status']})")
            rec = read_adapter(self.store.adapter_path(run_id))
            rec["run_id"] = run_id
            out.append(rec)
        return out

    # -- the comparison -----------------------------------------------------------------------------
    def compare(self, text: str, run_ids: list[str], task: str | None = None, model_name: str | None = None,
                reference: str | None = None, max_new_tokens: int | None = None) -> dict:
        text = (text or "").strip()
        if not text:
            raise ValueError("text: enter some text to compare")
        if len(text) > MAX_COMPARE_CHARS:
            raise ValueError(f"text: {len(text):,} characters is too long (at most {MAX_COMPARE_CHARS:,})")
        recs = self.records(list(dict.fromkeys(run_ids)))
        names = {r["_spec"].model_name for r in recs}
        if model_name:
            names.add(model_name)
        if len(names) > 1:
            raise ValueError(f"adapters were trained on different base models ({', '.join(sorted(names))}); "
                             "compare adapters of one base model at a time")
        task_names = {r["_spec"].task for r in recs} | ({task} if task else set())
        if len(task_names) > 1:
            raise ValueError("adapters of different tasks cannot share one comparison")
        task = task_names.pop() if task_names else "classification"
        model_name = names.pop() if names else "builtin:tiny-t5"
        loaded = self._base(model_name)
        zs_spec = RunSpec(task=task, method="zero_shot", model_name=model_name).resolved()
        if recs:  # the zero-shot column uses the adapters' template and lengths, so only the adapter differs
            s = recs[0]["_spec"]
            zs_spec = zs_spec.replace(dataset=s.dataset, prompt_template=s.prompt_template,
                                      max_source_length=s.max_source_length, max_target_length=s.max_target_length)
        label_words = recs[0].get("label_words") if recs else None
        if task == "classification" and not label_words:
            label_words = list(tasks.get_dataset(zs_spec.dataset).label_names) or ["negative", "positive"]
        columns = [{"key": "__base__", "label": "zero-shot", "spec": zs_spec, "method": "zero_shot"}]
        for r in recs:
            s = r["_spec"]
            columns.append({"key": r["run_id"], "label": f"{methods.get_method(s.method).title} "
                            f"{s.capacity if methods.get_method(s.method).capacity_name else ''} (seed {s.seed})"
                            .replace("  ", " "), "spec": s, "method": s.method, "rec": r})
        max_new = max_new_tokens or zs_spec.max_target_length
        results: dict[str, dict] = {}
        # group 1: zero-shot + LoRA adapters in one mixed batch
        lora_cols = [c for c in columns if c["method"] in LORA_LIKE]
        for c in lora_cols:
            self._ensure_lora(c["rec"])
        group = [columns[0], *lora_cols]
        model = self.lora if lora_cols else self._raw()
        kwargs = {"adapter_names": [c["key"] for c in group]} if lora_cols else {}
        results.update(self._run_rows(model, group, text, task, label_words, max_new, kwargs))
        # group 2: prompt-learning adapters, each a thin wrapper around the same base
        for c in [c for c in columns if c["method"] in PROMPT_LIKE]:
            with self._plain_base():
                results.update(self._run_rows(self._prompt_model(c["rec"]), [c], text, task, label_words,
                                              max_new, {}))
        # group 3: injected adapters (IA3, AdaLoRA) and weight-changing methods, one at a time
        for c in [c for c in columns if c["method"] in INJECTED]:
            self._drop_lora()
            from peft import PeftModel

            wrapped = PeftModel.from_pretrained(self._raw(), str(c["rec"]["_dir"]))
            try:
                results.update(self._run_rows(wrapped, [c], text, task, label_words, max_new, {}))
            finally:
                wrapped.unload()
        for c in [c for c in columns if methods.get_method(c["method"]).prepare is not None]:
            with self._plain_base() as raw, self._swapped(raw, c["rec"]):
                results.update(self._run_rows(raw, [c], text, task, label_words, max_new, {}))
        out_cols = []
        for c in columns:
            r = results[c["key"]]
            col = {"key": c["key"], "label": c["label"], "method": c["method"], "output": r["output"],
                   "probability": r.get("probability"), "latency_ms": r["latency_ms"],
                   "batched_with": r.get("batched_with", 1)}
            if task == "summarization":
                col["words"] = len(r["output"].split())
                if reference:
                    col["rougeL"] = eval_mod.rouge([r["output"]], [reference])["rougeL"]
            elif reference:
                col["correct"] = r["output"] == reference
            out_cols.append(col)
        return {"task": task, "model_name": model_name, "text": text, "reference": reference,
                "columns": out_cols, "precision": self.precision, "device": self.device}

    def _prompt_model(self, rec: dict):
        from peft import PeftModel

        key = rec["run_id"]
        if key not in self.prompt_models:
            self.prompt_models[key] = PeftModel.from_pretrained(self._raw(), str(rec["_dir"])).eval()
        return self.prompt_models[key]

    @contextmanager
    def _swapped(self, raw, rec: dict):
        from safetensors.torch import load_file

        saved = load_file(str(rec["_dir"] / "trainable.safetensors"), device=self.device)
        params = dict(raw.named_parameters())
        unknown = [n for n in saved if n not in params]
        if unknown:
            raise ValueError(f"adapter: {rec['_dir'].name} does not fit {self.loaded.name} ({unknown[0]})")
        backup = {n: params[n].detach().clone() for n in saved}
        try:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)
            yield raw
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    params[n].copy_(t)

    @torch.no_grad()
    def _run_rows(self, model, cols: list[dict], text: str, task: str, label_words, max_new: int,
                  kwargs: dict) -> dict:
        fam, tok = self.loaded.family, self.loaded.tokenizer
        feats = [fam.encode_inputs([data_mod.render(c["spec"].prompt_template, text)], tok,
                                   c["spec"].max_source_length)[0] for c in cols]
        batch = {k: v.to(self.device) for k, v in fam.collate(feats, tok).items()}
        t0 = time.perf_counter()
        with eval_mod.autocast(self.device, self.dtype):
            if task == "classification":
                ids = eval_mod.label_token_ids(tok, label_words)
                p = torch.softmax(fam.label_logprobs(model, batch, ids, **kwargs).float(), -1)
                best = p.argmax(-1).tolist()
                outs = [{"output": label_words[b], "probability": float(p[i, b])} for i, b in enumerate(best)]
            else:
                texts = fam.generate(model, batch, tok, max_new, **kwargs)
                outs = [{"output": t.strip()} for t in texts]
        ms = (time.perf_counter() - t0) * 1000
        return {c["key"]: {**o, "latency_ms": ms, "batched_with": len(cols)} for c, o in zip(cols, outs)}
