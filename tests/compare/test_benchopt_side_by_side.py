"""bench/stochastic_peers against the benchopt bilevel benchmark's own code (a checkout outside this repository).

Skips without jax/benchopt (the ``benchopt`` extra) or without a checkout: set BENCHMARK_BILEVEL to a clone of
github.com/benchopt/benchmark_bilevel (default /tmp/benchmark_bilevel).
"""
import os

import pytest

pytest.importorskip("jax")
pytest.importorskip("benchopt")
CHECKOUT = os.environ.get("BENCHMARK_BILEVEL", "/tmp/benchmark_bilevel")
if not os.path.isdir(os.path.join(CHECKOUT, "solvers")):
    pytest.skip(f"no benchmark_bilevel checkout at {CHECKOUT} (set BENCHMARK_BILEVEL)", allow_module_level=True)

from bench import stochastic  # noqa: E402
from bench.stochastic_peers import lockstep, ours, report, settings, theirs  # noqa: E402


@pytest.fixture(scope="module")
def quadratic():
    return stochastic.quadratic(n=20, m=5, samples=256)  # small: the cost here is JAX compiling their epochs


@pytest.fixture(scope="module")
def datacleaning():
    return stochastic.datacleaning(train=256, validation=128)


def starts(problem, draws):
    n_inner, n_outer = len(problem["inner_data"][0]), len(problem["outer_data"][0])
    return (theirs.sample_starts(CHECKOUT, n_inner, settings.BATCH_SIZE, draws, 0),
            theirs.sample_starts(CHECKOUT, n_outer, settings.BATCH_SIZE, draws, 1))


@pytest.mark.parametrize("name", ["quadratic", "datacleaning"])
def test_our_soba_core_in_their_order_gives_their_iterates(name, quadratic, datacleaning):
    """Same batches, same steps: our SOBA's directions moved in their loop order equal their iterates to rounding."""
    problem = quadratic if name == "quadratic" else datacleaning
    inner_starts, outer_starts = starts(problem, 60)
    w, x = lockstep.soba(problem, name, inner_starts, outer_starts, 60)
    their_w, their_x = theirs.iterates(theirs.build(CHECKOUT, "soba", name, problem,
                                                    settings.their_parameters(name, "soba")), 60)
    assert float((x["x"] - x0(problem)).abs().max()) > 1e-2  # the outer variable did move
    for ours_, theirs_ in ((w, their_w), (x, their_x)):
        for key in ours_:
            assert float((ours_[key] - theirs_[key]).abs().max()) <= 1e-12


def x0(problem):
    return problem["outer"]["x"]


@pytest.mark.parametrize("solver", ["f2sa", "amigo"])
def test_our_engine_on_their_draws_gives_their_figures_on_datacleaning(solver, datacleaning):
    """Through the Engine, with their settings and their draws in the order the Engine takes them (F2SA: h's two g
    terms on a batch each), our AmIGO and F2SA give their figure at every checkpoint, to rounding, on a problem whose
    grad_x g depends on the batch (test_evaluation_counts_add_up checks every solver's on the quadratic)."""
    problem, name = datacleaning, "datacleaning"
    steps = 12
    inner_starts, outer_starts = starts(problem, steps * (3 * settings.N_INNER_STEPS + 3))
    mine = ours.run(name, problem, solver, steps, 4, inner_starts, outer_starts)
    instance = theirs.build(CHECKOUT, solver, name, problem, settings.their_parameters(name, solver))
    their = theirs.run(instance, steps, 4, problem["figure"], settings.N_INNER_STEPS, solver, 4)
    figure = report.figure_name(mine)
    assert [p["step"] for p in mine] == [p["step"] for p in their] == [4, 8, 12]
    assert abs(mine[-1][figure] - mine[0][figure]) > 1e-3  # the figure did move
    for a, b in zip(mine, their):
        assert abs(a[figure] - b[figure]) <= 1e-12 * max(1.0, abs(b[figure])), (a["step"], a[figure], b[figure])
        assert a["gradients"] == b["gradients"] and a["products"] == b["products"]


def test_engine_order_puts_their_f2sa_draws_where_the_engine_takes_them(monkeypatch):
    """Their per-iteration inner draws (y_0, z_0, ..., y_{n-1}, z_{n-1}, h_y, h_z) become the Engine's (z's n, y's
    n, h_y, h_z); other solvers' draws stay in their order."""
    monkeypatch.setattr(settings, "N_INNER_STEPS", 2)
    draws = ["y0", "z0", "y1", "z1", "hy", "hz", "Y0", "Z0", "Y1", "Z1", "HY", "HZ"]
    assert ours.engine_order("f2sa", draws) == ["z0", "z1", "y0", "y1", "hy", "hz", "Z0", "Z1", "Y0", "Y1", "HY",
                                                "HZ"]
    assert ours.engine_order("amigo", draws) == draws


