"""`autolora run` under torchrun: 2 gloo ranks at batch b equal one process at batch 2b; only rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autolora.cli import main
from autolora.demo import _NEGATIVE, _NOUNS, _POSITIVE, _TEMPLATES, generate_sentiment_data
from autolora.distributed import ShardedLoader

WORKER = Path(__file__).with_name("distributed_run.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny BERT without dropout (so shards and the whole batch see the same network) and generated data."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_ddp")
    words = sorted({w for t in _TEMPLATES for w in t.split() if "{" not in w} | set(_POSITIVE + _NEGATIVE + _NOUNS)
                   | {"not"})
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer = BertTokenizerFast(str(root / "vocab.txt"))  # positional: transformers 5 ignores vocab_file=
    assert len(tokenizer) == len(words) + 5, "the tokenizer lost its vocabulary"
    tokenizer.save_pretrained(root / "model")
    for split, n, seed in (("train", 48, 0), ("validation", 16, 1)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generate_sentiment_data(n, seed)))
    return root


def arguments(tiny_dir, out, batch_size):
    return ["run", "--model-name-or-path", str(tiny_dir / "model"), "--train-file", str(tiny_dir / "train.jsonl"),
            "--validation-file", str(tiny_dir / "validation.jsonl"), "--output-dir", str(out), "--no-progress",
            "--k", "4", "--lora-dropout", "0", "--search-max-steps", "6", "--search-batch-size", str(batch_size),
            "--search-learning-rate", "0.01", "--alpha-learning-rate", "0.2", "--retrain-max-steps", "6",
            "--retrain-batch-size", str(batch_size), "--retrain-learning-rate", "0.01", "--device", "cpu"]


def torchrun(args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               *args]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def test_two_ranks_equal_one_process_at_the_global_batch(tiny_dir, tmp_path):
    distributed, single = tmp_path / "ddp", tmp_path / "single"
    done = torchrun(arguments(tiny_dir, distributed, 4))
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("eval: ") == 1  # the scores are printed once, by rank 0
    assert main(arguments(tiny_dir, single, 8)) == 0

    ddp_ranks, one_ranks = (json.loads((d / "ranks.json").read_text()) for d in (distributed, single))
    assert ddp_ranks["ranks"] == one_ranks["ranks"]
    for name, weights in one_ranks["weights"].items():
        torch.testing.assert_close(torch.tensor(ddp_ranks["weights"][name]), torch.tensor(weights), atol=2e-5, rtol=0)
    ddp_search, one_search = (json.loads((d / "search.json").read_text()) for d in (distributed, single))
    final = {name: w[-1] for name, w in one_search["trajectory"]["weights"].items()}
    assert any(abs(max(w) - min(w)) > 1e-3 for w in final.values()), "the gates never moved: the test proves nothing"
    for name, weights in one_search["trajectory"]["weights"].items():
        torch.testing.assert_close(torch.tensor(ddp_search["trajectory"]["weights"][name]), torch.tensor(weights),
                                   atol=2e-5, rtol=0)
    ddp_metrics, one_metrics = (json.loads((d / "metrics.json").read_text()) for d in (distributed, single))
    assert (ddp_metrics["world_size"], one_metrics["world_size"]) == (2, 1)
    for key, value in one_metrics["eval"].items():
        assert ddp_metrics["eval"][key] == pytest.approx(value, abs=1e-4), key
    ddp_adapter, one_adapter = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (distributed, single))
    assert ddp_adapter.keys() == one_adapter.keys()
    for name in one_adapter:
        torch.testing.assert_close(ddp_adapter[name], one_adapter[name], atol=1e-5, rtol=1e-4)
    assert (distributed / "report.html").exists()
    leftovers = [p.name for p in distributed.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_an_error_on_rank_zero_stops_every_rank_with_its_message(tiny_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("finished work")
    done = torchrun(arguments(tiny_dir, out, 4))
    assert done.returncode != 0
    assert done.stderr.count("is not empty; pass --overwrite") == 2, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_shards_partition_the_single_process_batches():
    rows = [{"x": torch.tensor([i])} for i in range(23)]

    def collate(batch):
        return {"x": torch.cat([r["x"] for r in batch])}

    whole = [b["x"].tolist() for b in ShardedLoader(rows, collate, 6, seed=3, device=torch.device("cpu"))]
    shards = [[b["x"].tolist() for b in ShardedLoader(rows, collate, 3, seed=3, device=torch.device("cpu"),
                                                    rank_index=r, size=2)] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 4
    for i, batch in enumerate(whole):
        if len(batch) % 2 == 0:
            assert shards[0][i] + shards[1][i] == batch
        else:  # the odd last batch is trimmed so both ranks take the same number of rows
            assert shards[0][i] + shards[1][i] == batch[:len(batch) - 1]
    assert len(ShardedLoader(rows, collate, 3, 3, torch.device("cpu"), rank_index=0, size=2)) == 4


def test_one_process_keeps_the_dataloader_order():
    from torch.utils.data import DataLoader

    rows = list(range(37))
    loader = ShardedLoader([{"x": torch.tensor([i])} for i in rows], lambda b: {"x": torch.cat([r["x"] for r in b])},
                           8, seed=5, device=torch.device("cpu"))
    reference = DataLoader(rows, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))
    for _ in range(2):  # two passes: the generator advances the same way
        assert [b["x"].tolist() for b in loader] == [b.tolist() for b in reference]
