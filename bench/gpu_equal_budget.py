"""The equal-budget AutoLoRA comparison (autolora_budget, lora_r8, lora_shuffled_budget) at GPU scale, on a device
machine that has torch, transformers, peft and datasets but neither the MiniLM package nor ../shared/data.

Two steps:

1. ``prepare`` (here, where the MiniLM package and ../shared/data are): writes ``bench/gpu_assets/`` (git-ignored
   through ``.git/info/exclude``): MiniLM's weights cast to float16 (about 45 MB, so the folder fits the device
   machine's 64 MiB transfer), its tokenizer and config files, and the sst2, stsb and cola JSONL files; with
   ``--wheels``, wheels for ``datasets`` in case the device image lacks it (it lists no ``datasets``)::

       pip download --no-deps --only-binary=:all: --python-version 3.12 -d /tmp/wheels \
           datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
       python bench/gpu_equal_budget.py prepare --wheels /tmp/wheels

2. ``run`` (on the device machine; the repository travels, ``bench/gpu_assets`` must be carried): casts the
   weights back to float32 into a temporary model folder, then runs ``bench/autolora_glue.py --setting gpu`` for
   every (task, targets) pair as parallel processes on the one GPU (each has its own results folder, so nothing
   is shared between them), stops them at ``--deadline`` seconds (a stopped benchmark keeps its finished runs),
   and packs every results folder and log into ``$OUT/gpu_equal_budget.tar.gz`` plus the tables into
   ``$OUT/tables.md``::

       PYTHONPATH=.:applications python bench/gpu_equal_budget.py run --deadline 540

   A results folder given with ``--results`` that already holds runs (carried back in from an earlier call)
   is continued, not restarted.

The weights are float16-rounded (then computed in float32): results are comparable with each other, not bit for
bit with a run from the MiniLM package's float32 file.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ASSETS = os.path.join(HERE, "gpu_assets")
TASKS = ("sst2", "stsb", "cola")
TARGETS = ("qv", "all-linear")
METHODS = ("autolora_budget", "lora_r8", "lora_shuffled_budget")
LIMIT_BYTES = 64 * 2 ** 20  # what travels to the device machine (the working tree and carried folders together)
WEIGHTS = "model.safetensors"


def _ignore_assets() -> None:
    """Keep bench/gpu_assets out of git (and so out of what travels unless carried) without touching .gitignore."""
    exclude = os.path.join(ROOT, ".git", "info", "exclude")
    line = "/bench/gpu_assets/"
    if not os.path.isdir(os.path.dirname(exclude)):
        return
    existing = open(exclude, encoding="utf-8").read().splitlines() if os.path.exists(exclude) else []
    if line not in existing:
        with open(exclude, "a", encoding="utf-8") as f:
            f.write(f"\n{line}\n")


def _cast_weights(source: str, destination: str, dtype) -> None:
    """Copy a safetensors file with every floating tensor cast to ``dtype`` (names and metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(source, "pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    save_file(tensors, destination, metadata=metadata)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def prepare(model_dir: str | None, data_dir: str, out: str = ASSETS, wheels: str | None = None) -> int:
    """Write the float16 model, tokenizer and data that the device run needs into ``out`` (and the ``*.whl`` of
    ``wheels``, for packages the device machine may lack); returns its size."""
    import torch

    if model_dir is None:
        sys.path.insert(0, HERE)
        from autolora_glue import model_dir as default_model_dir

        model_dir = default_model_dir()
    missing = [t for t in TASKS if not os.path.isfile(os.path.join(data_dir, t, "train.jsonl"))]
    if missing:
        raise FileNotFoundError(f"gpu_equal_budget prepare: no {missing} under {os.path.abspath(data_dir)}; pass "
                                "--data-dir")
    if not os.path.isfile(os.path.join(model_dir, WEIGHTS)):
        raise FileNotFoundError(f"gpu_equal_budget prepare: no {WEIGHTS} in {model_dir}; pass --model-dir")
    _ignore_assets()
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "model"))
    for name in os.listdir(model_dir):  # config and tokenizer files; the sentence-transformers extras are small
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and name != WEIGHTS and not name.startswith("."):
            shutil.copy2(path, os.path.join(out, "model", name))
    _cast_weights(os.path.join(model_dir, WEIGHTS), os.path.join(out, "model", WEIGHTS), torch.float16)
    for task in TASKS:
        os.makedirs(os.path.join(out, "data", task))
        for split in ("train.jsonl", "validation.jsonl"):
            shutil.copy2(os.path.join(data_dir, task, split), os.path.join(out, "data", task, split))
    if wheels:
        os.makedirs(os.path.join(out, "wheels"))
        for name in sorted(os.listdir(wheels)):
            if name.endswith(".whl"):
                shutil.copy2(os.path.join(wheels, name), os.path.join(out, "wheels", name))
    size = _folder_bytes(out)
    print(f"gpu_equal_budget prepare: {out}: {size / 2 ** 20:.1f} MiB (model float16, tokenizer, {', '.join(TASKS)})")
    if size > LIMIT_BYTES - 8 * 2 ** 20:
        raise RuntimeError(f"gpu_equal_budget prepare: {out} is {size / 2 ** 20:.1f} MiB; with the repository it "
                           f"would not fit the device machine's {LIMIT_BYTES // 2 ** 20} MiB")
    return size


