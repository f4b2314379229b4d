"""Packed training: several runs of a sweep, sharing one frozen base model, train in one pass over it.

On two CPU cores a flan-t5-small LoRA step is mostly per-operator overhead at ~20 tokens an example: the
matrices are too small to keep the cores busy. K runs that share the base model, the task, the data and the
max lengths can stack their batches into one forward/backward through the frozen base instead, each run's
adapter applied to its own rows:

- LoRA (and rsLoRA, PiSSA, OLoRA: the same forward): every adapter lives in one PEFT model (`add_adapter`),
  and each adapted Linear adds, for each run's block of rows, that run's B(A(dropout(x))) * scaling. The
  base matmul runs once for all K batches.
- Prompt tuning: each run's virtual tokens are prepended to its own rows; shorter prompts are padded on the
  LEFT with masked positions, so the distance between a prompt token and a text token is what it is alone
  (T5's attention bias is relative: the encoder sees exactly the solo run's arrangement).
- Prefix tuning (prefixes of one length): one run's PEFT model answers the whole batch, and its prefix encoder,
  asked for the batch's prefixes, returns each run's own on that run's rows; PEFT turns them into the decoder's
  cache and extends the masks as it does for one run.

Each run keeps its own data order and subsample (its seed), its own initialisation (drawn under its own seed
before its adapter exists, as a solo run draws it), its own loss (the mean over its own target tokens: the
sum of the K losses gives every adapter exactly the gradient it gets alone), gradient clipping, optimizer and
schedule. Dropout: every row gets its own mask from the shared stream; with dropout active a packed run is a
different (equally valid) draw than the run alone, without dropout it equals the run alone up to the rounding
of bigger matmuls (tests/test_packing.py: fp32 to 1e-5).

Evaluation is packed the same way: after every epoch the runs' selection splits (each its own dev split, or the
validation split) go through one forward per batch, batch i of every run stacked, each run's adapter on its own
rows; label scoring, the dev loss, and greedy generation with the KV cache alike (a greedy batch keeps its rows in
place, so every decoding step routes each row through its own run's adapter). So does the final pass on each
run's chosen state. Should a packed pass fail (a bigger batch is a bigger allocation), each run evaluates alone.
"""
from __future__ import annotations

import time
import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from peftcompare.core.methods import PACK_LORA, PACK_PREFIX
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine.families.base import IGNORE_INDEX


@dataclass(frozen=True)
class Block:
    """Rows start:stop of a packed batch belong to run `name` (stop None: to the end of the batch)."""
    name: str
    start: int
    stop: int | None


