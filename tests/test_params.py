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
    # the zoo (issue 14) on flan-t5-small: 48 adapted layers (q and v of 24 attentions), 512 in, 384 out
    (SMALL, "dora", 8, lora_qv(8, 512, 384, 24) + 48 * 384),  # + a magnitude per output: 362,496
    (SMALL, "rslora", 8, 344_064), (SMALL, "pissa", 8, 344_064), (SMALL, "olora", 8, 344_064),
    (SMALL, "loha", 8, 2 * lora_qv(8, 512, 384, 24)),  # two rank-r products: 688,128
    (SMALL, "hira", 8, 344_064), (SMALL, "deft", 8, 344_064), (SMALL, "shira", 8, 344_064),
    (SMALL, "delora", 8, 344_064 + 48),  # + a strength per layer
    (SMALL, "vera", 256, 48 * (384 + 256)),  # a vector of out and one of r per layer
    (SMALL, "fourierft", 1000, 48 * 1000), (SMALL, "waveft", 6000, 48 * 6000), (SMALL, "tinylora", 1024, 48 * 1024),
    (SMALL, "hra", 8, 48 * 8 * 512),  # r reflections of the input width
    (SMALL, "oft", 32, 48 * (512 // 32) * (32 * 31 // 2)),  # skew-symmetric blocks
    (SMALL, "c3a", 32, 48 * 512 * 384 // 32), (SMALL, "road", 0, 48 * 384),
    (SMALL, "psoft", 64, 48 * (64 * 63 // 2 + 2 * 64)),  # an r x r rotation and two scaling vectors
    (SMALL, "supertuning", 300, 48 * int(512 * 384 * 0.03)),
    (SMALL, "osf", 8, 48 * 8 * (512 + 384 + 1)),  # U, S and V of the trained subspace
    (SMALL, "ln_tuning", 0, (8 * 2 + 1 + 8 * 3 + 1) * 512), (SMALL, "beft", 0, 48 * 384),
    (SMALL, "trainable_tokens", 600, 600 * 512), (SMALL, "cartridge", 50, 49 * 8 * 2 * 384),
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
