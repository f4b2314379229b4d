"""Layer 2, the only layer importing torch/transformers/peft at module level: families, models, data,
training, evaluation, the adapter contract and the comparison engine. Imports core only."""
