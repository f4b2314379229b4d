"""A T5 checkpoint that ships only `spiece.model` (no tokenizer.json), like older T5 and flan-t5 repos.

Such a directory is tokenized through sentencepiece (transformers builds the fast tokenizer from the
.model file), a path the built-in model never takes. Here a tiny SentencePiece unigram model is trained
from the bundled SST-2 sample, saved next to a tiny T5 with a minimal tokenizer_config.json, and the
directory is loaded by peftcompare and trained end to end through the real CLI, offline.
"""
import json

import pytest

from pipeline_helpers import SAMPLES, cli

SENTENCE = "a gripping courtroom drama with first-rate acting"  # words of the kind the sample has
UNSEEN = "the director seems to have no idea what story he wants to tell ."  # from sst2_validation.jsonl
PAD, EOS, UNK = 0, 1, 2  # T5's ids; T5 has no bos


def train_spiece(prefix) -> None:
    import sentencepiece as spm

    sentences = [json.loads(line)["sentence"] for line in (SAMPLES / "sst2_train.jsonl").open()]
    # one thread, no sampling or shuffling of the input: the same bytes on every run
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(prefix), vocab_size=400,
                                   model_type="unigram", pad_id=PAD, eos_id=EOS, unk_id=UNK, bos_id=-1,
                                   # at most 400 pieces: fewer where the sample's vocabulary is smaller
                                   hard_vocab_limit=False,
                                   character_coverage=1.0, num_threads=1, input_sentence_size=0,
                                   shuffle_input_sentence=False, minloglevel=2)


@pytest.fixture(scope="module")
def spiece_t5(tmp_path_factory):
    """A saved tiny T5 whose only tokenizer file is spiece.model."""
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    work = tmp_path_factory.mktemp("spiece")
    # trained twice to the same vocabulary (the .model bytes also record the output path, so not those)
    pieces = []
    for name in ("one", "two"):
        train_spiece(work / name)
        sp = spm.SentencePieceProcessor(model_file=str(work / f"{name}.model"))
        pieces.append([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())])
    assert pieces[0] == pieces[1], "sentencepiece training is not deterministic"
    assert [p for p, _ in pieces[0][:3]] == ["<pad>", "</s>", "<unk>"]
    vocab = len(pieces[0])

    path = work / "t5-spiece"
    config = T5Config(vocab_size=vocab, d_model=32, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                      d_ff=64, feed_forward_proj="gated-gelu", decoder_start_token_id=PAD, pad_token_id=PAD,
                      eos_token_id=EOS)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)  # safetensors by default in transformers 5
    (path / "spiece.model").write_bytes((work / "one.model").read_bytes())  # no spiece.vocab, like the Hub repos
    # extra_ids=0: no <extra_id_*> sentinels, so the tokenizer's size matches the model's vocab
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer",
                                                            "model_max_length": 512, "extra_ids": 0}))
    assert (path / "model.safetensors").is_file()
    assert not (path / "tokenizer.json").exists()
    return path, vocab


def test_load_tokenizer_from_spiece_model_only(spiece_t5):
    from peftcompare.engine.models import load_tokenizer

    path, vocab = spiece_t5
    tok = load_tokenizer(str(path))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (PAD, EOS, UNK)
    assert len(tok) == vocab
    for text in (SENTENCE, UNSEEN, "positive", "negative"):  # the label words are what the model must emit
        ids = tok(text).input_ids
        assert ids[-1] == EOS and UNK not in ids, (text, tok.convert_ids_to_tokens(ids))
        assert max(ids) < vocab
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert not (path / "tokenizer.json").exists()  # loading does not write one back


def test_cli_trains_the_spiece_checkpoint(spiece_t5, tmp_path):
    from peftcompare.service.store import Store

    path, _ = spiece_t5
    home = tmp_path / "home"
    proc = cli("--home", str(home), "train", "--model_name", str(path), "--method", "lora", "--capacity", "4",
               "--train_samples", "16", "--eval_samples", "8", "--num_train_epochs", "1",
               "--per_device_train_batch_size", "8", home=home, check=True)
    assert "done: f1" in proc.stdout
    runs = Store(home).list_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] == "completed", run.get("error")
    assert run["model_name"] == str(path) and run["data_source"] == "sample"  # offline: the bundled sst2 sample
    assert run["trainable_params"] > 0 and 0.0 <= run["metrics"]["f1"] <= 1.0
    assert not (path / "tokenizer.json").exists()


def test_a_model_directory_without_tokenizer_files_is_refused(spiece_t5, tmp_path):
    """transformers 5 builds a 4-token tokenizer from nothing, which trains to f1 0 and says "completed":
    refuse the directory in one line, before a record exists."""
    import shutil

    from test_cli import run_count

    path, _ = spiece_t5
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(path, bare)
    (bare / "spiece.model").unlink()
    home = tmp_path / "home"
    proc = cli("train", "--model_name", str(bare), "--train_samples", "16", "--eval_samples", "8",
               "--num_train_epochs", "1", home=home)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model_name: ")
    assert "no tokenizer files" in proc.stderr and "Traceback" not in proc.stderr
    assert run_count(home) == 0