class Layout:
    """Which rows belong to which run, read by every patched layer during one forward pass."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    @contextmanager
    def rows(self, blocks: list[Block]):
        saved, self.blocks = self.blocks, blocks
        try:
            yield
        finally:
            self.blocks = saved

    def only(self, name: str):
        """Every row of the batch belongs to `name` (one run evaluated on its own)."""
        return self.rows([Block(name, 0, None)])


# -- LoRA: per-block adapters in every adapted Linear ----------------------------------------------------
def _lora_forward(layout: Layout):
    def forward(self, x, *args, **kwargs):
        result = self.base_layer(x, *args, **kwargs)
        if not layout.blocks:
            raise RuntimeError("packed LoRA layer called outside a row layout")
        if _stackable(layout.blocks, x):
            return _lora_stacked(self, layout.blocks, x, result)
        parts = []
        for b in layout.blocks:
            xs, rs = x[b.start:b.stop], result[b.start:b.stop]
            a, up = self.lora_A[b.name], self.lora_B[b.name]
            xs = self._cast_input_dtype(xs, a.weight.dtype)  # as PEFT's own forward (fastops may turn it off)
            parts.append(rs + up(a(self.lora_dropout[b.name](xs))) * self.scaling[b.name])
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        return out.to(result.dtype)
    return forward


def _stackable(blocks: list[Block], x: torch.Tensor) -> bool:
    """Blocks of one size that tile the batch: their LoRA products go through one batched matmul pair."""
    if len(blocks) < 2:
        return False
    n = blocks[0].stop - blocks[0].start if blocks[0].stop is not None else None
    return (n is not None and all(b.start == i * n and b.stop == (i + 1) * n for i, b in enumerate(blocks))
            and len(blocks) * n == x.shape[0])


def _lora_stacked(self, blocks: list[Block], x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """Every run's LoRA update in two batched matmuls: the runs' A and B stacked (ranks zero-padded to the
    largest, which adds exact zeros), x viewed as [runs, rows x tokens, in]. The same products as one run's
    B(A(x)) each; 2 operations instead of 2 per run, which is what a CPU step is short of.
    Dropout is one call over the whole batch: every row still gets a mask of its own."""
    names = [b.name for b in blocks]
    k = len(names)
    ranks = [self.lora_A[n].weight.shape[0] for n in names]
    r = max(ranks)
    a = torch.stack([F.pad(self.lora_A[n].weight.t(), (0, r - rk)) for n, rk in zip(names, ranks)])  # [k, in, r]
    # the scaling goes on B ([r, out] each) rather than on the product ([rows x tokens, out]): one pass over
    # a few thousand numbers instead of over the layer's whole output, forward and backward
    b = torch.stack([F.pad(self.lora_B[n].weight.t() * self.scaling[n], (0, 0, 0, r - rk))
                     for n, rk in zip(names, ranks)])  # [k, r, out]
    xs = self._cast_input_dtype(self.lora_dropout[names[0]](x), a.dtype)
    xs = xs.reshape(k, -1, xs.shape[-1])
    delta = torch.bmm(torch.bmm(xs, a), b)
    return result + delta.reshape(result.shape).to(result.dtype)


def lora_layers(model) -> list:
    from peft.tuners.lora.layer import Linear as LoraLinear

    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def patch_lora(model, layout: Layout) -> list:
    """Route every PEFT LoRA Linear of `model` through `layout`; returns the patched layers (unpatch_lora)."""
    layers = lora_layers(model)
    for layer in layers:
        if any(layer.lora_variant.get(n) for n in layer.lora_A):  # DoRA & co. have a forward of their own
            raise ValueError("method: this LoRA variant cannot be packed")
        layer.forward = types.MethodType(_lora_forward(layout), layer)
    return layers


def unpatch_lora(layers: list) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)


# -- prompt tuning: per-row virtual tokens ----------------------------------------------------------------
def prompt_inputs(embed, prompts: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  blocks: list[Block]) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs_embeds and attention_mask for an encoder whose rows each start with their run's prompt.

    prompts[k] ([n_k, d]) belongs to blocks[k]. Prompts shorter than the longest are left-padded with masked
    zeros, so each row reads [padding][its prompt][its text][padding]: relative positions inside the real
    tokens are the solo run's."""
    width = max(p.shape[0] for p in prompts)
    tokens = embed(input_ids)
    rows = []
    masks = []
    for p, b in zip(prompts, blocks):
        n = b.stop - b.start if b.stop is not None else tokens.shape[0] - b.start
        pad = width - p.shape[0]
        pre = torch.cat([p.new_zeros(pad, p.shape[1]), p.to(tokens.dtype)], 0).unsqueeze(0).expand(n, -1, -1)
        rows.append(torch.cat([pre, tokens[b.start:b.stop]], 1))
        m = attention_mask.new_zeros(n, width)
        m[:, pad:] = 1
        masks.append(torch.cat([m, attention_mask[b.start:b.stop]], 1))
    return torch.cat(rows, 0), torch.cat(masks, 0)


