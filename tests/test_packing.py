"""Packed training (engine/packing.py): K runs in one pass over a shared frozen model give what each run gives
alone, each run ends on its own, and the queue and the CLI train packs."""
from __future__ import annotations

import math
import re

import pytest

from peftcompare.core import packs
from peftcompare.engine import adapters, packing
from peftcompare.service import execution, jobs
from peftcompare.service.store import PACK_ALONE, Store
from pipeline_helpers import cli, tiny_spec

EXACT = dict(precision="fp32", lora_dropout=0.0, num_train_epochs=2, train_samples=32, eval_samples=16,
             dev_samples=16)
SCORES = ("f1", "accuracy", "mean_probability", "f1_generate", "accuracy_generate")


def _alone(tmp_path, specs):
    store = Store(tmp_path / "alone")
    out = []
    for spec in specs:
        run_id = store.create_run(spec, status="running")
        assert execution.execute(spec, store, run_id) == 0, store.get(run_id)["error"]
        out.append({**store.get(run_id), "answers": store.examples(run_id)})
    return out


def _packed(tmp_path, specs, name="packed"):
    store = Store(tmp_path / name)
    run_ids = [store.create_run(spec, status="running") for spec in specs]
    codes = execution.execute_pack(specs, store, run_ids)
    return store, run_ids, codes


def _same(alone: dict, packed: dict, tol: float, store: Store | None = None) -> None:
    assert packed["status"] == "completed", packed["error"]
    assert packed["trainable_params"] == alone["trainable_params"] and packed["total_params"] == alone["total_params"]
    assert packed["best_epoch"] == alone["best_epoch"]
    scores = [k for k in (*SCORES, "rougeL", "eval_loss") if k in alone["metrics"]]
    assert scores and all(k in packed["metrics"] for k in scores)
    for k in scores:
        assert math.isclose(packed["metrics"][k], alone["metrics"][k], abs_tol=tol), (k, packed["metrics"],
                                                                                      alone["metrics"])
    # each epoch's selection score too, not only the chosen one
    for a, b in zip(alone["epochs"], packed["epochs"]):
        keys = [k for k in ("dev_mean_probability", "mean_probability", "dev_rougeL", "dev_eval_loss") if k in a]
        assert keys and all(math.isclose(a[k], b[k], abs_tol=tol) for k in keys), (a, b)
    if store is not None:  # every example's answer, not only the averages
        answers = store.examples(packed["run_id"])
        assert answers["key"] == alone["answers"]["key"]
        assert answers["prediction"] == alone["answers"]["prediction"]
        assert answers.get("generated") == alone["answers"].get("generated")


@pytest.mark.parametrize("kind, runs", [
    ("lora ranks and seeds", [("lora", 4, 1), ("lora", 8, 2), ("lora", 8, 3), ("rslora", 16, 1)]),
    ("prompt tokens", [("prompt", 4, 1), ("prompt", 8, 2), ("prompt", 6, 3)]),
    ("prefix seeds", [("prefix", 4, 1), ("prefix", 4, 2), ("prefix", 4, 3)]),
])
def test_a_packed_run_equals_the_run_alone_in_fp32(tmp_path, kind, runs):
    specs = [tiny_spec(method=m, capacity=c, seed=s, **EXACT) for m, c, s in runs]
    assert len({packs.pack_key(s) for s in specs}) == 1
    alone = _alone(tmp_path, specs)
    store, run_ids, codes = _packed(tmp_path, specs)
    assert codes == [0] * len(specs)
    for a, run_id in zip(alone, run_ids):
        b = store.get(run_id)
        _same(a, b, 1e-5, store)
        assert b["fast_paths"]["packed"]["runs"] == len(specs) and run_id not in b["fast_paths"]["packed"]["with"]
        assert b["fast_paths"]["packed"]["evaluation"] == "packed"
        # a packed run's adapter is an ordinary adapter: it reloads alone and gives its recorded score
        rec = adapters.read_adapter(b["adapter_dir"])
        assert rec["run_id"] == run_id and adapters.load_adapter_model(b["adapter_dir"]) is not None
    # the runs really differ: the comparison above would prove nothing if they all gave the same scores
    assert len({round(store.get(r)["metrics"]["mean_probability"], 5) for r in run_ids}) == len(specs)


