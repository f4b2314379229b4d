"""Compare, as the CLI and the pages call it: one engine holding one base model in memory, serving every
adapter beside the zero-shot model (engine/compare.py), and the validation examples Compare offers.

Torch-free at import; the engine is built on first use.
"""
from __future__ import annotations

from peftcompare.core.spec import RunSpec
from peftcompare.service import disagreements
from peftcompare.service.system import import_stack


def open_engine(store, precision: str = "auto"):
    """A CompareEngine on `store`'s adapters. Keep it: it caches the base model and the loaded adapters."""

    import_stack()
    from peftcompare.engine.compare import CompareEngine

    return CompareEngine(store, precision=precision)


def validation_examples(spec: RunSpec) -> list[tuple[str, str]]:
    """(text, reference) of every validation example of the spec's data."""

    return disagreements.validation_examples(spec)
