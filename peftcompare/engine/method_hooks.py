"""The engine side of methods whose change to a model needs torch code (`Method.engine_hooks`).

Core describes methods without importing torch or the engine, not even inside a function; a method that must
patch the model itself (prefix_full's attention prefixes) names, as data, the engine module that does it, and
the engine resolves that name here. Such a module provides

    prepare(spec, model, family) -> None        training: install what trains (after Method.prepare froze all)
    attach(model, spec) -> handle               serving / loading: make the saved tensors' names exist
                                                (handle.detach() puts the base model back)
    merge(model) -> None                        before saving: put the trained tensors in their saved form

A method without `engine_hooks` gets no-ops, so callers need no check of their own.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager

PACKAGE = "peftcompare.engine."


def hooks(method):
    """The engine module a method names, or None."""
    path = getattr(method, "engine_hooks", "") or ""
    if not path:
        return None
    if not path.startswith(PACKAGE):
        raise ValueError(f"method: {method.name}'s engine hooks must live in {PACKAGE[:-1]}, not {path}")
    return importlib.import_module(path)


def prepare(method, spec, model, family) -> None:
    h = hooks(method)
    if h is not None:
        h.prepare(spec, model, family)


def merge(method, model) -> None:
    h = hooks(method)
    if h is not None:
        h.merge(model)


@contextmanager
def attached(method, model, spec):
    """The base model with the method's modules in place for the block (a no-op for other methods)."""
    h = hooks(method)
    handle = h.attach(model, spec) if h is not None else None
    try:
        yield model
    finally:
        if handle is not None:
            handle.detach()


def attach(method, model, spec):
    """Like `attached`, for a model that keeps the modules (load_adapter_model); the handle or None."""
    h = hooks(method)
    return h.attach(model, spec) if h is not None else None
