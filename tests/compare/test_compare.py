"""bilevel.compare: reported errors against independent computations, pass counts, spec grammar, the CLI."""
import json
import math
import subprocess
import sys

import pytest
import torch

from bilevel import methods
from bilevel.compare import BilevelProblem, SpecError, compare, make_problem, parse_specs
from bilevel.compare.cli import main
from bilevel.compare.report import ComparisonReport, MethodReport

DTYPE = torch.float64


def closed_form_problem(seed=1, n=12, m=3, mu=0.2):
    """A quadratic built here, with its hypergradient and the pieces to compute each method by hand."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    a = q @ torch.diag(torch.linspace(1.0, 6.0, n, dtype=DTYPE)) @ q.T
    b = torch.randn(n, m, generator=g, dtype=DTYPE)
    c = torch.randn(n, generator=g, dtype=DTYPE)
    x = torch.randn(m, generator=g, dtype=DTYPE)
    w = torch.linalg.solve(a, b @ x)
    problem = BilevelProblem(
        lambda i, o, _: 0.5 * i["w"] @ (a @ i["w"]) - i["w"] @ (b @ o["x"]),
        lambda i, o, _: 0.5 * ((i["w"] - c) ** 2).sum() + 0.5 * mu * (o["x"] ** 2).sum(),
        {"w": w}, {"x": x}, None, None, inner_lr=0.1, name="mine")
    return problem, (a, b, c, x, w, mu)


def own_errors(estimate, truth):
    return (float(torch.linalg.vector_norm(estimate - truth) / torch.linalg.vector_norm(truth)),
            float(estimate @ truth / (torch.linalg.vector_norm(estimate) * torch.linalg.vector_norm(truth))))


def test_reported_errors_match_closed_forms_computed_here():
    problem, (a, b, c, x, w, mu) = closed_form_problem()
    truth = b.T @ torch.linalg.solve(a, w - c) + mu * x
    lr = 0.1
    # one SGD step from the optimum leaves w (gradient zero); its derivative is the one-step response -lr B
    one_step = lr * b.T @ (w - c) + mu * x
    first_order = mu * x
    # CG with k iterations from zero: the minimiser of the A-norm error over the Krylov space of grad_w f
    rhs = w - c
    krylov = torch.stack([torch.linalg.matrix_power(a, i) @ rhs for i in range(3)], dim=1)
    coefficients = torch.linalg.solve(krylov.T @ a @ krylov, krylov.T @ rhs)
    cg3 = b.T @ (krylov @ coefficients) + mu * x
    report = compare(problem, "exact first_order unroll:1 finite_difference cg:3", repeats=1)
    assert report.reference.startswith("exact dense solve")
    expected = {"exact": truth, "first_order": first_order, "unroll:1": one_step, "finite_difference": one_step,
                "cg:3": cg3}
    for row in report.rows:
        error, cos = own_errors(expected[row.label], truth)
        assert row.error is None
        assert row.relative_error == pytest.approx(error, rel=1e-6, abs=1e-12), row.label
        assert row.cosine == pytest.approx(cos, rel=1e-9), row.label


def test_given_reference_is_used_and_named():
    problem = make_problem("quadratic")
    report = compare(problem, "cg:200", repeats=1)
    assert report.reference.startswith("closed form")
    assert report.rows[0].relative_error < 1e-10 and report.rows[0].cosine == pytest.approx(1.0)


def test_long_cg_reference_when_exact_does_not_fit():
    problem, _ = closed_form_problem()
    report = compare(problem, "first_order", repeats=1, exact_max_size=5)
    assert report.reference.startswith("long CG run")


@pytest.mark.parametrize("spec, hvp_at_most", [("cg:4", 4 + 1), ("neumann:3", 20 + 3 + 1), ("exact", 12 + 1)])
def test_counts_follow_the_method_docs(spec, hvp_at_most):
    problem, _ = closed_form_problem()
    row = compare(problem, spec, repeats=1).rows[0]
    assert row.passes == 2 and 0 < row.hvp <= hvp_at_most


def test_counts_of_methods_without_hessian_products():
    problem, _ = closed_form_problem()
    rows = {r.label: r for r in compare(problem, "first_order finite_difference unroll:3", repeats=1).rows}
    assert (rows["first_order"].passes, rows["first_order"].hvp) == (1, 0)
    assert (rows["finite_difference"].passes, rows["finite_difference"].hvp) == (4, 0)
    assert (rows["unroll:3"].passes, rows["unroll:3"].hvp, rows["unroll:3"].hvp_estimated) == (4, 3, True)


def test_memory_and_time_are_measured():
    problem, _ = closed_form_problem()
    report = compare(problem, "cg:5 first_order", repeats=2)
    assert "CPU count" in report.memory or "cuda" in report.memory
    for row in report.rows:
        assert row.seconds > 0 and row.peak_bytes > 0
    # CG keeps the inner gradient graph and solver vectors: more live memory than one outer pass
    assert report.rows[0].peak_bytes > report.rows[1].peak_bytes


def test_a_failing_method_is_a_row_not_a_crash():
    problem, _ = closed_form_problem()
    row = compare(problem, "neumann:50,step=1.0", repeats=1).rows[0]  # step > 2 / lambda_max = 1/3: diverges
    assert row.error.startswith("SolverDivergedError") and math.isnan(row.relative_error)


def test_spec_grammar():
    runs = parse_specs("cg:5,10,damping=0.1 unroll:2,lr=0.05 finite_difference:lr=0.1 first_order")
    assert [r.label for r in runs] == ["cg:5,damping=0.1", "cg:10,damping=0.1", "unroll:2,lr=0.05",
                                       "finite_difference:lr=0.1", "first_order"]
    assert runs[1].settings == {"damping": 0.1, "iterations": 10}
    assert isinstance(runs[2].build(), methods.Unroll) and runs[2].build().steps == 2
    # the problem's inner_lr fills lr only when the spec leaves it out
    assert parse_specs("unroll:1")[0].build(inner_lr=0.3).lr == 0.3
    assert runs[2].build(inner_lr=0.3).lr == 0.05
    assert parse_specs("unroll:1")[0].build().lr is None  # unknown until a caller knows the inner step


@pytest.mark.parametrize("spec, fragment", [
    ("bogus:3", "unknown method 'bogus'"),
    ("first_order:3", "first_order takes no count"),
    ("cg:0", "neither a positive integer count nor key=value"),
    ("cg:five", "neither a positive integer count nor key=value"),
    ("cg:speed=2", "'speed' is not a setting of cg"),
    ("cg:", "nothing after ':'"),
    ("finite_difference:lr=-1", "lr must be a number > 0"),
])
def test_spec_errors_are_one_line(spec, fragment):
    with pytest.raises(SpecError) as error:
        parse_specs(spec)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_cli_end_to_end(tmp_path, capsys):
    plot, report = tmp_path / "q.png", tmp_path / "q.json"
    code = main(["compare", "quadratic", "cg:5,30", "neumann:10", "unroll:1", "first_order", "--repeats", "1",
                 "--plot", str(plot), "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert "reference: closed form" in out and "| cg:30 |" in out and "| first_order |" in out
    assert plot.stat().st_size > 1000
    rows = json.loads(report.read_text())["rows"]
    assert [r["label"] for r in rows] == ["cg:5", "cg:30", "neumann:10", "unroll:1", "first_order"]
    assert rows[1]["relative_error"] < 1e-8


def test_cli_spec_error_is_one_line(capsys):
    assert main(["compare", "quadratic", "cg:x", "--plot", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bilevel compare: error: method spec 'cg:x'") and "\n" not in err


def test_cli_user_problem(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_problems.py").write_text(
        "from tests.compare.test_compare import closed_form_problem\n"
        "def make(seed=0):\n    return closed_form_problem(seed + 1)[0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["compare", "my_problems:make", "cg:20", "--repeats", "1", "--plot", ""]) == 0
    assert "problem: mine" in capsys.readouterr().out


def test_cli_user_problem_in_the_current_folder(tmp_path, capsys, monkeypatch):
    """The console script does not put the current folder on sys.path; ``module:function`` is found there anyway,
    as ``python -m`` would."""
    (tmp_path / "here_problems.py").write_text(
        "from tests.compare.test_compare import closed_form_problem\n"
        "def make(seed=0):\n    return closed_form_problem(seed + 1)[0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert main(["compare", "here_problems:make", "cg:20", "--repeats", "1", "--plot", ""]) == 0
    assert "problem: mine" in capsys.readouterr().out


def test_cli_user_problem_without_a_seed_is_told_how_to_take_one(tmp_path, capsys, monkeypatch):
    (tmp_path / "seedless.py").write_text("def make():\n    raise AssertionError('never called')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["compare", "seedless:make", "cg:20", "--repeats", "1", "--plot", ""]) == 2
    assert ("problem 'seedless:make': make cannot be called with seed= alone; define it as make(seed=0) -> BilevelProblem (--seed is "
            "passed to it)") in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ridge", "logistic"])
def test_builtin_problems_start_at_the_inner_optimum(name):
    pytest.importorskip("sklearn")
    problem = make_problem(name)
    w = {k: v.clone().requires_grad_(True) for k, v in problem.inner_params.items()}
    loss = problem.inner_loss(w, problem.outer_params, problem.inner_batch)
    gradient = torch.autograd.grad(loss, list(w.values()))
    assert max(float(g.abs().max()) for g in gradient) < 1e-7
    row = compare(problem, "cg:60", repeats=1).rows[0]
    assert row.relative_error < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name, module", [("hyper_cleaning", "sklearn"), ("autolora", "transformers")])
def test_larger_builtin_problems_compare_end_to_end(name, module):
    pytest.importorskip(module)
    problem = make_problem(name)
    report = compare(problem, "cg:30 first_order", repeats=1)
    assert report.reference.startswith("exact dense solve")
    assert report.rows[0].relative_error < 1e-4 and report.rows[1].error is None


def test_cli_writes_nothing_unless_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "quadratic", "cg:5", "--repeats", "1"]) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, fragment", [
    (["json:decoder"], "problem 'json:decoder': decoder is a module, not a function"),
    (["quadratic", "--json", "/no/such/folder/r.json"], "--json /no/such/folder/r.json: the folder /no/such/folder "
                                                        "does not exist"),
    (["quadratic", "--plot", "/no/such/folder/r.png"], "--plot /no/such/folder/r.png: the folder"),
    (["quadratic", "finite_difference:lr=abc"], "lr must be a number > 0, got 'abc'"),
    (["nowhere"], "unknown problem 'nowhere'; problems: quadratic, ridge, logistic, hyper_cleaning, autolora"),
])
def test_cli_bad_input_is_one_line_before_anything_runs(argv, fragment, capsys):
    assert main(["compare", *argv, "--repeats", "1"]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.err.count("\n") == 1 and captured.out == ""


def test_a_spec_that_needs_the_inner_step_is_refused_on_a_problem_without_one():
    problem, _ = closed_form_problem(0)
    problem.inner_lr = None
    with pytest.raises(SpecError, match=r"has no inner_lr, and finite_difference models the inner step; give it as "
                                        r"finite_difference:lr=\.\.\."):
        compare(problem, "cg:5 finite_difference", repeats=1)
    assert compare(problem, "finite_difference:lr=0.1", repeats=1).rows[0].error is None


def test_an_application_adds_its_problem_through_the_entry_point_group():
    """The core never imports autolora; the installed package declares its problem in `bilevel.problems`."""
    from importlib.metadata import entry_points

    from bilevel.compare.problems import ENTRY_POINT_GROUP, PROBLEMS, problem_names

    assert "autolora" not in PROBLEMS and "autolora" in problem_names()
    assert [p.value for p in entry_points(group=ENTRY_POINT_GROUP) if p.name == "autolora"] == \
        ["autolora.compare_problem:make_problem"]
    listing = subprocess.run([sys.executable, "-c", "import sys, bilevel; bilevel.compare.problem_names(); "
                              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'autolora'))"],
                             capture_output=True, text=True, check=True)
    assert listing.stdout.strip() == "[]"


def test_table_says_n_a_for_a_zero_hypergradients_cosine_and_omits_an_empty_description():
    report = ComparisonReport("mine", "", "closed form", "peak", "cpu",
                              [MethodReport("soba", relative_error=1.0, seconds=0.0, peak_bytes=0.0, passes=1, hvp=0)])
    table = report.table()
    assert table.splitlines()[0] == "problem: mine"
    assert "| soba | 1.000e+00 | n/a |" in table
