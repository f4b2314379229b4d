"""Model families behind one interface: how a family is built, batched, scored and generated from.

Training, evaluation and the Compare engine only talk to a Family, so encoder-decoder, decoder-only
and encoder-classifier models share one training loop.
"""
from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # label positions the loss never sees (padding, prompts of causal LMs)

# built-in models of other families register here: name -> (family name, config kwargs)
EXTRA_BUILTINS: dict[str, tuple[str, dict]] = {}


def _pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


class Family:
    name = ""
    peft_task_type = ""
    modules_to_save: list[str] | None = None
    generative = True  # can do summarization

    def auto_class(self):
        raise NotImplementedError

    def from_config(self, config):
        return self.auto_class().from_config(config)

    def builtin_config(self, kwargs: dict, vocab_size: int):
        """Config of a built-in model of this family; tiny ones take the built-in tokenizer's vocabulary."""
        from transformers import AutoConfig

        kwargs = dict(kwargs)
        return AutoConfig.for_model(kwargs.pop("model_type"), **{"vocab_size": vocab_size, **kwargs})

    def untie_lm_head(self, model) -> None:
        pass

    def prepare_tokenizer(self, tokenizer, model) -> None:
        pass

    # -- what PEFT methods touch --------------------------------------------------------------------
    def target_modules(self, names: list[str]) -> list[str]:
        return names

    def ia3_modules(self, names: list[str]) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def attention_geometry(self, config) -> tuple[int, int, int]:
        raise NotImplementedError

    def top_blocks(self, model, n: int) -> list[Any]:
        raise NotImplementedError

    def head_parameters(self, model) -> list[Any]:
        return []

    # -- data ---------------------------------------------------------------------------------------
    def encode(self, sources: list[str], targets: list[str], tokenizer, max_source: int,
               max_target: int) -> list[dict]:
        raise NotImplementedError

    def collate(self, features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode_inputs(self, sources: list[str], tokenizer, max_source: int) -> list[dict]:
        return [{"input_ids": ids} for ids in
                tokenizer(sources, truncation=True, max_length=max_source)["input_ids"]]

    # -- inference ----------------------------------------------------------------------------------
    def label_logprobs(self, model, batch: dict, label_ids: list[list[int]], **kwargs) -> torch.Tensor:
        """[batch, n_labels] log-likelihood of each label's tokens."""
        raise NotImplementedError

    def generate(self, model, batch: dict, tokenizer, max_new_tokens: int, **kwargs) -> list[str]:
        raise NotImplementedError


class Seq2SeqFamily(Family):
    name = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def untie_lm_head(self, model) -> None:
        # real flan-t5 checkpoints carry a separate lm_head; transformers 5 ties it for models built from a
        # config, which changes the parameter count and the decoder's output scaling
        if getattr(model.config, "model_type", "") != "t5" or model.lm_head.weight is not model.shared.weight:
            return
        if getattr(model.config, "keep_tied_embeddings", False):  # t5-small (v1) really is tied
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4321)
            weight = torch.empty_like(model.shared.weight).normal_(0.0, model.config.d_model ** -0.5)
        model.lm_head.weight = torch.nn.Parameter(weight)
        model.all_tied_weights_keys = {}
        model.config.scale_decoder_outputs = False

    def attention_geometry(self, config):
        if getattr(config, "model_type", "") == "t5":
            return config.num_heads, config.d_kv, config.num_decoder_layers
        heads = config.decoder_attention_heads
        return heads, config.d_model // heads, config.decoder_layers

    def target_modules(self, names):
        if getattr(self, "_bart", False):
            return [{"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}.get(n, n) for n in names]
        return names

    def ia3_modules(self, names):
        if getattr(self, "_bart", False):
            return ["k_proj", "v_proj", "fc2"], ["fc2"]
        return ["k", "v", "wo"], ["wo"]

    def top_blocks(self, model, n):
        blocks = []
        for stack in (model.get_encoder(), model.get_decoder()):
            layers = getattr(stack, "block", None) or getattr(stack, "layers")
            blocks.extend(list(layers)[-n:])
        return blocks

    def head_parameters(self, model):
        # final layer norms belong with the top blocks
        # (T5's encoder/decoder.final_layer_norm; BART's per-layer final_layer_norm lives inside the blocks)
        return [p for n, p in model.named_parameters() if "final_layer_norm" in n and "block" not in n
                and "layers" not in n]

    def encode(self, sources, targets, tokenizer, max_source, max_target):
        enc = tokenizer(sources, truncation=True, max_length=max_source)
        lab = tokenizer(text_target=targets, truncation=True, max_length=max_target)
        return [{"input_ids": i, "labels": l} for i, l in zip(enc["input_ids"], lab["input_ids"])]

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": _pad(ids, tokenizer.pad_token_id)}
        batch["attention_mask"] = (_pad([[1] * len(i) for i in ids], 0))
        if "labels" in features[0]:
            batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def _start(self, model) -> int:
        cfg = model.config  # a PeftModel forwards .config to its base model
        return cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        bsz = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        start = self._start(model)
        if all(len(l) == 1 for l in label_ids):
            # one decoder step scores every single-token label at once
            dec = torch.full((bsz, 1), start, dtype=torch.long, device=device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=dec, **kwargs).logits[:, 0, :].float()
            logp = torch.log_softmax(logits, dim=-1)
            return logp[:, [l[0] for l in label_ids]]
        scores = []
        for ids in label_ids:
            target = torch.tensor(ids, device=device).unsqueeze(0).expand(bsz, -1)
            dec = torch.cat([torch.full((bsz, 1), start, dtype=torch.long, device=device), target[:, :-1]], 1)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=dec, **kwargs).logits.float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            scores.append(logp.sum(-1))
        return torch.stack(scores, dim=1)

    def generate(self, model, batch, tokenizer, max_new_tokens, **kwargs):
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new_tokens, num_beams=1, do_sample=False, use_cache=True,
                             **kwargs)
        return tokenizer.batch_decode(out, skip_special_tokens=True)