def test_bf16_packing_differs_from_alone_only_by_rounding(tmp_path):
    specs = [tiny_spec(method="lora", capacity=c, seed=s, **{**EXACT, "precision": "bf16"}) for c, s in [(4, 1), (8, 2)]]
    try:
        alone = _alone(tmp_path, specs)
    except AssertionError as exc:  # a CPU without bf16 refuses the spec in one line: nothing to compare
        pytest.skip(f"bf16 is not available here: {exc}")
    store, run_ids, codes = _packed(tmp_path, specs)
    assert codes == [0, 0]
    for a, run_id in zip(alone, run_ids):
        b = store.get(run_id)
        assert b["status"] == "completed"
        assert math.isclose(b["metrics"]["mean_probability"], a["metrics"]["mean_probability"], abs_tol=5e-3)


@pytest.mark.parametrize("method, capacities, protocol", [
    ("lora", (4, 8), {}), ("prompt", (4, 8), {}), ("prefix", (4, 4), {}),
    ("lora", (4, 8), {"selection_metric": "loss"}),
])
def test_summarization_packs_and_generates_per_run(tmp_path, method, capacities, protocol):
    """Generation packed: every decoding step routes each row through its own run's adapter, prompt or prefix."""
    specs = [tiny_spec(task="summarization", method=method, capacity=c, seed=s, precision="fp32", lora_dropout=0.0,
                       dev_samples=4, num_train_epochs=2, **protocol) for c, s in zip(capacities, (1, 2))]
    alone = _alone(tmp_path, specs)
    store, run_ids, codes = _packed(tmp_path, specs)
    assert codes == [0, 0]
    for a, run_id in zip(alone, run_ids):
        _same(a, store.get(run_id), 1e-5, store)
    assert store.examples(run_ids[0])["prediction"] != store.examples(run_ids[1])["prediction"]


@pytest.mark.parametrize("protocol", [{"selection": "validation"}, {"selection_metric": "loss"}])
def test_a_pack_evaluates_under_every_selection_protocol_as_its_runs_alone(tmp_path, protocol):
    specs = [tiny_spec(method="lora", capacity=c, seed=s, **{**EXACT, **protocol}) for c, s in [(4, 1), (8, 2)]]
    alone = _alone(tmp_path, specs)
    store, run_ids, codes = _packed(tmp_path, specs)
    assert codes == [0, 0]
    for a, run_id in zip(alone, run_ids):
        _same(a, store.get(run_id), 1e-5, store)


def test_the_runs_of_a_pack_are_evaluated_in_one_pass(tmp_path, monkeypatch):
    """Each evaluation batch holds every run's rows: 3 runs of 16 dev and 16 validation examples at an evaluation
    batch of 8 make 2 stacked batches of 24 rows a pass, not 6 batches of 8."""
    from peftcompare.engine.families.seq2seq import Seq2SeqFamily

    rows = []
    real = Seq2SeqFamily.label_logprobs

    def counting(self, model, batch, label_ids, **kw):
        rows.append(batch["input_ids"].shape[0])
        return real(self, model, batch, label_ids, **kw)

    monkeypatch.setattr(Seq2SeqFamily, "label_logprobs", counting)
    specs = [tiny_spec(method="lora", capacity=c, seed=s, **EXACT) for c, s in [(4, 1), (8, 2), (8, 3)]]
    store, run_ids, codes = _packed(tmp_path, specs)
    assert codes == [0, 0, 0]
    # two epochs' dev passes and the final validation pass, two stacked batches each
    assert rows == [24] * 6