class Prompted:
    """The frozen base answering with each block's soft prompt before its rows' text: what PEFT's prompt-tuning
    model does with one prompt on every row (PeftModelForSeq2SeqLM.forward / generate), for the evaluation
    passes' label scoring, loss and generation."""

    def __init__(self, base, prompts: list[torch.Tensor], blocks: list[Block]):
        self.base, self.prompts, self.blocks = base, prompts, blocks

    @property
    def config(self):
        return self.base.config

    def _inputs(self, input_ids, attention_mask) -> dict:
        embeds, mask = prompt_inputs(self.base.get_input_embeddings(), self.prompts, input_ids, attention_mask,
                                     self.blocks)
        return {"inputs_embeds": embeds, "attention_mask": mask}

    def __call__(self, input_ids, attention_mask, **kwargs):
        return self.base(**self._inputs(input_ids, attention_mask), **kwargs)

    def generate(self, input_ids, attention_mask, **kwargs):
        return self.base.generate(**self._inputs(input_ids, attention_mask), **kwargs)


def blocks_of(names: list[str], sizes: list[int]) -> list[Block]:
    """Consecutive blocks of rows, one per run, in order."""
    blocks, start = [], 0
    for name, n in zip(names, sizes):
        blocks.append(Block(name, start, start + n))
        start += n
    return blocks


# -- prefix tuning: per-row key/value prefixes --------------------------------------------------------------
@contextmanager
def prefix_rows(models: list, blocks: list[Block]):
    """models[k]'s prefix on blocks[k]'s rows. models[0] (a PEFT prefix-tuning model over the shared base) answers
    the batch; while it does, its prefix encoder returns, for each block of rows, that block's run's prefix. The
    rest (the prefix turned into the decoder's cache for this transformers version, the masks extended by the
    prefix length) is PEFT's own code for one run: a pack of one-length prefixes is one run's forward with each
    row's own numbers in the cache."""
    vehicle = models[0]
    enc = vehicle.prompt_encoder[vehicle.active_adapter]
    encoders = [m.prompt_encoder[m.active_adapter] for m in models]

    def forward(tokens):
        return torch.cat([type(e).forward(e, tokens[b.start:b.stop]) for e, b in zip(encoders, blocks)], 0)

    enc.forward = forward  # an instance attribute: Module.__call__ finds it before the class's forward
    try:
        yield vehicle
    finally:
        del enc.forward


# -- batches and losses -----------------------------------------------------------------------------------
def per_block_loss(logits: torch.Tensor, labels: torch.Tensor, blocks: list[Block]) -> list[torch.Tensor]:
    """Each block's mean cross-entropy over its own target tokens (what the model's loss is for that batch
    alone); padding and prompt positions (-100) are left out."""
    losses = []
    for b in blocks:
        lg, lb = logits[b.start:b.stop], labels[b.start:b.stop]
        losses.append(F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), lb.reshape(-1),
                                      ignore_index=IGNORE_INDEX))
    return losses


# -- a pack, trained ---------------------------------------------------------------------------------------
@dataclass
class _Member:
    """One run inside a pack."""
    s: object  # train.Session
    name: str  # its adapter's name in the shared model (LoRA) / its block name
    model: object = None  # what scores it: the shared LoRA model, or its own prompt-tuning PeftModel
    params: list = None
    optimizer: object = None
    scheduler: object = None
    progress: object = None  # train.Progress
    batches: list = None
    outcome: object = None  # None while it trains; then its record, or the exception that ended it


# the families a pack trains right: per_block_loss reads the logits aligned with their labels, as an
# encoder-decoder's decoder gives them. A causal LM's loss is shifted by one token (and its soft prompts sit in
# the labelled sequence), an encoder classifies whole rows: a pack of those would train another objective, or
# fail, so their runs train one after another (tests/test_packing.py)
PACKED_FAMILIES = ("seq2seq",)


def family_alone(model_name: str) -> str:
    """Why runs on this base model cannot train packed ('' when they can), in the user's words."""
    from peftcompare.engine import models

    family = models.load_model(model_name, meta=True).family.name
    if family in PACKED_FAMILIES:
        return ""
    kind = {"causal": "a decoder-only", "encoder": "an encoder-only"}.get(family, f"a {family}")
    return (f"packed training is built for encoder-decoder models; {model_name} is {kind} model, so its runs "
            "train one after another")


