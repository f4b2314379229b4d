"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors, nothing written on bad input."""
import json
import sqlite3

import pytest

from pipeline_helpers import SAMPLES, cli

TINY = ["--model_name", "builtin:tiny-t5", "--train_samples", "24", "--eval_samples", "8", "--num_train_epochs",
        "1", "--per_device_train_batch_size", "8"]


def run_count(home):
    db = home / "results" / "peftcompare.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "nocols.jsonl").write_text('{"text": "fine", "y": 1}\n')
    (tmp_path / "empty.csv").write_text("sentence,label\n")
    (tmp_path / "latin1.csv").write_bytes("sentence,label\ncaf\xe9 ok,1\n".encode("latin-1"))
    return tmp_path


BAD = {
    "unknown task": (["--task", "translation"], "task"),
    "unknown method": (["--method", "magic"], "method"),
    "capacity zero": (["--capacity", "0"], "capacity"),
    "negative learning rate": (["--learning_rate", "-0.1"], "learning_rate"),
    "zero learning rate": (["--learning_rate", "0"], "learning_rate"),
    "missing file": (["--train_file", "{d}/nope.jsonl"], "does not exist"),
    "file without the columns": (["--train_file", "{d}/nocols.jsonl"], "missing column"),
    "empty dataset": (["--train_file", "{d}/empty.csv"], "no rows"),
    "wrong encoding": (["--train_file", "{d}/latin1.csv"], "UTF-8"),
    "model path that does not exist": (["--model_name", "./no/such/model"], "does not exist"),
    "unknown built-in model": (["--model_name", "builtin:huge-t5"], "built-in"),
    # caught by preflight from the model's config and module names, before a record exists
    "summarization on an encoder classifier": (["--task", "summarization", "--model_name", "builtin:tiny-bert"],
                                               "cannot do summarization"),
    "fp16 on a CPU": (["--precision", "fp16"], "fp16 needs a GPU"),
    "target modules the model lacks": (["--target_modules", "zz"], "no module named 'zz'"),
    "one of the target modules missing": (["--target_modules", "q,zz", "--model_name", "builtin:tiny-gpt2"],
                                          "no module named 'zz'"),
    "no target modules": (["--target_modules", ","], "comma-separated module names"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, bad_files, case):
    extra, needle = BAD[case]
    extra = [a.replace("{d}", str(bad_files)) for a in extra]
    proc = cli("train", *TINY, *extra, home=tmp_path / "home")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "warn" not in l.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_count(tmp_path / "home") == 0


def test_train_from_files_then_results(tmp_path):
    home = tmp_path / "home"
    proc = cli("train", *TINY, "--method", "lora", "--capacity", "4", "--train_file",
               str(SAMPLES / "sst2_train.jsonl"), "--validation_file", str(SAMPLES / "sst2_validation.jsonl"),
               home=home, check=True)
    assert "done: f1" in proc.stdout
    rows = json.loads(cli("results", "--format", "json", home=home, check=True).stdout)
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["data_source"] == "file"
    for col in ("run_id", "task", "method", "capacity", "seed", "status", "trainable_params", "total_params",
                "accuracy", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum", "train_runtime",
                "train_samples_per_second", "peak_memory_mb", "adapter_bytes"):
        assert col in rows[0], col
    csv = cli("results", "--format", "csv", home=home, check=True).stdout
    assert csv.splitlines()[0].startswith("run_id,") and len(csv.splitlines()) == 2


def test_sweep_then_plot(tmp_path):
    home = tmp_path / "home"
    args = ["sweep", *TINY, "--methods", "lora", "prompt", "--lora_ranks", "2", "4", "--virtual_tokens", "4",
            "--seeds", "1", "2"]
    first = cli(*args, home=home, check=True, timeout=600)
    assert "7 runs in the grid, 0 already stored, 7 to run" in first.stdout  # zero-shot + 2x2 lora + 1x2 prompt
    again = cli(*args, home=home, check=True)
    assert "7 already stored, 0 to run" in again.stdout
    out = tmp_path / "plots"
    cli("plot", "--out", str(out), home=home, check=True)
    for name in ("results.csv", "curve_classification.png", "curve_summarization.png"):
        assert (out / name).stat().st_size > 1000, name
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert sorted(df["method"].unique()) == ["lora", "prompt", "zero_shot"] and len(df) == 7


def test_zero_shot_command(tmp_path):
    proc = cli("zero-shot", "--model_name", "builtin:tiny-t5", "--eval_samples", "8", home=tmp_path, check=True)
    assert "done: f1" in proc.stdout


PREFLIGHT = ["--task", "summarization", "--model_name", "builtin:tiny-bert"]


@pytest.mark.parametrize("verb", [["enqueue", "--no_worker"], ["sweep", "--methods", "lora", "--lora_ranks", "4"]])
def test_queue_and_sweep_refuse_with_the_same_preflight(tmp_path, verb):
    """The same checks on every way into the store: the queue and a sweep refuse before writing anything."""
    proc = cli(*verb, *[a for a in TINY if a not in ("builtin:tiny-t5", "--model_name")], *PREFLIGHT,
               home=tmp_path / "home")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: task: builtin:tiny-bert is an encoder")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_count(tmp_path / "home") == 0


def test_a_bad_run_in_the_middle_of_a_grid_leaves_nothing_queued(tmp_path):
    from peftcompare.engine.preflight import preflight_all
    from peftcompare.core.spec import RunSpec
    from peftcompare.service.store import Store

    store = Store(tmp_path)
    good = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4)
    with pytest.raises(ValueError, match="no module named 'zz'"):
        preflight_all([good, good.replace(target_modules="zz"), good.replace(capacity=8)])
    from peftcompare.service import jobs

    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        jobs.enqueue(store, good.replace(precision="fp16"))
    assert store.list_runs() == []