def test_a_failed_packed_evaluation_falls_back_to_each_run_alone(tmp_path, monkeypatch, capsys):
    """A stacked evaluation batch is K times a run's: should its pass fail (out of memory), each run evaluates
    by itself, the record says so, and the numbers are the same."""
    specs = [tiny_spec(method="lora", capacity=c, seed=s, **EXACT) for c, s in [(4, 1), (8, 2)]]
    alone = _alone(tmp_path, specs)

    def no_room(self, parts):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(packing._PackRows, "answering", no_room)
    store, run_ids, codes = _packed(tmp_path, specs)
    assert codes == [0, 0]
    for a, run_id in zip(alone, run_ids):
        b = store.get(run_id)
        _same(a, b, 1e-5, store)
        assert b["fast_paths"]["packed"]["evaluation"].startswith("alone: the packed pass failed (out of memory")
    assert capsys.readouterr().out.count("each run evaluates alone") == 2  # once a run: later passes go alone


class _FailingEpoch(execution.StoreReporter):
    def epoch(self, epochs):
        raise OSError("the store went away while this run reported its epoch")


def test_a_run_cancelled_or_failing_inside_a_pack_leaves_the_others_training(tmp_path, monkeypatch):
    specs = [tiny_spec(method="lora", capacity=c, seed=s, **EXACT) for c, s in [(4, 1), (8, 2), (8, 3)]]
    store = Store(tmp_path / "home")
    run_ids = [store.create_run(spec, status="running") for spec in specs]
    store.request_cancel(run_ids[0])  # seen at its first flush
    real = execution.StoreReporter

    def reporter(store_, run_id, progress=None, **kw):
        return (_FailingEpoch if run_id == run_ids[1] else real)(store_, run_id, progress, **kw)

    monkeypatch.setattr(execution, "StoreReporter", reporter)
    codes = execution.execute_pack(specs, store, run_ids)
    assert codes == [3, 1, 0]
    cancelled, failed, done = (store.get(r) for r in run_ids)
    assert cancelled["status"] == "cancelled" and cancelled["adapter_dir"] is None
    assert failed["status"] == "failed" and "store went away" in failed["error"]
    assert done["status"] == "completed" and done["epochs"][-1]["epoch"] == 2
    assert not list((store.home / "adapters").glob(".tmp-*"))  # no staging left behind


def test_a_pack_on_a_model_it_cannot_train_right_trains_its_runs_one_after_another(tmp_path):
    """A causal LM shifts its loss by a token and an encoder classifies whole rows: packs are for encoder-decoders.
    Queued as a pack, such runs train each by itself, exactly as alone, and their records say why."""
    for model, kind in (("builtin:tiny-gpt2", "decoder-only"), ("builtin:tiny-bert", "encoder-only")):
        specs = [tiny_spec(model_name=model, method="lora", capacity=c, seed=1, **EXACT) for c in (4, 8)]
        store = Store(tmp_path / kind)
        run_ids = [store.create_run(spec, status="running") for spec in specs]
        assert execution.execute_pack(specs, store, run_ids) == [0, 0]
        packed = [store.get(r) for r in run_ids]
        assert all(r["status"] == "completed" for r in packed)
        assert all(f"{kind} model" in r["fast_paths"]["packed"]["alone"] for r in packed)
        if kind == "decoder-only":  # the same numbers as the run trained by itself
            solo_id = Store(tmp_path / "solo").create_run(specs[0], status="running")
            assert execution.execute(specs[0], Store(tmp_path / "solo"), solo_id) == 0
            solo = Store(tmp_path / "solo").get(solo_id)
            assert solo["metrics"]["mean_probability"] == packed[0]["metrics"]["mean_probability"]
    with pytest.raises(ValueError, match="encoder-decoder"):
        packing.run_pack(specs, [None, None])


