"""Task and dataset registries: what a task measures, where each dataset lives and how it is prompted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"  # package data, beside the layers
# the data files a user may give (a path or an upload), and how large
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
MAX_UPLOAD_BYTES = 200 * 1024 * 1024


SCORE_LABELS = "labels"  # each label word's likelihood is scored; the likeliest is the prediction
SCORE_GENERATION = "generation"  # the model writes its answer, compared with the reference text

METRIC_TITLES = {"accuracy": "Accuracy", "f1": "F1", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                 "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


@dataclass(frozen=True)
class Task:
    """What a task measures and how it is scored; every task-dependent behaviour reads these fields."""
    name: str
    metric: str  # the primary metric: best epoch, curves
    metrics: tuple[str, ...]
    max_source_length: int
    max_target_length: int
    default_dataset: str
    scoring: str  # SCORE_LABELS or SCORE_GENERATION
    instruction: str  # the task in words (prompt tuning starts from it)
    # how the app shows one example's outputs: the answer's name and the per-column score beside it
    answer_word: str = "answer"
    score_word: str = "score"
    spread_word: str = "spread"  # what separates two columns on one example
    placeholder: str = ""  # an example input for the Compare page's text box

    @property
    def scores_labels(self) -> bool:
        return self.scoring == SCORE_LABELS

    @property
    def generates(self) -> bool:
        """Evaluated by generating text (needs a model family that can generate)."""
        return self.scoring == SCORE_GENERATION

    @property
    def metric_title(self) -> str:
        return metric_title(self.metric)


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
    # what a decoder-only model reads after the prompt, before its answer (which follows after a space):
    # without it a pretrained LM is asked for the answer in mid-sentence
    answer_cue: str = ""


TASKS: dict[str, Task] = {
    "classification": Task("classification", "f1", ("accuracy", "f1"), 256, 8, "sst2", SCORE_LABELS,
                           "Classify if the sentiment of this movie review is positive or negative:",
                           answer_word="prediction", score_word="probability", spread_word="probability gap",
                           placeholder="a gripping, beautifully acted film"),
    "summarization": Task("summarization", "rougeL", ("rouge1", "rouge2", "rougeL", "rougeLsum"), 512, 128,
                          "samsum", SCORE_GENERATION, "Summarize the following dialogue in one short sentence:",
                          answer_word="summary", score_word="ROUGE-L", spread_word="ROUGE-L spread",
                          placeholder="Anna: are we still on for lunch?\nBen: yes, 12:30 at the usual place"),
}

DATASETS: dict[str, Dataset] = {
    "sst2": Dataset("sst2", "classification", "nyu-mll/glue", "sst2", "train", "validation", "sentence", "label",
                    "sst2: {text}", "sst2", ("negative", "positive"),
                    description="GLUE SST-2 movie-review sentences, positive/negative", answer_cue="\nSentiment:"),
    "samsum": Dataset("samsum", "summarization", "knkarthick/samsum", None, "train", "validation", "dialogue",
                      "summary", "summarize: {text}", "samsum",
                      description="SAMSum messenger-like dialogues with one-line summaries", answer_cue="\nSummary:"),
    "imdb": Dataset("imdb", "classification", "stanfordnlp/imdb", None, "train", "test", "text", "label",
                    "Review: {text}", "imdb", ("negative", "positive"), max_source_length=128,
                    description="IMDb long movie reviews, positive/negative", answer_cue="\nSentiment:"),
    "dialogsum": Dataset("dialogsum", "summarization", "knkarthick/dialogsum", None, "train", "validation",
                         "dialogue", "summary",
                         "Summarize the following conversation.\n{text}\nSummary:", "dialogsum",
                         description="DialogSum everyday dialogues with summaries"),  # its template ends in the cue
    "cnn_dailymail": Dataset("cnn_dailymail", "summarization", "abisee/cnn_dailymail", "3.0.0", "train",
                             "validation", "article", "highlights", "summarize: {text}", "cnn_dailymail",
                             description="CNN/DailyMail news articles and their highlights",
                             answer_cue="\nSummary:"),
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


def task_names() -> list[str]:
    return list(TASKS)


def positive_label(label_words: list[str]) -> str:
    """The class F1 is computed for: 'positive' where it exists, else the last label."""
    return "positive" if "positive" in label_words else label_words[-1]
