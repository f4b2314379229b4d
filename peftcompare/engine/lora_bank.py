"""Every loaded LoRA adapter, stacked per layer: one gathered matmul pair per adapted layer and call.

PEFT's mixed-adapter batches loop over the adapters inside every LoRA layer (8 adapters x 48 layers of
flan-t5-small = 384 small sub-batch products per decoder step, which took 2.2x the latency of a zero-shot
call). Here each row's A and B are gathered once per comparison, and every adapted layer adds
bmm(bmm(x, A_rows), B_rows) through a forward hook; the base model itself is never modified.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from safetensors.torch import load_file

# adapter settings the bank does not implement: such adapters go through PEFT's mixed batches instead
_BANK_OFF = ("use_dora", "lora_bias", "modules_to_save", "fan_in_fan_out", "trainable_token_indices",
             "alora_invocation_tokens", "layer_replication", "target_parameters", "rank_pattern", "alpha_pattern")


def _layer_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    """{module path: [lora_A weight, lora_B weight]} from a PEFT LoRA state dict."""
    layers: dict[str, list] = {}
    for key, t in tensors.items():
        path = key.removeprefix("base_model.model.")
        for part in ("lora_A", "lora_B"):
            if f".{part}." in path:
                layers.setdefault(path.split(f".{part}.")[0], [None, None])[part == "lora_B"] = t.float()
    return layers


class LoraBank:
    """The LoRA adapters of one base model, applied per row of a batch through forward hooks."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        self.adapters: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.stamps: dict[str, float] = {}
        self._cache: tuple | None = None  # (row names, {module: (A_rows, B_rows)})

    @staticmethod
    def supports(rec: dict) -> bool:
        """A plain LoRA adapter: low-rank updates on linear layers and nothing else."""
        cfg = rec["_config"]
        return cfg.get("peft_type") == "LORA" and not any(cfg.get(k) for k in _BANK_OFF)

    def add(self, name: str, rec: dict, stamp: float) -> None:
        if self.stamps.get(name) == stamp:
            return
        cfg = rec["_config"]
        bank = {}
        for path, (a, b) in _layer_pairs(load_file(str(rec["_weights"]), device=self.device)).items():
            r = a.shape[0]
            scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
            bank[path] = (a.t().contiguous(), (b * scale).t().contiguous())  # [in, r], [r, out]
        self.adapters[name], self.stamps[name] = bank, stamp
        self._cache = None

    def _gathered(self, rows: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._cache is not None and self._cache[0] == rows:
            return self._cache[1]
        paths = {p for n in rows if n in self.adapters for p in self.adapters[n]}
        out = {path: self._stack(rows, path) for path in paths}
        self._cache = (list(rows), out)
        return out

    def _stack(self, rows: list[str], path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, in, r] and [rows, r, out] for one module, r the largest rank among the rows."""
        present = [self.adapters[n][path] for n in rows if n in self.adapters and path in self.adapters[n]]
        r = max(a.shape[1] for a, _ in present)
        fin, fout = present[0][0].shape[0], present[0][1].shape[1]
        a_rows = torch.zeros(len(rows), fin, r, device=self.device)
        b_rows = torch.zeros(len(rows), r, fout, device=self.device)
        for i, n in enumerate(rows):  # zero-shot rows and ranks below r stay zero: no update
            if n in self.adapters and path in self.adapters[n]:
                a, b = self.adapters[n][path]
                a_rows[i, :, : a.shape[1]], b_rows[i, : b.shape[0]] = a, b
        return a_rows, b_rows

    @contextmanager
    def rows(self, rows: list[str]):
        """Within the block, row i of every batch gets adapter rows[i] (a name not in the bank: none)."""
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
