"""One set of step sizes, batch size and iteration counts per (problem, solver), handed to both sides.

Their parameters are ``step_size`` (inner and linear-system step), ``outer_ratio`` (outer step = step_size /
outer_ratio), ``n_inner_steps`` and ``batch_size``, with each solver's schedule fixed in its ``init``:
SOBA rho_t = gamma_t * ratio = step t^-1/2; AmIGO constant; F2SA y: step t^-5/7, z: step t^-4/7, x: step / ratio
t^-4/7, multiplier lambda_{t+1} = lambda_t + delta t^-1/7. Ours get the same numbers through the Engine's
optimizers, their learning-rate schedulers and the method's settings (:func:`bench.stochastic_peers.ours.plan`).
"""
from __future__ import annotations

# step_size and outer step of bench/stochastic.py's problems (its inner_lr and outer_lr), batch 64 everywhere
STEPS = {
    "quadratic": {"step_size": 0.1, "outer_step": 0.5},
    "logreg": {"step_size": 0.5, "outer_step": 0.5},
    "logreg_ijcnn1": {"step_size": 0.5, "outer_step": 0.5},
    "datacleaning": {"step_size": 0.5, "outer_step": 50.0},
    "datacleaning_wide": {"step_size": 0.5, "outer_step": 50.0},
}
BATCH_SIZE = 64
N_INNER_STEPS = 10   # AmIGO's and F2SA's inner loop length (their default)
F2SA_OUTER_SCALE = 0.1  # F2SA's outer step is a tenth of the others': at the full step their F2SA diverges (docs)
F2SA_MULTIPLIER = {"lmbda0": 1.0, "delta_lmbda": 0.1}  # their defaults

BOTH_SIDES = ("soba", "amigo", "f2sa")
# Their code with other step-size exponents (a row each, theirs only): name -> (solver, exponents, parameters).
# soba_paper_steps: SOBA's decreasing-step theorem (Dagreou et al. 2022, as docs/methods.md gives it): rho_t ~
# t^-2/5 (inner and v), gamma_t ~ t^-3/5 (outer); their code uses t^-1/2 for both.
# f2sa_lambda_t^1/7: their F2SA adds delta t^-1/7 to lambda every step, so lambda grows as t^6/7; this row adds
# (1/7) t^-6/7 instead, so lambda grows as t^1/7 (2.5 after 500 steps), the exponent their code writes.
VARIANTS = {
    "soba_paper_steps": ("soba", (0.4, 0.6), {}),
    "f2sa_lambda_t^1/7": ("f2sa", (5 / 7, 4 / 7, 4 / 7, 6 / 7), {"delta_lmbda": 1 / 7}),
}
OURS_ONLY = ("soba_fd", "cg", "neumann", "finite_difference")


def outer_step(problem: str, solver: str) -> float:
    scale = F2SA_OUTER_SCALE if solver == "f2sa" else 1.0
    return STEPS[problem]["outer_step"] * scale


def their_parameters(problem: str, solver: str) -> dict:
    """The keyword arguments of their ``Solver`` (``random_state`` seeds their two minibatch samplers)."""
    step = STEPS[problem]["step_size"]
    parameters = {"step_size": step, "outer_ratio": step / outer_step(problem, solver), "batch_size": BATCH_SIZE,
                  "eval_freq": 1, "random_state": 1}
    if solver in ("amigo", "f2sa"):
        parameters["n_inner_steps"] = N_INNER_STEPS
    if solver == "f2sa":
        parameters.update(F2SA_MULTIPLIER)
    return parameters
