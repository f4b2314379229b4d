"""The PEFT zoo, multiplicative/orthogonal: methods that rotate, reflect or rescale the frozen weights (or
multiply them elementwise) instead of adding an independent update. One table row per method."""
from __future__ import annotations

from peftcompare.core.methods.zoo_common import Zoo, register

_ORTHO = "multiplicative/orthogonal"
_NO_CONV1D = ("PEFT implements it for torch.nn.Linear layers only, not the Conv1D layers of GPT-2-style "
              "decoders")
_ENCODER_DECODER = ("seq2seq", "encoder")

for row in [
    Zoo("oft", "OFT", "OFTConfig", "oft_block_size", "block size", (8, 32, 64, 128), 1024, (4, 8), 32, _ORTHO,
        "Controlling Text-to-Image Diffusion by Orthogonal Finetuning (arXiv:2306.07280)",
        "Each weight's inputs rotated by a trained block-diagonal orthogonal matrix (Cayley-parametrised).",
        "#d73027", fixed={"r": 0}, works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("boft", "BOFT", "BOFTConfig", "boft_block_size", "block size", (2, 8, 32, 64), 1024, (2, 4), 8, _ORTHO,
        "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization (arXiv:2311.06243)",
        "An orthogonal rotation of each weight built as a product of sparse butterfly blocks.", "#f46d43",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("hra", "HRA", "HRAConfig", "r", "Householder reflections", (2, 8, 16, 64), 1024, (2, 4), 12, _ORTHO,
        "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection Adaptation "
        "(arXiv:2405.17484)",
        "Each weight multiplied by a chain of r trained Householder reflections.", "#fdae61",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    # its size is a variant (road_1, road_2, road_4: 18k, 37k, 74k on flan-t5-small), not a number a capacity
    # can range over: PEFT's default road_1, without a knob
    Zoo("road", "RoAd", "RoadConfig", family=_ORTHO,
        paper="3-in-1: 2D Rotary Adaptation for Efficient Finetuning, Efficient Batching and Composability "
              "(arXiv:2409.00119)",
        help="Each pair of outputs rotated by a trained 2-D rotation and scaled (PEFT's road_1).",
        color="#a50026", works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("psoft", "PSOFT", "PsoftConfig", "r", "rank r of the principal subspace", (32, 64, 128, 256), 1024,
        (4, 8), 64, _ORTHO,
        "Efficient Orthogonal Fine-Tuning with Principal Subspace Adaptation (openreview.net/forum?id=FSHrinMArK)",
        "An r x r orthogonal rotation trained inside each weight's top-r singular subspace.", "#fee090",
        works_on=_ENCODER_DECODER, not_on_reason=_NO_CONV1D),
    Zoo("hira", "HiRA", "HiraConfig", "r", "rank r", (1, 4, 8, 32), 1024, (4, 8), 8, _ORTHO,
        "HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language Models "
        "(openreview.net/pdf?id=TwJrTz9cRS)",
        "The frozen weight multiplied elementwise by a trained low-rank matrix: a high-rank update.", "#e08214"),
    Zoo("deft", "DEFT", "DeftConfig", "r", "rank r", (1, 4, 8, 32), 1024, (4, 8), 8, _ORTHO,
        "no paper linked in PEFT 0.21.2",
        "Part of each weight projected out along r trained directions and a trained injection put in its place.",
        "#b35806"),
]:
    register(row)
