"""The Compare engine: one base model in memory, many adapters attached to it.

Each column is served the way its method says (`Method.serve`), through one table serve -> group runner
(RUNNERS): zero-shot and every LoRA adapter answer in ONE batched call with per-row adapter selection (the
LoraBank, or PEFT's mixed-adapter batches); prompt-tuning and P-tuning adapters share a second batched call in
which each row gets its own soft prompt and the base encoder runs once for all of them; prefix-tuning runs as
a thin PeftModel wrapper, other PEFT adapters (IA3, AdaLoRA, ...) are injected and unloaded again, and methods
that change base weights (full, last_layers, bitfit) swap their tensors in and back out.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.modeling_outputs import BaseModelOutput

from peftcompare.core import methods, tasks
from peftcompare.core.labels import method_label
from peftcompare.core.spec import RunSpec
from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine import method_hooks, models, runtime
from peftcompare.engine.adapters import adapted_module, base_parameter, check_fits, read_adapter
from peftcompare.engine.lora_bank import LoraBank

MAX_COMPARE_CHARS = 20_000
ROWS_PER_BATCH = 64  # compare_many: rows (texts x columns) per batched call; the LoRA bank gathers A, B per row
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


def _serve(column: dict) -> str:
    """How the Compare engine serves a column (methods.SERVE_*)."""
    return methods.get_method(column["method"]).serve


@dataclass
class _Job:
    """One comparison's question: these texts, answered for this task; counts answers for progress."""
    texts: list[str]
    task: tasks.Task
    label_words: list[str] | None
    max_new: int
    rows_per_batch: int
    total: int
    progress: Callable[[int, int], None] | None = None
    done: int = 0

    def tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _fixed(model, kwargs: dict | None = None):
    """A row context for _run_rows that gives every batch the same model."""
    return lambda keys: nullcontext((model, kwargs or {}))


def _scatter(out: dict[str, list], cols: list[dict], pairs: list[tuple[int, int]], answers: list[dict],
             ms: float) -> None:
    """A batch's answers back to their columns: pair (j, i) is column j's answer to text i."""
    for (j, i), a in zip(pairs, answers):
        out[cols[j]["key"]][i] = {**a, "latency_ms": ms, "batched_with": len(pairs)}


