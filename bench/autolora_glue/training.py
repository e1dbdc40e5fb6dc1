"""Data, models and training for one run: the task's rows, fresh models, uniform LoRA, full fine-tuning, AdaLoRA,
AutoLoRA's search and retraining, the learning-rate families, the shuffle controls, and `run_one` (one method,
one seed, one record)."""
from __future__ import annotations

import dataclasses
import os
import random
import statistics
import time

import torch

from autolora import retrain as retrain_module, search as search_module
from autolora.config import AutoLoraConfig, DataConfig, RetrainConfig, SearchConfig
from autolora.demo import minilm_path
from autolora.export import peft_config_dict
from autolora.injection import target_module_names
from autolora.layers import linear_features
from autolora.rank_rules import model_evidence
from autolora.ranks import RankResult
from autolora.tasks import build_task

from .settings import BUDGET_K, BUDGET_RANK, DATA_DIR, GRID_RANKS, K, METHODS, MODEL_DIR_ENV, Setting, TARGETS


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
