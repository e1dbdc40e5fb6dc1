"""Planted-rank benchmark: does AutoLoRA put rank where the task needs it, when the answer is known?

The base model is the first ``--layers`` layers of the pretrained all-MiniLM-L6-v2 encoder. A teacher is the base
plus planted low-rank changes ``Delta W = U diag(s) V^T`` (U, V random orthonormal, every singular value
``--strength`` times the top singular value of W) of ranks 1, 2, 4 and 8 in four randomly chosen linear layers
(drawn per seed) and zero in the others. Inputs are random token sequences; the target of an input is the
teacher's whole last hidden state (length x 384 numbers), so the change is identified by the data. The loss is
the mean squared error to the teacher divided by the base model's, i.e. the fraction of the planted change still
unexplained (1 at the start, 0 when the change is learned).

Per seed, every row is scored on evaluation inputs that nothing trains or tunes on:

- ``oracle``: LoRA with the planted ranks on exactly the planted matrices (the known answer);
- ``uniform``: the same total rank spread evenly over all matrices (1 or 2 each);
- one row per search x rank rule: the AutoLoRA search (bilevel with the default finite difference, bilevel with
  SOBA and its finite-difference product, or the no-meta-learning ablation that trains the gates on the training
  loss) with k = 16, then the rule (``threshold`` = the paper's gate >= 1/k;
  ``budget`` with the planted total rank as budget and zero rank allowed, by each importance score), then fresh
  LoRA retrained with those ranks; and ``<row>_shuffled``, the same ranks randomly permuted across matrices;
- ``random``: the planted total rank placed at random.

Recovery figures per search and rule: AUC of planted vs other matrices by found rank (ties count half),
Spearman between planted and found ranks. Before any search result the benchmark prints its discrimination
check (oracle vs uniform) and says plainly when the oracle does not win, since then no verdict below means
anything. Retraining uses the search's scaling (alpha/k for every rank) so that a rank-1 and a rank-8 LoRA take
steps of the same size per component.

    python bench/planted_rank.py                   # 10 seeds; 13-21 minutes per seed on a loaded 2-core machine
    python bench/planted_rank.py --seeds 0 1 2 --threads 1 &  python bench/planted_rank.py --seeds 3 4 --threads 1
                                                   # seeds in parallel processes (one result file per seed)
    python bench/planted_rank.py --seeds 0 --search-steps 50 --retrain-steps 50   # a smoke run

A seed whose result file has the same setting is not run again; when it lacks rows that this code makes (a search
variant added since), only those rows are computed, reusing the file's retrained losses for equal ranks.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from autolora import retrain as retrain_module
from autolora import search as search_module
from autolora.config import AutoLoraConfig, RetrainConfig, SearchConfig
from autolora.export import peft_config_dict
from autolora.outputs import write_bytes_atomic, write_json_atomic
from autolora.rank_rules import BudgetRule, RankBudget, ThresholdRule
from autolora.ranks import RankResult, compute_ranks

PLANTED_RANKS = (1, 2, 4, 8)
VOCAB = 1000
K = 16
# (search variant, rule label) -> rule; the budget rules get the planted total rank as budget
RULES = {"threshold": lambda: ThresholdRule(), "budget_spectrum": lambda: BudgetRule(score="spectrum"),
         "budget_contribution": lambda: BudgetRule(score="contribution"), "budget_gate": lambda: BudgetRule(score="gate")}
# search variant -> SearchConfig settings: the default finite difference, SOBA with its finite-difference product
# (no double backward), and the ablation without meta learning
SEARCHES = {"bilevel": {}, "bilevel_soba": {"method": "soba", "method_kwargs": {"hessian": "finite_difference"}},
            "nometa": {"selection_split": "train"}}


@dataclass(frozen=True)
class Setting:
    base: str = "small"
    layers: int = 2
    seq_len: int = 16
    train_rows: int = 2048
    eval_rows: int = 512
    strength: float = 0.5
    search_steps: int = 200
    retrain_steps: int = 200
    batch_size: int = 32
    # LoRA learning rate of the search and of every retraining: the best of 1e-3, 3e-3, 1e-2 for both oracle and
    # uniform LoRA on fresh teacher rows (seed 0's teacher, 200 steps; never the evaluation rows)
    lr: float = 1e-2
    gate_lr: float = 2e-2       # selection logits (the GLUE bench's value)


@dataclass
class Output(ModelOutput):
    loss: torch.Tensor | None = None


class HiddenStateRegression(nn.Module):
    """The encoder's last hidden state regressed on the teacher's; loss = MSE / the base model's MSE."""

    def __init__(self, encoder: nn.Module, base_mse: float):
        super().__init__()
        self.encoder = encoder
        self.base_mse = base_mse

    def forward(self, input_ids, attention_mask, targets):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return Output(loss=((hidden - targets) ** 2).mean() / self.base_mse)


