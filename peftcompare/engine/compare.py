"""The Compare engine: one base model in memory, many adapters attached to it.

Zero-shot and every LoRA adapter answer in ONE batched call with per-row adapter selection (PEFT's
mixed-adapter batches: rows named "__base__" skip LoRA). Prompt-tuning and P-tuning adapters share a
second batched call: each row gets its own soft prompt prepended to its input embeddings, and the
base encoder runs once for all of them. Other methods attach to the same base one at a time:
prefix-tuning as a thin PeftModel wrapper, IA3/AdaLoRA injected and unloaded again, and methods that
change base weights (full, last_layers, bitfit) swap their tensors in and back out.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager, nullcontext

import torch

from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.core import methods, tasks
from peftcompare.engine import models, runtime
from peftcompare.core.spec import RunSpec
from peftcompare.engine.adapters import base_parameter, check_fits, read_adapter

MAX_COMPARE_CHARS = 20_000
ROWS_PER_BATCH = 64  # compare_many: rows (texts x columns) per batched call; the LoRA bank gathers A, B per row
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


def _serve(column: dict) -> str:
    """How the Compare engine serves a column (methods.SERVE_*)."""
    return methods.get_method(column["method"]).serve


_BANK_OFF = ("use_dora", "lora_bias", "modules_to_save", "fan_in_fan_out", "trainable_token_indices",
             "alora_invocation_tokens", "layer_replication", "target_parameters", "rank_pattern", "alpha_pattern")


class LoraBank:
    """Every loaded LoRA adapter, stacked per layer: one gathered matmul pair per adapted layer and call.

    PEFT's mixed-adapter batches loop over the adapters inside every LoRA layer (8 adapters x 48 layers
    of flan-t5-small = 384 small sub-batch products per decoder step, which took 2.2x the latency of a
    zero-shot call). Here each row's A and B are gathered once per comparison, and every adapted layer
    adds bmm(bmm(x, A_rows), B_rows) through a forward hook; the base model itself is never modified.
    """

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        self.adapters: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.stamps: dict[str, float] = {}
        self._cache: tuple | None = None  # (row names, {module: (A_rows, B_rows)})

    @staticmethod
    def supports(rec: dict) -> bool:
        cfg = json.loads((rec["_dir"] / "adapter_config.json").read_text())
        return cfg.get("peft_type") == "LORA" and not any(cfg.get(k) for k in _BANK_OFF)

    def add(self, name: str, rec: dict, stamp: float) -> None:
        from safetensors.torch import load_file

        if self.stamps.get(name) == stamp:
            return
        cfg = json.loads((rec["_dir"] / "adapter_config.json").read_text())
        tensors = load_file(str(rec["_weights"]), device=self.device)
        layers: dict[str, list] = {}
        for key, t in tensors.items():
            path = key.removeprefix("base_model.model.")
            for part in ("lora_A", "lora_B"):
                if f".{part}." in path:
                    layers.setdefault(path.split(f".{part}.")[0], [None, None])[part == "lora_B"] = t.float()
        bank = {}
        for path, (a, b) in layers.items():
            r = a.shape[0]
            scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
            bank[path] = (a.t().contiguous(), (b * scale).t().contiguous())  # [in, r], [r, out]
        self.adapters[name], self.stamps[name] = bank, stamp
        self._cache = None

    def _gathered(self, rows: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._cache is not None and self._cache[0] == rows:
            return self._cache[1]
        out = {}
        paths = {p for n in rows if n in self.adapters for p in self.adapters[n]}
        for path in paths:
            present = [self.adapters[n][path] for n in rows if n in self.adapters and path in self.adapters[n]]
            r = max(a.shape[1] for a, _ in present)
            fin, fout = present[0][0].shape[0], present[0][1].shape[1]
            a_rows = torch.zeros(len(rows), fin, r, device=self.device)
            b_rows = torch.zeros(len(rows), r, fout, device=self.device)
            for i, n in enumerate(rows):  # zero-shot rows and ranks below r stay zero: no update
                if n in self.adapters and path in self.adapters[n]:
                    a, b = self.adapters[n][path]
                    a_rows[i, :, : a.shape[1]], b_rows[i, : b.shape[0]] = a, b
            out[path] = (a_rows, b_rows)
        self._cache = (list(rows), out)
        return out

    @contextmanager
    def rows(self, rows: list[str]):
        """Within the block, row i of every batch gets adapter rows[i] (BASE: none)."""
        handles = []
        try:
            for path, (a_rows, b_rows) in self._gathered(rows).items():
                def hook(module, args, output, a_rows=a_rows, b_rows=b_rows):
                    delta = torch.bmm(torch.bmm(args[0], a_rows), b_rows)  # autocast picks the dtype
                    return output + delta.to(output.dtype)
                handles.append(self.model.get_submodule(path).register_forward_hook(hook))
            yield self.model
        finally:
            for h in handles:
                h.remove()


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
        from peft import PeftModel

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
        names = {r["_spec"].model_name for r in recs}
        if model_name:
            names.add(model_name)
        if len(names) > 1:
            raise ValueError(f"adapters were trained on different base models ({', '.join(sorted(names))}); "
                             "compare adapters of one base model at a time")
        task_names = {r["_spec"].task for r in recs} | ({task} if task else set())
        if len(task_names) > 1:
            raise ValueError("adapters of different tasks cannot share one comparison")
        task = task_names.pop() if task_names else RunSpec().task
        model_name = names.pop() if names else "builtin:tiny-t5"
        zs_spec = RunSpec(task=task, method=methods.BASELINE, model_name=model_name).resolved()
        if recs:  # the zero-shot column uses the adapters' template and lengths, so only the adapter differs
            s = recs[0]["_spec"]
            zs_spec = zs_spec.replace(dataset=s.dataset, prompt_template=s.prompt_template,
                                      max_source_length=s.max_source_length, max_target_length=s.max_target_length)
        label_words = recs[0].get("label_words") if recs else None
        if tasks.get_task(task).scores_labels and not label_words:
            label_words = list(tasks.get_dataset(zs_spec.dataset).label_names) or ["negative", "positive"]
        columns = [{"key": BASE, "label": "zero-shot", "spec": zs_spec, "method": methods.BASELINE}]
        for r in recs:
            s = r["_spec"]
            m = methods.get_method(s.method)
            columns.append({"key": r["run_id"], "label": f"{m.title} {s.capacity if m.capacity_name else ''} "
                            f"(seed {s.seed})".replace("  ", " "), "spec": s, "method": s.method, "rec": r})
        return {"task": task, "model_name": model_name, "recs": recs, "columns": columns, "zs_spec": zs_spec,
                "label_words": label_words}

    def _answers(self, plan: dict, texts: list[str], max_new: int, rows_per_batch: int = 0,
                 progress=None) -> dict[str, list[dict]]:
        """{column key: [its answer to each text]}. Zero-shot and the LoRA adapters share one batched call per
        batch of texts, soft prompts another, the other methods attach one at a time; a batch holds whole
        texts x the group's columns (rows_per_batch rows at most, at least one text)."""
        loaded = self._base(plan["model_name"])
        for r in plan["recs"]:  # refuse a mismatched adapter before any of them touches the shared base
            check_fits(r, loaded)
        columns, task, label_words = plan["columns"], plan["task"], plan["label_words"]
        total, done = len(texts) * len(columns), [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        def run(fwd, cols):
            return self._run_rows(fwd, cols, texts, task, label_words, max_new, rows_per_batch, tick)

        def fixed(model, kwargs=None):  # every batch on the same model
            return lambda keys: nullcontext((model, kwargs or {}))

        results: dict[str, list[dict]] = {}
        # injected adapters first: they unload LoRA, which the mixed batch below then reloads once
        for c in [c for c in columns if _serve(c) == methods.SERVE_PEFT]:
            self._drop_lora()
            from peft import PeftModel

            wrapped = PeftModel.from_pretrained(self._raw(), str(c["rec"]["_dir"])).eval()
            try:
                results.update(run(fixed(wrapped), [c]))
            finally:
                wrapped.unload()
        # zero-shot + every LoRA adapter: one mixed batch
        lora_cols = [c for c in columns if _serve(c) == methods.SERVE_LORA_BANK]
        group = [columns[0], *lora_cols]
        if lora_cols and self.lora_backend == "bank" and all(LoraBank.supports(c["rec"]) for c in lora_cols):
            if self.bank is None:
                self.bank = LoraBank(self._raw(), self.device)
            for c in lora_cols:
                self.bank.add(c["key"], c["rec"], self._stamp(c["rec"]))

            @contextmanager
            def banked(keys):
                with self.bank.rows(keys) as model:
                    yield model, {}
            with self._plain_base():
                results.update(run(banked, group))
        elif lora_cols:
            for c in lora_cols:
                self._ensure_lora(c["rec"])
            results.update(run(lambda keys: nullcontext((self.lora, {"adapter_names": keys})), group))
        else:
            with self._plain_base() as raw:
                results.update(run(fixed(raw), group))
        soft = [c for c in columns if _serve(c) == methods.SERVE_SOFT_PROMPT and self._groupable(c["rec"])]
        if soft:  # every soft-prompt adapter: one batch, one encoder pass
            with self._plain_base():
                results.update(self._run_soft_prompts(soft, texts, task, label_words, max_new, rows_per_batch,
                                                      tick))
        for c in [c for c in columns if _serve(c) in (methods.SERVE_SOFT_PROMPT, methods.SERVE_PREFIX)
                  and c["key"] not in results]:
            with self._plain_base() as raw:
                wrapped = self._prompt_model(raw, c["rec"])
                results.update(run(fixed(wrapped), [c]))
        for c in [c for c in columns if _serve(c) == methods.SERVE_SWAP]:
            with self._plain_base() as raw, self._swapped(raw, c["rec"]):
                results.update(run(fixed(raw), [c]))
        return results

    def compare(self, text: str, run_ids: list[str], task: str | None = None, model_name: str | None = None,
                reference: str | None = None, max_new_tokens: int | None = None) -> dict:
        text = (text or "").strip()
        if not text:
            raise ValueError("text: enter some text to compare")
        if len(text) > MAX_COMPARE_CHARS:
            raise ValueError(f"text: {len(text):,} characters is too long (at most {MAX_COMPARE_CHARS:,})")
        plan = self.plan(run_ids, task, model_name)
        task, model_name = plan["task"], plan["model_name"]
        results = self._answers(plan, [text], max_new_tokens or plan["zs_spec"].max_target_length)
        out_cols = []
        for c in plan["columns"]:
            r = results[c["key"]][0]
            col = {"key": c["key"], "label": c["label"], "method": c["method"], "output": r["output"],
                   "probability": r.get("probability"), "latency_ms": r["latency_ms"],
                   "batched_with": r.get("batched_with", 1)}
            if tasks.get_task(task).generates:
                col["words"] = len(r["output"].split())
                if reference:
                    col["rougeL"] = eval_mod.rouge([r["output"]], [reference])["rougeL"]
            elif reference:
                col["correct"] = r["output"] == reference
            out_cols.append(col)
        return {"task": task, "model_name": model_name, "text": text, "reference": reference,
                "columns": out_cols, "precision": self.precision, "device": self.device}

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
        columns = []
        for c in plan["columns"]:
            rows = results[c["key"]]
            columns.append({"key": c["key"], "label": c["label"], "method": c["method"],
                            "outputs": [r["output"] for r in rows],
                            "probabilities": [r.get("probability") for r in rows],
                            "distributions": [r.get("distribution") for r in rows]})
        return {"task": plan["task"], "model_name": plan["model_name"], "label_words": plan["label_words"],
                "columns": columns, "precision": self.precision, "device": self.device,
                "seconds": time.perf_counter() - t0}

    # -- prompt learning ----------------------------------------------------------------------------
    def _groupable(self, rec: dict) -> bool:
        cfg = json.loads((rec["_dir"] / "adapter_config.json").read_text())
        # two submodules would also prepend to the decoder; such (imported) adapters run one at a time
        return bool(self._raw().config.is_encoder_decoder) and cfg.get("num_transformer_submodules", 1) == 1

    def _soft_prompt(self, rec: dict) -> torch.Tensor:
        """[virtual tokens, d_model]: PEFT saves the prompt encoder's output, which is what it prepends."""
        from safetensors.torch import load_file

        key = (rec["run_id"], self._stamp(rec))
        if key not in self.soft_prompts:
            cfg = json.loads((rec["_dir"] / "adapter_config.json").read_text())
            emb = load_file(str(rec["_weights"]))["prompt_embeddings"]
            self.soft_prompts[key] = emb[: cfg["num_virtual_tokens"]].to(self.device)
        return self.soft_prompts[key]

    @torch.no_grad()
    def _run_soft_prompts(self, cols: list[dict], texts: list[str], task: str, label_words, max_new: int,
                          rows_per_batch: int = 0, tick=None) -> dict:
        from transformers.modeling_outputs import BaseModelOutput

        raw, fam, tok = self._raw(), self.loaded.family, self.loaded.tokenizer
        embed = raw.get_input_embeddings()
        feats = [fam.encode_inputs([data_mod.render(c["spec"].prompt_template, t) for t in texts], tok,
                                   c["spec"].max_source_length) for c in cols]
        prompts = [self._soft_prompt(c["rec"]) for c in cols]
        lengths = [max(len(f[i]["input_ids"]) + p.shape[0] for f, p in zip(feats, prompts))
                   for i in range(len(texts))]
        out: dict[str, list] = {c["key"]: [None] * len(texts) for c in cols}
        for idx in data_mod.sorted_batches(lengths, max(1, rows_per_batch // len(cols))):
            pairs = [(j, i) for i in idx for j in range(len(cols))]
            rows = []
            for j, i in pairs:
                tokens = embed(torch.tensor(feats[j][i]["input_ids"], device=self.device))
                rows.append(torch.cat([prompts[j].to(tokens.dtype), tokens], 0))
            width = max(r.shape[0] for r in rows)
            embeds = rows[0].new_zeros(len(rows), width, rows[0].shape[1])
            mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
            for k, r in enumerate(rows):  # prompt first, then the text, then padding (masked)
                embeds[k, : r.shape[0]], mask[k, : r.shape[0]] = r, 1
            t0 = time.perf_counter()
            with eval_mod.autocast(self.device, self.dtype):
                enc = BaseModelOutput(last_hidden_state=raw.get_encoder()(
                    inputs_embeds=embeds, attention_mask=mask, return_dict=True).last_hidden_state)
            # the decoder only needs the batch shape from input_ids once the encoder has run
            batch = {"input_ids": torch.full_like(mask, tok.pad_token_id), "attention_mask": mask}
            answers = self._answer(raw, batch, task, label_words, max_new, {"encoder_outputs": enc})
            ms = (time.perf_counter() - t0) * 1000
            for (j, i), a in zip(pairs, answers):
                out[cols[j]["key"]][i] = {**a, "latency_ms": ms, "batched_with": len(pairs)}
            if tick is not None:
                tick(len(pairs))
        return out

    def _prompt_model(self, raw, rec: dict):
        from peft import PeftModel

        return PeftModel.from_pretrained(raw, str(rec["_dir"])).eval()

    # -- weight-changing methods --------------------------------------------------------------------
    @contextmanager
    def _swapped(self, raw, rec: dict):
        from safetensors.torch import load_file

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

    # -- one batched call ---------------------------------------------------------------------------
    def _answer(self, model, batch: dict, task: str, label_words, max_new: int, kwargs: dict) -> list[dict]:
        fam, tok = self.loaded.family, self.loaded.tokenizer
        with eval_mod.autocast(self.device, self.dtype):
            if tasks.get_task(task).scores_labels:
                ids = eval_mod.label_token_ids(tok, label_words)
                p = torch.softmax(fam.label_logprobs(model, batch, ids, **kwargs).float(), -1)
                best = p.argmax(-1).tolist()
                dist = p.tolist()
                return [{"output": label_words[b], "probability": dist[i][b], "distribution": dist[i]}
                        for i, b in enumerate(best)]
            texts = fam.generate(model, batch, tok, max_new, **kwargs)
            return [{"output": t.strip()} for t in texts]

    @torch.no_grad()
    def _run_rows(self, fwd, cols: list[dict], texts: list[str], task: str, label_words, max_new: int,
                  rows_per_batch: int = 0, tick=None) -> dict:
        """Every column of cols answers every text. fwd(row keys) is a context giving (model, kwargs) for one
        batch whose row r belongs to column row_keys[r]; batches hold whole texts, longest first."""
        fam, tok = self.loaded.family, self.loaded.tokenizer
        feats = [fam.encode_inputs([data_mod.render(c["spec"].prompt_template, t) for t in texts], tok,
                                   c["spec"].max_source_length) for c in cols]
        lengths = [max(len(f[i]["input_ids"]) for f in feats) for i in range(len(texts))]
        out: dict[str, list] = {c["key"]: [None] * len(texts) for c in cols}
        for idx in data_mod.sorted_batches(lengths, max(1, rows_per_batch // len(cols))):
            pairs = [(j, i) for i in idx for j in range(len(cols))]
            batch = {k: v.to(self.device) for k, v in fam.collate([feats[j][i] for j, i in pairs], tok).items()}
            with fwd([cols[j]["key"] for j, _ in pairs]) as (model, kwargs):
                t0 = time.perf_counter()
                answers = self._answer(model, batch, task, label_words, max_new, kwargs)
                ms = (time.perf_counter() - t0) * 1000
            for (j, i), a in zip(pairs, answers):
                out[cols[j]["key"]][i] = {**a, "latency_ms": ms, "batched_with": len(pairs)}
            if tick is not None:
                tick(len(pairs))
        return out
