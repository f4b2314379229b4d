"""Run planning: what a sweep is, what is left to run, whether a spec can run, what it will train.

The CLI, the Train page, presets and the queue all plan through here, so a grid means the same thing
everywhere. Torch-free at import: the checks that need a model import the engine inside the function
(the one downward reach the service layer allows).
"""
from __future__ import annotations

import itertools

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec, offline_recipe
from peftcompare.service import policy as public
from peftcompare.service.system import import_stack


# -- grids ----------------------------------------------------------------------------------------------
def sweep_specs(base: RunSpec, method_names: list[str], seeds: list[int],
                capacities: dict[str, list[int]] | None = None, knobs: dict[str, list[int]] | None = None,
                zero_shot: bool = True, learning_rates: list[float] | None = None,
                method_rates: bool = False) -> list[RunSpec]:
    """methods x capacities x learning rates x seeds, plus one zero-shot baseline (first seed).

    A method's capacities are, in order: `capacities[name]`; the values given for its sweep knob
    (`knobs`, e.g. {"rank": [4, 8], "tokens": [10, 20]}: the CLI's --lora_ranks / --virtual_tokens); its
    reference grid. Methods without a capacity knob run once per seed. `learning_rates` (a search) gives
    every (method, capacity, seed) one run per rate; without it each method trains at the base spec's rate,
    or with `method_rates` at its own default (`default_learning_rate`)."""
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    specs = [base.replace(method=methods.BASELINE, seed=seeds[0])] if zero_shot else []
    for name in method_names:
        m = methods.get_method(name)
        if not m.trains:
            continue
        if capacities and name in capacities:
            caps = list(capacities[name])
        elif knobs and m.sweep_knob in knobs:
            caps = list(knobs[m.sweep_knob])
        elif m.capacity_name:
            caps = list(m.capacities)
        else:
            caps = [0]
        rates = (list(learning_rates) if learning_rates else
                 [default_learning_rate(name, base)] if method_rates else [base.learning_rate])
        for cap, lr, seed in itertools.product(caps, rates, seeds):
            specs.append(base.replace(method=name, capacity=cap or base.capacity, seed=seed, learning_rate=lr))
    return specs


def default_learning_rate(method: str, base: RunSpec) -> float:
    """A method's learning rate where none is asked for: its registration's (Method.learning_rate), or on a
    built-in tiny model the offline recipe's for that method (Method.tiny_recipe where it has one)."""
    recipe = offline_recipe(base.model_name, base.task, method)
    return float(recipe.get("learning_rate", methods.get_method(method).learning_rate))


def grid_specs(base: RunSpec, method_names: list[str], capacities: dict[str, list[int]] | list[int],
               seeds: list[int], zero_shot: bool, learning_rates: list[float] | None = None,
               method_rates: bool = False) -> list[RunSpec]:
    """The Train page's sweep form: like `sweep_specs`, with every capacity checked in the user's words and
    duplicates (the same experiment asked twice) dropped. `capacities`: per method, or one list for all."""
    if not method_names and not zero_shot:
        raise ValueError("methods: choose at least one method")
    with_knob = [m for m in method_names if methods.get_method(m).capacity_name]
    per = capacities if isinstance(capacities, dict) else {m: list(capacities) for m in with_knob}
    for name in with_knob:
        m = methods.get_method(name)
        caps = list(per.get(name) or [])
        if not caps:
            raise ValueError(f"capacities for {m.title}: give at least one {m.capacity_name}")
        for c in caps:
            if c <= 0:
                raise ValueError(f"capacities for {m.title}: {m.capacity_name} must be at least 1, got {c}")
            if c > m.max_capacity:
                raise ValueError(f"capacities for {m.title}: {m.capacity_name} must be at most {m.max_capacity}, "
                                 f"got {c}")
    for lr in learning_rates or []:
        if not lr > 0:
            raise ValueError(f"learning rates: each must be > 0, got {lr}")
    specs = sweep_specs(base, method_names, seeds, capacities={n: list(per[n]) for n in with_knob},
                        zero_shot=zero_shot, learning_rates=learning_rates, method_rates=method_rates)
    return list({s.spec_hash(): s for s in specs}.values())


def pending(store, specs: list[RunSpec]) -> list[RunSpec]:
    """The specs the store does not hold a completed run of (an interrupted sweep resumes here)."""
    return [s for s in specs if store.find_completed(s) is None]


def delete_run(store, run_id: str) -> None:
    """Delete a finished run and its files (refused on a public instance, and for a queued or running run)."""
    public.check_delete()
    store.delete(run_id)


# -- checks before anything is written ------------------------------------------------------------------
def preflight(spec: RunSpec) -> RunSpec:
    """The resolved spec, or ValueError with one line (model, family vs task, precision vs machine,
    method vs model, data files and columns)."""
    import_stack()  # a threaded server: transformers' lazy module must not initialise twice at once
    from peftcompare.engine import preflight as checks

    return checks.preflight(spec)


def preflight_all(specs: list[RunSpec]) -> list[RunSpec]:
    """`preflight` for a whole grid before any of it runs or is queued (each data source read once)."""
    import_stack()  # a threaded server: transformers' lazy module must not initialise twice at once
    from peftcompare.engine import preflight as checks

    return checks.preflight_all(specs)


def check_model(spec: RunSpec) -> None:
    """The model- and machine-dependent part of preflight (no data read)."""
    import_stack()  # a threaded server: transformers' lazy module must not initialise twice at once
    from peftcompare.engine import preflight as checks

    checks.check_model(spec.resolved())


def count_parameters(spec: RunSpec) -> tuple[int, int]:
    """(trainable, total) parameters of `spec`'s method on its model, exact, without loading weights:
    the method is applied to a shapes-only copy of the model (what `params` and the Train page show), or to
    the model itself for a method whose initialisation reads the weights (Method.reads_weights)."""
    import_stack()
    from peftcompare.engine import models
    from peftcompare.engine.train import prepare_model

    spec = spec.resolved()
    models.check_model_name(spec.model_name)
    loaded = models.load_model(spec.model_name, meta=not methods.get_method(spec.method).reads_weights)
    return models.count_parameters(prepare_model(spec, loaded, total_steps=100))
