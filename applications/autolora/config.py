"""Configuration dataclasses for AutoLoRA: the method, the search, the retraining, the run and the data.

Every field carries its help text in ``metadata["help"]`` (the CLI builds ``--help`` from it) and is
validated in ``__post_init__`` with an error that names the field. All configs round-trip through JSON::

    cfg = AutoLoraConfig(k=4)
    assert AutoLoraConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .data import FILE_FORMATS, SPLIT_FILES, suffix

__all__ = ["AutoLoraConfig", "SearchConfig", "RetrainConfig", "RunConfig", "DataConfig", "FieldError", "RANK_SCALINGS",
           "SELECTION_SPLITS", "DEVICES"]

RANK_SCALINGS = ("peft", "search")
SELECTION_SPLITS = ("validation", "train")
DEVICES = ("auto", "cpu", "cuda", "mps")


class FieldError(ValueError):
    """A config field holds a bad value: ``SearchConfig: max_steps must be ...``. The CLI names the flag instead
    (``--search-max-steps must be ...``), from ``field`` and ``message``."""

    def __init__(self, cls: str, field: str, message: str):
        super().__init__(f"{cls}: {field} {message}")
        self.field, self.message = field, message


def _check(condition: bool, cls: str, name: str, message: str) -> None:
    if not condition:
        raise FieldError(cls, name, message)


def _help(text: str, default=None):
    return field(default=default, metadata={"help": text})


class _JsonConfig:
    """JSON round trip shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown field(s) {', '.join(unknown)}; valid fields: "
                             + ", ".join(sorted(names)))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass
