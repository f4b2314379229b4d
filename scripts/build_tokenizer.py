"""Rebuild the built-in tokenizer (peftcompare/builtin_tokenizer/) from the bundled samples.

The result is committed, so this only runs when the samples change: python scripts/build_tokenizer.py
A T5-style BPE: pad 0, eos 1, unk 2, Metaspace pre-tokenizer, '</s>' appended to every sequence.
"""
import json
import string
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from peftcompare.core.tasks import TASKS  # noqa: E402
from peftcompare.core.tasks import DATASETS  # noqa: E402

VOCAB_SIZE = 2048


def corpus():
    for path in sorted((ROOT / "peftcompare" / "samples").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for value in json.loads(line).values():
                if isinstance(value, str):
                    yield value
    yield from (t.instruction for t in TASKS.values())
    for ds in DATASETS.values():
        yield ds.prompt_template.replace("{text}", "")
        yield from ds.label_names
    # the label words must be single tokens so label scoring takes one decoder step
    for _ in range(50):
        yield "positive negative positive negative"


def main():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=list(string.printable.strip()) + ["▁"], show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=4096)
    out = ROOT / "peftcompare" / "builtin_tokenizer"
    fast.save_pretrained(str(out))
    for word in ("positive", "negative"):
        assert len(fast(word, add_special_tokens=False)["input_ids"]) == 1, word
    print(f"wrote {out} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
