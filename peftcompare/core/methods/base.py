"""What a method is: one `Method` record per method, registered once; the rest of the code asks it.

Every behaviour that used to be a name check elsewhere is an attribute here: how Compare serves the adapter
(`serve`), which sweep flag sets its grid (`sweep_knob`), the step hook (`on_step`), the notes a record
carries (`notes`), its role on curves (`role`), what public mode refuses (`heavy`), which spec fields it reads
(`fields`), its learning rate in presets (`learning_rate`) and its offline grid (`offline_grid`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

# how the Compare engine serves a trained adapter
SERVE_LORA_BANK = "lora_bank"  # rows of one batch each take their own LoRA A/B (a mixed-adapter batch)
SERVE_SOFT_PROMPT = "soft_prompt"  # input-embedding prompts: rows take their own virtual tokens
SERVE_PREFIX = "prefix"  # key/value prefixes: one pass per adapter through PEFT's prefix model
SERVE_PEFT = "peft"  # any other PEFT adapter: loaded onto the base model for its pass, unloaded after
SERVE_SWAP = "swap"  # a method without a PEFT config: its trained weights swapped into the base model
SERVE_NONE = "none"  # the base model itself (zero-shot)

# which sweep flag sets a method's capacities (the CLI's --lora_ranks / --virtual_tokens, the sweep form)
KNOB_RANK = "rank"
KNOB_TOKENS = "tokens"

# how runs of a method can be packed into one pass over the frozen base (Method.pack)
PACK_LORA = "lora"
PACK_PROMPT = "prompt"
PACK_PREFIX = "prefix"

# the model families (engine/families: Family.name) a method can be applied to
FAMILIES = ("seq2seq", "causal", "encoder")

# a method's role on curves and tables
ROLE_BASELINE = "baseline"  # trains nothing: the base model (a horizontal reference line)
ROLE_FULL = "full"  # every weight trains: the reference the adapters are measured against (a line too)
ROLE_ADAPTER = "adapter"  # a parameter-efficient method: a curve over its capacity

# how a method changes the model, as the app groups them (Method.method_family), each with its one line
METHOD_FAMILIES = {
    "additive low-rank": "A small low-rank (or randomly projected) update added to the frozen weights.",
    "multiplicative/orthogonal": "The frozen weights rotated, reflected or rescaled by a small learned transform.",
    "frequency/sparse": "A few learned coefficients: spectral components or a sparse set of weight entries.",
    "soft prompts": "Learned virtual tokens or key/value prefixes; the weights stay untouched.",
    "selective": "A chosen part of the model trains (biases, norms, embeddings, top blocks).",
    "reference": "The baselines every method is measured against.",
}


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    capacity_name: str | None = None  # None: the method has no capacity knob
    capacities: tuple[int, ...] = ()  # the reference grid
    max_capacity: int = 4096
    # (spec, model, tokenizer, family, total_steps) -> PeftConfig: the adapter is saved with save_pretrained
    make_config: Callable[..., Any] | None = None
    # (spec, model, family) -> None: methods that freeze/unfreeze parts of the base model themselves
    prepare: Callable[..., None] | None = None
    role: str = ROLE_ADAPTER
    serve: str = ""  # SERVE_*; "" takes SERVE_PEFT for a PEFT config, SERVE_SWAP for `prepare`
    sweep_knob: str | None = None
    # (peft_model, step) -> None, after every optimizer step (AdaLoRA's rank allocator)
    on_step: Callable[[Any, int], None] | None = None
    # (spec, loaded) -> notes a reader of the record must know about how the method met this model
    notes: Callable[..., list[str]] | None = None
    note: str = ""  # shown beside the method in the app where it applies
    note_families: tuple[str, ...] = ()  # model families (guessed from the name) the note is about; () = all
    works_on: tuple[str, ...] = FAMILIES  # the model families it can train (FAMILIES); others are refused
    not_on_reason: str = ""  # why not on the others, in the user's words
    fields: tuple[str, ...] = ()  # method settings of the spec it reads (lora_alpha, target_modules, ...)
    heavy: bool = False  # holds every weight and its optimizer state (refused on a shared public instance)
    learning_rate: float = 5e-4  # what presets train it at (full fine-tuning slower, soft prompts faster)
    offline_grid: tuple[int, ...] = ()  # the capacities the app proposes offline on the tiny models
    tiny_recipe: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> fields that differ there
    color: str = ""  # THE colour of the method on every chart (curves, loss overlays, presets, PNGs)
    help: str = ""
    # a method whose change to the model needs torch code (not a PEFT config, not only freezing): the engine
    # module, named as data so that core never imports the engine, that provides prepare(spec, model, family),
    # attach(model, spec) -> handle with .detach(), and merge(model); resolved by engine/method_hooks.py
    engine_hooks: str = ""
    # how several runs of it train packed in one pass over a shared frozen base (engine/packing.py):
    # PACK_LORA (per-row LoRA adapters in one PEFT model), PACK_PROMPT (per-row soft prompts), PACK_PREFIX
    # (per-row key/value prefixes, of one length); "" one at a time
    pack: str = ""
    method_family: str = ""  # METHOD_FAMILIES key: how the app groups the method
    paper: str = ""  # the paper it comes from: title (arXiv id), or where PEFT points for it
    # its PEFT initialisation reads the base weights (an SVD, clustering, a joint decomposition), so a
    # shapes-only (meta) copy of the model cannot build it, or builds it wrong (AdaLoRA's constant ranknum
    # turns trainable on the meta device): parameter counts build the model for real
    reads_weights: bool = False

    @property
    def trains(self) -> bool:
        return self.role != ROLE_BASELINE

    @property
    def reference_line(self) -> bool:
        """Drawn as a horizontal reference on curves (zero-shot, full fine-tuning), not as a curve."""
        return self.role in (ROLE_BASELINE, ROLE_FULL)

    def check_family(self, family: str, model_name: str = "this model") -> None:
        """ValueError (one line) unless the method can train a model of `family`."""
        if family not in self.works_on:
            why = f": {self.not_on_reason}" if self.not_on_reason else ""
            raise ValueError(f"method: {self.title} does not work on {family} models like {model_name}{why}")

    @property
    def uses_target_modules(self) -> bool:
        """Reads spec.target_modules (checked against the model's module names in preflight)."""
        return "target_modules" in self.fields


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if (method.make_config is None) == (method.prepare is None) and method.trains:
        raise ValueError(f"method {method.name!r}: give exactly one of make_config and prepare")
    if method.method_family not in METHOD_FAMILIES:
        raise ValueError(f"method {method.name!r}: method_family must be one of {', '.join(METHOD_FAMILIES)}")
    if not method.serve:
        method = replace(method, serve=SERVE_PEFT if method.make_config is not None else SERVE_SWAP)
    METHODS[method.name] = method
    return method


def target_names(spec) -> list[str]:
    return [t.strip() for t in spec.target_modules.split(",") if t.strip()]
