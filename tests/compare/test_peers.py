"""bench/peers.py on the MLP: peers that compute the same mathematics agree with this library; betty's defects show.

Peers are optional: each test skips when its library is not installed (CI installs higher, not TorchOpt or betty).
"""
import sys
from pathlib import Path

import pytest
import torch

import bilevel
from bilevel.compare import relative_error

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
peers = pytest.importorskip("peers")


@pytest.fixture(scope="module")
def work():
    return peers.mlp_workload()


def test_higher_unroll_matches_ours(work):
    pytest.importorskip("higher")
    ours = work.ours(bilevel.methods.Unroll(steps=3, lr=work.inner_lr))
    assert relative_error(peers.higher_unroll(work, 3)(), ours) < 1e-10


def test_torchopt_matches_ours(work):
    torchopt = pytest.importorskip("torchopt")
    ours = work.ours(bilevel.methods.Unroll(steps=2, lr=work.inner_lr))
    assert relative_error(peers.torchopt_unroll(work, 2)(), ours) < 1e-10
    solve = torchopt.linear_solve.solve_cg(maxiter=8, rtol=1e-30)
    ours = work.ours(bilevel.methods.ConjugateGradient(8, tol=1e-30))
    assert relative_error(peers.torchopt_implicit(work, solve)(), ours) < 1e-8


def test_betty_darts_is_identity_implicit_and_moves_the_weights(work):
    pytest.importorskip("betty")
    levels = peers.BettyLevels(work, type="darts", darts_alpha=0.01)
    value = levels()
    ours = work.ours(bilevel.methods.IdentityImplicit(epsilon=0.01))
    assert relative_error(value, ours) < 1e-8
    moved = torch.sqrt(sum(((levels.w[k].detach() - work.inner_params[k]) ** 2).sum() for k in work.inner_params))
    assert float(moved) == pytest.approx(0.01, rel=1e-6)


def test_betty_cg_does_not_converge(work):
    pytest.importorskip("betty")
    reference = work.ours(bilevel.methods.Exact())
    ours = work.ours(bilevel.methods.ConjugateGradient(60, tol=1e-30))
    betty = peers.BettyLevels(work, type="cg", cg_iterations=60, cg_alpha=1.0)()
    assert relative_error(ours, reference) < 1e-4 < 1.0 < relative_error(betty, reference)


def test_profile_counts_backward_calls_per_hypergradient(work):
    def three_passes():  # exactly three backward calls: two torch.autograd.grad and one .backward
        x = torch.randn(4, requires_grad=True)
        torch.autograd.grad((x ** 2).sum(), x)
        torch.autograd.grad((x ** 3).sum(), x)
        (x * 2).sum().backward()

    calls, share = peers.autograd_profile(three_passes, repeats=5)
    assert calls == 3 and 0.0 < share < 1.0
    # ours, unroll:5 on the MLP: five inner gradients with graph, then one backward through all of them
    calls, _ = peers.autograd_profile(lambda: work.ours(bilevel.methods.Unroll(steps=5, lr=work.inner_lr)), repeats=2)
    assert calls == 6