def load_base(kind: str, layers: int) -> nn.Module:
    """``small``: a BERT encoder (width 128) initialised from seed 0; ``minilm``: the first layers of the
    pretrained all-MiniLM-L6-v2 (width 384; about 10x the compute per step). No dropout: the targets are the
    teacher's exact outputs, and dropout noise would swamp the planted change."""
    from transformers import BertConfig, BertModel, logging as hf_logging

    hf_logging.set_verbosity_error()
    if kind == "small":
        torch.manual_seed(0)
        # Weights at the scale of a trained encoder (std 1/sqrt(width), not BERT's 0.02 init, which leaves
        # attention uniform and the query/key changes invisible).
        config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=256, max_position_embeddings=64, initializer_range=128 ** -0.5,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return BertModel(config, add_pooling_layer=False).eval()
    from autolora.demo import minilm_path

    config = BertConfig.from_pretrained(minilm_path(), num_hidden_layers=layers, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    return BertModel.from_pretrained(minilm_path(), config=config, add_pooling_layer=False).eval()


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def plant(base: nn.Module, seed: int, strength: float) -> tuple[nn.Module, dict[str, int]]:
    """A teacher: ``base`` with rank-1, 2, 4, 8 changes in four linear layers drawn by ``seed``."""
    names = linear_names(base)
    rng = random.Random(seed)
    chosen = rng.sample(names, len(PLANTED_RANKS))
    ranks = dict(zip(chosen, rng.sample(PLANTED_RANKS, len(PLANTED_RANKS))))
    teacher = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, r in ranks.items():
            weight = teacher.get_submodule(name).weight                      # (out, in)
            u, _ = torch.linalg.qr(torch.randn(weight.shape[0], r, generator=g))
            v, _ = torch.linalg.qr(torch.randn(weight.shape[1], r, generator=g))
            top = torch.linalg.matrix_norm(weight, ord=2)
            weight += strength * top * (u @ v.t())
    return teacher, {n: ranks.get(n, 0) for n in names}


def make_rows(teacher: nn.Module, n: int, seq_len: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, VOCAB, (n, seq_len), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        targets = torch.cat([teacher(input_ids=ids[i:i + 256], attention_mask=mask[i:i + 256]).last_hidden_state
                             for i in range(0, n, 256)])
    return [{"input_ids": ids[i], "attention_mask": mask[i], "targets": targets[i]} for i in range(n)]


def collate(rows: list[dict]) -> dict:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def mse(model: nn.Module, rows: list[dict]) -> float:
    """Mean loss over ``rows`` (batches of 256)."""
    model.eval()
    with torch.no_grad():
        losses = [float(model(**collate(rows[i:i + 256])).loss) * len(rows[i:i + 256]) for i in range(0, len(rows), 256)]
    return sum(losses) / len(rows)


def base_mse(base: nn.Module, rows: list[dict]) -> float:
    return mse(HiddenStateRegression(base, 1.0), rows)


def retrain(base: nn.Module, scale: float, ranks: dict[str, int], setting: Setting, train, evaluation, seed: int):
    """Fresh LoRA with ``ranks`` (0 = not adapted) trained on ``train``; returns (eval loss, trainable params)."""
    model = HiddenStateRegression(copy.deepcopy(base), scale)
    names = list(ranks)
    result = RankResult(ranks={f"encoder.{n}": r for n, r in ranks.items()}, k=K, threshold=None,
                        allow_zero_rank=True)
    exported = peft_config_dict(result, AutoLoraConfig(k=K, lora_dropout=0.0, rank_scaling="search",
                                                       target_modules=[f"encoder.{n}" for n in names],
                                                       modules_to_save=[]))
    config = RetrainConfig(learning_rate=setting.lr, max_steps=setting.retrain_steps, batch_size=setting.batch_size,
                           seed=seed)
    trained = retrain_module.retrain_lora(model, exported, train, collate, config, progress=False)
    return mse(trained.model, evaluation), trained.trainable_parameters


def search(base: nn.Module, scale: float, variant: str, setting: Setting, train, seed: int) -> nn.Module:
    """AutoLoRA's search (k = 16, every linear layer) on ``train``; returns the searched model."""
    model = HiddenStateRegression(copy.deepcopy(base), scale)
    config = AutoLoraConfig(k=K, lora_dropout=0.0, target_modules=[f"encoder.{n}" for n in linear_names(base)],
                            modules_to_save=[])
    search_config = SearchConfig(max_steps=setting.search_steps, batch_size=setting.batch_size,
                                 learning_rate=setting.lr, alpha_learning_rate=setting.gate_lr, seed=seed,
                                 record_every=setting.search_steps, **SEARCHES[variant])
    search_module.search_ranks(model, train, collate, config, search_config, progress=False)
    return model


def auc(planted: list[int], found: list[int]) -> float:
    """P(found rank of a planted matrix > that of an unplanted one), ties counting half (Mann-Whitney)."""
    positive = [f for p, f in zip(planted, found) if p > 0]
    negative = [f for p, f in zip(planted, found) if p == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in positive for b in negative)
    return wins / (len(positive) * len(negative))


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def uniform_ranks(names: list[str], total: int, seed: int) -> dict[str, int]:
    """``total`` spread as evenly as possible; the matrices that get one more are drawn by ``seed``."""
    base, extra = divmod(total, len(names))
    lucky = set(random.Random(seed).sample(names, extra))
    return {n: base + (n in lucky) for n in names}


def shuffled(ranks: dict[str, int], seed: int) -> dict[str, int]:
    values = list(ranks.values())
    return dict(zip(ranks, random.Random(seed).sample(values, len(values))))


def random_ranks(names: list[str], total: int, seed: int) -> dict[str, int]:
    """``total`` ranks dropped one by one on random matrices (at most K each)."""
    rng, ranks = random.Random(seed), dict.fromkeys(names, 0)
    for _ in range(total):
        ranks[rng.choice([n for n in names if ranks[n] < K])] += 1
    return ranks


def search_labels(variant: str) -> list[str]:
    """The rows one search variant gives: one per rule, and its shuffle."""
    return [f"{variant}_{rule}{suffix}" for rule in RULES for suffix in ("", "_shuffled")]


def labels() -> list[str]:
    """Every row label a seed's record holds."""
    return ["oracle", "uniform", "random", *(label for variant in SEARCHES for label in search_labels(variant))]


def run_seed(seed: int, setting: Setting, base: nn.Module, log, done: dict | None = None) -> dict:
    """The record of ``seed``: the rows of ``done`` (a record of the same setting) kept, the missing ones computed.

    Every row is deterministic given the seed and its ranks (each search and retraining seeds itself), so a row
    computed later equals the one a full run would give.
    """
    teacher, planted = plant(base, seed, setting.strength)
    names = list(planted)
    total = sum(planted.values())
    train = make_rows(teacher, setting.train_rows, setting.seq_len, seed=1000 + seed)
    evaluation = make_rows(teacher, setting.eval_rows, setting.seq_len, seed=2000 + seed)
    scale = base_mse(base, train)
    record = {"seed": seed, "planted": planted, "base_mse": scale, "rows": dict(done["rows"]) if done else {}}
    cache: dict[tuple, tuple[float, int]] = {tuple(row["ranks"]): (row["eval_loss"], row["trainable"])
                                             for row in record["rows"].values()}

    def score(label: str, ranks: dict[str, int], **extra) -> None:
        if label in record["rows"]:
            return
        key = tuple(ranks[n] for n in names)
        if key not in cache:
            cache[key] = retrain(base, scale, ranks, setting, train, evaluation, seed)
        loss, params = cache[key]
        record["rows"][label] = {"ranks": list(key), "eval_loss": round(loss, 5), "trainable": params, **extra}
        log(f"  seed {seed} {label:34s} eval loss {loss:.4f}  total rank {sum(key):3d}  ranks {list(key)}")

    start = time.perf_counter()
    score("oracle", planted)
    score("uniform", uniform_ranks(names, total, seed))
    oracle, uniform = record["rows"]["oracle"]["eval_loss"], record["rows"]["uniform"]["eval_loss"]
    log(f"  seed {seed} discrimination check: oracle {oracle:.4f} vs uniform {uniform:.4f} "
        f"({'the oracle wins' if oracle < 0.8 * uniform else 'NO CLEAR WIN: the verdicts below mean nothing'})")
    score("random", random_ranks(names, total, seed))
    planted_vector = [planted[n] for n in names]
    for variant in SEARCHES:
        if all(label in record["rows"] for label in search_labels(variant)):
            continue
        t0 = time.perf_counter()
        searched = search(base, scale, variant, setting, train, seed)
        search_s = time.perf_counter() - t0
        for rule_name, make_rule in RULES.items():
            rule = make_rule()
            budget = RankBudget(total_rank=total) if rule.uses_budget else None
            found = compute_ranks(searched, rule=rule, budget=budget, allow_zero_rank=rule.uses_budget)
            ranks = {n: found.ranks[f"encoder.{n}"] for n in names}
            vector = [ranks[n] for n in names]
            label = f"{variant}_{rule_name}"
            score(label, ranks, auc=round(auc(planted_vector, vector), 4),
                  spearman=round(spearman(planted_vector, vector), 4), search_s=round(search_s, 1))
            score(label + "_shuffled", shuffled(ranks, seed))
    record["wall_s"] = round(time.perf_counter() - start + (done["wall_s"] if done else 0.0), 1)
    return record


# ---------------------------------------------------------------------------------------------------- the table
def t_975(n: int) -> float:
    """The two-sided 95% quantile of Student's t for a paired mean over ``n`` seeds."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def paired(a: list[float], b: list[float]) -> str:
    """Mean of a - b with the half-width of its paired 95% t interval, and whether it excludes 0."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return f"{statistics.fmean(d):+.4f} (1 seed)"
    half = t_975(len(d)) * statistics.stdev(d) / math.sqrt(len(d))
    verdict = "beyond noise" if abs(statistics.fmean(d)) > half else "within noise"
    return f"{statistics.fmean(d):+.4f} +- {half:.4f} ({verdict})"


def paired_ratio(a: list[float], b: list[float]) -> str:
    """Geometric mean of a / b with its paired 95% t interval (on log a - log b), and whether it excludes 1.

    The loss left by a placement is a fraction of the planted change, and how large that fraction can get
    differs several-fold between seeds (teachers); a ratio compares placements on each seed's own scale, as the
    discrimination check does.
    """
    d = [math.log(x / y) for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return f"{math.exp(mean):.3f} (1 seed)"
    half = t_975(len(d)) * statistics.stdev(d) / math.sqrt(len(d))
    verdict = "beyond noise" if abs(mean) > half else "within noise"
    return f"{math.exp(mean):.3f} [{math.exp(mean - half):.3f}, {math.exp(mean + half):.3f}] ({verdict})"


def table(records: list[dict], setting: Setting) -> str:
    seeds = [r["seed"] for r in records]
    lines = [f"Setting: {json.dumps(setting.__dict__)}; seeds {seeds}; wall s per seed "
             f"{[r['wall_s'] for r in records]}.", "",
             "Discrimination check (eval loss = fraction of the planted change unexplained; lower is better):", ""]
    for r in records:
        o, u = r["rows"]["oracle"]["eval_loss"], r["rows"]["uniform"]["eval_loss"]
        lines.append(f"- seed {r['seed']}: oracle {o:.4f}, uniform {u:.4f} (ratio {o / u:.2f})"
                     f"{'' if o < 0.8 * u else '  **no clear win: verdicts mean nothing**'}")
    lines += ["", "| row | AUC mean +- std | Spearman mean | eval loss mean | loss / uniform: geometric mean "
              "[paired 95%] | loss / its shuffle: geometric mean [paired 95%] | loss - uniform (paired 95%) | "
              "loss - its shuffle (paired 95%) |", "|---|---|---|---|---|---|---|---|"]
    for label in labels():
        have = [r for r in records if label in r["rows"]]   # a row added later may lack some seeds
        if label.endswith("_shuffled") or not have:
            continue
        rows = [r["rows"][label] for r in have]
        losses = [row["eval_loss"] for row in rows]
        uniform = [r["rows"]["uniform"]["eval_loss"] for r in have]
        if "auc" in rows[0]:
            aucs = [row["auc"] for row in rows]
            auc_text = f"{statistics.fmean(aucs):.3f} +- {statistics.stdev(aucs) if len(aucs) > 1 else 0:.3f}"
            rhos = [row["spearman"] for row in rows if not math.isnan(row["spearman"])]
            rho_text = f"{statistics.fmean(rhos):+.3f}" if rhos else "-"
            shuffle = [r["rows"][label + "_shuffled"]["eval_loss"] for r in have]
            shuffle_ratio, shuffle_difference = paired_ratio(losses, shuffle), paired(losses, shuffle)
        else:
            auc_text, rho_text, shuffle_ratio, shuffle_difference = "-", "-", "-", "-"
        equal_total = all(sum(r["rows"][label]["ranks"]) == sum(r["rows"]["uniform"]["ranks"]) for r in have)
        if label == "uniform":
            uniform_ratio = uniform_difference = "-"
        elif equal_total:
            uniform_ratio, uniform_difference = paired_ratio(losses, uniform), paired(losses, uniform)
        else:
            uniform_ratio = uniform_difference = "n/a: another total rank"
        name = label if len(have) == len(records) else f"{label} (seeds {', '.join(str(r['seed']) for r in have)})"
        lines.append(f"| {name} | {auc_text} | {rho_text} | {statistics.fmean(losses):.4f} | {uniform_ratio} | "
                     f"{shuffle_ratio} | {uniform_difference} | {shuffle_difference} |")
    lines += ["", "Below 1 (ratios) or 0 (differences) favours the row. Per-seed ranks and losses: seed_<N>.json."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "planted_rank"))
    for field in Setting.__dataclass_fields__.values():
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    setting = Setting(**{f: getattr(args, f) for f in Setting.__dataclass_fields__})
    os.makedirs(args.out, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_base(setting.base, setting.layers)
    for p in base.parameters():
        p.requires_grad_(False)
    log_path = os.path.join(args.out, "log.txt")

    def log(text: str) -> None:
        print(text, flush=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    for seed in args.seeds:   # one file per seed: a rerun skips finished seeds, and seeds can run in parallel
        path = os.path.join(args.out, f"seed_{seed}.json")
        done = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                done = json.load(f)
            if done.get("setting") != setting.__dict__:
                done = None
            elif all(label in done["rows"] for label in labels()):
                continue
        record = run_seed(seed, setting, base, log, done)
        record["setting"] = setting.__dict__
        write_json_atomic(path, record)
    records = []
    for name in sorted(os.listdir(args.out)):
        if name.startswith("seed_") and name.endswith(".json"):
            with open(os.path.join(args.out, name), encoding="utf-8") as f:
                record = json.load(f)
            if record.get("setting") == setting.__dict__:
                records.append(record)
    text = table(records, setting)
    write_bytes_atomic(os.path.join(args.out, "table.md"), text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
