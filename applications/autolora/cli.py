"""``autolora`` command line: run | search | retrain | report | demo.

    autolora demo --output-dir autolora-demo
    autolora run --model-name-or-path PATH --train-file train.jsonl --validation-file dev.jsonl --output-dir out
    autolora search ... --output-dir out ; autolora retrain ... --ranks out/ranks.json --output-dir out
    autolora report out

Every option of the config dataclasses is a flag (see ``autolora <command> --help``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from . import distributed
from .arguments import add_dataclass_arguments, dataclasses_from_args
from .config import AutoLoraConfig, DataConfig, RetrainConfig, RunConfig, SearchConfig

__all__ = ["main", "build_parser"]

_PREFIXES = {SearchConfig: "search", RetrainConfig: "retrain"}
_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
# Errors that mean "the input is wrong": their message is the whole story. Anything else is reported in one line
# too, with the hint that --log-level DEBUG shows where it came from.
_INPUT_ERRORS = (ValueError, OSError, ImportError, RuntimeError, ArithmeticError)
_THIRD_PARTY = ("transformers", "datasets", "peft", "huggingface_hub", "torch", "urllib3", "filelock",
                "absl")  # absl: rouge-score logs "Using default tokenizer." at INFO on every evaluation


class _OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``autolora run: error: ... (see autolora run --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="autolora", description="AutoLoRA: learn a LoRA rank per weight matrix by bilevel optimization "
        "(Zhang et al., 2024), then retrain with PEFT.")
    log_level = {"choices": _LOG_LEVELS, "help": "Logging level (default: INFO; DEBUG also shows the messages of "
                                                "transformers, datasets and PEFT, and the traceback of an error)."}
    parser.add_argument("--log-level", default="INFO", **log_level)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    specs = {
        "run": ("search the ranks, retrain with them, evaluate and write the report",
                [RunConfig, DataConfig, AutoLoraConfig, SearchConfig, RetrainConfig]),
        "search": ("search the ranks only (writes ranks.json, peft_config.json, search.json)",
                   [RunConfig, DataConfig, AutoLoraConfig, SearchConfig]),
        "retrain": ("retrain fresh PEFT LoRA with the ranks of --ranks, evaluate, save adapter/",
                    [RunConfig, DataConfig, AutoLoraConfig, RetrainConfig]),
    }
    for name, (help_text, classes) in specs.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # also accepted after the command; SUPPRESS keeps the value given before it
        sub.add_argument("--log-level", default=argparse.SUPPRESS, **log_level)
        add_dataclass_arguments(sub, classes, _PREFIXES)
        if name == "retrain":
            sub.add_argument("--ranks", default=None,
                             help="ranks.json written by `autolora search` (default: <output-dir>/ranks.json).")
            sub.add_argument("--uniform-rank", type=int, default=None, metavar="R",
                             help="Instead of --ranks: rank R on every --target-modules matrix (the uniform "
                                  "LoRA baseline); writes its ranks.json.")
    report = commands.add_parser("report", help="write report.html for a run directory",
                                 description="write report.html (rank heatmap, selection weights, metrics)")
    report.add_argument("dir", help="the --output-dir of a search or run")
    report.add_argument("--log-level", default=argparse.SUPPRESS, **log_level)
    demo = commands.add_parser("demo", help="run the whole pipeline offline on MiniLM and generated data",
                               description="search + retrain + report on all-MiniLM-L6-v2 with a generated "
                               "sentiment dataset (under a minute on 2 idle CPU cores)")
    demo.add_argument("--log-level", default=argparse.SUPPRESS, **log_level)
    demo.add_argument("--output-dir", default="autolora-demo", help="output directory (default: autolora-demo)")
    demo.add_argument("--overwrite", action="store_true", help="allow a non-empty --output-dir")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                      help="show progress bars (default: true)")
    return parser


def _print_scores(metrics: dict) -> None:
    """The retrained model's scores on stdout, once (rank 0 under torchrun): eval, and test when it was scored."""
    if distributed.is_main():
        print(f"eval: {metrics.get('eval')}")
        if "test" in metrics:
            print(f"test: {metrics['test']}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.log_level != "DEBUG":
        _quiet_third_party()
    from . import pipeline

    try:
        if args.command == "report":
            print(pipeline.report(args.dir))
            return 0
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.output_dir, overwrite=args.overwrite, device=args.device, progress=args.progress)
            return 0
        try:
            configs = dataclasses_from_args(args)
        except ValueError as error:   # a bad flag value: a usage error, as argparse's own
            parser.exit(2, f"autolora {args.command}: error: {error} (see autolora {args.command} --help)\n")
        run, data, method = configs[RunConfig], configs[DataConfig], configs[AutoLoraConfig]
        if args.command == "run":
            _print_scores(pipeline.run(run, data, method, configs[SearchConfig], configs[RetrainConfig]))
        elif args.command == "search":
            ranks = pipeline.search(run, data, method, configs[SearchConfig])
            if distributed.is_main():
                print(f"ranks: {ranks.ranks}")
        else:
            _print_scores(pipeline.retrain(run, data, method, configs[RetrainConfig], ranks=args.ranks,
                                           uniform_rank=args.uniform_rank))
    except Exception as error:
        if args.log_level == "DEBUG":
            raise
        print(f"autolora {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"autolora {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    return 0


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    message = " ".join(line.strip() for line in lines) or type(error).__name__
    if not isinstance(error, _INPUT_ERRORS):
        message = f"{type(error).__name__}: {message} (unexpected; --log-level DEBUG shows where it came from)"
    return message


def _quiet_third_party() -> None:
    """Keep transformers', datasets' and PEFT's reports, progress bars and deprecation warnings out of the output;
    what matters to the user (a new task head, say) autolora reports itself. The levels are set before the imports
    (importing datasets logs which optional backends, JAX or TensorFlow, it found) and again after them (importing
    transformers sets its own level)."""
    def errors_only():
        for module in _THIRD_PARTY:
            logging.getLogger(module).setLevel(logging.ERROR)

    errors_only()
    import datasets
    import transformers

    errors_only()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for module in _THIRD_PARTY:
        warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{module}(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=rf"{module}(\.|$)")


def _leave_process_group() -> None:
    """Under torchrun: leave the process group the pipeline joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
