"""Replacements for modules that cost far more than their arithmetic: dropout, the tanh GELU, T5's norm.

Both keep the model's function. Dropout on a CPU spends its time in the serial Mersenne-Twister that
draws one number per element (a quarter of a flan-t5-small LoRA step on 2 cores, more than every
matmul of the backward pass); `PoolDropout` draws its keep-masks as windows at random offsets of a pool
of dropout noise drawn once, so dropout costs one multiplication. Each element is still dropped
with probability p (to 1/65536) independently of the others in the same call, and the pool and the
offsets come from torch's seeded generator, so a run stays reproducible. transformers' `gelu_new` is
eight elementwise passes in Python; `F.gelu(approximate="tanh")` is the same formula in one kernel
(equal in fp32 to 1.2e-7; in bf16 it rounds once instead of after every step). T5's RMSNorm becomes
one autograd function that, under autocast, returns its output already cast (see _NormToAutocast).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

POOL_MIN = 1 << 20  # entries


class _NoisePool:
    """Per (p, dtype, device): a tensor of dropout noise, 0 with probability p and 1/(1-p) otherwise, in
    the input's dtype, as nn.Dropout computes it. A call takes a window at a random offset.

    The pool is drawn from its own generator seeded by torch's seed, and a mask of n elements only ever
    uses the pool's first pool_size(n) entries (the same prefix however large the pool has grown), so
    masks depend on the seed and the sequence of calls alone, as torch's own dropout does: a second run
    with the same seed in the same process gets the same masks."""

    def __init__(self) -> None:
        self.pools: dict[tuple, torch.Tensor] = {}
        self.seed: int | None = None

    def window(self, n: int, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        seed = torch.initial_seed()
        if seed != self.seed:
            self.pools.clear()
            self.seed = seed
        size = pool_size(n)
        key = (p, dtype, device)
        pool = self.pools.get(key)
        if pool is None or pool.numel() < size:
            pool = self.pools[key] = _noise(size, p, dtype, device, seed)
        start = int(torch.randint(0, size - n + 1, (1,)))
        return pool[start:start + n]


def pool_size(n: int) -> int:
    """At least four times the mask, a power of two: offsets from a range three masks wide."""
    return max(POOL_MIN, 1 << (4 * n - 1).bit_length())


def _noise(size: int, p: float, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed((seed + round(p * 65536)) % 2**63)
    # an int64 draw carries 63 random bits: the low three 16-bit words of each are uniform
    words = torch.empty((size + 2) // 3, dtype=torch.int64, device=device).random_(generator=gen)
    bits = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:size]
    return (bits >= round(p * 65536) - 32768).to(dtype).div_(1 - p)


_POOL = _NoisePool()


def dropout_noise(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Noise of the given shape: 0 with probability p (p rounded to a multiple of 1/65536), else 1/(1-p)."""
    return _POOL.window(math.prod(shape), p, dtype, device).view(shape)


class PoolDropout(nn.Dropout):
    """nn.Dropout with pooled random masks; same p, same scaling by 1/(1-p), identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p == 1.0:  # CUDA's dropout is already a fused kernel
            return super().forward(x)
        return x * dropout_noise(x.shape, self.p, x.dtype, x.device)


def swap_dropout(model: nn.Module) -> int:
    """Turn every nn.Dropout with p > 0 into a PoolDropout in place (the class only; p stays). Returns
    how many. Attention-probability dropout inside scaled_dot_product_attention is left to torch."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Dropout and module.p > 0:
            module.__class__ = PoolDropout
            n += 1
    return n


def lora_inputs_in_autocast_dtype(model: nn.Module) -> int:
    """Under autocast, stop PEFT from casting a LoRA layer's bf16 input up to its fp32 weights' dtype:
    autocast casts it straight back to bf16 for lora_A, so the round trip costs two copies per layer and
    changes nothing but where LoRA's dropout multiplies (in bf16, as torch's own dropout does on a bf16
    tensor). Returns how many layers."""
    n = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "_cast_input_dtype"):
            module.cast_input_dtype_enabled = False
            n += 1
    return n


def count_pooled(model: nn.Module) -> int:
    return sum(isinstance(m, PoolDropout) for m in model.modules())


def fuse_gelu(model: nn.Module) -> int:
    """Replace transformers' Python tanh-GELU modules with the fused kernel. Returns how many."""
    try:
        from transformers.activations import GELUTanh, NewGELUActivation
    except ImportError:  # an older transformers: keep what the model has
        return 0
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                n += 1
    return n


class _RMSNorm(torch.autograd.Function):
    """T5's RMSNorm, y = w * x / sqrt(mean(x^2) + eps), in three passes forward and five backward
    (autograd's chain of pow, mean, add, rsqrt and two multiplications makes about twice as many)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, r)
        return torch.mul(x, r).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        gw = grad * weight
        # d/dx of x*r: r * (gw - x * r^2 * mean(gw * x))
        dot = torch.linalg.vecdot(gw, x).unsqueeze(-1).mul_(r.pow(3)).div_(x.shape[-1])
        gx = gw.mul_(r).sub_(x * dot)
        gweight = None
        if ctx.needs_input_grad[1]:
            gweight = (grad * x * r).reshape(-1, x.shape[-1]).sum(0)
        return gx, gweight, None


class _NormToAutocast:
    """Mixin for T5's RMSNorm: the fused function above, and under autocast the output handed over
    already in the autocast dtype. Every reader of a T5 norm's output is a Linear (q, k, v, the
    feed-forward's wi, cross-attention's k and v, lm_head), each of which would cast the same fp32 tensor
    again: one cast instead of up to 16."""

    def forward(self, hidden_states):
        if hidden_states.dtype != torch.float32 or self.weight.dtype != torch.float32:
            out = super().forward(hidden_states)  # the original's half-precision handling
        else:
            out = _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
        device = out.device.type
        if torch.is_autocast_enabled(device):
            return out.to(torch.get_autocast_dtype(device))
        return out


@functools.lru_cache(maxsize=None)
def _norm_class(base: type) -> type:
    return type(f"{base.__name__}ToAutocast", (_NormToAutocast, base), {})


def cast_norm_outputs(model: nn.Module) -> int:
    """Give T5 norms the _NormToAutocast behaviour (class swap, weights untouched). Returns how many."""
    try:
        from transformers.models.t5.modeling_t5 import T5LayerNorm
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if type(module) is T5LayerNorm:
            module.__class__ = _norm_class(T5LayerNorm)
            n += 1
    return n
