"""Task and dataset registries: what a task measures, where each dataset lives and how it is prompted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "samples"


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # the primary metric: best epoch, curves
    metrics: tuple[str, ...]
    max_source_length: int
    max_target_length: int
    default_dataset: str
    generative: bool  # evaluated by generation (True) or label scoring (False)


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str
    hub_id: str
    hub_config: str | None
    train_split: str
    validation_split: str
    text_column: str
    target_column: str
    prompt_template: str
    sample_prefix: str  # samples/<prefix>_<split>.jsonl, the offline copy
    label_names: tuple[str, ...] = ()  # integer label -> target word, classification only
    max_source_length: int = 0  # 0: the task's default
    description: str = ""


TASKS: dict[str, Task] = {
    "classification": Task("classification", "f1", ("accuracy", "f1"), 256, 8, "sst2", False),
    "summarization": Task("summarization", "rougeL", ("rouge1", "rouge2", "rougeL", "rougeLsum"), 512, 128,
                          "samsum", True),
}

DATASETS: dict[str, Dataset] = {
    "sst2": Dataset("sst2", "classification", "nyu-mll/glue", "sst2", "train", "validation", "sentence", "label",
                    "sst2: {text}", "sst2", ("negative", "positive"),
                    description="GLUE SST-2 movie-review sentences, positive/negative"),
    "samsum": Dataset("samsum", "summarization", "knkarthick/samsum", None, "train", "validation", "dialogue",
                      "summary", "summarize: {text}", "samsum",
                      description="SAMSum messenger-like dialogues with one-line summaries"),
    "imdb": Dataset("imdb", "classification", "stanfordnlp/imdb", None, "train", "test", "text", "label",
                    "Review: {text}", "imdb", ("negative", "positive"), max_source_length=128,
                    description="IMDb long movie reviews, positive/negative"),
    "dialogsum": Dataset("dialogsum", "summarization", "knkarthick/dialogsum", None, "train", "validation",
                         "dialogue", "summary",
                         "Summarize the following conversation.\n{text}\nSummary:", "dialogsum",
                         description="DialogSum everyday dialogues with summaries"),
    "cnn_dailymail": Dataset("cnn_dailymail", "summarization", "abisee/cnn_dailymail", "3.0.0", "train",
                             "validation", "article", "highlights", "summarize: {text}", "cnn_dailymail",
                             description="CNN/DailyMail news articles and their highlights"),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task: unknown task {name!r} (choose from {', '.join(TASKS)})") from None


def get_dataset(name: str) -> Dataset:
    """A preset by name, or an ad-hoc Hub dataset 'owner/name' whose columns the spec must name."""
    if name in DATASETS:
        return DATASETS[name]
    if "/" in name:
        return Dataset(name, "", name, None, "train", "validation", "", "", "{text}", "")
    raise ValueError(f"dataset: unknown dataset {name!r} (choose from {', '.join(DATASETS)})")


def positive_label(dataset: Dataset, label_words: list[str]) -> str:
    """The class F1 is computed for: 'positive' where it exists, else the last label."""
    return "positive" if "positive" in label_words else label_words[-1]
