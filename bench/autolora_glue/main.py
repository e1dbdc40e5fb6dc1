"""AutoLoRA against uniform LoRA, AdaLoRA and full fine-tuning on SST-2, CoLA and STS-B (real data, real MiniLM).

Every method trains its final model for the same number of optimizer steps at the same batch size on the same
training data, and is scored on the task's evaluation file, which nothing here ever tunes on. Per task and seed:

- ``autolora``: AutoLoRA search (k = 8, default method) then PEFT LoRA retrained with the learned ranks;
- ``autolora_identity``: the same with the original code's identity-inverse-Hessian hypergradient;
- ``autolora_nometa``: the paper's ablation without meta learning (selection logits trained jointly with the
  LoRA weights on the training data), then the same retraining;
- ``autolora_budget``: the search with k = 16, its ranks read by the ``budget`` rule at uniform r = 8's parameter
  count (a total rank of 8 per matrix when all targets have one shape, else 8 x the sum of in + out), then the
  same retraining: AutoLoRA's placement at r = 8's budget;
- ``lora_r1`` ... ``lora_r8``: uniform PEFT LoRA on the same targets, the grid AutoLoRA replaces;
- ``lora_shuffled``: the control for the search itself: PEFT LoRA with this seed's AutoLoRA ranks randomly
  permuted across the target matrices (same rank budget, same parameter count, placement not searched);
- ``lora_shuffled_budget``: the same control for ``autolora_budget``, its ranks permuted only among matrices of
  the same shape, so the parameter count stays exactly the same;
- ``adalora``: PEFT AdaLoRA with init_r = k and target_r = the mean rank AutoLoRA found for this task and seed;
- ``full``: full fine-tuning.

Learning rates are chosen first, on the training data alone (``calibration``): LoRA r = 8, AdaLoRA and full
fine-tuning are trained on 85% of the training rows at each learning rate of the setting's grid and scored on the
other 15%; the best LoRA rate serves every LoRA-family method (grid, AutoLoRA search and retraining), the others
their own family. With ``--lr-per-method`` every uniform rank and AutoLoRA's retraining (after a search on the
same 85%) get their own rate the same way; the search keeps r = 8's rate, since its k = 8 components train at r = 8's
scaling. The search's gate learning rate and length are fixed by the setting, never tuned.

The targets are query and value (``--targets qv``, the default) or every linear layer but the head
(``--targets all-linear``, results in their own folder). Each searched run also records what the search left in
every matrix (gates, component contributions, singular values of the gated update, shape), so that another rank
rule can be applied to it later. ``--model-dir`` (or ``$AUTOLORA_GLUE_MODEL_DIR``) and ``--data-dir`` point the
benchmark at a copied model and data (bench/gpu_equal_budget.py does, on a GPU machine).

Results go to ``<out>/runs.jsonl`` (one line per finished run, so a stopped run keeps what finished and a rerun
skips it) and ``<out>/table.md`` (rewritten after every run): mean +- std over seeds of the metric, trainable
parameters, wall time, each difference to AutoLoRA against the seed noise, and the cost of the rank grid against
one AutoLoRA run.

    python bench/autolora_glue.py --setting smoke      # minutes: the test suite runs this on SST-2
    python bench/autolora_glue.py --setting cpu        # about 2 hours on 2 CPU cores
    python bench/autolora_glue.py --setting cpu_long --methods autolora autolora_nometa lora_r2 lora_r4 lora_r8 \
        lora_shuffled                                  # STS-B with a 90-step search: about 2 hours
    python bench/autolora_glue.py --setting cpu_long --lr-per-method --methods autolora lora_r8 lora_shuffled \
        lora_r4 lora_r2                                # the same, every method at its own calibrated rate
    python bench/autolora_glue.py --setting cpu_long --methods autolora_budget lora_r8 lora_shuffled_budget \
        [--targets all-linear]                         # the equal-budget comparison
    python bench/autolora_glue.py --setting gpu        # full training sets, longer training, on a GPU
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from autolora import retrain as retrain_module
from autolora import search as search_module
from autolora.config import AutoLoraConfig, DataConfig, RetrainConfig, SearchConfig
from autolora.demo import minilm_path
from autolora.export import peft_config_dict
from autolora.layers import linear_features
from autolora.outputs import write_bytes_atomic, write_json_atomic
from autolora.injection import target_module_names
from autolora.rank_rules import model_evidence
from autolora.ranks import RankResult, select_components
from autolora.tasks import build_task, load_tokenizer

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
TASKS = {"sst2": "accuracy", "cola": "matthews_correlation", "stsb": "pearson"}
TARGETS = {"qv": ["query", "value"], "all-linear": ["all-linear"]}  # --targets -> AutoLoraConfig.target_modules
K = 8
BUDGET_K = 16      # autolora_budget's search: room above r = 8 for the budget rule to give a matrix more
BUDGET_RANK = 8    # autolora_budget spends uniform r = 8's parameters
GRID_RANKS = (1, 2, 4, 8)
METHODS = ("autolora", "autolora_identity", "autolora_nometa", "autolora_budget", *(f"lora_r{r}" for r in GRID_RANKS),
           "lora_shuffled", "lora_shuffled_budget", "adalora", "full")
# method -> the method of the same seed whose searched ranks it needs (its rank budget or its ranks to permute)
NEEDS = {"lora_shuffled": "autolora", "adalora": "autolora", "lora_shuffled_budget": "autolora_budget"}
MODEL_DIR_ENV = "AUTOLORA_GLUE_MODEL_DIR"  # the model folder, when not the MiniLM package's (the GPU script's)


@dataclass(frozen=True)
class Setting:
    """One size of the benchmark: data, budget, grids and seeds."""

    steps: int                     # optimizer steps of every final training run
    search_steps: int              # AutoLoRA search steps (one LoRA step + one gate step each)
    batch_size: int
    max_length: int
    lora_lrs: tuple[float, ...]    # calibration grid of the LoRA-family learning rate
    full_lrs: tuple[float, ...]    # calibration grid of full fine-tuning
    adalora_lrs: tuple[float, ...]  # calibration grid of AdaLoRA (E starts at 0: it needs larger rates)
    seeds: tuple[int, ...]
    tasks: tuple[str, ...] = tuple(TASKS)
    gate_lr: float = 2e-2          # Adam learning rate of the selection logits (fixed, not tuned)
    train_limit: int | None = None  # use this many training rows (a fixed random subset); None = all
    eval_limit: int | None = None   # score on this many evaluation rows; None = all
    calibration_fraction: float = 0.15
    lr_per_method: bool = False    # each uniform rank and AutoLoRA's retraining get their own calibrated rate
    targets: str = "qv"            # adapted matrices (TARGETS): query and value, or every linear layer but the head


def definition(setting: Setting, calibration: bool = False) -> dict:
    """The fields of ``setting`` that shape a run (not the seeds or tasks it covers), as JSON; with
    ``calibration``, those that shape a family's calibration (which rates the runs use does not)."""
    left_out = ("seeds", "tasks", "lr_per_method") if calibration else ("seeds", "tasks")
    fields = {k: v for k, v in dataclasses.asdict(setting).items() if k not in left_out}
    return json.loads(json.dumps(fields))