def run_pack(specs: list, reporters: list) -> list:
    """Train `specs` (one pack_key) together on one base model; returns, per run, its record or the exception
    that ended it (train.Cancelled, or its failure). One run cancelled or failing leaves the others running."""
    from peftcompare.core import methods, packs
    from peftcompare.engine import models, train

    specs = [s.resolved() for s in specs]
    keys = {packs.pack_key(s) for s in specs}
    if len(keys) != 1 or None in keys:
        raise ValueError("pack: these runs cannot train together (different data, model, budget or method kind)")
    kind = methods.get_method(specs[0].method).pack
    loaded = models.load_model(specs[0].model_name)
    if loaded.family.name not in PACKED_FAMILIES:
        raise ValueError(f"pack: {family_alone(specs[0].model_name)}")
    members = []
    for k, (spec, reporter) in enumerate(zip(specs, reporters)):
        m = _Member(None, f"run{k}")
        try:
            m.s = train.open_session(spec, reporter, loaded=loaded)
            train.plan_steps(m.s)
        except BaseException as exc:  # noqa: BLE001 - this run's data or model failed; the others go on
            m.outcome = exc
        members.append(m)
    live = [m for m in members if m.outcome is None]
    if not live:
        return [m.outcome for m in members]
    pack = _Pack(kind, loaded, live)
    pack.apply_methods()
    for m in pack.members:
        m.s.fast["packed"] = {"kind": kind, "runs": len(pack.members), "evaluation": "packed",
                              "with": [o.s.reporter.run_id for o in pack.members if o is not m]}
        train.ready(m.s)
    pack.train()
    pack.finish()
    return [m.outcome for m in members]