class AutoLoraConfig(_JsonConfig):
    """The AutoLoRA method: which matrices get a gated LoRA update, and how ranks are read off the gates.

    During the search an adapted weight W (out x in) becomes
    ``W + (lora_alpha / k) * sum_j a_j B[:, j] A[j, :]`` with ``a = softmax(lora_logits)``.
    After thresholding, the retraining uses plain PEFT LoRA with rank r per matrix and scaling
    ``lora_alpha / r`` (``rank_scaling="peft"``, PEFT's and the original code's convention), or the search's
    ``lora_alpha / k`` kept for every rank (``rank_scaling="search"``, written as PEFT ``alpha_pattern``).
    """

    k: int = field(default=8, metadata={"help": "Number of rank-1 components per adapted matrix during the search "
                                                  "(the maximal rank)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator: the search scales the update "
                                                              "by lora_alpha/k, the retraining by lora_alpha/r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the input of the LoRA branch."})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "Modules to adapt: exact names, dotted suffixes (e.g. query value) or one full-match regex. "
                "Default: per architecture (BERT/RoBERTa: query value; DeBERTa-v2: query_proj value_proj; GPT-2: "
                "c_attn; LLaMA-style: q_proj v_proj)."})
    modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "Extra modules trained fully with the LoRA weights (the task head). Default: the model's "
                "newly initialised head (e.g. classifier, score); none for language models. An empty list: no head."})
    threshold: float | None = field(default=None, metadata={
        "help": "Keep the components whose softmax weight is >= threshold. Default 1/k. Must be in (0, 1]."})
    allow_zero_rank: bool = field(default=False, metadata={
        "help": "Allow rank 0 (drop the matrix) when no component passes the threshold; by default every "
                "matrix keeps at least its strongest component."})
    rank_rule: str | None = field(default=None, metadata={
        "help": "How ranks are read off the search: 'threshold' = AutoLoRA's rule (per matrix, components with "
                "softmax weight >= --threshold); 'budget' = the components whose searched updates carry the most "
                "across all matrices, until --rank-budget or --parameter-budget is spent (search with k above the "
                "largest rank you may keep). Default: budget when a budget is given, else threshold. Rules are "
                "registered in autolora.rank_rules."})
    rank_budget: int | None = field(default=None, metadata={
        "help": "Total rank over all adapted matrices for a budgeted --rank-rule (e.g. 8 x matrices = the "
                "parameters of uniform r = 8); met exactly."})
    parameter_budget: int | None = field(default=None, metadata={
        "help": "LoRA parameter count for a budgeted --rank-rule (a rank of an in x out matrix costs in + out); "
                "met as closely as possible from below. Give this or --rank-budget."})
    rank_scaling: str = field(default="peft", metadata={
        "help": "Scaling of the retrained rank-r update: 'peft' = lora_alpha/r (PEFT and the original code), "
                "'search' = lora_alpha/k as during the search (exported through alpha_pattern)."})

    def __post_init__(self):
        name = type(self).__name__
        _check(isinstance(self.k, int) and self.k >= 1, name, "k", f"must be an integer >= 1, got {self.k!r}")
        _check(self.lora_alpha > 0, name, "lora_alpha", f"must be > 0, got {self.lora_alpha!r}")
        _check(0.0 <= self.lora_dropout < 1.0, name, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}")
        if self.threshold is not None:
            _check(0.0 < self.threshold <= 1.0, name, "threshold", f"must be in (0, 1], got {self.threshold!r}")
        self._check_rank_rule()
        _check(self.rank_scaling in RANK_SCALINGS, name, "rank_scaling",
               f"must be one of {list(RANK_SCALINGS)}, got {self.rank_scaling!r}")
        for attr in ("target_modules", "modules_to_save"):
            value = getattr(self, attr)
            if isinstance(value, str):
                setattr(self, attr, [value])
            elif value is not None:
                # modules_to_save may be empty (no head: e.g. a language model); target_modules may not.
                nonempty = len(value) > 0 or attr == "modules_to_save"
                _check(nonempty and all(isinstance(v, str) and v for v in value), name, attr,
                       f"must be a {'non-empty ' if attr == 'target_modules' else ''}list of module names or None, "
                       f"got {value!r}")
                setattr(self, attr, list(value))

    def _check_rank_rule(self) -> None:
        from .rank_rules import get_rank_rule

        budgets = {"--rank-budget": self.rank_budget, "--parameter-budget": self.parameter_budget}
        given = [flag for flag, value in budgets.items() if value is not None]
        for flag in given:
            if not (isinstance(budgets[flag], int) and budgets[flag] >= 1):
                raise ValueError(f"{flag} must be an integer >= 1, got {budgets[flag]!r}")
        if self.rank_rule is None:   # a budget asks for the budgeted rule; without one, the paper's rule
            self.rank_rule = "budget" if given else "threshold"
        rule = get_rank_rule(self.rank_rule)   # an unknown name lists the valid ones
        if rule.uses_budget and len(given) != 1:
            raise ValueError(f"--rank-rule {self.rank_rule} needs exactly one of --rank-budget and "
                             f"--parameter-budget, got {given or 'neither'}")
        if not rule.uses_budget and given:
            raise ValueError(f"{given[0]} applies to a budgeted --rank-rule (budget), not to {self.rank_rule!r}")
        if self.threshold is not None and self.rank_rule != "threshold":
            raise ValueError(f"--threshold applies to --rank-rule threshold, not to {self.rank_rule!r}")

    @property
    def budget(self):
        """The `RankBudget` of a budgeted rule, else None."""
        from .rank_rules import RankBudget

        if self.rank_budget is None and self.parameter_budget is None:
            return None
        return RankBudget(total_rank=self.rank_budget, parameters=self.parameter_budget)

    @property
    def effective_threshold(self) -> float:
        """The threshold in use: ``threshold`` or 1/k."""
        return self.threshold if self.threshold is not None else 1.0 / self.k