def _run_on_a_terminal(args: list[str], home) -> str:
    """The CLI with a pseudo-terminal as stdout and stderr, as a user at a shell sees it."""
    import os
    import pty
    import subprocess
    import sys

    from pipeline_helpers import ROOT

    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    # a real terminal has a size; a fresh pty has 0 x 0, and tqdm draws nothing in 0 columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "peftcompare", "--home", str(home), *args], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_train_on_a_terminal_shows_a_progress_bar_and_plain_lines_otherwise(tmp_path):
    args = ["train", *TINY, "--num_train_epochs", "2"]
    screen = _run_on_a_terminal(args, tmp_path / "tty")
    assert "step/s" in screen and "loss=" in screen and "6/6" in screen  # tqdm: steps, loss, rate and ETA
    # log lines go above the bar, never into the middle of it
    assert any(line.strip().startswith("epoch 1: loss") for line in screen.replace("\r", "\n").splitlines())
    piped = cli(*args, home=tmp_path / "pipe", check=True)
    assert "step/s" not in piped.stdout + piped.stderr and "\r" not in piped.stderr
    assert "epoch 2: loss" in piped.stdout


def test_enqueue_of_an_identical_spec_is_not_queued_twice(tmp_path):
    home = tmp_path / "home"
    first = cli("enqueue", "--no_worker", *TINY, home=home, check=True)
    again = cli("enqueue", "--no_worker", *TINY, home=home, check=True)
    assert len(first.stdout.split()) == 1 and again.stdout.strip() == ""
    assert "not queued: an identical run is already queued (" + first.stdout.strip() + ")" in again.stderr
    assert run_count(home) == 1


def test_every_command_prints_its_help(capsys):
    """`--help` of every command prints and exits 0 (argparse %-formats help texts: a spec field's "10%" once
    crashed train, sweep and params with a TypeError)."""
    from peftcompare import cli as cli_mod

    parser = cli_mod.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"train", "sweep", "params", "results", "significance", "report"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            cli_mod.main([name, "--help"])
        assert exit_.value.code == 0, name
        out = capsys.readouterr().out
        assert out.startswith("usage:") and name in out.splitlines()[0], name
    with pytest.raises(SystemExit):
        cli_mod.main(["train", "--help"])
    assert "10% of train_samples" in capsys.readouterr().out
