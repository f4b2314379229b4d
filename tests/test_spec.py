import dataclasses
import json

import pytest

from peftcompare.core.spec import RunSpec, field_help, spec_fields


def test_reference_defaults():
    s = RunSpec()
    assert (s.model_name, s.train_samples, s.num_train_epochs, s.learning_rate) == \
        ("google/flan-t5-small", 2000, 3, 5e-4)
    assert (s.per_device_train_batch_size, s.per_device_eval_batch_size, s.seed) == (16, 16, 42)
    assert s.lora_dropout == 0.05 and s.target_modules == "q,v"


def test_resolved_defaults_per_task():
    c = RunSpec(task="classification", method="lora", capacity=32).resolved()
    assert (c.max_source_length, c.max_target_length, c.lora_alpha, c.dataset) == (256, 8, 64, "sst2")
    assert c.prompt_template == "sst2: {text}" and c.text_column == "sentence"
    s = RunSpec(task="summarization", method="lora", capacity=4).resolved()
    assert (s.max_source_length, s.max_target_length, s.lora_alpha, s.dataset) == (512, 128, 16, "samsum")
    assert s.prompt_template == "summarize: {text}"
    assert RunSpec(method="zero_shot").resolved().capacity == 0


def test_frozen_and_roundtrip():
    s = RunSpec(method="prefix", capacity=20, seed=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    again = RunSpec.from_json(s.to_json())
    assert again == s and again.spec_hash() == s.spec_hash()
    assert RunSpec(seed=8).spec_hash() != RunSpec(seed=7).spec_hash()
    # an explicit default and an implicit one are the same experiment
    assert RunSpec(lora_alpha=16).spec_hash() == RunSpec().spec_hash()


@pytest.mark.parametrize("data, field", [
    ({"task": "translation"}, "task"), ({"method": "magic"}, "method"), ({"capacity": 0}, "capacity"),
    ({"capacity": -3}, "capacity"), ({"learning_rate": 0}, "learning_rate"), ({"learning_rate": -1e-4}, "learning_rate"),
    ({"num_train_epochs": 0}, "num_train_epochs"), ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    ({"precision": "int3"}, "precision"), ({"lora_dropout": 1.5}, "lora_dropout"), ({"capacity": "eight"}, "capacity"),
    ({"learning_rate": float("nan")}, "learning_rate"), ({"prompt_template": "no placeholder"}, "prompt_template"),
    ({"dataset": "samsum"}, "dataset"), ({"bogus": 1}, "bogus"), ({"model_name": "  "}, "model_name"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ValueError) as err:
        RunSpec.from_dict(data)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_coercion_from_form_strings():
    s = RunSpec.from_dict({"capacity": "16", "learning_rate": "0.001", "seed": 3})
    assert s.capacity == 16 and s.learning_rate == 0.001


def test_every_field_has_help():
    for f in spec_fields():
        assert len(field_help(f.name)) > 10, f.name


def test_json_has_version():
    assert json.loads(RunSpec().to_json())["spec_version"] == 3  # 3: budget, budget_value; dev selection default


def test_older_specs_keep_their_protocol_and_their_hash():
    """A version-1 record (no selection field) was chosen on validation, and hashes as it did; version-2 and
    -3 fields at their legacy values leave the hash alone, so a stored run is still found by a sweep."""
    old = RunSpec.from_json(json.dumps({"spec_version": 1, "method": "lora", "capacity": 8}))
    assert old.selection == "validation"
    legacy = RunSpec(selection="validation")
    assert old.spec_hash() == legacy.spec_hash() == legacy.replace(budget="epochs", budget_value=0.0).spec_hash()
    assert RunSpec().selection == "dev" and RunSpec().spec_hash() != legacy.spec_hash()  # another experiment
    zero = RunSpec(method="zero_shot")  # nothing to choose: its hash does not depend on the protocol
    assert zero.spec_hash() == zero.replace(selection="validation", dev_samples=50).spec_hash()
    with pytest.raises(ValueError, match="budget_value"):
        RunSpec(budget="steps")
    with pytest.raises(ValueError, match="whole"):
        RunSpec(budget="steps", budget_value=2.5)
    assert RunSpec(budget="steps", budget_value=10).spec_hash() != RunSpec().spec_hash()
