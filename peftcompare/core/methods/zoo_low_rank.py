"""The PEFT zoo, additive low-rank: LoRA's variants and the methods that add a small (low-rank, Kronecker,
Hadamard or randomly projected) update to the frozen weights. One table row per method (zoo_common.Zoo).

Counts are for flan-t5-small with q and v adapted (48 layers of 512 -> 384): the reference grids span about
50k to 1.5M trainable parameters where the method can reach them, `budget` is the capacity nearest 300k.
"""
from __future__ import annotations

from peftcompare.core.methods.base import PACK_LORA, SERVE_LORA_BANK, SERVE_PEFT
from peftcompare.core.methods.zoo_common import Zoo, is_meta, register, trainable_rank, vector_length

_LORA_FIELDS = ("lora_alpha", "lora_dropout", "target_modules")
_LOW_RANK = "additive low-rank"
_GRID = (1, 4, 8, 32)  # r for the methods that train r * (in + out) per layer, as LoRA does
_NO_CONV1D = ("PEFT implements it for torch.nn.Linear layers only, not the Conv1D layers of GPT-2-style "
              "decoders")
_ENCODER_DECODER = ("seq2seq", "encoder")


def _lora_settings(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """LoRA's own alpha and dropout, as the spec sets them for LoRA."""
    return {**kwargs, "lora_alpha": spec.lora_alpha, "lora_dropout": spec.lora_dropout}


def _reads_base(init: str):
    """PiSSA and OLoRA start from a decomposition of the weights; a shapes-only copy has none, and LoRA's
    plain initialisation has exactly the same parameters to count."""

    def adjust(spec, model, tokenizer, family, kwargs: dict) -> dict:
        kwargs = _lora_settings(spec, model, tokenizer, family, kwargs)
        return {**kwargs, "init_lora_weights": True if is_meta(model) else init}

    return adjust


def _variant(name, title, color, paper, help_text, serve, fixed=None, adjust=_lora_settings, pack=False, **row):
    # only a variant whose forward is plain LoRA's and that leaves the base weights alone packs (rsLoRA)
    extra = {"pack": PACK_LORA} if pack else {}
    return Zoo(name, title, "LoraConfig", "r", "rank r", _GRID, 1024, (4, 8), 8, _LOW_RANK, paper, help_text,
               color, fixed=fixed or {}, adjust=adjust, method={"fields": _LORA_FIELDS, "serve": serve, **extra},
               **row)


# LoRA's variants, each its own method. rsLoRA changes only the scale (alpha / sqrt(r)), which the LoRA bank
# applies exactly; DoRA's magnitude vector cannot join a mixed batch (PEFT refuses adapter_names with DoRA),
# and PiSSA / OLoRA rewrite the base weights they adapt when they load: those are served one at a time.
for row in [
    _variant("dora", "DoRA", "#2f4b7c", "DoRA: Weight-Decomposed Low-Rank Adaptation (arXiv:2402.09353)",
             "LoRA on the direction of each weight, with a learned magnitude per output.", SERVE_PEFT,
             fixed={"use_dora": True}),
    _variant("rslora", "rsLoRA", "#6a8fd0",
             "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA (arXiv:2312.03732)",
             "LoRA scaled by alpha / sqrt(r) instead of alpha / r, so high ranks keep learning.", SERVE_LORA_BANK,
             fixed={"use_rslora": True}, pack=True),
    _variant("pissa", "PiSSA", "#00429d",
             "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models "
             "(arXiv:2404.02948)",
             "LoRA started from the top singular vectors of each weight (the rest stays frozen).", SERVE_PEFT,
             adjust=_reads_base("pissa")),
    _variant("olora", "OLoRA", "#93c4d2",
             "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models (arXiv:2406.01775)",
             "LoRA started from an orthonormal (QR) basis of each weight.", SERVE_PEFT, adjust=_reads_base("olora"),
             works_on=_ENCODER_DECODER,
             not_on_reason="PEFT's OLoRA initialisation mis-shapes GPT-2's transposed Conv1D weights"),
]:
    register(row)

for row in [
    Zoo("loha", "LoHa", "LoHaConfig", "r", "rank r", (1, 2, 4, 16), 1024, (2, 4), 4, _LOW_RANK,
        "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning (arXiv:2108.06098)",
        "The Hadamard product of two low-rank products added to each weight.", "#7b3294",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("lokr", "LoKr", "LoKrConfig", "r", "rank r", (1, 4, 16), 1024, (2, 4), 16, _LOW_RANK,
        "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation "
        "(arXiv:2309.14859)",
        "A Kronecker product of a small factor and a low-rank factor added to each weight (49k at most on "
        "flan-t5-small).", "#c2a5cf", works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("vera", "VeRA", "VeraConfig", "r", "rank r (shared random projections)", (256, 1024, 4096), 16384,
        (16, 64), 4096, _LOW_RANK, "VeRA: Vector-based Random Matrix Adaptation (arXiv:2310.11454)",
        "Frozen random projections shared by every layer, scaled by two trained vectors per layer (215k at "
        "r=4096 on flan-t5-small; the projections are stored with the adapter).", "#008837"),
    Zoo("pvera", "PVeRA", "PveraConfig", "r", "rank r (shared random projections)", (256, 1024, 4096), 16384,
        (16, 64), 3000, _LOW_RANK, "arXiv:2512.07703 (the paper PEFT's PVeRA cites)",
        "VeRA with a probabilistic reparametrisation of its scaling vectors.", "#a6dba0"),
    Zoo("randlora", "RandLoRA", "RandLoraConfig", "r", "rank of each random basis (fewer parameters as it "
        "grows)", (4, 16, 32, 128), 1024, (8, 16), 32, _LOW_RANK,
        "RandLoRA: Full-rank parameter-efficient fine-tuning of large models (arXiv:2502.00987)",
        "A full-rank update built from many frozen random low-rank bases, each scaled by trained diagonals.",
        "#5aae61"),
    Zoo("delora", "DeLoRA", "DeloraConfig", "r", "rank r", _GRID, 1024, (4, 8), 8, _LOW_RANK,
        "Decoupling Angles and Strength in Low-rank Adaptation (arXiv:2503.18225)",
        "A normalised low-rank update with a learned strength per layer (its angle and size decoupled).",
        "#1b7837", works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("vblora", "VB-LoRA", "VBLoRAConfig", "num_vectors", "vectors in the shared bank", (32, 128, 256, 1024),
        8192, (8, 32), 256, _LOW_RANK,
        "VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks (arXiv:2405.15179)",
        "Every low-rank factor assembled from a shared bank of vectors, each piece a top-k mix of them.",
        "#762a83", adjust=vector_length),
    Zoo("gralora", "GraLoRA", "GraloraConfig", "r", "rank r (even)", (2, 8, 16, 32), 1024, (4, 8), 8, _LOW_RANK,
        "GraLoRA: Granular Low-Rank Adaptation for Parameter-Efficient Fine-Tuning (arXiv:2505.20355)",
        "Each weight split into a 2 x 2 grid of blocks, each with its own LoRA of rank r/2.", "#9970ab"),
    Zoo("lily", "Lily", "LilyConfig", "r", "rank r", (2, 4, 16, 64), 1024, (4, 8), 8, _LOW_RANK,
        "Low-Rank Interconnected Adaptation across Layers (arXiv:2407.09946)",
        "Low-rank projectors per layer that share a few up-projections across layers.", "#de77ae",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("tinylora", "TinyLoRA", "TinyLoraConfig", "u", "trained vector length u", (1024, 6000, 30000), 1 << 20,
        (16, 64), 6000, _LOW_RANK, "Learning to Reason in 13 Parameters (arXiv:2602.04118)",
        "One small trained vector per layer, projected by fixed random tensors into a rank-2 update of the "
        "weight's own singular vectors (the update's rank stays 2 however long u is).", "#f1b6da"),
    Zoo("peanut", "PEANuT", "PeanutConfig", "r", "rank r", _GRID, 1024, (4, 8), 8, _LOW_RANK,
        "PEANuT: Parameter-Efficient Adaptation with Weight-aware Neural Tweakers (arXiv:2410.01870)",
        "A small network that reads the frozen weight and produces its update.", "#8c510a",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("glora", "GLoRA", "GloraConfig", "r", "rank r", (1, 2, 4, 16), 1024, (2, 4), 4, _LOW_RANK,
        "One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning (arXiv:2306.07967)",
        "A generalised update W + W*A + B (and a shifted bias), each part low-rank, a vector or a constant.",
        "#bf812d", works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("unilora", "Uni-LoRA", "UniLoraConfig", "theta_d_length", "length of the one trained vector",
        (4096, 32768, 131072), 1 << 22, (64, 256), 131072, _LOW_RANK,
        "Uni-LoRA: One Vector Is All You Need (arXiv:2506.00799)",
        "Every LoRA parameter of the model (rank 4) drawn from one trained vector through a fixed random "
        "projection.", "#dfc27d"),
    Zoo("adamss", "AdaMSS", "AdamssConfig", "subspace_rank", "rank of each subspace", (1, 8, 32), 512, (1, 4), 8,
        _LOW_RANK, "no paper linked in PEFT 0.21.2",
        "The weight's top singular space clustered into subspaces, each with its own trained low-rank update "
        "(counts depend on the clustering of the weights).", "#80cdc1",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D, method={"reads_weights": True}),
    Zoo("osf", "OSF", "OSFConfig", None, "trained rank (of each weight's SVD)", _GRID, 1024, (4, 8), 8, _LOW_RANK,
        "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning (arXiv:2504.07097)",
        "Each weight's top singular directions frozen, its r lowest trained (U, S and V of that subspace).",
        "#35978f", adjust=trainable_rank, works_on=_ENCODER_DECODER,
        not_on_reason="on GPT-2's transposed Conv1D layers PEFT's OSF leaves nothing that takes a gradient"),
    Zoo("miss", "MiSS", "MissConfig", "r", "rows of the shared shard", (4, 16, 32, 64), 1024, (4, 8), 16, _LOW_RANK,
        "MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing (arXiv:2409.15371)",
        "One small trained shard per layer, repeated across the weight as its update.", "#01665e",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
]:
    register(row)