def _check_definition(found: dict | None, setting: Setting, where: str, calibration: bool = False) -> None:
    """Refuse to mix results of another definition of the setting into this one. A field missing from ``found``
    was added later, so those results used its default."""
    expected = definition(setting, calibration)
    if found is not None:
        required = {f.name: getattr(setting, f.name) for f in dataclasses.fields(Setting)
                    if f.default is dataclasses.MISSING}
        defaults = definition(Setting(**required), calibration)
        found = {**{k: v for k, v in defaults.items() if k not in found}, **found}
        if calibration:
            found.pop("lr_per_method", None)
    if found != expected:
        changed = sorted(k for k in expected if (found or {}).get(k) != expected[k])
        raise ValueError(f"{where} holds results of another definition of this setting (changed: "
                         f"{', '.join(changed)}); pass --out for a fresh results folder")


SETTINGS = {
    "smoke": Setting(steps=3, search_steps=2, batch_size=8, max_length=32, lora_lrs=(1e-3, 3e-3), full_lrs=(1e-4,),
                     adalora_lrs=(1e-2,), seeds=(0,), train_limit=80, eval_limit=40),
    # Sized for 2 CPU cores: about 2 hours. The search is a quarter of the retraining's steps so that one
    # AutoLoRA run costs under two LoRA runs (one search step costs about 3.2 LoRA steps). CoLA is left out: at
    # this budget its calibration found held-out MCC 0.00 (the majority class) for every learning rate of LoRA
    # and of full fine-tuning, so a CoLA table would compare nothing (see --find-budget cola); the gpu setting
    # trains 2000 steps.
    "cpu": Setting(steps=120, search_steps=30, batch_size=16, max_length=64, lora_lrs=(1e-3, 3e-3, 1e-2),
                   full_lrs=(5e-5, 2e-4), adalora_lrs=(3e-3, 1e-2, 3e-2), seeds=(0, 1, 2), tasks=("sst2", "stsb")),
    # The cpu setting's 30-step search gives ranks that are seed noise. The search-length probe (training file
    # only) finds a rank pattern that agrees across seeds on STS-B from 60-90 search steps on, and none on SST-2
    # within 240. This setting gives STS-B a 90-step search; 90 search steps cost about 350 LoRA steps, so 400
    # retraining steps keep one AutoLoRA run under two LoRA runs. About 2 hours on 2 CPU cores for autolora,
    # autolora_nometa, lora_r2, lora_r4, lora_r8 and lora_shuffled over 5 seeds.
    "cpu_long": Setting(steps=400, search_steps=90, batch_size=16, max_length=64, lora_lrs=(1e-3, 3e-3, 1e-2),
                        full_lrs=(5e-5, 2e-4), adalora_lrs=(3e-3, 1e-2, 3e-2), seeds=(0, 1, 2, 3, 4),
                        tasks=("stsb",)),
    "gpu": Setting(steps=2000, search_steps=500, batch_size=32, max_length=128, lora_lrs=(3e-4, 1e-3, 3e-3),
                   full_lrs=(2e-5, 5e-5, 1e-4), adalora_lrs=(1e-3, 3e-3, 1e-2), seeds=(0, 1, 2)),
}


# ----------------------------------------------------------------------------------------------- data and models
def load_task(name: str, setting: Setting, tokenizer, data_dir: str = DATA_DIR):
    """The tokenized task; ``train_limit``/``eval_limit`` take fixed random subsets."""
    folder = os.path.join(data_dir, name)
    task = build_task(DataConfig(train_file=os.path.join(folder, "train.jsonl"),
                                 validation_file=os.path.join(folder, "validation.jsonl"),
                                 max_length=setting.max_length), tokenizer)
    if setting.train_limit is not None:
        task.train = task.train.shuffle(seed=0).select(range(min(setting.train_limit, len(task.train))))
    if setting.eval_limit is not None:
        task.evaluation = task.evaluation.shuffle(seed=0).select(range(min(setting.eval_limit,
                                                                           len(task.evaluation))))
    return task


def model_dir() -> str:
    """The model folder: ``$AUTOLORA_GLUE_MODEL_DIR`` (``--model-dir``) or the MiniLM package's."""
    return os.environ.get(MODEL_DIR_ENV) or minilm_path()


def fresh_model(task, seed: int, device):
    torch.manual_seed(seed)  # the task head is new: seed its initialisation
    return task.load_model(model_dir()).to(device)


