"""A real, self-hosted Hugging Face Hub mirror for tests: olah, offline, serving tiny local copies of
the repos peftcompare uses by default (google/flan-t5-small, nyu-mll/glue sst2, knkarthick/samsum).

The repos are git repositories in olah's `mirrors-path`, laid out like the real ones, so the whole
client path runs for real: huggingface_hub's HEAD/GET resolve calls, transformers' file listing and
datasets' README `configs:` / CSV split inference.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from peftcompare.service import procs

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "peftcompare" / "samples"
MODEL_ID = "google/flan-t5-small"
GLUE_ID = "nyu-mll/glue"
SAMSUM_ID = "knkarthick/samsum"
# flan-t5's architecture (gated GELU, untied head, relative attention) at a size that trains in seconds
TINY_DIMS = dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2)
# a fixed commit date: the same files give the same commit sha in every session
GIT_DATE = "2024-01-01T00:00:00+00:00"
# variables that would point a client at another endpoint, another cache or a real account
HF_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE",
           "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
           "HUGGINGFACE_CO_STAGING", "HF_XET_CACHE")


@dataclass(frozen=True)
class HubMirror:
    endpoint: str  # http://127.0.0.1:PORT
    hf_home: Path  # this session's private Hugging Face cache
    model_params: int  # parameters of the mirrored google/flan-t5-small

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that must use the mirror, online, with a private cache."""
        env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(self.hf_home), HF_HUB_DISABLE_TELEMETRY="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO), **extra)
        return env

    def apply(self, monkeypatch) -> None:
        """The same environment for in-process code (the Streamlit AppTest)."""
        for name in HF_VARS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", self.endpoint)
        monkeypatch.setenv("HF_HOME", str(self.hf_home))


# -- repo contents -------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def flan_t5_config(vocab_size: int) -> dict:
    """config.json as google/flan-t5-small ships it (keys and values), with tiny dimensions."""
    return {"architectures": ["T5ForConditionalGeneration"], **TINY_DIMS, "decoder_start_token_id": 0,
            "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
            "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
            "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512, "output_past": True,
            "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
            "tie_word_embeddings": False, "transformers_version": "4.23.1", "use_cache": True,
            "vocab_size": vocab_size}


def write_model_repo(root: Path) -> int:
    """A tiny flan-t5-style checkpoint (separate lm_head, like the real files) with the built-in tokenizer;
    returns its parameter count."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from peftcompare.engine import builtin, families, models

    config = flan_t5_config(len(builtin.tokenizer()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(T5Config(**config))
    # transformers 5 ties lm_head to the embeddings of a model built from a config; flan-t5 has its own
    families.FAMILIES["seq2seq"].untie_lm_head(model)
    model.save_pretrained(root)
    # save_pretrained writes transformers 5's normalised config (tie_word_embeddings true): put the real one back
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (root / "generation_config.json").write_text(json.dumps(
        {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "transformers_version": "4.27.0"}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(builtin.TOKENIZER_DIR / name, root / name)
    (root / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    (root / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# flan-t5-small (test mirror)\n"
                                    "A tiny random T5 with flan-t5's layout, for peftcompare's tests.\n")
    return models.count_parameters(model)[1]


GLUE_CARD = """---
configs:
- config_name: sst2
  data_files:
  - split: train
    path: sst2/train-00000-of-00001.parquet
  - split: validation
    path: sst2/validation-00000-of-00001.parquet
  - split: test
    path: sst2/test-00000-of-00001.parquet
dataset_info:
- config_name: sst2
  features:
  - name: sentence
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': negative
          '1': positive
  - name: idx
    dtype: int32
