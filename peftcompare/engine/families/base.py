"""The Family interface every model family implements, and the helpers they share."""
from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # label positions the loss never sees (padding, prompts of causal LMs)


def pad_rows(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
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
