"""Every bad input is one line on stderr, a non-zero exit and no traceback, and leaves nothing behind that a
corrected rerun into the same --output-dir would trip over (no --overwrite needed)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from autolora.cli import main
from test_cli import common, tiny_dir  # noqa: F401  (tiny_dir is a fixture)

TARGETS = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
SEARCH = ["--search-max-steps", "1", "--search-batch-size", "8"]
RETRAIN = ["--retrain-max-steps", "1", "--retrain-batch-size", "8"]


@pytest.fixture(scope="module")
def inputs(tiny_dir, tmp_path_factory):  # noqa: F811
    """Bad inputs, each next to the good one it spoils: {name: path}."""
    root = tmp_path_factory.mktemp("inputs")
    rows = [json.loads(line) for line in (tiny_dir / "train.jsonl").read_text().splitlines()]
    mixed = [dict(row) for row in rows]
    mixed[3]["label"] = "positive"
    (root / "mixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mixed))
    lines = (tiny_dir / "train.jsonl").read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"the ", b"th\xff ", 1)
    (root / "latin.jsonl").write_bytes(b"".join(lines))
    tokenizer_only = root / "tokenizer_only"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_dir / "model").save_pretrained(tokenizer_only)
    no_tokenizer = root / "no_tokenizer"  # config and weights only: transformers would build an empty tokenizer
    shutil.copytree(tiny_dir / "model", no_tokenizer)
    for path in no_tokenizer.iterdir():
        if "token" in path.name or path.name.startswith("vocab"):
            path.unlink()
    for name, ranks in (("good", dict.fromkeys(TARGETS, 2)), ("zero", dict.fromkeys(TARGETS, 0)),
                        ("fraction", dict.fromkeys(TARGETS, 2.5)), ("other", {"model.layers.0.q_proj": 2})):
        (root / f"{name}.json").write_text(json.dumps({"k": 4, "ranks": ranks}))
    (root / "malformed.json").write_text('{"k": 4, "ranks": {')
    return {path.stem: str(path) for path in root.iterdir()}


# id: (command, bad flags, corrected flags, the one line's message); the rerun gets the corrected flags instead.
# "@name" stands for the path of the input ``name``.
CASES = {
    "unknown method": ("search", ["--method", "cgg"], [],
                       r"--method is not usable: unknown hypergradient method 'cgg'; registered methods:"),
    "unknown method setting": ("search", ["--method-kwargs", '{"bogus": 1}'], [],
                               r"--method-kwargs is not usable: method 'finite_difference' has no setting bogus; its "
                               r"settings: epsilon, lr"),
    "target that matches nothing": ("search", ["--target-modules", "q_proj"], [],
                                    r"target module 'q_proj' matches no nn.Linear/Conv1D module"),
    "bad flag value names the flag": ("search", ["--search-max-steps", "0"], [],
                                      r"--search-max-steps must be an integer >= 1, got 0 "
                                      r"\(see autolora search --help\)"),
    "flag of the wrong type": ("search", ["--k", "abc"], [], r"argument --k: invalid int value: 'abc'"),
    "model folder without a tokenizer": ("search", ["--model-name-or-path", "@no_tokenizer"], [],
                                         r"no_tokenizer gives a tokenizer that knows only its 5 special token\(s\): "
                                         r"the tokenizer's files \(tokenizer.json, vocab.txt, vocab.json \+ "
                                         r"merges.txt, a sentencepiece .model, ...\) are missing; save the tokenizer "
                                         r"there too"),
    "folder that is not a model": ("search", ["--model-name-or-path", "@tokenizer_only"], [],
                                   r"tokenizer_only is not a Hugging Face model folder: no config.json"),
    "labels of mixed types": ("search", ["--train-file", "@mixed"], [],
                              r"labels of mixed types: train file \S+mixed.jsonl example 0 has 'label' = \d but "
                              r"example 3 has 'positive'"),
    "data that is not UTF-8": ("search", ["--train-file", "@latin"], [],
                               r"\S+latin.jsonl is not UTF-8: line 5, column 17 holds byte 0xff; save the file as "
                               r"UTF-8"),
    "resume without a checkpoint": ("search", ["--resume"], [], r"--resume: no search checkpoint in \S+"),
    "cuda without CUDA": ("search", ["--device", "cuda"], [], r"--device cuda: no CUDA device is available"),
    "ranks of another model": ("retrain", ["--ranks", "@other"], ["--ranks", "@good"],
                               r"--ranks \S+other.json names 1 module\(s\) \S+ lacks \(model.layers.0.q_proj\)"),
    "ranks all zero": ("retrain", ["--ranks", "@zero"], ["--ranks", "@good"],
                       r"--ranks \S+zero.json: every matrix has rank 0, so there is nothing to retrain; pass ranks "
                       r"with at least one rank >= 1 \(or --uniform-rank R\)$"),
    "fractional rank": ("retrain", ["--ranks", "@fraction"], ["--ranks", "@good"],
                        r"\S+fraction.json: ranks must be integers in \[0, k=4\], got .*2.5"),
    "malformed ranks file": ("retrain", ["--ranks", "@malformed"], ["--ranks", "@good"],
                             r"\S+malformed.json is not a ranks.json written by `autolora search` \(not valid JSON"),
}


def resolve(flags: list[str], inputs: dict) -> list[str]:
    return [inputs[flag[1:]] if flag.startswith("@") else flag for flag in flags]


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``autolora ARGS``, run in this process."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as stop:   # argparse's usage errors
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_the_corrected_rerun_needs_no_overwrite(
        case, tiny_dir, inputs, tmp_path, capsys):  # noqa: F811
    command, bad, corrected, message = CASES[case]
    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    extra = SEARCH if command == "search" else RETRAIN
    code, err = cli([command, *common(tiny_dir, out), *extra, *resolve(bad, inputs)], capsys)
    assert code not in (0, None)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"autolora {command}: error: "), err
    assert re.search(message, err.strip()), err
    if command == "retrain":
        assert "threshold" not in err   # advice for the search, not for a ranks file
    assert not out.exists() or not os.listdir(out), sorted(os.listdir(out))
    code, err = cli([command, *common(tiny_dir, out), *extra, *resolve(corrected, inputs)], capsys)
    assert code == 0, err


def test_corrupt_checkpoint_is_one_line(tiny_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    args = ["search", *common(tiny_dir, out), *SEARCH, "--checkpoint-every", "1"]
    assert cli(args, capsys)[0] == 0
    (out / "search_checkpoint" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    records = {name: (out / name).read_bytes() for name in ("metrics.json", "config.json")}
    code, err = cli([*args, "--resume"], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert re.match(r"autolora search: error: checkpoint: cannot read \S+checkpoint.pt .*delete it to start over", err)
    assert {name: (out / name).read_bytes() for name in records} == records  # refused before the records changed


def test_unexpected_error_is_one_line_that_points_to_debug(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    import autolora.pipeline

    def broken(*args, **kwargs):
        raise TypeError("something\nunforeseen")

    monkeypatch.setattr(autolora.pipeline, "search", broken)
    args = ["search", *common(tiny_dir, tmp_path / "out"), *SEARCH]
    code, err = cli(args, capsys)
    assert code == 1
    assert err == ("autolora search: error: TypeError: something unforeseen (unexpected; --log-level DEBUG shows "
                   "where it came from)\n")
    with pytest.raises(TypeError, match="something"):
        main([*args, "--log-level", "DEBUG"])


def test_the_real_process_prints_one_line_and_no_third_party_noise(tiny_dir, inputs, tmp_path):  # noqa: F811
    """In a process of its own (real logging, real transformers/datasets output): one line, nothing else."""
    args = [sys.executable, "-m", "autolora.cli", "search", *common(tiny_dir, tmp_path / "out"), *SEARCH,
            "--train-file", inputs["mixed"]]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("autolora search: error: labels of mixed types"), \
        done.stderr


def test_interrupt_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    import autolora.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(autolora.pipeline, "search", interrupted)
    assert cli(["search", *common(tiny_dir, tmp_path / "out"), *SEARCH], capsys) == (130, "autolora search: interrupted\n")
