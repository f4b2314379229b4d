"""The PEFT zoo, frequency/sparse: methods that train a few coefficients, spectral (Fourier, wavelet,
circulant) or a sparse set of weight entries. One table row per method."""
from __future__ import annotations

from peftcompare.core.methods.zoo_common import Zoo, is_meta, register

_SPARSE = "frequency/sparse"
_NO_CONV1D = ("PEFT implements it for torch.nn.Linear layers only, not the Conv1D layers of GPT-2-style "
              "decoders")
_ENCODER_DECODER = ("seq2seq", "encoder")


def _per_ten_thousand(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """SuperTuning's size is the share of each weight's entries it trains (sparsity is the rest)."""
    if spec.capacity > 10_000:
        raise ValueError(f"capacity: SuperTuning trains at most 10,000 of every 10,000 entries, got {spec.capacity}")
    return {**kwargs, "sparsity": 1 - spec.capacity / 10_000}


def _per_thousand(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """FRoD's size is the density of its sparse component (sparse_rate); its progress bar stays off in runs."""
    return {**kwargs, "sparse_rate": spec.capacity / 1000, "progressbar": False}


def _shira_mask(config, model) -> None:
    # the random mask's positions are read off a tensor a shapes-only copy does not have; the count is
    # r * (in + out) per layer either way
    if is_meta(model):
        config.mask_fn = None


for row in [
    Zoo("fourierft", "FourierFT", "FourierFTConfig", "n_frequency", "spectral coefficients per layer",
        (1000, 6000, 30000), 1 << 20, (100, 1000), 4096, _SPARSE,
        "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform (arXiv:2405.03003)",
        "n trained coefficients at fixed random frequencies of each weight's 2-D Fourier spectrum.", "#4575b4"),
    Zoo("waveft", "WaveFT", "WaveFTConfig", "n_frequency", "wavelet coefficients per layer", (1000, 6000, 30000),
        1 << 20, (100, 1000), 4096, _SPARSE,
        "Exploring Sparsity for Parameter Efficient Fine Tuning Using Wavelets (arXiv:2505.12532)",
        "n trained coefficients of each weight's update in a wavelet basis.", "#74add1"),
    Zoo("c3a", "C3A", "C3AConfig", "block_size", "circulant block size (fewer parameters as it grows)",
        (8, 32, 64, 128), 4096, (16, 32), 32, _SPARSE,
        "Parameter-Efficient Fine-Tuning via Circular Convolution (arXiv:2407.19342)",
        "Each weight's update a block-circulant matrix: a circular convolution computed with FFTs.", "#313695",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("shira", "SHiRA", "ShiraConfig", "r", "r (r * (in + out) entries per layer)", (1, 4, 8, 32), 1024, (2, 4),
        8, _SPARSE, "Sparse High Rank Adapters (arXiv:2406.13175)",
        "A random sparse set of each weight's entries trains (as many as LoRA at rank r): a high-rank update.",
        "#abd9e9", post=_shira_mask, works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("supertuning", "SuperTuning", "SupertuningConfig", None, "trained entries per 10,000",
        (50, 100, 300, 1500), 10_000, (100, 1000), 300, _SPARSE, "arXiv:2607.09287 (the paper PEFT's "
        "SuperTuning cites)",
        "The largest-magnitude entries of each weight train, the rest stay frozen.", "#542788",
        adjust=_per_ten_thousand, works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("frod", "FRoD", "FrodConfig", None, "sparse entries per 1,000", (1, 10, 50), 1000, (10, 50), 20, _SPARSE,
        "doi.org/10.1609/aaai.v40i31.39813 (AAAI 2026, as PEFT cites it)",
        "A basis shared by the layers of one kind (from a joint decomposition of their weights), with trained "
        "scales and a sparse trained component per layer.", "#8073ac", adjust=_per_thousand,
        method={"reads_weights": True}),
]:
    register(row)
