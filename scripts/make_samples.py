"""Write the bundled sample datasets (peftcompare/samples/*.jsonl) from peftcompare/synth.py.

    python scripts/make_samples.py           # rewrite the files
    python scripts/make_samples.py --check   # exit 1 if a file differs from what the generator gives

Deterministic: the same files on every run and machine. Validation (and IMDb test) items are drawn first and
no training item equals one of them or is a near duplicate of one (see synth.NEAR_DUPLICATE); the largest
train/validation similarity of each set is printed. The built-in tokenizer was trained on the earlier,
hand-written samples and is kept as it is (scripts/build_tokenizer.py would change every built-in model).
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from peftcompare.engine import synth  # noqa: E402
from peftcompare.core.tasks import SAMPLES_DIR  # noqa: E402


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def files() -> dict[Path, str]:
    out = {}
    for name in synth.SIZES:
        for split, rows in synth.sample_rows(name).items():
            out[SAMPLES_DIR / f"{name}_{split}.jsonl"] = render(rows)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare the files with the generator's output")
    args = ap.parse_args(argv)
    stale = []
    for path, text in files().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)} ({text.count(chr(10))} rows)")
    if args.check:
        print("samples are up to date" if not stale else "stale: " + ", ".join(stale))
        return 1 if stale else 0
    for name in synth.SIZES:
        splits = synth.sample_rows(name)
        train = [u for r in splits["train"] for u in synth.row_units(name, r)]
        held = [u for s, rows in splits.items() if s != "train" for r in rows for u in synth.row_units(name, r)]
        sim, a, b = synth.closest(held, train)
        print(f"{name}: closest train/held-out pair, word-set Jaccard {sim:.3f} (< {synth.NEAR_DUPLICATE}):")
        print(f"    {a!r}\n    {b!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
