"""Layer 1, no torch: the run spec, the task and method registries, labels. Imports nothing else of ours."""