@dataclass
class SearchConfig(_JsonConfig):
    """The bilevel rank search: LoRA weights (inner level) on one split, selection logits (outer) on the other."""

    method: str = field(default="finite_difference", metadata={
        "help": "Hypergradient method registered in bilevel.methods (e.g. finite_difference, identity_implicit "
                "= the original code's variant, darts, first_order, unroll, neumann, cg, soba = SOBA's tracked "
                "implicit hypergradient, with --method-kwargs '{\"hessian\": \"finite_difference\"}' for no double "
                "backward)."})
    method_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "JSON dict of keyword arguments for the method. A method taking `lr` gets the LoRA learning rate "
                "unless given here."})
    validation_fraction: float = field(default=0.3, metadata={
        "help": "Fraction of the training data held out for the outer level (the selection logits)."})
    selection_split: str = field(default="validation", metadata={
        "help": "Data of the selection logits: 'validation' = the held-out part of the training data (AutoLoRA's "
                "bilevel search); 'train' = the paper's ablation without meta learning: the logits are trained "
                "jointly with the LoRA weights on the whole training data by their plain gradient (first_order; "
                "--method is then not used)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Adam learning rate of the LoRA weights and head."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the LoRA weights and head."})
    alpha_learning_rate: float = field(default=3e-4, metadata={"help": "Adam learning rate of the selection logits."})
    alpha_betas: list[float] = field(default_factory=lambda: [0.5, 0.999], metadata={
        "help": "Adam betas of the selection logits."})
    alpha_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the selection logits."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of both levels (padded to the longest)."})
    epochs: float = field(default=2.0, metadata={"help": "Search length in passes over the inner-level split."})
    max_steps: int | None = field(default=None, metadata={
        "help": "Search length in outer steps (one LoRA step + one logit step each); overrides --epochs."})
    warmup_steps: int = field(default=0, metadata={
        "help": "LoRA-only steps before the logits start moving."})
    record_every: int = field(default=10, metadata={"help": "Record the selection weights every N steps."})
    reuse_inner_gradient: bool = field(default=True, metadata={
        "help": "DARTS' order: update the logits first, then take the LoRA step with the inner gradient the "
                "hypergradient already computed (one forward+backward pass fewer per step). False: the original "
                "code's order, LoRA step first."})
    checkpoint_every: int = field(default=0, metadata={
        "help": "Save the full search state to <output-dir>/search_checkpoint/ every N steps (0: never); "
                "--resume continues from it."})
    seed: int = field(default=42, metadata={"help": "Seed of the split, the initialisation and the batch order."})

    def __post_init__(self):
        name = type(self).__name__
        _check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0, name, "checkpoint_every",
               f"must be an integer >= 0, got {self.checkpoint_every!r}")
        _check(isinstance(self.method, str) and self.method, name, "method", "must be a method name")
        _check(isinstance(self.method_kwargs, dict), name, "method_kwargs",
               f"must be a dict (JSON object), got {self.method_kwargs!r}")
        _check(self.selection_split in SELECTION_SPLITS, name, "selection_split",
               f"must be one of {list(SELECTION_SPLITS)}, got {self.selection_split!r}")
        _check(0.0 < self.validation_fraction < 1.0, name, "validation_fraction",
               f"must be in (0, 1), got {self.validation_fraction!r}")
        for attr in ("learning_rate", "alpha_learning_rate"):
            _check(getattr(self, attr) > 0, name, attr, f"must be > 0, got {getattr(self, attr)!r}")
        for attr in ("weight_decay", "alpha_weight_decay"):
            _check(getattr(self, attr) >= 0, name, attr, f"must be >= 0, got {getattr(self, attr)!r}")
        self.alpha_betas = list(self.alpha_betas)
        _check(len(self.alpha_betas) == 2 and all(0.0 <= b < 1.0 for b in self.alpha_betas), name, "alpha_betas",
               f"must be two numbers in [0, 1), got {self.alpha_betas!r}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, name, "batch_size",
               f"must be an integer >= 1, got {self.batch_size!r}")
        _check(self.epochs > 0 and math.isfinite(self.epochs), name, "epochs", f"must be > 0, got {self.epochs!r}")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, name, "max_steps", f"must be an integer >= 1, got {self.max_steps!r}")
        _check(self.warmup_steps >= 0, name, "warmup_steps", f"must be >= 0, got {self.warmup_steps!r}")
        _check(self.record_every >= 1, name, "record_every", f"must be >= 1, got {self.record_every!r}")
        if self.selection_split == "validation":
            self._check_method()

    def method_spec(self):
        """The hypergradient method as a checked ``bilevel.MethodSpec`` (an unknown name or setting raises here).
        Settings it leaves out that the method declares (the inner learning rate; an unroll's optimizer) follow the
        LoRA weights' optimizer: the Engine fills them before every step."""
        import bilevel

        spec = bilevel.MethodSpec(self.method, dict(self.method_kwargs))
        spec.build(inner_lr=self.learning_rate)
        return spec

    def _check_method(self) -> None:
        """Build the method once, so that an unknown name or setting fails here, before any model is loaded."""
        import bilevel

        known = self.method.lower() in bilevel.methods.names()  # names are looked up case-insensitively
        try:
            self.method_spec()
        except (TypeError, ValueError) as error:
            raise FieldError(type(self).__name__, "method_kwargs" if known else "method",
                             f"is not usable: {error}") from None