---
# GLUE (test mirror)
SST-2 only, with sentences written for peftcompare (peftcompare/samples).
"""


def write_glue_repo(root: Path) -> None:
    import pandas as pd

    train = read_jsonl(SAMPLES / "sst2_train.jsonl")
    validation = read_jsonl(SAMPLES / "sst2_validation.jsonl")
    # GLUE hides its test labels as -1
    test = [{**row, "label": -1} for row in validation[:10]]
    (root / "sst2").mkdir(parents=True)
    for split, rows in (("train", train), ("validation", validation), ("test", test)):
        frame = pd.DataFrame(rows)[["sentence", "label", "idx"]].astype({"label": "int64", "idx": "int32"})
        frame.to_parquet(root / "sst2" / f"{split}-00000-of-00001.parquet", index=False)
    (root / "README.md").write_text(GLUE_CARD)


def write_samsum_repo(root: Path) -> None:
    import pandas as pd

    validation = read_jsonl(SAMPLES / "samsum_validation.jsonl")
    splits = {"train": read_jsonl(SAMPLES / "samsum_train.jsonl"), "validation": validation,
              "test": validation[:6]}
    for split, rows in splits.items():
        pd.DataFrame(rows)[["id", "dialogue", "summary"]].to_csv(root / f"{split}.csv", index=False)
    (root / "README.md").write_text("---\nlicense: cc-by-nc-nd-4.0\n---\n# SAMSum (test mirror)\n")


# -- git repos and olah's revision cache -------------------------------------------------------------
def git_commit(root: Path) -> str:
    """Commit everything in `root` on branch main with a fixed author and date; return the sha."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "peftcompare tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
           "GIT_AUTHOR_DATE": GIT_DATE, "GIT_COMMITTER_NAME": "peftcompare tests",
           "GIT_COMMITTER_EMAIL": "tests@example.invalid", "GIT_COMMITTER_DATE": GIT_DATE,
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "initial commit")
    return git("rev-parse", "HEAD")


def seed_revision_cache(repos_path: Path, repo_type: str, repo_id: str, sha: str) -> None:
    """Offline olah knows a repo's latest commit and where `main` points only from its cache: write both
    entries (routes without a revision, such as model_info, answer 401 without them)."""
    from olah.utils.cache_utils import write_cache_request

    revisions = repos_path / "api" / repo_type / repo_id / "revision"
    head = revisions / sha / "meta_head.json"
    head.parent.mkdir(parents=True)
    head.write_text(json.dumps({"sha": sha, "lastModified": GIT_DATE}))
    resolved = revisions / "main" / "resolved_commit.json"
    resolved.parent.mkdir(parents=True)
    asyncio.run(write_cache_request(str(resolved), 200, {}, sha.encode("ascii")))


# -- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, port: int, repos_path: Path, mirrors_path: Path) -> None:
    path.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = {json.dumps(str(repos_path))}\n'
                    f'mirrors-path = [{json.dumps(str(mirrors_path))}]\n'
                    f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
                    '[accessibility]\noffline = true\n')


def start_olah(config: Path, workdir: Path, log) -> subprocess.Popen:
    # olah.server:cli is the olah-cli console script; calling it through this interpreter needs no PATH
    return subprocess.Popen([sys.executable, "-c", "from olah.server import cli; cli()", "--config", str(config),
                             "--log-path", str(workdir / "logs")], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 30.0) -> None:
    """Poll an API route (olah's `/` answers 500 even when healthy) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"olah exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"olah did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def build_repos(mirrors: Path, repos: Path) -> int:
    """The three repos as git repos under `mirrors`, olah's revision cache under `repos`; returns the
    model's parameter count."""
    if shutil.which("git") is None:
        pytest.fail("the Hub mirror needs git: olah reads its local mirrors as git repositories")
    roots = {(kind, repo_id): mirrors / kind / repo_id
             for kind, repo_id in (("models", MODEL_ID), ("datasets", GLUE_ID), ("datasets", SAMSUM_ID))}
    for root in roots.values():
        root.mkdir(parents=True)
    model_params = write_model_repo(roots["models", MODEL_ID])
    write_glue_repo(roots["datasets", GLUE_ID])
    write_samsum_repo(roots["datasets", SAMSUM_ID])
    for (kind, repo_id), root in roots.items():
        seed_revision_cache(repos, kind, repo_id, git_commit(root))
    return model_params


@pytest.fixture(scope="session")
def hub_mirror(tmp_path_factory):
    """A running olah mirror on 127.0.0.1 with the three repos; stopped at the end of the session."""
    base = tmp_path_factory.mktemp("hub_mirror")
    model_params = build_repos(base / "mirrors", base / "repos")
    port = free_port()
    write_config(base / "olah.toml", port, base / "repos", base / "mirrors")
    endpoint = f"http://127.0.0.1:{port}"
    hf_home = base / "hf_home"
    hf_home.mkdir()
    with open(base / "olah.out", "wb") as log:
        proc = start_olah(base / "olah.toml", base, log)
        try:
            wait_ready(proc, f"{endpoint}/api/models/{MODEL_ID}", base / "olah.out")
            yield HubMirror(endpoint, hf_home, model_params)
        finally:
            procs.stop(proc)