def _prompt_offset(logits: torch.Tensor, input_len: int) -> int:
    # prompt/p-tuning prepend virtual tokens whose logits come back too
    return logits.shape[1] - input_len


def _unpad(batch: dict) -> list[list[int]]:
    """Rows of a padded batch without their padding (either side)."""
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


class CausalFamily(Family):
    """Decoder-only LMs (GPT-2 style): prompt + target + eos, loss on the target tokens only."""

    name = "causal"
    peft_task_type = "CAUSAL_LM"
    model_types = ("gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "opt", "phi")

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def prepare_tokenizer(self, tokenizer, model) -> None:
        # GPT-2 ships without a pad token; padding is masked everywhere, so eos serves
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = tokenizer.pad_token_id

    def _gpt2(self, config) -> bool:
        return getattr(config, "model_type", "") == "gpt2"

    def target_modules(self, names):
        if getattr(self, "model_type", "gpt2") == "gpt2":
            # GPT-2 fuses q, k and v into one Conv1D: any of them means c_attn
            mapped = ["c_attn" if n in ("q", "k", "v") else "attn.c_proj" if n == "o" else n for n in names]
            return list(dict.fromkeys(mapped))
        return [{"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}.get(n, n) for n in names]

    def ia3_modules(self, names):
        if getattr(self, "model_type", "gpt2") == "gpt2":
            return ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]
        return ["k_proj", "v_proj", "down_proj"], ["down_proj"]

    def attention_geometry(self, config):
        heads = config.num_attention_heads
        return heads, config.hidden_size // heads, config.num_hidden_layers

    def _layers(self, model):
        base = getattr(model, "transformer", None) or getattr(model, "model", None)
        layers = getattr(base, "h", None) or getattr(base, "layers", None)
        if layers is None:
            raise ValueError("method: cannot find the transformer blocks of this causal LM")
        return list(layers)

    def top_blocks(self, model, n):
        return self._layers(model)[-n:]

    def head_parameters(self, model):
        # the final norm sits above the top block; GPT-2's lm_head is tied to the input embeddings
        base = getattr(model, "transformer", None) or getattr(model, "model", None)
        norm = getattr(base, "ln_f", None) or getattr(base, "norm", None)
        return list(norm.parameters()) if norm is not None else []

    def _prompt_ids(self, sources, tokenizer, max_source):
        out = []
        for ids in tokenizer(sources, truncation=True, max_length=max_source + 1)["input_ids"]:
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids = ids[:-1]  # tokenizers that append eos (T5-style) would end the prompt early
            out.append(ids[:max_source])
        return out

    def encode(self, sources, targets, tokenizer, max_source, max_target):
        prompts = self._prompt_ids(sources, tokenizer, max_source)
        answers = tokenizer(targets, add_special_tokens=False)["input_ids"]
        feats = []
        for p, a in zip(prompts, answers):
            a = a[: max(0, max_target - 1)] + [tokenizer.eos_token_id]
            feats.append({"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a})
        return feats

    def encode_inputs(self, sources, tokenizer, max_source):
        return [{"input_ids": ids} for ids in self._prompt_ids(sources, tokenizer, max_source)]

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        # training batches pad on the right (positions start at 0); prompts for generation pad on the left
        left = "labels" not in features[0]
        batch = {"input_ids": _pad(ids, tokenizer.pad_token_id, left),
                 "attention_mask": _pad([[1] * len(i) for i in ids], 0, left)}
        if not left:
            batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        prompts = _unpad(batch)
        device = batch["input_ids"].device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        scores = []
        # one forward per label, each row its own prompt + the label, right-padded so positions are exact
        for ids in label_ids:
            rows = [p + list(ids) for p in prompts]
            input_ids = _pad(rows, 0).to(device)
            mask = _pad([[1] * len(r) for r in rows], 0).to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, **kwargs).logits.float()
            # the label's j-th token is predicted by the logits one position before it
            pos = _prompt_offset(logits, input_ids.shape[1]) + lengths[:, None] - 1 + \
                torch.arange(len(ids), device=device)[None, :]
            logp = torch.log_softmax(logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])), -1)
            target = torch.tensor(ids, device=device)[None, :, None].expand(len(rows), -1, 1)
            scores.append(logp.gather(-1, target).squeeze(-1).sum(-1))
        return torch.stack(scores, dim=1)

    def generate(self, model, batch, tokenizer, max_new_tokens, **kwargs):
        config = getattr(model, "active_peft_config", None)
        padded = not bool(batch["attention_mask"].all())
        if padded and getattr(config, "is_prompt_learning", False) and not kwargs:
            # PEFT drops position ids for virtual tokens, so left padding would shift every position of a
            # padded row: generate those rows one at a time, unpadded
            texts = []
            for ids in _unpad(batch):
                row = torch.tensor([ids], device=batch["input_ids"].device)
                texts += self.generate(model, {"input_ids": row, "attention_mask": torch.ones_like(row)},
                                       tokenizer, max_new_tokens)
            return texts
        width = batch["input_ids"].shape[1]
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new_tokens, num_beams=1, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kwargs)
        if out.shape[1] >= width and torch.equal(out[:, :width], batch["input_ids"]):
            out = out[:, width:]  # generation after the prompt: drop the echoed prompt
        return tokenizer.batch_decode(out, skip_special_tokens=True)