def lora_config(setting: Setting, k: int = K, **rule) -> AutoLoraConfig:
    """The AutoLoRA config of ``setting``'s targets (``rule``: rank_rule and its budget)."""
    return AutoLoraConfig(k=k, target_modules=TARGETS[setting.targets], modules_to_save=["classifier"], **rule)


def target_names(model, setting: Setting) -> list[str]:
    """The matrices ``setting`` adapts, in model order."""
    return target_module_names(model, lora_config(setting))


def target_shapes(model, setting: Setting) -> dict[str, tuple[int, int]]:
    """Adapted matrix -> (in_features, out_features)."""
    modules = dict(model.named_modules())
    return {name: linear_features(modules[name]) for name in target_names(model, setting)}


def equal_budget(shapes: dict[str, tuple[int, int]], rank: int = BUDGET_RANK) -> dict:
    """The budget rule's budget that buys uniform rank ``rank``'s parameters on matrices of ``shapes``: a total
    rank when every matrix has the same shape (met exactly), else a parameter count (rank x sum of in + out, met
    from below), as AutoLoraConfig fields."""
    if len(set(shapes.values())) == 1:
        return {"rank_budget": rank * len(shapes)}
    return {"parameter_budget": rank * sum(i + o for i, o in shapes.values())}


def retrain_config(setting: Setting, lr: float, seed: int) -> RetrainConfig:
    return RetrainConfig(learning_rate=lr, max_steps=setting.steps, batch_size=setting.batch_size, seed=seed)


def train_lora(task, ranks: int | list[int] | dict[str, int], lr: float, seed: int, setting: Setting, train,
               device):
    """PEFT LoRA with ``ranks`` (one rank for every target, one per target in model order, or one per module
    name) trained on ``train``."""
    model = fresh_model(task, seed, device)
    if isinstance(ranks, int):
        ranks = {n: ranks for n in target_names(model, setting)}
    elif isinstance(ranks, list):
        ranks = dict(zip(target_names(model, setting), ranks, strict=True))
    k = max(K, *ranks.values())
    exported = peft_config_dict(RankResult(ranks=ranks, k=k, threshold=None, allow_zero_rank=False),
                                lora_config(setting, k), modules_to_save=["classifier"], task_kind=task.kind)
    return retrain_module.retrain_lora(model, exported, train, task.collate, retrain_config(setting, lr, seed),
                                  progress=False)


def train_full(task, lr: float, seed: int, setting: Setting, train, device):
    model = fresh_model(task, seed, device)
    return retrain_module.fit(model, train, task.collate, retrain_config(setting, lr, seed), progress=False)


