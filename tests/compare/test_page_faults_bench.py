"""bench/stochastic_peers/page_faults: the hand-written AmIGO step does the Engine's passes and moves x."""
import torch


def test_the_hand_written_amigo_step_takes_its_batches_and_moves_the_weights():
    from bench import stochastic
    from bench.stochastic_peers import page_faults

    problem = stochastic.datacleaning_wide(features=20, classes=5, train=200, validation=100, test=50)
    draws = list(range(0, 40 * 3, 3))
    inner_draws, outer_draws = iter(draws), iter(draws)
    w, x = page_faults.by_hand(problem, inner_draws, outer_draws, 1)
    # one step draws 10 inner batches for the inner steps, 10 for the linear system and 1 for the mixed product
    assert next(inner_draws) == draws[2 * page_faults.INNER + 1] and next(outer_draws) == draws[1]
    assert not torch.equal(x["x"], problem["outer"]["x"]) and not torch.equal(w["W"], problem["inner"]["W"])
    assert torch.equal(problem["outer"]["x"], torch.zeros_like(problem["outer"]["x"]))  # its copies moved, not these
