"""What a run's numbers came from, beyond the spec: a fingerprint of the base model's weights.

A Hub id names a repository, not its weights (they change with its revisions), and a local directory can be
overwritten; the fingerprint says whether two runs started from the same model.
"""
from __future__ import annotations

import hashlib

import torch

FULL_HASH_BYTES = 2 * 2**30  # larger models hash a slice of each tensor (a second per GB would add up)
SLICE = 4096


def model_fingerprint(model) -> str:
    """sha256 (16 hex digits) of the config, the Hub revision when known, and every tensor of the state dict
    (name, shape, dtype and bytes; the first 4096 values of each beyond 2 GB of weights)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
        h.update(str(getattr(config, "_commit_hash", "") or "").encode())
    state = model.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.device.type == "meta":
            continue
        flat = t.detach().reshape(-1)
        if total > FULL_HASH_BYTES:
            flat = flat[:SLICE]
        h.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