def _float32_model(assets: str) -> str:
    """A temporary copy of the prepared model with float32 weights; returns its folder."""
    import torch

    folder = tempfile.mkdtemp(prefix="minilm_fp32_")
    for name in os.listdir(os.path.join(assets, "model")):
        if name != WEIGHTS:
            shutil.copy2(os.path.join(assets, "model", name), os.path.join(folder, name))
    _cast_weights(os.path.join(assets, "model", WEIGHTS), os.path.join(folder, WEIGHTS), torch.float32)
    return folder


def _missing_packages(assets: str) -> str | None:
    """Install the carried wheels into a temporary folder when this Python lacks ``datasets``; returns the folder
    to put on PYTHONPATH (None when nothing was needed)."""
    try:
        import datasets  # noqa: F401
        return None
    except ImportError:
        pass
    wheels = os.path.join(assets, "wheels")
    if not os.path.isdir(wheels):
        raise ImportError("gpu_equal_budget run: this Python has no `datasets` and bench/gpu_assets/wheels is absent; "
                          "prepare with --wheels (see the module docstring)")
    target = tempfile.mkdtemp(prefix="gpu_equal_site_")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", target,
                    *(os.path.join(wheels, w) for w in sorted(os.listdir(wheels)))], check=True)
    print(f"installed the carried wheels into {target}", flush=True)
    return target


def run(setting: str, tasks, targets, seeds, deadline: float, results: str, assets: str, out: str | None,
        threads: int) -> int:
    """One benchmark process per (task, targets), in parallel, stopped at ``deadline`` seconds."""
    if not os.path.isfile(os.path.join(assets, "model", WEIGHTS)):
        raise FileNotFoundError(f"gpu_equal_budget run: no prepared model in {assets}; run `python "
                                "bench/gpu_equal_budget.py prepare` where MiniLM and ../shared/data are, and carry "
                                "bench/gpu_assets")
    start = time.time()
    site = _missing_packages(assets)
    model = _float32_model(assets)
    os.makedirs(results, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([p for p in (site, ROOT, os.path.join(ROOT, "applications"),
                                                      os.environ.get("PYTHONPATH")) if p])}
    jobs = []
    for target in targets:
        for task in tasks:
            folder = os.path.join(results, f"{setting}_{target}_{task}")
            os.makedirs(folder, exist_ok=True)
            command = [sys.executable, os.path.join(HERE, "autolora_glue.py"), "--setting", setting, "--tasks", task,
                       "--targets", target, "--methods", *METHODS, "--model-dir", model,
                       "--data-dir", os.path.join(assets, "data"), "--out", folder]
            if seeds:
                command += ["--seeds", *map(str, seeds)]
            log = open(os.path.join(folder, "log.txt"), "a", encoding="utf-8")
            jobs.append((folder, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                       cwd=ROOT, start_new_session=True)))
            print(f"[{time.strftime('%H:%M:%S')}] started {target} {task} -> {folder}", flush=True)
    while any(p.poll() is None for _, _, p in jobs) and time.time() - start < deadline:
        time.sleep(5)
    for folder, log, process in jobs:
        if process.poll() is None:  # past the deadline: its finished runs are in runs.jsonl already
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            print(f"stopped at the deadline: {folder}", flush=True)
        log.close()
    tables = []
    for folder, _, process in jobs:
        table = os.path.join(folder, "table.md")
        body = open(table, encoding="utf-8").read() if os.path.exists(table) else "no finished run\n"
        tables.append(f"## {os.path.basename(folder)} (exit {process.returncode})\n\n{body}")
    text = f"wall {time.time() - start:.0f} s\n\n" + "\n".join(tables)
    print(text)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "tables.md"), "w", encoding="utf-8") as f:
            f.write(text)
        with tarfile.open(os.path.join(out, "gpu_equal_budget.tar.gz"), "w:gz") as tar:
            tar.add(results, arcname=os.path.basename(results.rstrip(os.sep)))
    shutil.rmtree(model, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write bench/gpu_assets (run where MiniLM and ../shared/data are)")
    prep.add_argument("--model-dir", default=None, help="default: the MiniLM package's folder")
    prep.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    prep.add_argument("--wheels", default=None, help="folder of *.whl to carry (datasets and the two packages it "
                                                     "needs beyond the device image: dill, multiprocess)")
    go = commands.add_parser("run", help="the comparison on the device machine")
    go.add_argument("--setting", default="gpu", help="autolora_glue setting (smoke to try the script on CPU)")
    go.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    go.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    go.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the setting's")
    go.add_argument("--deadline", type=float, default=540.0, help="seconds before the benchmarks are stopped")
    go.add_argument("--results", default=os.path.join(HERE, "results", "gpu_equal_budget"),
                    help="results folder (one subfolder per setting, targets and task; continued if present)")
    go.add_argument("--assets", default=ASSETS)
    go.add_argument("--out", default=os.environ.get("OUT"), help="where the tables and the packed results go "
                                                                "(default $OUT)")
    go.add_argument("--threads", type=int, default=2, help="CPU threads per benchmark process")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.model_dir, args.data_dir, wheels=args.wheels)
        return 0
    return run(args.setting, args.tasks, args.targets, args.seeds, args.deadline, args.results, args.assets,
               args.out, args.threads)


if __name__ == "__main__":
    sys.exit(main())
