"""Layer 3, torch-free at import: the API the CLI and the pages call (store, queue, planning, policy,
presets, bundles, analysis). Imports core; reaches engine only inside the functions that run models."""
