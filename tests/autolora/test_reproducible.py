"""Same seed, same data: the same ranks and selection weights, bit for bit on CPU (with dropout on)."""
from torch.utils.data import default_collate

from autolora.config import AutoLoraConfig, SearchConfig
from autolora.search import search_ranks
from tiny_models import tiny_batch, tiny_model


def run(seed):
    model = tiny_model("bert")
    rows = [{k: v[0] for k, v in tiny_batch(batch_size=1, seed=s).items()} for s in range(24)]
    result = search_ranks(model, rows, default_collate, AutoLoraConfig(k=4, lora_dropout=0.1),
                    SearchConfig(max_steps=6, batch_size=4, record_every=3, alpha_learning_rate=0.1, seed=seed),
                    progress=False)
    return result.ranks.ranks, result.ranks.weights, result.losses


def test_same_seed_gives_identical_ranks_weights_and_losses():
    first, second = run(7), run(7)
    assert first == second


def test_another_seed_gives_another_search():
    assert run(7)[1] != run(8)[1]