class EncoderFamily(Family):
    """Encoder classifiers (BERT style): a classification head over the labels, trained with the method."""

    name = "encoder"
    peft_task_type = "SEQ_CLS"

    @property
    def modules_to_save(self):
        # the new head trains with every method and is saved with the adapter; a fresh list each time
        # because PEFT appends its own names to the list it is given
        return ["classifier"]
    generative = False
    model_types = ("bert", "roberta", "xlm-roberta", "electra")

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def attach_labels(self, loaded, label_words: list[str]) -> None:
        """Size the head to the task's labels; head row i scores label_words[i]."""
        model = loaded.model
        self.label_words = list(label_words)
        n = len(label_words)
        if model.config.num_labels != n:
            head = model.classifier
            linear = head if isinstance(head, torch.nn.Linear) else head.out_proj
            new = torch.nn.Linear(linear.in_features, n, device=linear.weight.device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(4321)
                new.weight.data.normal_(0.0, model.config.initializer_range)
                new.bias.data.zero_()
            if isinstance(head, torch.nn.Linear):
                model.classifier = new
            else:
                head.out_proj = new
            model.config.num_labels = n
            model.num_labels = n
        model.config.id2label = dict(enumerate(label_words))
        model.config.label2id = {w: i for i, w in enumerate(label_words)}

    def target_modules(self, names):
        return [{"q": "query", "k": "key", "v": "value", "o": "attention.output.dense"}.get(n, n) for n in names]

    def ia3_modules(self, names):
        return ["key", "value", "output.dense"], ["output.dense"]

    def attention_geometry(self, config):
        heads = config.num_attention_heads
        return heads, config.hidden_size // heads, config.num_hidden_layers

    def _base(self, model):
        return getattr(model, model.base_model_prefix)

    def top_blocks(self, model, n):
        base = self._base(model)
        blocks = list(base.encoder.layer)[-n:]
        # the pooler sits above the top block
        return blocks + ([base.pooler] if getattr(base, "pooler", None) is not None else [])

    def head_parameters(self, model):
        return list(model.classifier.parameters())

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": _pad(ids, tokenizer.pad_token_id),
                 "attention_mask": _pad([[1] * len(i) for i in ids], 0)}
        if "target" in features[0]:
            words = getattr(self, "label_words", None)
            if not words:
                raise ValueError("labels: the encoder family needs attach_labels() before training")
            index = {w: i for i, w in enumerate(words)}
            batch["labels"] = torch.tensor([index[f["target"]] for f in features], dtype=torch.long)
        return batch

    def encode(self, sources, targets, tokenizer, max_source, max_target):
        # the class index is known only once the label words are attached, so keep the word here
        return [{**f, "target": t} for f, t in zip(self.encode_inputs(sources, tokenizer, max_source), targets)]

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
        if logits.shape[-1] != len(label_ids):
            raise ValueError(f"labels: the classification head has {logits.shape[-1]} outputs for "
                             f"{len(label_ids)} labels")
        return torch.log_softmax(logits.float(), dim=-1)

    def generate(self, model, batch, tokenizer, max_new_tokens, **kwargs):
        raise ValueError("task: encoder classifiers cannot generate text (summarization needs a seq2seq or "
                         "causal model)")


