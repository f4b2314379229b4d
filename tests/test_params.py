"""Parameter counts of the `params` command against their closed forms on the exact public shapes."""
import json

import pytest

from peftcompare import cli as cli_mod
from pipeline_helpers import cli

SMALL = "builtin:random-flan-t5-small"
BASE = "builtin:random-flan-t5-base"


def lora_qv(r, d_model, inner, attention_blocks):
    return attention_blocks * 2 * r * (d_model + inner)


def params(capsys, *args):
    assert cli_mod.main(["params", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("model, method, capacity, expected", [
    (SMALL, "lora", 8, 344_064),
    (SMALL, "prompt", 20, 10_240),
    (SMALL, "prefix", 20, 122_880),
    (BASE, "lora", 8, 884_736),
    (SMALL, "lora", 32, lora_qv(32, 512, 384, 8 + 16)),
    (SMALL, "prefix", 100, 100 * 8 * 2 * 384),
    (BASE, "prompt", 50, 50 * 768),
])
def test_params_closed_form(capsys, model, method, capacity, expected):
    rec = params(capsys, "--model_name", model, "--method", method, "--capacity", str(capacity))
    assert rec["trainable_params"] == expected


@pytest.mark.parametrize("model, total", [(SMALL, 76_961_152), (BASE, 247_577_856)])
def test_random_models_have_the_real_shape(capsys, model, total):
    rec = params(capsys, "--model_name", model, "--method", "zero_shot")
    assert rec["total_params"] == total and rec["trainable_params"] == 0


def test_params_command_line(tmp_path):
    out = cli("params", "--model_name", SMALL, "--method", "lora", "--capacity", "8", home=tmp_path, check=True)
    assert "344,064 trainable of 77,305,216" in out.stdout
    assert not (tmp_path / "results" / "peftcompare.sqlite").exists()  # counting writes nothing
