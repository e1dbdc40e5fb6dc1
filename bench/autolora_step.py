"""One AutoLoRA search step vs one plain PEFT LoRA training step: time and peak memory, side by side.

Same model (all-MiniLM-L6-v2 with a 2-class head), same targets (``--target-modules``, default query and value;
``all-linear`` = every linear layer but the head), same batch (random token ids, batch 32 x length 64 by
default). The search step is what `autolora.search` runs per outer step (its Engine comes from the search's own
`build_search_engine`): one Adam step of the LoRA weights and
head, then one hypergradient (default method) and one Adam step of the selection logits, with ``--k`` rank-1
components per matrix (default 8). The plain step is one forward/backward/AdamW step of PEFT LoRA with
``--lora-rank`` (default r = 8, whatever k is: the rank a searched budget is compared with) on the same matrices.

Time: repetitions interleaved (search, plain, search, ...) after warm-up; medians are compared.
Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` around one step. On CPU, a TorchDispatchMode records
every tensor storage created during the step and drops it when the storage dies (a weak reference to the
storage); the peak of the live sum is the step's transient memory. The resident state (weights, LoRA weights,
optimizer state, allocated before the step) is added to give the total. Both ratios are printed.

    python bench/autolora_step.py [--batch-size 32] [--seq-len 64] [--repeats 10] [--method finite_difference]
    python bench/autolora_step.py --method soba --method-kwargs '{"hessian": "finite_difference"}'
                                          # SOBA with its finite-difference product (no double backward)
    python bench/autolora_step.py --k 16 --target-modules all-linear   # the search's cost at k=16 on every linear
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from bilevel.compare.memory import peak_memory
from autolora.config import AutoLoraConfig, SearchConfig
from autolora.demo import minilm_path
from autolora.injection import find_target_modules, gated_layers, head_module_names, inject_gated_lora
from autolora.search import build_search_engine


def state_bytes(model: torch.nn.Module, *optimizers: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, buffers and optimizer state held between steps."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for opt in optimizers:
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def make_batch(tokenizer, batch_size: int, seq_len: int, seed: int, device) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch_size,), generator=g).to(device)}


def build_search_step(path, batch, val_batch, search_config: SearchConfig, device, k: int, targets: list[str]):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).to(device)
    inject_gated_lora(model, AutoLoraConfig(k=k, target_modules=targets))
    model.to(device).train()
    engine = build_search_engine(model, [batch], [val_batch], search_config)

    def step():
        engine.iteration()  # one search step as the search runs it (inner step and outer step)

    return step, model, (engine.inner.optimizer, engine.outer.optimizer)


def build_plain_step(path, batch, device, rank: int, targets: list[str]):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).to(device)
    # The full names autolora adapts, so that both steps train the same matrices (PEFT's own all-linear
    # would also take the classifier, which is trained whole here).
    names = find_target_modules(base, targets, exclude=head_module_names(base))
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=names,
                                            modules_to_save=["classifier"])).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)

    def step():
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model, (optimizer,)


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (as `uptime` prints them)."""
    return [round(v, 2) for v in os.getloadavg()]


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have spent (user + system, all cores; Linux /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_step_bytes(step, device) -> int:
    """Transient bytes of one step (see the module docstring and bilevel.compare.memory)."""
    return peak_memory(step, device)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per example (default 64)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions of each step (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (default 2)")
    parser.add_argument("--method", default="finite_difference", help="hypergradient method (default finite_difference)")
    parser.add_argument("--method-kwargs", type=json.loads, default={}, metavar="JSON",
                        help="the method's settings as `autolora search --method-kwargs` takes them (default {})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--k", type=int, default=8, help="rank-1 components per matrix in the search (default 8)")
    parser.add_argument("--lora-rank", type=int, default=8, help="rank of the plain LoRA step (default 8)")
    parser.add_argument("--target-modules", nargs="+", default=["query", "value"],
                        help="adapted matrices of both steps (default query value; all-linear = every linear layer "
                             "but the head)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    search_config = SearchConfig(method=args.method, method_kwargs=args.method_kwargs)  # checks them, before the model
    load_before = load_average()   # before this process loads the CPU itself
    from transformers import AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = make_batch(tokenizer, args.batch_size, args.seq_len, 0, device)
    val_batch = make_batch(tokenizer, args.batch_size, args.seq_len, 1, device)
    search_step, search_model, search_opts = build_search_step(path, batch, val_batch, search_config, device,
                                                               args.k, args.target_modules)
    plain_step, plain_model, plain_opts = build_plain_step(path, batch, device, args.lora_rank, args.target_modules)
    steps = {"search": search_step, "plain": plain_step}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    # Other processes' CPU use while the steps are timed (cores): the load average counts this process too.
    busy_start, own_start, wall_start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    others = (busy_cpu_seconds() - busy_start - (own_cpu_seconds() - own_start)) / (time.perf_counter() - wall_start)
    transient = {name: peak_step_bytes(step, device) for name, step in steps.items()}
    resident = {"search": state_bytes(search_model, *search_opts), "plain": state_bytes(plain_model, *plain_opts)}
    median = {name: statistics.median(values) for name, values in times.items()}
    mib = 2 ** 20
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch_size}x{args.seq_len} "
          f"method={args.method} {json.dumps(args.method_kwargs)} repeats={args.repeats} k={args.k} "
          f"lora_rank={args.lora_rank} "
          f"targets={' '.join(args.target_modules)} ({len(gated_layers(search_model))} matrices)")
    # What other processes did while the steps were timed decides; the load average lags by minutes and still
    # counts this bench's own previous run when runs follow each other.
    loaded = others > 0.5
    print(f"load average before: {load_before}, after: {load_average()}; other processes used {others:.2f} cores "
          f"while the steps were timed{'  UNDER LOAD: these figures decide nothing' if loaded else ''}")
    for name in steps:
        print(f"{name:>6}: median step {median[name] * 1000:8.1f} ms (min {min(times[name]) * 1000:.1f}), "
              f"transient peak {transient[name] / mib:7.1f} MiB, resident state {resident[name] / mib:6.1f} MiB, "
              f"total {(transient[name] + resident[name]) / mib:7.1f} MiB")
    time_ratio = median["search"] / median["plain"]
    total = {n: transient[n] + resident[n] for n in steps}
    print(f"ratio search/plain: time {time_ratio:.2f}x (target <= 4), peak memory total "
          f"{total['search'] / total['plain']:.2f}x (target <= 1.3), transient only "
          f"{transient['search'] / transient['plain']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