def test_their_oracles_are_our_losses(quadratic, datacleaning):
    """The JAX oracles written for their solvers give our PyTorch losses on the same slice (float64)."""
    import jax.numpy as jnp
    import torch

    logreg = stochastic.logreg(train=512, validation=256)
    wide = stochastic.datacleaning_wide(features=30, classes=7, train=256, validation=128, test=64)
    for name, problem in (("quadratic", quadratic), ("logreg", logreg), ("datacleaning", datacleaning),
                          ("datacleaning_wide", wide)):
        f_inner, f_outer, unflatten, inner0, outer0 = theirs.oracles(name, problem)
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(inner0.shape, generator=gen, dtype=torch.float64)
        x = torch.randn(outer0.shape, generator=gen, dtype=torch.float64)
        ours_w = {k: torch.tensor(v) for k, v in unflatten(w.numpy()).items()}
        for start in (0, 64):  # inside every level's data (theirs clamps a slice past the end, ours would not)
            batch = lambda tensors: tuple(t[start:start + 64] for t in tensors)  # noqa: E731
            for f, loss, data in ((f_inner, problem["inner_loss"], "inner_data"),
                                  (f_outer, problem["outer_loss"], "outer_data")):
                theirs_value = float(f(jnp.asarray(w.numpy()), jnp.asarray(x.numpy()), start, batch_size=64))
                ours_value = float(loss(ours_w, {"x": x}, batch(problem[data])))
                assert theirs_value == pytest.approx(ours_value, rel=1e-12)


@pytest.mark.parametrize("solver", settings.BOTH_SIDES)
def test_evaluation_counts_add_up(solver, quadratic):
    """Checkpoints carry the cumulative counts: theirs per the code's static count, ours per the method's
    diagnostics plus one pass per inner step; both sides run the same number of steps and checkpoints."""
    steps, every = 20, 10
    inner_starts, outer_starts = starts(quadratic, steps * (3 * settings.N_INNER_STEPS + 3))
    ours_points = ours.run("quadratic", quadratic, solver, steps, every, inner_starts, outer_starts, repeats=2)
    instance = theirs.build(CHECKOUT, solver, "quadratic", quadratic, settings.their_parameters("quadratic", solver))
    their_points = theirs.run(instance, steps, every, quadratic["figure"], settings.N_INNER_STEPS, solver, repeats=2)
    assert [p["step"] for p in ours_points] == [p["step"] for p in their_points] == [10, 20]
    per_step = theirs.THEIR_COUNTS[solver](settings.N_INNER_STEPS)
    assert their_points[-1]["gradients"] == steps * per_step["gradients"]
    assert their_points[-1]["products"] == steps * per_step["products"]
    n = settings.N_INNER_STEPS
    # soba: the Engine reuses the inner gradient the method computed (no pass of its own for the inner step) and one
    # backward gives both second-order products; amigo: n inner steps, the outer pass, and a gradient pass and a
    # product on each of its n + 1 fresh batches; f2sa: n inner steps, 2n y passes and h's three: their counts
    ours_per_step = {"soba": (2, 1), "amigo": (2 * n + 2, n + 1), "f2sa": (n + 2 * n + 3, 0)}[solver]
    assert (ours_points[-1]["gradients"], ours_points[-1]["products"]) == tuple(
        steps * c for c in ours_per_step) == (their_points[-1]["gradients"], their_points[-1]["products"])
    for mine, their in zip(ours_points, their_points):  # the same order, sampling and draws: the same iterates
        assert mine["rel_error"] == pytest.approx(their["rel_error"], rel=1e-12)
    assert ours_points[1]["gradients"] == 2 * ours_points[0]["gradients"]  # the same cost every step
    for points in (ours_points, their_points):
        assert all(p["seconds"] > 0 for p in points)
        assert points[-1]["rel_error"] < 1.0  # both moved towards x* from x = 0 (relative error 1)


def test_their_sampler_draws_the_last_batch_twice_per_pass():
    """The disagreement docs/stochastic.md reports: per pass over 2,000 rows in batches of 64 their sampler draws 33
    batches, not 32: the last index is read past the end of the order (JAX clamps it) before the reshuffle, and the
    last start (1,984) is clamped to 1,936, so rows 1,936-1,983 are drawn three times per pass."""
    inner_starts, _ = starts({"inner_data": [range(2000)], "outer_data": [range(2000)]}, 33 * 3)
    first_pass = list(inner_starts[:33])
    assert first_pass[:32] == [64 * i for i in range(30)] + [1920, 1936]  # the first pass is not shuffled
    assert first_pass[32] == 1936
    counts = [0] * 2000
    for start in first_pass:
        for row in range(start, start + 64):
            counts[row] += 1
    assert counts[1935] == 1 and counts[1936] == 3 and counts[1983] == 3 and counts[1999] == 2