class _Pack:
    def __init__(self, kind: str, loaded, members: list[_Member]):
        self.kind, self.loaded, self.members = kind, loaded, members
        self.layout = Layout()
        self.shared = None  # the LoRA pack's one PEFT model
        self.eval_alone = False  # a packed evaluation pass failed: each run evaluates by itself from then on
        first = members[0].s
        self.device, self.dtype, self.family = first.device, first.dtype, first.family

    # -- set-up ------------------------------------------------------------------------------------------
    def apply_methods(self) -> None:
        """Each run's adapter drawn under its own seed (as train._apply_method draws it), its counts measured
        on a shapes-only copy holding its adapter alone, its optimizer over its own tensors."""
        from peft import get_peft_model

        from peftcompare.engine import fastops, models, train

        for p in self.loaded.model.parameters():
            p.requires_grad_(False)
        for m in self.members:
            s = m.s
            s.method.check_family(self.family.name, s.spec.model_name)
            torch.manual_seed(s.spec.seed)
            if self.kind == PACK_LORA:
                config = s.method.make_config(s.spec, self.loaded.model, self.loaded.tokenizer, self.family,
                                              total_steps=s.total_steps)
                if self.shared is None:
                    self.shared = get_peft_model(self.loaded.model, config, adapter_name=m.name)
                else:
                    self.shared.add_adapter(m.name, config)
                m.model, s.adapter_name = self.shared, m.name
            else:
                m.model = train.prepare_model(s.spec, self.loaded, s.total_steps)  # a PeftModel over the shared base
            meta = models.load_model(s.spec.model_name, meta=True)
            train.measure(s, train.prepare_model(s.spec, meta, total_steps=s.total_steps))
        if self.shared is not None:
            fastops.swap_dropout(self.shared)  # LoRA's own dropout too, as prepare_model does
            patch_lora(self.shared, self.layout)
        for m in self.members:
            m.params = self._params(m)
            for p in m.params:
                p.requires_grad_(True)
            m.model.to(self.device)
            m.s.model = m.model
            m.optimizer, m.scheduler = train.make_optimizer(m.s, m.params)
            m.progress = train.Progress(m.s, m.model, m.scheduler, state=lambda model, m=m: self._state(m))

    def _params(self, m: _Member) -> list:
        if self.kind == PACK_LORA:
            return [p for n, p in self.shared.named_parameters() if f".{m.name}." in n]
        return [p for p in m.model.prompt_encoder.parameters()]

    def _state(self, m: _Member) -> dict:
        if self.kind == PACK_LORA:
            return {n: p.detach().clone() for n, p in self.shared.named_parameters() if f".{m.name}." in n}
        return {n: p.detach().clone() for n, p in m.model.named_parameters() if p.requires_grad}

    def _alone(self, m: _Member):
        """The shared model answering as run m alone (its adapter on every row)."""
        return self.layout.only(m.name) if self.kind == PACK_LORA else nullcontext()

    # -- training ----------------------------------------------------------------------------------------
    def train(self) -> None:
        epochs = self.members[0].s.spec.num_train_epochs
        steps = self.members[0].s.steps_per_epoch
        for _ in range(epochs):
            live = self._live()
            if not live:
                return
            for m in live:
                m.model.train()
                m.batches = m.progress.epoch_batches()
                m.progress.begin_epoch()
            for i in range(steps):
                live = self._live()
                if not live:
                    break
                self._step(live, i, last=i == steps - 1)
            for m in self._live():
                self._guard(m, m.progress.pause)
            live = self._live()
            scored = self._together(live, self._selection_pass)
            for m, sc in zip(live, scored):
                with self._alone(m):
                    self._guard(m, lambda m=m, sc=sc: m.progress.end_epoch(sc))

    def _live(self) -> list[_Member]:
        return [m for m in self.members if m.outcome is None]

    def _guard(self, m: _Member, fn) -> None:
        """Run one member's bookkeeping; whatever ends it (a cancel, a failure) ends it alone."""
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - recorded as this run's outcome
            if isinstance(exc, KeyboardInterrupt):
                raise
            m.outcome = exc
            try:
                m.s.clock.pause()
            except Exception:  # noqa: BLE001
                pass

    def _step(self, live: list[_Member], i: int, last: bool) -> None:
        """One optimizer step of every live run, through one forward/backward of the frozen base."""
        # the K runs' examples in one batch, run after run, padded by the family as one batch of them would be
        # (the padding is masked, so each run's rows compute what its own batch computes)
        feats = [[m.s.train_feats[j] for j in m.batches[i]] for m in live]
        blocks = blocks_of([m.name for m in live], [len(fs) for fs in feats])
        batch = self.family.collate([f for fs in feats for f in fs], self.loaded.tokenizer)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with eval_mod.autocast(self.device, self.dtype), self.answering(live, blocks) as model:
            logits = model(**batch).logits
        losses = per_block_loss(logits, batch["labels"], blocks)
        torch.stack(losses).sum().backward()
        for m, loss in zip(live, losses):
            torch.nn.utils.clip_grad_norm_(m.params, 1.0)
            m.optimizer.step()
            m.scheduler.step()
            m.optimizer.zero_grad(set_to_none=True)
            self._guard(m, lambda m=m, loss=loss: m.progress.account(m.batches[i], loss, last=last))

    @contextmanager
    def answering(self, members: list[_Member], blocks: list[Block]):
        """The model that answers a stacked batch, blocks[k] of its rows through members[k]'s adapter."""
        if self.kind == PACK_LORA:
            with self.layout.rows(blocks):
                yield self.shared
        elif self.kind == PACK_PREFIX:
            with prefix_rows([m.model for m in members], blocks) as model:
                yield model
        else:
            yield Prompted(self.loaded.model, [m.model.get_prompt(batch_size=1)[0] for m in members], blocks)

    # -- evaluation, packed ------------------------------------------------------------------------------
    def _together(self, live: list[_Member], packed_pass) -> list:
        """packed_pass(live, rows) for the live runs at once: per run, what its Progress takes as `scored`.
        Should the packed pass fail, [None] * K: each run then makes its own pass (and the record says so)."""
        if not live or self.eval_alone:
            return [None] * len(live)
        t0 = time.perf_counter()
        try:
            results = packed_pass(live, _PackRows(self, live))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory on K stacked batches: the runs go on alone
            from peftcompare.engine import train

            why = train.failure_reason(exc)
            self.eval_alone = True  # it would fail the same way next time: the pack's other passes go alone too
            for m in live:
                m.s.fast["packed"]["evaluation"] = f"alone: the packed pass failed ({why})"
                m.s.reporter.log(f"packed evaluation failed ({why}); each run evaluates alone")
            return [None] * len(live)
        # each run's evaluation time is the pack's pass, as its training time is the pack's (README)
        secs = time.perf_counter() - t0
        return [(*r, secs) if isinstance(r, tuple) else (r, secs) for r in results]

    def _selection_pass(self, live: list[_Member], rows) -> list:
        """Every run's selection split scored on its current state: its loss, or the task's metric."""
        first = live[0]
        s, p = first.s, first.progress
        if p.by_loss:
            return eval_mod.mean_loss_many(rows, self.family, self.loaded.tokenizer, [m.s.loss_feats for m in live],
                                           s.spec.per_device_eval_batch_size, self.device, self.dtype)
        return eval_mod.evaluate_many(rows, self.family, self.loaded.tokenizer, s.spec,
                                      [(m.progress.examples, m.progress.feats) for m in live], s.data.label_words,
                                      self.device, self.dtype, generate_protocol=False)

    def _final_pass(self, live: list[_Member], rows) -> list:
        """Every run's chosen state scored: the validation split once (selection on dev or by loss), or the
        original protocol's generate-and-parse scoring (its other scores were taken per epoch)."""
        s = live[0].s
        sets = [(m.s.data.validation, m.s.eval_feats) for m in live]
        if live[0].progress.final_pass == "validation":
            return eval_mod.evaluate_many(rows, self.family, self.loaded.tokenizer, s.spec, sets, s.data.label_words,
                                          self.device, self.dtype)
        return eval_mod.generated_protocol_many(rows, self.family, self.loaded.tokenizer, s.spec, sets,
                                                s.data.label_words, self.device, self.dtype)

    # -- the end -----------------------------------------------------------------------------------------
    def finish(self) -> None:
        from peftcompare.engine import train

        for m in self._live():
            self._guard(m, m.progress.restore)  # every run's chosen state in place before the one final pass
        live = self._live()
        scored = self._together(live, self._final_pass)
        for m, sc in zip(live, scored):
            with self._alone(m):
                try:
                    m.outcome = train.finish(m.s, m.progress.conclude(sc))
                except BaseException as exc:  # noqa: BLE001 - this run's failure; the others finish
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    m.outcome = exc


class _PackRows(eval_mod.Rows):
    """The pack's live runs answering evaluation batches together: set k of a pass is members[k]'s, and its
    block of each stacked batch goes through members[k]'s adapter only."""

    def __init__(self, pack: _Pack, members: list[_Member]):
        super().__init__(pack.shared)
        self.pack, self.members = pack, members

    def modules(self) -> list:
        return [self.pack.shared] if self.pack.kind == PACK_LORA else [m.model for m in self.members]

    def _blocks(self, parts: list[tuple[int, int]]) -> list[Block]:
        return blocks_of([self.members[k].name for k, _ in parts], [n for _, n in parts])

    def answering(self, parts: list[tuple[int, int]]):
        return self.pack.answering([self.members[k] for k, _ in parts], self._blocks(parts))

    def losses(self, model, batch: dict, parts: list[tuple[int, int]]) -> list:
        return per_block_loss(model(**batch).logits, batch["labels"], self._blocks(parts))