SEQ2SEQ = Seq2SeqFamily()
FAMILIES: dict[str, Family] = {"seq2seq": SEQ2SEQ, "causal": CausalFamily(), "encoder": EncoderFamily()}

_NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
_SPECIAL = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)  # the built-in tokenizer's ids
EXTRA_BUILTINS.update({
    # tiny models of each family, on the built-in tokenizer, for tests and offline use
    "tiny-gpt2": ("causal", dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                                 **_NO_DROPOUT, **_SPECIAL)),
    "tiny-bert": ("encoder", dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=1024, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, pad_token_id=0)),
    "tiny-bart": ("seq2seq", dict(model_type="bart", d_model=64, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                  decoder_ffn_dim=128, max_position_embeddings=1024, dropout=0.0,
                                  decoder_start_token_id=0, forced_eos_token_id=1,
                                  # BART's 0.02 makes every attention of a 64-wide model uniform: the decoder
                                  # then barely sees its input and pretraining stalls there; ~1/sqrt(d_model)
                                  init_std=0.1, **_SPECIAL)),
    # the exact shapes of public checkpoints, for parameter counts (meta device)
    "random-gpt2": ("causal", dict(model_type="gpt2", vocab_size=50257)),
    "random-bert-base": ("encoder", dict(model_type="bert", vocab_size=30522)),
    "random-t5-small": ("seq2seq", dict(model_type="t5", vocab_size=32128, d_model=512, d_ff=2048, d_kv=64,
                                        num_heads=8, num_layers=6, num_decoder_layers=6, feed_forward_proj="relu",
                                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                        tie_word_embeddings=True, keep_tied_embeddings=True)),
})


def family_for_config(config) -> Family:
    if getattr(config, "is_encoder_decoder", False):
        fam = Seq2SeqFamily()
        fam._bart = getattr(config, "model_type", "") != "t5"
        return fam
    model_type = getattr(config, "model_type", "")
    for fam in FAMILIES.values():
        if model_type in getattr(fam, "model_types", ()):
            fresh = type(fam)()  # per model: a family instance carries its model type and label words
            fresh.model_type = model_type
            return fresh
    raise ValueError(f"model_name: model type {model_type!r} is not supported "
                     f"(supported families: {', '.join(FAMILIES)})")


def builtin_config(name: str, vocab_size: int):
    from transformers import T5Config

    from .models import FLAN_T5_SHAPES, TINY_T5

    common = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.1)
    if name == "tiny-t5":
        # no dropout: a few hundred thousand weights learn the generated text faster without it
        return T5Config(vocab_size=vocab_size, **TINY_T5, **{**common, "dropout_rate": 0.0})
    if name in FLAN_T5_SHAPES:
        return T5Config(**FLAN_T5_SHAPES[name], **common)
    if name in EXTRA_BUILTINS:
        family_name, kwargs = EXTRA_BUILTINS[name]
        return FAMILIES[family_name].builtin_config(kwargs, vocab_size)
    raise ValueError(f"model_name: unknown built-in model builtin:{name}")