def test_plan_packs_groups_what_can_train_together():
    lora = [tiny_spec(method="lora", capacity=c, seed=1) for c in (4, 8, 16)]
    # prompts pack at one length only (padding to the longest cost more than packing saved: bench_pack.py)
    prompt = [tiny_spec(method="prompt", capacity=c, seed=s) for c, s in [(4, 1), (8, 1), (4, 2)]]
    other = tiny_spec(method="ia3")
    steps = tiny_spec(method="lora", capacity=4, budget="steps", budget_value=3)
    planned = packs.plan_packs([*lora, other, *prompt, steps], 2)
    assert [[(s.method, s.capacity) for s in p] for p in planned] == [
        [("lora", 4), ("lora", 8)], [("ia3", 8)], [("prompt", 4), ("prompt", 4)], [("lora", 4)], [("lora", 16)],
        [("prompt", 8)]]
    assert "trains alone" in packs.why_alone(other) and "budget" in packs.why_alone(steps)
    assert "virtual tokens" in packs.alone_reason(prompt[1]) and packs.why_alone(prompt[1]) == ""
    assert packs.pack_key(prompt[0]) == packs.pack_key(prompt[1])  # the engine can still pack them (tested above)
    assert packs.plan_packs(lora, 1) == [[s] for s in lora]
    # prefixes join the decoder's cache, whose rows share one length: the engine packs one length only
    prefix = [tiny_spec(method="prefix", capacity=c, seed=s) for c, s in [(4, 1), (8, 1), (4, 2)]]
    assert packs.pack_key(prefix[0]) == packs.pack_key(prefix[2]) != packs.pack_key(prefix[1])
    assert [[(s.capacity, s.seed) for s in p] for p in packs.plan_packs(prefix, 4)] == [[(4, 1), (4, 2)], [(8, 1)]]


def test_sweep_pack_on_the_command_line(tmp_path):
    home = tmp_path / "home"
    args = ["sweep", "--model_name", "builtin:tiny-t5", "--methods", "lora", "ia3", "--lora_ranks", "4", "8",
            "--seeds", "1", "--train_samples", "32", "--eval_samples", "8", "--dev_samples", "16",
            "--num_train_epochs", "1", "--no_zero_shot"]
    proc = cli(*args, "--pack", "4", home=home, check=True)
    assert re.search(r"^\[\d-\d/3\] classification lora 4", proc.stdout, re.M), proc.stdout  # two runs, one line each
    for rank in (4, 8):  # both runs log to one terminal: every line of a packed run names it
        assert re.search(rf"^\[lora {rank} · seed 1\] epoch 1: loss ", proc.stdout, re.M), proc.stdout
    assert len(re.findall(r"^epoch 1: loss ", proc.stdout, re.M)) == 1  # ia3's: it trained alone
    runs = {(r["method"], r["capacity"]): r for r in Store(home).list_runs()}
    assert all(r["status"] == "completed" for r in runs.values())
    assert runs[("lora", 4)]["fast_paths"]["packed"]["runs"] == 2
    assert "alone" in runs[("ia3", 0)]["fast_paths"]["packed"]
    bad = cli(*args, "--pack", "0", home=home)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "pack" in bad.stderr


def test_the_worker_trains_a_queued_pack_in_one_process(tmp_path):
    store = Store(tmp_path / "home")
    specs = [tiny_spec(method="lora", capacity=c, seed=1, dev_samples=16) for c in (4, 8)] + [tiny_spec(method="ia3")]
    out = jobs.submit(store, specs, pack=4)
    ids = {(store.get(r)["method"], store.get(r)["capacity"]): r for r in out.run_ids}
    lora4, lora8, ia3 = ids[("lora", 4)], ids[("lora", 8)], ids[("ia3", 0)]
    assert store.get(lora4)["pack_id"] == store.get(lora8)["pack_id"] not in (None, PACK_ALONE)
    assert store.get(ia3)["pack_id"] == PACK_ALONE
    assert jobs.run_worker(store, idle_exit=1.0) == 0
    done = {r: store.get(r) for r in out.run_ids}
    assert all(r["status"] == "completed" for r in done.values()), [r["error"] for r in done.values()]
    assert done[lora4]["fast_paths"]["packed"]["with"] == [lora8]
    assert "alone" in done[ia3]["fast_paths"]["packed"]
    assert store.log_path(lora8).read_text() == store.log_path(lora4).read_text()  # one process, one log