def _checked_text(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise ValueError("text: enter some text to compare")
    if len(text) > MAX_COMPARE_CHARS:
        raise ValueError(f"text: {len(text):,} characters is too long (at most {MAX_COMPARE_CHARS:,})")
    return text


def _only(values: set, what: str) -> None:
    if len(values) > 1:
        raise ValueError(what)


def _zero_shot_spec(recs: list[dict], task: str, model_name: str) -> RunSpec:
    """The zero-shot column's spec: the adapters' template and lengths, so only the adapter differs."""
    spec = RunSpec(task=task, method=methods.BASELINE, model_name=model_name).resolved()
    if not recs:
        return spec
    s = recs[0]["_spec"]
    return spec.replace(dataset=s.dataset, prompt_template=s.prompt_template,
                        max_source_length=s.max_source_length, max_target_length=s.max_target_length)


def _label_words(recs: list[dict], task: str, zs_spec: RunSpec) -> list[str] | None:
    words = recs[0].get("label_words") if recs else None
    if tasks.get_task(task).scores_labels and not words:
        words = list(tasks.get_dataset(zs_spec.dataset).label_names) or ["negative", "positive"]
    return words


def _column(rec: dict) -> dict:
    s = rec["_spec"]
    label = f"{method_label(s.method, s.capacity)} (seed {s.seed})"
    return {"key": rec["run_id"], "label": label, "spec": s, "method": s.method, "rec": rec}


def _card(c: dict, r: dict, task: tasks.Task, reference: str | None) -> dict:
    """One column of compare(): its answer, and how it measures against the reference when there is one."""
    col = {"key": c["key"], "label": c["label"], "method": c["method"], "output": r["output"],
           "probability": r.get("probability"), "latency_ms": r["latency_ms"],
           "batched_with": r.get("batched_with", 1)}
    if task.generates:
        col["words"] = len(r["output"].split())
        if reference:
            col["rougeL"] = eval_mod.rouge([r["output"]], [reference])["rougeL"]
    elif reference:
        col["correct"] = r["output"] == reference
    return col


def _answer_lists(c: dict, rows: list[dict]) -> dict:
    """One column of compare_many(): its answers to every text."""
    return {"key": c["key"], "label": c["label"], "method": c["method"], "outputs": [r["output"] for r in rows],
            "probabilities": [r.get("probability") for r in rows],
            "distributions": [r.get("distribution") for r in rows]}


class CompareEngine:
    def __init__(self, store=None, device: str | None = None, precision: str = "auto", lora_backend: str = "bank"):
        """lora_backend: "bank" (gathered per-row LoRA, see LoraBank) or "peft" (PEFT's mixed-adapter batches,
        adapter_names=...); adapters the bank cannot hold (DoRA, modules_to_save, ...) always use PEFT."""
        if lora_backend not in ("bank", "peft"):
            raise ValueError("lora_backend: choose bank or peft")
        self.store, self.lora_backend = store, lora_backend
        self.bank: LoraBank | None = None
        self.device = device or runtime.device_name()
        self.loaded: models.Loaded | None = None
        self.lora = None  # PeftModel holding every LoRA adapter loaded so far
        self.lora_stamps: dict[str, float] = {}  # adapter name -> weights file mtime when loaded
        self.soft_prompts: dict[tuple[str, float], torch.Tensor] = {}
        self.precision, self.dtype = runtime.resolve_precision(precision, self.device)

    # -- state --------------------------------------------------------------------------------------
    def _base(self, model_name: str) -> models.Loaded:
        if self.loaded is None or self.loaded.name != model_name:
            self.loaded, self.lora, self.lora_stamps, self.soft_prompts, self.bank = None, None, {}, {}, None
            if self.device == "cpu":
                runtime.configure_cpu()
            self.loaded = models.load_model(model_name, device=self.device)
            self.loaded.model.eval()
        return self.loaded

    def _raw(self):
        return self.loaded.model

    @staticmethod
    def _stamp(rec: dict) -> float:
        return rec["_weights"].stat().st_mtime

    def _ensure_lora(self, rec: dict):
        name, stamp = rec["run_id"], self._stamp(rec)
        if self.lora_stamps.get(name) == stamp:
            return
        if name in self.lora_stamps:  # the run was replaced (re-import): reload it
            self.lora.delete_adapter(name)
            del self.lora_stamps[name]
        if self.lora is None:
            self.lora = PeftModel.from_pretrained(self._raw(), str(rec["_dir"]), adapter_name=name)
        else:
            self.lora.load_adapter(str(rec["_dir"]), adapter_name=name)
        self.lora.eval()
        self.lora_stamps[name] = stamp

    @contextmanager
    def _plain_base(self):
        """The base model with LoRA layers switched off (for adapters of other kinds)."""
        with (self.lora.disable_adapter() if self.lora is not None else nullcontext()):
            yield self._raw()

    def _drop_lora(self):
        """Injected adapters of another kind (IA3, AdaLoRA) cannot share layers with LoRA: unload it
        (the LoRA adapters reload from disk on the next comparison that needs them)."""
        if self.lora is not None:
            self.lora.unload()
            self.lora, self.lora_stamps = None, {}

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
    def plan(self, run_ids: list[str], task: str | None = None, model_name: str | None = None) -> dict:
        """The columns of a comparison, zero-shot first: adapters checked for one base model and one task.
        Loads nothing but the adapters' records."""
        recs = self.records(list(dict.fromkeys(run_ids)))
        names = {r["_spec"].model_name for r in recs} | ({model_name} if model_name else set())
        _only(names, f"adapters were trained on different base models ({', '.join(sorted(names))}); "
                     "compare adapters of one base model at a time")
        task_names = {r["_spec"].task for r in recs} | ({task} if task else set())
        _only(task_names, "adapters of different tasks cannot share one comparison")
        task = task_names.pop() if task_names else RunSpec().task
        model_name = names.pop() if names else "builtin:tiny-t5"
        zs_spec = _zero_shot_spec(recs, task, model_name)
        columns = [{"key": BASE, "label": "zero-shot", "spec": zs_spec, "method": methods.BASELINE}]
        return {"task": task, "model_name": model_name, "recs": recs, "columns": columns + [_column(r) for r in recs],
                "zs_spec": zs_spec, "label_words": _label_words(recs, task, zs_spec)}

    def _answers(self, plan: dict, texts: list[str], max_new: int, rows_per_batch: int = 0,
                 progress=None) -> dict[str, list[dict]]:
        """{column key: [its answer to each text]}: the columns grouped by how they are served, each group
        through its runner, in RUNNERS' order; a batch holds whole texts x the group's columns
        (rows_per_batch rows at most, at least one text)."""
        loaded = self._base(plan["model_name"])
        for r in plan["recs"]:  # refuse a mismatched adapter before any of them touches the shared base
            check_fits(r, loaded)
        job = _Job(texts, tasks.get_task(plan["task"]), plan["label_words"], max_new, rows_per_batch,
                   len(texts) * len(plan["columns"]), progress)
        groups: dict[Callable, list[dict]] = {}
        for c in plan["columns"]:
            groups.setdefault(RUNNERS[_serve(c)], []).append(c)
        results: dict[str, list[dict]] = {}
        for runner in dict.fromkeys(RUNNERS.values()):
            if runner in groups:
                results.update(runner(self, groups[runner], job))
        return results

    def compare(self, text: str, run_ids: list[str], task: str | None = None, model_name: str | None = None,
                reference: str | None = None, max_new_tokens: int | None = None) -> dict:
        text = _checked_text(text)
        plan = self.plan(run_ids, task, model_name)
        results = self._answers(plan, [text], max_new_tokens or plan["zs_spec"].max_target_length)
        t = tasks.get_task(plan["task"])
        columns = [_card(c, results[c["key"]][0], t, reference) for c in plan["columns"]]
        return {"task": plan["task"], "model_name": plan["model_name"], "text": text, "reference": reference,
                "columns": columns, "precision": self.precision, "device": self.device}

    def compare_many(self, texts: list[str], run_ids: list[str], task: str | None = None,
                     model_name: str | None = None, max_new_tokens: int | None = None,
                     rows_per_batch: int = ROWS_PER_BATCH, progress=None) -> dict:
        """Zero-shot and every adapter on many texts (the disagreement finder), through the same batched
        paths as compare(). Texts are rendered as they are (like evaluation, not stripped).
        progress(done, total) is called after every batch, counting answers (texts x columns)."""
        if not texts:
            raise ValueError("texts: give at least one text")
        plan = self.plan(run_ids, task, model_name)
        t0 = time.perf_counter()
        results = self._answers(plan, list(texts), max_new_tokens or plan["zs_spec"].max_target_length,
                                rows_per_batch, progress)
        return {"task": plan["task"], "model_name": plan["model_name"], "label_words": plan["label_words"],
                "columns": [_answer_lists(c, results[c["key"]]) for c in plan["columns"]],
                "precision": self.precision, "device": self.device, "seconds": time.perf_counter() - t0}

    # -- the group runners (RUNNERS): (columns of one kind, job) -> {column key: answers} ---------------
    def _run_injected(self, cols: list[dict], job: _Job) -> dict:
        """Other PEFT adapters one at a time, loaded onto the base and unloaded after. They run first: they
        unload LoRA, which the mixed batch then reloads once."""
        results = {}
        for c in cols:
            self._drop_lora()
            with self._layers_kept(c["rec"]):
                wrapped = self._load_injected(c["rec"])
                try:
                    results.update(self._run_rows(_fixed(wrapped), [c], job))
                finally:
                    wrapped.unload()
        return results

    def _load_injected(self, rec: dict):
        try:
            return PeftModel.from_pretrained(self._raw(), str(rec["_dir"])).eval()
        except (RuntimeError, ValueError, TypeError) as exc:
            # what check_fits cannot see without the weights (Method.reads_weights) fails here, possibly with
            # layers half-injected into the shared base: drop it, the next comparison loads it afresh
            self.loaded = None
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            why = next((line for line in lines if "size mismatch" in line), lines[0])[:200]
            raise ValueError(f"adapter: {rec['_dir'].name} does not fit {rec['_spec'].model_name} ({why})") from None

    @contextmanager
    def _layers_kept(self, rec: dict):
        """The base weights of the layers an adapter adapts, put back after its pass: PiSSA and OLoRA rewrite
        them when they load (PEFT re-derives their residual from the base), and unloading keeps the rewrite."""
        raw = self._raw()
        with safe_open(str(rec["_weights"]), "pt") as f:
            layers = {adapted_module(raw, k) for k in f.keys()} - {None, ""}
        kept = {f"{m}.{leaf}": p.detach().clone() for m in layers for leaf in ("weight", "bias")
                if (p := base_parameter(raw, f"{m}.{leaf}")) is not None}
        try:
            yield
        finally:
            if self.loaded is not None:
                with torch.no_grad():
                    for name, t in kept.items():
                        if (p := base_parameter(raw, name)) is not None:
                            p.copy_(t)

    def _run_mixed(self, cols: list[dict], job: _Job) -> dict:
        """Zero-shot and every LoRA adapter: one mixed batch, through the bank or PEFT's adapter_names."""
        lora = [c for c in cols if c["key"] != BASE]
        if not lora:
            with self._plain_base() as raw:
                return self._run_rows(_fixed(raw), cols, job)
        if self.lora_backend == "bank" and all(LoraBank.supports(c["rec"]) for c in lora):
            if self.bank is None:
                self.bank = LoraBank(self._raw(), self.device)
            for c in lora:
                self.bank.add(c["key"], c["rec"], self._stamp(c["rec"]))
            with self._plain_base():
                return self._run_rows(self._banked, cols, job)
        for c in lora:
            self._ensure_lora(c["rec"])
        return self._run_rows(lambda keys: nullcontext((self.lora, {"adapter_names": keys})), cols, job)

    @contextmanager
    def _banked(self, keys: list[str]):
        with self.bank.rows(keys) as model:
            yield model, {}

    def _run_soft_prompts(self, cols: list[dict], job: _Job) -> dict:
        """Soft prompts that only prepend to the encoder share one batch and one encoder pass; the others run
        one at a time."""
        shared = [c for c in cols if self._groupable(c["rec"])]
        results = {}
        if shared:
            with self._plain_base():
                results.update(self._run_prompt_batch(shared, job))
        results.update(self._run_wrapped([c for c in cols if c not in shared], job))
        return results

    def _run_wrapped(self, cols: list[dict], job: _Job) -> dict:
        """Prompt-learning adapters one at a time, each through a thin PeftModel wrapper of the plain base."""
        results = {}
        for c in cols:
            with self._plain_base() as raw:
                results.update(self._run_rows(_fixed(self._prompt_model(raw, c["rec"])), [c], job))
        return results

    def _run_swapped(self, cols: list[dict], job: _Job) -> dict:
        """Methods that change base weights, one at a time: their tensors swapped in, then back out."""
        results = {}
        for c in cols:
            spec = c["rec"]["_spec"]
            # a method with modules of its own (prefix_full) has them attached for its pass, then removed
            with self._plain_base() as raw, method_hooks.attached(methods.get_method(spec.method), raw, spec), \
                    self._swapped(raw, c["rec"]):
                results.update(self._run_rows(_fixed(raw), [c], job))
        return results

    # -- prompt learning ----------------------------------------------------------------------------
    def _groupable(self, rec: dict) -> bool:
        # two submodules would also prepend to the decoder; such (imported) adapters run one at a time
        return bool(self._raw().config.is_encoder_decoder) and rec["_config"].get("num_transformer_submodules", 1) == 1

    def _soft_prompt(self, rec: dict) -> torch.Tensor:
        """[virtual tokens, d_model]: PEFT saves the prompt encoder's output, which is what it prepends."""
        key = (rec["run_id"], self._stamp(rec))
        if key not in self.soft_prompts:
            emb = load_file(str(rec["_weights"]))["prompt_embeddings"]
            self.soft_prompts[key] = emb[: rec["_config"]["num_virtual_tokens"]].to(self.device)
        return self.soft_prompts[key]

    def _run_prompt_batch(self, cols: list[dict], job: _Job) -> dict:
        """Every column of cols answers every text; row k of a batch is its column's prompt, then its text."""
        raw, tok = self._raw(), self.loaded.tokenizer
        embed = raw.get_input_embeddings()
        feats = self._features(cols, job.texts)
        prompts = [self._soft_prompt(c["rec"]) for c in cols]
        lengths = [max(len(f[i]["input_ids"]) + p.shape[0] for f, p in zip(feats, prompts))
                   for i in range(len(job.texts))]

        def answer(pairs):
            rows = []
            for j, i in pairs:
                tokens = embed(torch.tensor(feats[j][i]["input_ids"], device=self.device))
                rows.append(torch.cat([prompts[j].to(tokens.dtype), tokens], 0))
            embeds, mask = self._padded(rows)
            t0 = time.perf_counter()
            with eval_mod.autocast(self.device, self.dtype):
                enc = BaseModelOutput(last_hidden_state=raw.get_encoder()(
                    inputs_embeds=embeds, attention_mask=mask, return_dict=True).last_hidden_state)
            # the decoder only needs the batch shape from input_ids once the encoder has run
            batch = {"input_ids": torch.full_like(mask, tok.pad_token_id), "attention_mask": mask}
            answers = self._answer(raw, batch, job, {"encoder_outputs": enc})
            return answers, (time.perf_counter() - t0) * 1000

        return self._each_batch(cols, job, lengths, answer)

    def _padded(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of embeddings as one right-padded batch and its attention mask (padding masked)."""
        width = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), width, rows[0].shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for k, r in enumerate(rows):
            embeds[k, : r.shape[0]], mask[k, : r.shape[0]] = r, 1
        return embeds, mask

    def _prompt_model(self, raw, rec: dict):
        return PeftModel.from_pretrained(raw, str(rec["_dir"])).eval()

    # -- weight-changing methods --------------------------------------------------------------------
    @contextmanager
    def _swapped(self, raw, rec: dict):
        saved = load_file(str(rec["_weights"]), device=self.device)
        params = {n: base_parameter(raw, n) for n in saved}
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

    # -- batched calls ------------------------------------------------------------------------------
    def _answer(self, model, batch: dict, job: _Job, kwargs: dict) -> list[dict]:
        """One batched call: the likeliest label and its probabilities, or the generated text, per row."""
        fam, tok = self.loaded.family, self.loaded.tokenizer
        with eval_mod.autocast(self.device, self.dtype):
            if job.task.scores_labels:
                ids = eval_mod.label_token_ids(tok, job.label_words)
                p = torch.softmax(fam.label_logprobs(model, batch, ids, **kwargs).float(), -1)
                best, dist = p.argmax(-1).tolist(), p.tolist()
                return [{"output": job.label_words[b], "probability": dist[i][b], "distribution": dist[i]}
                        for i, b in enumerate(best)]
            texts = fam.generate(model, batch, tok, job.max_new, **kwargs)
            return [{"output": t.strip()} for t in texts]

    def _features(self, cols: list[dict], texts: list[str]) -> list[list[dict]]:
        """Each column's tokenized prompts of every text (columns may differ in template and length)."""
        fam, tok = self.loaded.family, self.loaded.tokenizer
        return [fam.encode_inputs([data_mod.render(c["spec"].prompt_template, t) for t in texts], tok,
                                  c["spec"].max_source_length) for c in cols]

    def _run_rows(self, fwd, cols: list[dict], job: _Job) -> dict:
        """Every column of cols answers every text. fwd(row keys) is a context giving (model, kwargs) for one
        batch whose row r belongs to column row_keys[r]."""
        fam, tok = self.loaded.family, self.loaded.tokenizer
        feats = self._features(cols, job.texts)
        lengths = [max(len(f[i]["input_ids"]) for f in feats) for i in range(len(job.texts))]

        def answer(pairs):
            batch = {k: v.to(self.device) for k, v in fam.collate([feats[j][i] for j, i in pairs], tok).items()}
            with fwd([cols[j]["key"] for j, _ in pairs]) as (model, kwargs):
                t0 = time.perf_counter()
                answers = self._answer(model, batch, job, kwargs)
                return answers, (time.perf_counter() - t0) * 1000

        return self._each_batch(cols, job, lengths, answer)

    @torch.no_grad()
    def _each_batch(self, cols: list[dict], job: _Job, lengths: list[int], answer) -> dict:
        """The batching both batched paths share: whole texts per batch, longest first; answer(pairs) gives
        (answers, milliseconds) for the (column j, text i) pairs of one batch."""
        out: dict[str, list] = {c["key"]: [None] * len(job.texts) for c in cols}
        for idx in data_mod.sorted_batches(lengths, max(1, job.rows_per_batch // len(cols))):
            pairs = [(j, i) for i in idx for j in range(len(cols))]
            answers, ms = answer(pairs)
            _scatter(out, cols, pairs, answers, ms)
            job.tick(len(pairs))
        return out


# how each kind of column is served, in the order the groups run (see _run_injected); a method registered with
# an existing SERVE_* needs no change here. Zero-shot rides in the LoRA group's mixed batch.
RUNNERS: dict[str, Callable[[CompareEngine, list[dict], _Job], dict]] = {
    methods.SERVE_PEFT: CompareEngine._run_injected,
    methods.SERVE_NONE: CompareEngine._run_mixed,
    methods.SERVE_LORA_BANK: CompareEngine._run_mixed,
    methods.SERVE_SOFT_PROMPT: CompareEngine._run_soft_prompts,
    methods.SERVE_PREFIX: CompareEngine._run_wrapped,
    methods.SERVE_SWAP: CompareEngine._run_swapped,
}
