"""The driver and the command line: ``runs.jsonl`` (read back, reused), every run of a setting, ``table.md``
after each, and `main`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

from autolora.outputs import write_bytes_atomic
from autolora.tasks import load_tokenizer

from .calibration import calibrate
from .probes import find_budget, search_probe
from .settings import (BENCH_DIR, DATA_DIR, METHODS, MODEL_DIR_ENV, NEEDS, SETTINGS, TARGETS, TASKS, Setting,
                       check_definition, definition)
from .table import render_table
from .training import families_for, final_rate, load_task, model_dir, run_one


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
        check_definition(record.get("definition"), setting, path, calibration=True)
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
        check_definition(record.get("definition"), setting, runs_path)
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
    return os.path.join(BENCH_DIR, "results",
                        f"autolora_glue_{setting_name}{'_lr_per_method' if lr_per_method else ''}"
                        f"{'' if targets == 'qv' else '_' + targets}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=sys.modules[__package__].__doc__.split("\n\n")[0])
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