@dataclass
class RetrainConfig(_JsonConfig):
    """Retraining with the learned ranks: fresh PEFT LoRA on the training and validation splits combined.

    The retraining starts from fresh LoRA weights (Kaiming-uniform A, zero B), as in the paper; the searched
    components only decide the ranks.
    """

    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate of the retraining."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the retraining."})
    batch_size: int = field(default=32, metadata={"help": "Retraining batch size (padded to the longest)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    epochs: float = field(default=3.0, metadata={"help": "Retraining length in passes over the training data."})
    max_steps: int | None = field(default=None, metadata={
        "help": "Retraining length in optimizer steps; overrides --retrain-epochs."})
    warmup_ratio: float = field(default=0.06, metadata={
        "help": "Fraction of the steps with a linear learning-rate warmup (then linear decay to 0)."})
    seed: int = field(default=42, metadata={"help": "Seed of the LoRA initialisation and the batch order."})
    merge: bool = field(default=False, metadata={
        "help": "Also save the model with the adapter merged into the weights (merge_and_unload) under merged/."})

    def __post_init__(self):
        name = type(self).__name__
        _check(self.learning_rate > 0, name, "learning_rate", f"must be > 0, got {self.learning_rate!r}")
        _check(self.weight_decay >= 0, name, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        for attr in ("batch_size", "eval_batch_size"):
            _check(isinstance(getattr(self, attr), int) and getattr(self, attr) >= 1, name, attr,
                   f"must be an integer >= 1, got {getattr(self, attr)!r}")
        _check(self.epochs > 0 and math.isfinite(self.epochs), name, "epochs", f"must be > 0, got {self.epochs!r}")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, name, "max_steps", f"must be an integer >= 1, got {self.max_steps!r}")
        _check(0.0 <= self.warmup_ratio < 1.0, name, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio!r}")


@dataclass
class RunConfig(_JsonConfig):
    """Where the model comes from, where outputs go, and on which device to run."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hugging Face model name or local directory (required except for `demo` and `report`)."})
    output_dir: str | None = field(default=None, metadata={"help": "Directory for all outputs."})
    overwrite: bool = field(default=False, metadata={"help": "Allow writing into a non-empty --output-dir."})
    resume: bool = field(default=False, metadata={
        "help": "Continue a stopped search from <output-dir>/search_checkpoint/ (written with "
                "--checkpoint-every) with the same settings; the output directory may then hold the stopped "
                "run's files, but a finished adapter/ is still replaced only with --overwrite."})
    device: str = field(default="auto", metadata={"help": f"Device: one of {list(DEVICES)} (auto = cuda if available)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        name = type(self).__name__
        _check(self.device in DEVICES, name, "device", f"must be one of {list(DEVICES)}, got {self.device!r}")


@dataclass
class DataConfig(_JsonConfig):
    """Where the data is, which columns hold what, and how to tokenize it.

    Columns left as None are detected from their usual names (see `autolora.tasks.detection`). The task kinds and
    their metrics are those of the task classes in `autolora.tasks.TASK_KINDS`.
    """

    dataset_name: str | None = _help("Hub dataset name (needs the network); use train_file etc. for local data.")
    dataset_config_name: str | None = _help("Hub dataset configuration, e.g. 'sst2' for dataset_name 'glue'.")
    train_file: str | None = _help("Training data: .jsonl, .json, .csv, .tsv or .parquet.")
    validation_file: str | None = _help("Evaluation data (held out from search and retraining), same formats.")
    test_file: str | None = _help("Optional test data, same formats: scored once, after retraining (metrics.json "
                                       "'test'), when it has labels.")
    task_kind: str = _help("auto (inferred from the columns) or a kind of autolora.tasks.TASK_KINDS: "
                           "classification, regression, token_classification or generation.", "auto")
    text_column: str | None = _help("Classification/regression: column with the (first) text.")
    text_pair_column: str | None = _help("Classification/regression: column with the second text of a pair.")
    label_column: str | None = _help("Classification/regression: label column (floats mean regression).")
    tokens_column: str | None = _help("Token classification: column with the list of words.")
    tags_column: str | None = _help("Token classification: column with the list of tags, one per word.")
    source_column: str | None = _help("Generation: column with the prompt text.")
    target_column: str | None = _help("Generation: column with the text to generate.")
    max_length: int = _help("Truncate tokenized examples to this many tokens (batches pad to their longest).", 128)
    max_train_samples: int | None = _help("Keep only the first N training examples (quick runs).")
    max_eval_samples: int | None = _help("Keep only the first N evaluation examples.")
    max_test_samples: int | None = _help("Keep only the first N test examples.")
    label_all_tokens: bool = _help("Token classification: label every sub-token of a word in training, not only "
                                   "the first (evaluation always scores the first sub-token).", False)
    metric_for_best: str | None = _help("Metric that ranks results, e.g. matthews_correlation for CoLA; default "
                                        "per kind: accuracy, pearson, f1 (seqeval) or bleu.")
    generation_separator: str = _help("Generation: text placed between source and target.", " => ")
    max_new_tokens: int = _help("Generation: tokens decoded per example at evaluation.", 64)

    def __post_init__(self):
        def refuse(name: str, message: str):
            raise FieldError("DataConfig", name, message)

        from .tasks import TASK_KINDS, metric_names  # the task classes know their kinds and metrics

        if self.task_kind != "auto" and self.task_kind not in TASK_KINDS:
            refuse("task_kind", f"must be one of auto, {', '.join(TASK_KINDS)}; got {self.task_kind!r}")
        if self.dataset_name and any(getattr(self, name) for name in SPLIT_FILES.values()):
            refuse("dataset_name", "excludes local files (train_file, validation_file, test_file); give one or the "
                                   "other")
        if not self.dataset_name and not self.train_file:
            refuse("train_file", "is required (or a hub dataset_name): no data given")
        for name in SPLIT_FILES.values():
            path = getattr(self, name)
            if path is not None and suffix(path) not in FILE_FORMATS:
                refuse(name, f"{path!r} has an unsupported extension; use one of " + ", ".join(FILE_FORMATS))
        for name in ("max_length", "max_new_tokens", "max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                refuse(name, f"must be a positive integer, got {value!r}")
        if self.metric_for_best is not None and self.metric_for_best not in metric_names():
            refuse("metric_for_best", f"must be one of {', '.join(metric_names())}; got {self.metric_for_best!r}")