def train_adalora(task, target_r: int, lr: float, seed: int, setting: Setting, device, train=None):
    from peft import AdaLoraConfig, get_peft_model

    model = fresh_model(task, seed, device)
    steps = setting.steps
    config = AdaLoraConfig(init_r=K, target_r=target_r, lora_alpha=16, lora_dropout=0.1,
                           target_modules=target_names(model, setting), modules_to_save=["classifier"],
                           task_type="SEQ_CLS", total_step=steps, tinit=max(1, steps // 10),
                           tfinal=max(1, steps // 5), deltaT=max(1, steps // 20))
    peft_model = get_peft_model(model, config).to(device)

    def allocate(m, step):
        m.base_model.update_and_allocate(step)

    return retrain_module.fit(peft_model, task.train if train is None else train, task.collate,
                              retrain_config(setting, lr, seed), progress=False, after_step=allocate)


def autolora(task, variant: str, search_lr: float, retrain_lr: float, seed: int, setting: Setting, device,
             train=None):
    """Search then retrain, both on ``train`` (default: the training file); returns (retrain result, search
    result, what the search left per matrix)."""
    train = task.train if train is None else train
    found, evidence = run_search(task, variant, search_lr, seed, setting, setting.search_steps, device, train=train)
    return train_lora(task, found.ranks.ranks, retrain_lr, seed, setting, train, device), found, evidence


def run_search(task, variant: str, lr: float, seed: int, setting: Setting, steps: int, device,
               record_every: int = 10, train=None):
    """AutoLoRA's rank search alone (``variant`` as in METHODS), on ``train`` (default: the training file), for
    ``steps`` steps; the gate weights are recorded every ``record_every`` steps. ``autolora_budget`` searches
    with k = 16 and reads the ranks with the budget rule at uniform r = 8's parameters. Returns the search result
    and what the search left in each matrix (gates, component contributions, the update's singular values, shape:
    `autolora.rank_rules.MatrixEvidence` as a dict), from which any rank rule can be applied again later."""
    method = {"autolora": {}, "autolora_identity": {"method": "identity_implicit"},
              "autolora_nometa": {"selection_split": "train"}, "autolora_budget": {}}[variant]
    search_config = SearchConfig(max_steps=steps, batch_size=setting.batch_size, learning_rate=lr,
                                 alpha_learning_rate=setting.gate_lr, seed=seed, record_every=record_every,
                                 **method)
    model = fresh_model(task, seed, device)
    config = lora_config(setting)
    if variant == "autolora_budget":
        config = lora_config(setting, BUDGET_K, rank_rule="budget", **equal_budget(target_shapes(model, setting)))
    found = search_module.search_ranks(model, task.train if train is None else train, task.collate, config,
                                       search_config, progress=False)
    return found, {name: dataclasses.asdict(e) for name, e in model_evidence(model).items()}


# ---------------------------------------------------------------------------------------------------- calibration
# calibrated family -> (the learning-rate key of calibration.json, the Setting field with its grid); lora_r8 comes
# first: every AutoLoRA search runs at its rate. The families after adalora exist only with lr_per_method.
FAMILIES = {"lora_r8": ("lora_lr", "lora_lrs"), "full": ("full_lr", "full_lrs"),
            "adalora": ("adalora_lr", "adalora_lrs"),
            **{f"lora_r{r}": (f"lora_r{r}_lr", "lora_lrs") for r in GRID_RANKS if r != 8},
            "autolora": ("autolora_lr", "lora_lrs")}


def train_family(family: str, task, lr: float, seed: int, setting: Setting, train, device, lora_lr=None):
    """One calibration run on ``train``: uniform LoRA of rank r, full fine-tuning, AdaLoRA from k down to k/2 on
    average, or AutoLoRA (search at ``lora_lr``, retraining at ``lr``)."""
    if family.startswith("lora_r"):
        return train_lora(task, int(family[len("lora_r"):]), lr, seed, setting, train, device)
    if family == "full":
        return train_full(task, lr, seed, setting, train, device)
    if family == "autolora":
        return autolora(task, "autolora", lora_lr, lr, seed, setting, device, train)[0]
    return train_adalora(task, K // 2, lr, seed, setting, device, train)


def family_of(method: str, lr_per_method: bool = False) -> str:
    """The calibrated family whose learning rate ``method`` trains its final model at."""
    if method in ("full", "adalora"):
        return method
    if not lr_per_method:
        return "lora_r8"
    return method if method.startswith("lora_r") else "autolora"  # AutoLoRA variants and the shuffled control


def final_rate(method: str, lrs: dict, lr_per_method: bool = False) -> float:
    """The calibrated learning rate ``method`` trains its final model at (``lrs``: a task's calibration entry)."""
    return lrs[FAMILIES[family_of(method, lr_per_method)][0]]


def families_for(methods, lr_per_method: bool = False) -> list[str]:
    """The calibrated families ``methods`` need, in calibration order."""
    needed = {family_of(m, lr_per_method) for m in methods}
    if needed & {"adalora", "autolora"} or any(m.startswith("autolora") for m in methods):
        needed.add("lora_r8")  # every search runs at r = 8's rate; AdaLoRA's budget comes from an AutoLoRA run
    return [f for f in FAMILIES if f in needed]


def calibrate(name: str, task, setting: Setting, out: str, device, families) -> dict:
    """Best learning rate of each of ``families`` (as in FAMILIES) on a held-out 15% of the training rows; cached
    per family in calibration.json."""
    path = os.path.join(out, "calibration.json")
    cache = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            cache = json.load(f)
    if name in cache:
        _check_definition(cache[name].get("setting"), setting, f"{path} ({name})", calibration=True)
    entry = cache.setdefault(name, {"setting": definition(setting, calibration=True), "held_out_scores": {}})
    fit_rows, held_out = search_module.split_train(task.train, setting.calibration_fraction, seed=1234)
    metric = TASKS[name]
    for family in families:
        key, grid = FAMILIES[family]
        if key in entry:
            continue
        scores = {}
        for lr in getattr(setting, grid):
            result = train_family(family, task, lr, 0, setting, fit_rows, device, entry.get("lora_lr"))
            scores[lr] = task.evaluate(result.model, held_out)[metric]
            print(f"  calibration {name} {family} lr={lr:g}: held-out {metric} {scores[lr]:.4f}", flush=True)
        entry[key] = max(scores, key=scores.get)
        entry["held_out_scores"][family] = {str(lr): round(v, 4) for lr, v in scores.items()}
        entry["held_out_rows"] = len(held_out)
        write_json_atomic(path, cache)
    return entry


def find_budget(name: str, task, setting: Setting, out: str, device, multiples=(1, 2, 4, 8)) -> list[dict]:
    """Held-out score of LoRA r = 8 and full fine-tuning as the budget grows (``multiples`` of the setting's
    steps), at the learning rates of the grids, on the calibration split of the training rows only.

    For a task whose calibration stays at the trivial score: how long must the baselines train before they learn?
    Results go to budget.json.
    """
    fit_rows, held_out = search_module.split_train(task.train, setting.calibration_fraction, seed=1234)
    metric, rows = TASKS[name], []
    for multiple in multiples:
        longer = dataclasses.replace(setting, steps=setting.steps * multiple)
        for kind in ("lora_r8", "full"):
            for lr in getattr(setting, FAMILIES[kind][1]):
                start = time.perf_counter()
                result = train_family(kind, task, lr, 0, longer, fit_rows, device)
                score = task.evaluate(result.model, held_out)[metric]
                rows.append({"task": name, "method": kind, "lr": lr, "steps": longer.steps, metric: round(score, 4),
                             "wall_s": round(time.perf_counter() - start, 1)})
                print(f"  budget {name} {kind} lr={lr:g} steps={longer.steps}: held-out {metric} {score:.4f}",
                      flush=True)
                write_json_atomic(os.path.join(out, "budget.json"), rows)
    return rows


def search_probe(name: str, task, setting: Setting, lr: float, out: str, device, steps: int,
                 seeds=(0, 1, 2), record_every: int = 10) -> list[dict]:
    """How long must the search run before its ranks stop being seed noise? One search of ``steps`` steps per
    seed (training file only); at every recorded step, the ranks the gates would give then, their agreement
    across seeds (`_agreement`) and the gates' spread. The search has no schedule, so the state at step s of a
    long search is the final state of an s-step search. Results go to search_probe_<task>.json."""
    weights = {}                                   # seed -> matrix -> [gate weights at each recorded step]
    for seed in seeds:
        start = time.perf_counter()
        found, _ = run_search(task, "autolora", lr, seed, setting, steps, device, record_every)
        weights[seed], recorded = found.trajectory.weights, found.trajectory.steps
        print(f"  probe {name} seed {seed}: {steps} search steps in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for index, step in enumerate(recorded):
        per_seed = [[len(select_components(w[index], 1.0 / K)) for w in weights[seed].values()] for seed in seeds]
        spread = statistics.fmean(max(abs(v * K - 1) for v in w[index]) for seed in seeds
                                  for w in weights[seed].values())
        agreement = _agreement(per_seed)
        mean_rank = statistics.fmean(map(statistics.fmean, per_seed))
        rows.append({"task": name, "step": step, "mean_rank": round(mean_rank, 3),
                     "seed_agreement": None if agreement is None else round(agreement, 3),
                     "gate_spread": round(spread, 4), "ranks": per_seed})
        print(f"  probe {name} step {step}: mean rank {rows[-1]['mean_rank']}, seed agreement "
              f"{rows[-1]['seed_agreement']}, gate spread max|k a - 1| {spread:.3f}", flush=True)
    write_json_atomic(os.path.join(out, f"search_probe_{name}.json"), rows)
    return rows


# ------------------------------------------------------------------------------------------------------- one run
def shuffled_ranks(ranks: list[int], seed: int) -> list[int]:
    """``ranks`` randomly permuted across the matrices, the permutation fixed by ``seed``: the searched rank
    budget placed without the search (the ``lora_shuffled`` control)."""
    return random.Random(seed).sample(ranks, k=len(ranks))


def shuffled_within_shapes(ranks: list[int], shapes: list[tuple[int, int]], seed: int) -> list[int]:
    """``ranks`` randomly permuted among the matrices of the same shape (``shapes``: (in, out) per matrix, in the
    same order), the permutation fixed by ``seed``: the searched placement undone at exactly the searched
    parameter count (the ``lora_shuffled_budget`` control). With one shape this is `shuffled_ranks`."""
    if len(ranks) != len(shapes):
        raise ValueError(f"shuffled_within_shapes: {len(ranks)} ranks but {len(shapes)} shapes")
    groups: dict[tuple[int, int], list[int]] = {}          # shape -> indices of its matrices, in model order
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    out = list(ranks)
    rng = random.Random(seed)
    for indices in groups.values():
        for index, rank in zip(indices, rng.sample([ranks[i] for i in indices], k=len(indices))):
            out[index] = rank
    return out


def run_one(name: str, method: str, seed: int, task, lrs: dict, setting: Setting, done: dict, device) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    lr = final_rate(method, lrs, setting.lr_per_method)
    record = {"task": name, "method": method, "seed": seed}
    search_wall, ranks = 0.0, None
    if method.startswith("autolora"):
        result, found, evidence = autolora(task, method, lrs["lora_lr"], lr, seed, setting, device)
        search_wall, ranks = found.wall_time_s, list(found.ranks.ranks.values())
        names = list(found.ranks.ranks)

        def per_matrix(field: str) -> dict:
            return {n: [float(f"{v:.6g}") for v in evidence[n][field]] for n in names}

        # what the search left, so that another rank rule can be applied to it later (autolora.rank_rules)
        record.update(search_steps=found.steps, k=found.ranks.k, rank_rule=found.ranks.rule,
                      budget=found.ranks.budget, importance_score=found.ranks.importance_score,
                      matrices=names, shapes=[[evidence[n]["in_features"], evidence[n]["out_features"]]
                                              for n in names],
                      gates=per_matrix("gates"), contributions=per_matrix("contributions"),
                      singular_values=per_matrix("singular_values"),
                      importance={n: [float(f"{v:.6g}") for v in found.ranks.importance[n]] for n in names})
    elif method.startswith("lora_r"):
        result = train_lora(task, int(method[len("lora_r"):]), lr, seed, setting, task.train, device)
    elif method == "lora_shuffled":
        ranks = shuffled_ranks(done[(name, "autolora", seed)]["ranks"], seed)
        result = train_lora(task, ranks, lr, seed, setting, task.train, device)
    elif method == "lora_shuffled_budget":
        reference = done[(name, "autolora_budget", seed)]
        ranks = shuffled_within_shapes(reference["ranks"], reference["shapes"], seed)
        result = train_lora(task, ranks, lr, seed, setting, task.train, device)
    elif method == "adalora":
        reference = done[(name, "autolora", seed)]
        target_r = max(1, round(reference["mean_rank"]))
        result = train_adalora(task, target_r, lr, seed, setting, device)
        record.update(target_r=target_r)
    else:
        result = train_full(task, lr, seed, setting, task.train, device)
    if ranks is not None:
        record.update(ranks=ranks, mean_rank=round(statistics.fmean(ranks), 3))
    start = time.perf_counter()
    scores = task.evaluate(result.model, task.evaluation)
    record.update(metrics={k: round(v, 5) for k, v in scores.items()}, trainable=result.trainable_parameters,
                  train_wall_s=round(result.wall_time_s, 2), search_wall_s=round(search_wall, 2),
                  wall_s=round(result.wall_time_s + search_wall, 2), eval_wall_s=round(time.perf_counter() - start, 2),
                  steps=result.steps, lr=lr)
    return record


# ---------------------------------------------------------------------------------------------------------- table
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


# two-sided 95% quantile of Student's t by degrees of freedom (seeds - 1)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _versus(values: dict[int, float], reference: dict[int, float]) -> str:
    """Mean difference to AutoLoRA over the seeds both have (paired: a seed fixes the head initialisation and the
    batch order of every method), with the half-width of its 95% t interval; beyond noise when the interval
    excludes 0."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return ""
    differences = [values[s] - reference[s] for s in seeds]
    delta = statistics.fmean(differences)
    if len(seeds) < 2:
        return f"{delta:+.3f} (1 seed)"
    half = T_975.get(len(seeds) - 1, 1.96) * statistics.stdev(differences) / math.sqrt(len(seeds))
    return f"{delta:+.3f} +- {half:.3f} ({'beyond' if abs(delta) > half else 'within'} noise)"


def _agreement(rank_vectors: list[list[int]]) -> float | None:
    """Mean Pearson correlation, over pairs of seeds, of the per-matrix ranks: near 0 when the searched rank
    pattern is seed noise, near 1 when every seed finds the same pattern (None without two varying vectors)."""
    vectors = [v for v in rank_vectors if len(set(v)) > 1]
    pairs = [statistics.correlation(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1:]]
    return statistics.fmean(pairs) if pairs else None


def _rank_agreement(runs: list[dict]) -> str:
    agreement = _agreement([r["ranks"] for r in runs])
    return "" if agreement is None else f", seed agreement {agreement:+.2f}"


def render_table(records: list[dict], setting_name: str, setting: Setting, calibration: dict) -> str:
    by = {}
    for r in records:
        by.setdefault((r["task"], r["method"]), []).append(r)
    tasks = [t for t in TASKS if any(k[0] == t for k in by)]
    lines = [f"Setting `{setting_name}`: {setting.steps} steps of batch {setting.batch_size} per final model, "
             f"AutoLoRA search {setting.search_steps} steps, max length {setting.max_length}, seeds "
             f"{list(setting.seeds)}, "
             f"{'a learning rate per method' if setting.lr_per_method else 'one LoRA learning rate'}, targets "
             f"{setting.targets} ({', '.join(TARGETS[setting.targets])}).", ""]
    for name in tasks:
        metric = TASKS[name]
        lrs = calibration.get(name, {})
        labels = {"lora_r8": "LoRA r8 and the search" if setting.lr_per_method else "LoRA", "full": "full",
                  "adalora": "AdaLoRA", "autolora": "AutoLoRA retraining"}
        rates = ", ".join(f"{labels.get(family, family)} lr {lrs[key]}" for family, (key, _) in FAMILIES.items()
                          if key in lrs)
        # the column of paired differences is against AutoLoRA, or its budgeted variant when AutoLoRA did not run
        anchor = "autolora" if by.get((name, "autolora")) or not by.get((name, "autolora_budget")) else \
            "autolora_budget"
        lines += [f"**{name}** ({metric}{' and spearmanr' if name == 'stsb' else ''}; {rates}, each chosen on "
                  "held-out training rows)", "",
                  f"| method | seeds | {metric} mean +- std | vs {anchor} (paired, 95% CI) | "
                  f"{'spearmanr | ' if name == 'stsb' else ''}trainable params | wall s (search + train) | ranks |",
                  "|---|---|---|---|" + ("---|" if name == "stsb" else "") + "---|---|---|"]
        reference = {r["seed"]: r["metrics"][metric] for r in by.get((name, anchor), [])}
        for method in METHODS:
            runs = by.get((name, method))
            if not runs:
                continue
            values = [r["metrics"][metric] for r in runs]
            mean, std = _mean_std(values)
            spear = ""
            if name == "stsb":
                s_mean, s_std = _mean_std([r["metrics"]["spearmanr"] for r in runs])
                spear = f"{s_mean:.3f} +- {s_std:.3f} | "
            ranks = ""
            if "mean_rank" in runs[0]:
                ranks = f"mean {statistics.fmean(r['mean_rank'] for r in runs):.2f}{_rank_agreement(runs)}"
            elif "target_r" in runs[0]:
                ranks = f"target_r {runs[0]['target_r']}"
            versus = "-" if method == anchor else _versus({r["seed"]: r["metrics"][metric] for r in runs},
                                                              reference)
            lines.append(f"| {method} | {len(runs)} | {mean:.3f} +- {std:.3f} | {versus} | {spear}"
                         f"{statistics.fmean(r['trainable'] for r in runs):,.0f} | "
                         f"{statistics.fmean(r['wall_s'] for r in runs):.1f} | {ranks} |")
        lines.append("")
    lines += _summary(by, tasks)
    lines += ["", "**Every run** (wall seconds; the search is AutoLoRA's rank search; reused: taken over from "
              "the other learning-rate protocol's folder, where it ran at the same rate)", "",
              "| task | method | seed | metric | search s | train s | eval s | lr |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']}{' (reused)' if 'reused_from' in r else ''} | {r['seed']} | "
              f"{r['metrics'][TASKS[r['task']]]:.4f} | {r['search_wall_s']:.1f} | {r['train_wall_s']:.1f} | "
              f"{r['eval_wall_s']:.1f} | {r['lr']:g} |"
              for r in records]
    return "\n".join(lines) + "\n"


def _task_mean(by: dict, tasks: list[str], method: str, value) -> float:
    """Mean over ``tasks`` of the per-task mean over seeds of ``value(record, task)``."""
    return statistics.fmean(statistics.fmean(value(r, t) for r in by[(t, method)]) for t in tasks)


def _seed_averages(by: dict, tasks: list[str], method: str) -> dict[int, float]:
    """Seed -> the primary metric averaged over ``tasks``, for the seeds that ran on every task."""
    per_task = [{r["seed"]: r["metrics"][TASKS[t]] for r in by[(t, method)]} for t in tasks]
    seeds = set.intersection(*(set(scores) for scores in per_task))
    return {seed: statistics.fmean(scores[seed] for scores in per_task) for seed in seeds}


def _summary(by: dict, tasks: list[str]) -> list[str]:
    """Average over tasks, the targets, and the cost of the grid against one AutoLoRA run; the equal-budget
    comparison when autolora_budget ran."""
    complete = [m for m in METHODS if all(by.get((t, m)) for t in tasks)]
    if not tasks:
        return []
    if "autolora" not in complete:
        return _equal_budget_summary(by, tasks, complete)
    average = {m: _task_mean(by, tasks, m, lambda r, t: r["metrics"][TASKS[t]]) for m in complete}
    params = {m: _task_mean(by, tasks, m, lambda r, t: r["trainable"]) for m in complete}
    wall = {m: _task_mean(by, tasks, m, lambda r, t: r["wall_s"]) for m in complete}
    lines = ["**Summary** (average of the primary metric over " + ", ".join(tasks) + ")", "",
             "| method | average | trainable params (mean over tasks) |", "|---|---|---|"]
    lines += [f"| {m} | {average[m]:.3f} | {params[m]:,.0f} |" for m in complete]
    grid = [m for m in complete if m.startswith("lora_r")]
    lines.append("")
    if grid:
        best = max(grid, key=average.get)
        grid_cost = sum(wall[m] for m in grid)
        lora_cost = statistics.fmean(wall[m] for m in grid)
        versus = _versus(_seed_averages(by, tasks, best), _seed_averages(by, tasks, "autolora"))
        lines += [f"- AutoLoRA average {average['autolora']:.3f} vs the best uniform rank {best} "
                  f"{average[best]:.3f} (an oracle: the rank picked on these evaluation results, which favours the "
                  f"grid): {'met' if average['autolora'] >= average[best] else 'NOT met'}; {best} - autolora "
                  f"= {versus}.",
                  f"- AutoLoRA trainable parameters {params['autolora']:,.0f} vs r=8 "
                  f"{params.get('lora_r8', float('nan')):,.0f}: "
                  f"{'met' if params['autolora'] <= params.get('lora_r8', math.inf) else 'NOT met'}.",
                  f"- Cost: one AutoLoRA run (search + retrain) {wall['autolora']:.0f} s = "
                  f"{wall['autolora'] / lora_cost:.2f} LoRA runs (target <= 2: "
                  f"{'met' if wall['autolora'] <= 2 * lora_cost else 'NOT met'}); the rank grid "
                  f"{{{', '.join(m[len('lora_r'):] for m in grid)}}} costs {grid_cost:.0f} s = "
                  f"{grid_cost / wall['autolora']:.2f} AutoLoRA runs."]
    if "lora_shuffled" in complete:
        versus = _versus(_seed_averages(by, tasks, "autolora"), _seed_averages(by, tasks, "lora_shuffled"))
        lines.append(f"- The search against a random placement of the same ranks: autolora {average['autolora']:.3f}, "
                     f"lora_shuffled {average['lora_shuffled']:.3f}; autolora - lora_shuffled = {versus}.")
    return lines + _equal_budget_summary(by, tasks, complete, header=False)


def _equal_budget_summary(by: dict, tasks: list[str], complete: list[str], header: bool = True) -> list[str]:
    """autolora_budget against uniform r = 8 and against its own ranks shuffled among same-shape matrices: all
    three at (nearly) the same parameter count."""
    if "autolora_budget" not in complete:
        return []
    average = {m: _task_mean(by, tasks, m, lambda r, t: r["metrics"][TASKS[t]]) for m in complete}
    params = {m: _task_mean(by, tasks, m, lambda r, t: r["trainable"]) for m in complete}
    lines = ["**Equal budget** (average of the primary metric over " + ", ".join(tasks) + ")", "",
             "| method | average | trainable params (mean over tasks) |", "|---|---|---|"] if header else []
    lines += [f"| {m} | {average[m]:.3f} | {params[m]:,.0f} |" for m in complete if header]
    lines += [""] if header else []
    for other in ("lora_r8", "lora_shuffled_budget"):
        if other in complete:
            versus = _versus(_seed_averages(by, tasks, "autolora_budget"), _seed_averages(by, tasks, other))
            lines.append(f"- autolora_budget {average['autolora_budget']:.3f} ({params['autolora_budget']:,.0f} "
                         f"params) vs {other} {average[other]:.3f} ({params[other]:,.0f} params): "
                         f"autolora_budget - {other} = {versus}.")
    return lines


# ------------------------------------------------------------------------------------------------------ the driver
def load_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reusable_records(folder: str, setting_name: str, setting: Setting, calibration: dict) -> dict:
    """The runs of ``folder`` (the same setting under the other learning-rate protocol) by (task, method, seed),
    for the tasks whose AutoLoRA searches ran at the same rate as here. Training is deterministic on one device,
    so such a run at the rate this protocol gives its method is the run this protocol would make."""
    path = os.path.join(folder, "runs.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"autolora_glue: --reuse {folder}: no runs.jsonl there")
    with open(os.path.join(folder, "calibration.json"), encoding="utf-8") as f:
        search_rates = {name: entry.get("lora_lr") for name, entry in json.load(f).items()}
    found = {}
    for record in load_records(path):
        if record.get("setting") != setting_name:
            continue
        _check_definition(record.get("definition"), setting, path, calibration=True)
        if search_rates.get(record["task"]) == calibration.get(record["task"], {}).get("lora_lr"):
            found[(record["task"], record["method"], record["seed"])] = record
    return found


def run(setting_name: str, tasks: list[str], out: str, methods: list[str] | None = None,
        seeds: list[int] | None = None, data_dir: str = DATA_DIR, lr_per_method: bool = False,
        reuse: str | None = None, targets: str = "qv") -> list[dict]:
    """Run (or continue) the benchmark; returns every finished record. ``reuse``: a results folder of the same
    setting under the other learning-rate protocol whose runs at the same rate are taken over instead of rerun."""
    if targets not in TARGETS:
        raise ValueError(f"autolora_glue: --targets {targets!r} is not one of {list(TARGETS)}")
    setting = dataclasses.replace(SETTINGS[setting_name], lr_per_method=lr_per_method, targets=targets)
    if seeds:
        setting = dataclasses.replace(setting, seeds=tuple(seeds))
    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"autolora_glue: unknown method(s) {unknown}; valid: {list(METHODS)}")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"autolora_glue: no benchmark data at {os.path.abspath(data_dir)}; pass --data-dir")
    os.makedirs(out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs_path = os.path.join(out, "runs.jsonl")
    records = [r for r in load_records(runs_path) if r.get("setting") == setting_name]
    for record in records:
        _check_definition(record.get("definition"), setting, runs_path)
    done = {(r["task"], r["method"], r["seed"]): r for r in records}
    tokenizer = load_tokenizer(model_dir())
    loaded = {name: load_task(name, setting, tokenizer, data_dir) for name in tasks}
    families = families_for(methods, setting.lr_per_method)
    calibration = {name: calibrate(name, loaded[name], setting, out, device, families) for name in tasks}
    previous = reusable_records(reuse, setting_name, setting, calibration) if reuse else {}

    def write_table() -> None:
        text = render_table(records, setting_name, setting, calibration)
        write_bytes_atomic(os.path.join(out, "table.md"), text.encode("utf-8"))

    for seed in setting.seeds:           # seed-major: a stopped run has whole tables for its finished seeds
        for name in tasks:
            for method in methods:
                if (name, method, seed) in done:
                    continue
                if method in NEEDS and (name, NEEDS[method], seed) not in done:
                    continue
                start = time.perf_counter()
                source = previous.get((name, method, seed))
                lr = final_rate(method, calibration[name], setting.lr_per_method)
                if source is not None and source["lr"] == lr and source["device"] == str(device):
                    record = {**source, "definition": definition(setting), "reused_from": os.path.abspath(reuse)}
                else:
                    record = {"setting": setting_name, "definition": definition(setting),
                              **run_one(name, method, seed, loaded[name], calibration[name], setting, done, device),
                              "date": time.strftime("%Y-%m-%d"), "device": str(device)}
                with open(runs_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                done[(name, method, seed)] = record
                records.append(record)
                write_table()
                print(f"[{time.strftime('%H:%M:%S')}] {name} {method} seed {seed}: "
                      f"{TASKS[name]} {record['metrics'][TASKS[name]]:.4f} ({time.perf_counter() - start:.0f} s"
                      f"{', reused' if 'reused_from' in record else ''})",
                      flush=True)
    if records:  # also when every run was already done: the table is regenerated from runs.jsonl
        write_table()
    return records


def quiet_libraries() -> None:
    """No per-model load reports, progress bars or warnings from the libraries in the benchmark's log."""
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")


def default_out(setting_name: str, lr_per_method: bool = False, targets: str = "qv") -> str:
    """bench/results/autolora_glue_<setting>[_lr_per_method][_all-linear]: qv keeps the folders it always had."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"autolora_glue_{setting_name}{'_lr_per_method' if lr_per_method else ''}"
                        f"{'' if targets == 'qv' else '_' + targets}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="smoke")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None,
                        help="override the setting's tasks")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="override the setting's seeds")
    parser.add_argument("--data-dir", default=DATA_DIR, help="folder with sst2/, cola/, stsb/ (../shared/data)")
    parser.add_argument("--find-budget", choices=list(TASKS), default=None,
                        help="instead of the comparison: held-out scores of the baselines as their budget grows")
    parser.add_argument("--multiples", nargs="+", type=int, default=[1, 2, 4, 8],
                        help="with --find-budget: budgets as multiples of the setting's steps")
    parser.add_argument("--search-probe", choices=list(TASKS), default=None,
                        help="instead of the comparison: how the searched ranks' agreement across seeds grows with "
                             "the search length (training file only)")
    parser.add_argument("--probe-steps", type=int, default=240, help="with --search-probe: search steps per seed")
    parser.add_argument("--lr-per-method", action="store_true",
                        help="calibrate a learning rate for every uniform rank and for AutoLoRA's retraining, instead "
                             "of r = 8's rate for the whole LoRA family")
    parser.add_argument("--reuse", default=None, metavar="FOLDER",
                        help="results folder of the same setting under the other learning-rate protocol: its runs "
                             "at the rate this protocol gives the method are taken over instead of rerun")
    parser.add_argument("--targets", choices=list(TARGETS), default="qv",
                        help="adapted matrices: qv = query and value; all-linear = every linear layer but the head "
                             "(PEFT's convention)")
    parser.add_argument("--model-dir", default=None,
                        help=f"model folder (default ${MODEL_DIR_ENV}, else the MiniLM package's folder)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/autolora_glue_<setting>, "
                                                    "with _lr_per_method appended under --lr-per-method and "
                                                    "_all-linear under --targets all-linear)")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.setting, args.lr_per_method, args.targets)
    if args.model_dir:
        if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
            raise FileNotFoundError(f"autolora_glue: --model-dir {args.model_dir}: no config.json there")
        os.environ[MODEL_DIR_ENV] = args.model_dir
    quiet_libraries()
    if args.find_budget:
        setting = dataclasses.replace(SETTINGS[args.setting], targets=args.targets)
        os.makedirs(out, exist_ok=True)
        task = load_task(args.find_budget, setting, load_tokenizer(model_dir()), args.data_dir)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        find_budget(args.find_budget, task, setting, out, device, tuple(args.multiples))
        return 0
    if args.search_probe:
        setting = dataclasses.replace(SETTINGS[args.setting], targets=args.targets)
        os.makedirs(out, exist_ok=True)
        task = load_task(args.search_probe, setting, load_tokenizer(model_dir()), args.data_dir)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        lr = calibrate(args.search_probe, task, setting, out, device, ["lora_r8"])["lora_lr"]
        search_probe(args.search_probe, task, setting, lr, out, device, args.probe_steps,
                     tuple(args.seeds or setting.seeds))
        return 0
    records = run(args.setting, args.tasks or list(SETTINGS[args.setting].tasks), out, args.methods, args.seeds,
                  args.data_dir, args.lr_per_method, args.reuse, args.targets)
    print(open(os.path.join(out, "table.md"), encoding="utf-8").read() if records else "no runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
