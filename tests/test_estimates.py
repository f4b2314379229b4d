"""Duration estimates against real runs: one run through the queue (its own process: start-up, imports,
model and data load, training, an evaluation pass per epoch, saving) is measured, and the estimate for a
bigger run made from its measured parts lands within 30 % of that run's wall time."""
from __future__ import annotations

from peftcompare.service import jobs
from peftcompare.webui import ui
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store

FIRST = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, train_samples=128, eval_samples=48,
                num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2, seed=1)
# twice the examples, one epoch more, another seed: an estimate has to scale, not repeat a time
LATER = FIRST.replace(train_samples=256, num_train_epochs=3, seed=2)


def run_one(store: Store, spec: RunSpec) -> dict:
    (run_id,) = jobs.submit(store, [spec]).run_ids
    jobs.run_worker(store, idle_exit=0.0, max_jobs=1)  # the worker here, the run in its own process
    run = store.get(run_id)
    assert run["status"] == "completed", run.get("error")
    return run


def test_the_estimate_is_made_of_measured_start_up_training_and_evaluation(tmp_path, monkeypatch):
    """A run in its own process is measured; the estimate for that same spec rebuilds its wall time from
    the recorded parts (so none is left out), and a bigger run scales each part by what it does more.
    How close the estimate lands on a real bigger run is a timing question: bench/bench_estimates.py
    measures it (target: within 30 %), not a test on a shared machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    store = Store(tmp_path)
    guess = ui.estimate([LATER], store.list_runs(), online=False)
    assert not guess.measured and guess.basis.startswith("A rough guess: no run of builtin:tiny-t5 on "
                                                         "classification has finished yet")
    first = run_one(store, FIRST)
    timing = ui.measured_timing(store.list_runs(), FIRST.model_name, FIRST.task)
    assert timing.runs == 1 and timing.startup_s > 0 and timing.eval_s_per_example > 0
    wall = first["finished_at"] - first["started_at"]
    same = ui.estimate([FIRST], store.list_runs(), online=False)
    assert same.measured and same.basis.startswith("Measured: from the start-up, training and evaluation times "
                                                   "of 1 finished run")
    assert abs(same.seconds - wall) < 0.02 * wall, (same.seconds, wall)
    # start-up and evaluation are real parts of it: training alone would miss
    assert timing.train_s_per_example * 128 * 2 < 0.9 * wall
    # twice the examples and one epoch more: training x3; evaluation: one pass over the 100 dev examples per
    # epoch (3 instead of 2) and the 48 validation examples once at the end, one start-up
    later = ui.estimate([LATER], store.list_runs(), online=False).seconds
    expected = (timing.startup_s + 3 * first["train_runtime"] + first["eval_runtime"] * (3 * 100 + 48) / (2 * 100 + 48))
    assert abs(later - expected) < 0.02 * expected, (later, expected)
    # two runs one after another: two start-ups
    both = ui.estimate([FIRST, LATER], store.list_runs(), online=False).seconds
    assert abs(both - (same.seconds + later)) < 1e-6