def test_report_reads_the_targets():
    points = lambda values, per_step: [  # noqa: E731
        {"step": 10 * (i + 1), "seconds": 0.1 * (i + 1), "gradients": 10 * (i + 1) * per_step, "products": 0,
         "val_loss": v} for i, v in enumerate(values)]
    c = report.compare(points([0.9, 0.5, 0.3], 2), points([0.8, 0.4, 0.35], 1))
    assert c["level"] == 0.35 and c["theirs_evaluations"] == 30 and c["ours_evaluations"] == 60
    assert c["evaluation_ratio"] == 2.0 and c["ours_steps"] == c["theirs_steps"] == 30
    rows = {"toy": {("soba", "ours"): points([0.9, 0.5, 0.3], 2), ("soba", "theirs"): points([0.8, 0.4, 0.35], 1)}}
    text = report.table(rows, {"toy": ((2.0, 1.0, 1.0), (1.0, 1.0, 1.0))})
    # the second half of the checkpoints (steps 20 and 30): ours 0.5, 0.3; theirs 0.4, 0.35
    assert c["plateau"] == [(pytest.approx(0.4), pytest.approx(0.1)), (pytest.approx(0.375), pytest.approx(0.025))]
    assert "| soba | 0.35 | 0.3 | 30 (30) | 60 (30) | 2.00 | 0.4 (0.1) / 0.375 (0.025) | 1.00x (10.000 / 10.000) |" \
        in text
    assert "load average 2.00 1.00 1.00 -> 1.00 1.00 1.00)" in text  # quiet at its end: no mark
    assert "under load" in report.table(rows, {"toy": ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0))})
    assert "under load" not in report.table(rows, {"toy": ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0))}, threads=2)  # its own
    # ours ran past their last step (30) and reached their figure at 40: counted there, its figure read at 30
    c = report.compare(points([0.9, 0.5, 0.36, 0.34], 1), points([0.8, 0.4, 0.35], 1))
    assert c["ours_steps"] == 40 and c["evaluation_ratio"] == pytest.approx(40 / 30) and c["ours_final"] == 0.36
    assert c["plateau"][0][0] == pytest.approx(0.43)  # its plateau over the same steps as theirs (20, 30), not 40


def test_rounds_interleave_the_sides_and_each_row_keeps_its_own_runs(monkeypatch):
    """Every round runs ours, theirs and their variant once each (the first side rotating); each row is the fastest
    of its own runs, the variant's from its own instance, on their SOBA with the variant's exponents."""
    from bench.stochastic_peers import __main__ as runner

    calls = []

    def recorded(side, run):
        def wrapper(*args, **kwargs):
            calls.append((side, id(args[0]), args[5]) if side == "theirs" else ("ours", None, args[2]))
            return run(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(runner, "PROBLEMS", {"quadratic": lambda: stochastic.quadratic(n=20, m=5, samples=256)})
    monkeypatch.setattr(ours, "run", recorded("ours", ours.run))
    monkeypatch.setattr(theirs, "run", recorded("theirs", theirs.run))
    rows = runner.run_problem("quadratic", CHECKOUT, ["soba"], steps=20, every=10, repeats=3)
    assert set(rows) == {("soba", "ours"), ("soba", "theirs"), ("soba_paper_steps", "theirs")}
    base, variant = calls[1][1], calls[2][1]
    assert base != variant
    assert [(side, instance) for side, instance, _ in calls] == [
        ("ours", None), ("theirs", base), ("theirs", variant),
        ("theirs", base), ("theirs", variant), ("ours", None),
        ("theirs", variant), ("ours", None), ("theirs", base)]
    assert all(solver == "soba" for _, _, solver in calls)
    assert rows[("soba_paper_steps", "theirs")][-1]["rel_error"] != rows[("soba", "theirs")][-1]["rel_error"]
    assert rows[("soba", "ours")][-1]["rel_error"] == pytest.approx(rows[("soba", "theirs")][-1]["rel_error"],
                                                                   rel=1e-12)


def test_a_run_that_outlasts_their_draws_stops_instead_of_reusing_them(quadratic):
    inner_starts, outer_starts = starts(quadratic, 3 * settings.N_INNER_STEPS + 3)  # one F2SA step's worth
    with pytest.raises(RuntimeError, match=r"^ReplayBatches: all \d+ of their draws are used; sample more$"):
        ours.run("quadratic", quadratic, "f2sa", 3, 3, inner_starts, outer_starts)
