"""Our solvers through ``bilevel.Engine`` with their settings, on the batches their sampler draws, with checkpoints."""
from __future__ import annotations

import time

import torch

import bilevel
from bench import stochastic

from . import report, settings


class ReplayBatches:
    """The batches ``data[start:start + batch_size]`` in the order of ``starts`` (their sampler's draws), once: a
    level that restarted them would take draws already taken, so a second pass is an error."""

    def __init__(self, tensors, starts, batch_size):
        self.tensors, self.starts, self.batch_size = tensors, [int(s) for s in starts], batch_size
        self.started = False

    def __iter__(self):
        if self.started:
            raise RuntimeError(f"ReplayBatches: all {len(self.starts)} of their draws are used; sample more")
        self.started = True
        for start in self.starts:
            yield tuple(t[start:start + self.batch_size] for t in self.tensors)

    def __len__(self):
        return len(self.starts)


def _power_schedule(exponent: float, per_outer: int = 1):
    """LambdaLR factor t^-exponent at outer iteration t = 1, 2, ... (the scheduler steps per optimizer step)."""
    return lambda step: (step // per_outer + 1) ** -exponent


def plan(problem_name: str, solver: str, steps: int, compile_products: bool = False):
    """``(spec, inner_steps, inner_decay, outer_decay, reuse)``: our Engine settings that match their solver's;
    ``reuse``: the Engine takes its first inner step with the inner gradient the method computed (SOBA: the
    paper's order, w, v and x moved from the same point, as theirs does). ``compile_products``: SOBA's and
    AmIGO's products compiled (the same numbers, in less time)."""
    step = settings.STEPS[problem_name]["step_size"]
    n = settings.N_INNER_STEPS
    if solver == "soba":
        spec = bilevel.MethodSpec("soba", {"step": step, "decay": 0.5, "compile_products": compile_products})
        return spec, 1, 0.5, 0.5, True
    if solver == "amigo":  # a fresh batch per linear-system step and for the mixed product, as theirs draws them
        spec = bilevel.MethodSpec("amigo", {"iterations": n, "step": step, "fresh_batches": True,
                                            "compile_products": compile_products})
        return spec, n, 0.0, 0.0, False
    if solver == "f2sa":  # their schedules: y step t^-5/7 (not over lambda), lambda += delta t^-1/7, z and x t^-4/7
        multiplier = settings.F2SA_MULTIPLIER
        spec = bilevel.MethodSpec("f2sa", {"lr": step, "decay": 5 / 7, "y_step": "lr", "steps": n,
                                           "multiplier": multiplier["lmbda0"],
                                           "multiplier_growth": multiplier["delta_lmbda"],
                                           "multiplier_growth_decay": 1 / 7, "fresh_batches": True,
                                           "h_batches": 2})  # h's g terms on a batch each, as theirs
        return spec, n, 4 / 7, 4 / 7, False
    return stochastic.ROWS[solver], 1, 0.0, 0.0, False  # ours only: constant steps, one inner step, as bench/stochastic.py


def engine_order(solver: str, inner_starts) -> list:
    """Their inner batch starts in the order our Engine consumes them. Per iteration their F2SA draws, for each of
    its n steps, one batch for y's g and one for z, then h's two (g at y, g at z); the Engine draws z's n batches
    first (its inner steps), then the n + 2 the method asks for (y's, then h's two). Other solvers draw alike."""
    if solver != "f2sa":
        return list(inner_starts)
    n = settings.N_INNER_STEPS
    block, starts, ordered = 2 * n + 2, list(inner_starts), []
    for first in range(0, len(starts) - block + 1, block):
        draws = starts[first:first + block]
        ordered += draws[1:2 * n:2] + draws[0:2 * n:2] + draws[2 * n:]
    return ordered


def run(problem_name: str, problem: dict, solver: str, steps: int, every: int, inner_starts, outer_starts,
        repeats: int = 1, compiled: tuple = ()):
    """Run ``steps`` outer steps; a checkpoint every ``every`` steps as in :func:`bench.stochastic_peers.theirs.run`.

    ``seconds`` is the Engine's time with the figure's evaluation left out. With ``repeats`` > 1 the same run (the
    same batches, so the same figures) is made that many times and the fastest is kept: on a shared machine the
    noise only ever adds time. ``compiled``: what the Engine compiles, of ``"products"`` (SOBA's and AmIGO's
    ``compile_products``) and ``"gradients"`` (``EngineConfig.compile_gradients``); a later run reuses the first
    one's graphs, so the fastest run leaves compilation out, as their untimed warm-up epochs do for theirs.
    """
    return report.fastest([_run_once(problem_name, problem, solver, steps, every, inner_starts, outer_starts,
                                     compiled) for _ in range(repeats)])


def _run_once(problem_name, problem, solver, steps, every, inner_starts, outer_starts, compiled=()):
    spec, inner_steps, inner_decay, outer_decay, reuse = plan(problem_name, solver, steps, "products" in compiled)
    inner_lr, outer_lr = settings.STEPS[problem_name]["step_size"], settings.outer_step(problem_name, solver)

    def level(role, initial, data, lr, decay, per_outer):
        params = {k: torch.nn.Parameter(v.clone()) for k, v in initial.items()}
        optimizer = torch.optim.SGD(list(params.values()), lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _power_schedule(decay, per_outer)) if decay else None
        return stochastic.FunctionalLevel(problem[f"{role}_loss"], role, params=params, optimizer=optimizer,
                                          scheduler=scheduler, data=data)

    inner = level("inner", problem["inner"],
                  ReplayBatches(problem["inner_data"], engine_order(solver, inner_starts), settings.BATCH_SIZE),
                  inner_lr, inner_decay, inner_steps)
    outer = level("outer", problem["outer"], ReplayBatches(problem["outer_data"], outer_starts, settings.BATCH_SIZE),
                  outer_lr, outer_decay, 1)
    config = bilevel.EngineConfig(outer_steps=steps, inner_steps=inner_steps, seed=0, progress=False,
                                  log_every=steps, reuse_inner_gradient=reuse,
                                  compile_gradients="gradients" in compiled)
    engine = bilevel.Engine(inner, outer, method=spec, config=config)
    points, totals = [], {"gradients": 0, "products": 0, "seconds": 0.0}
    clock = [time.perf_counter()]

    def on_step(engine, step):
        diagnostics = engine.last_result.diagnostics
        reused = reuse and engine.last_result.inner_grads is not None  # no pass of its own for the first inner step
        totals["gradients"] += inner_steps - reused + diagnostics.get("gradient_evaluations", 0)
        totals["products"] += diagnostics.get("hvp", 0)
        if step % every == 0:
            totals["seconds"] += time.perf_counter() - clock[0]
            detached = lambda lvl: {k: v.detach().clone() for k, v in lvl.stored_params.items()}  # noqa: E731
            points.append({"step": step, "seconds": totals["seconds"], "gradients": totals["gradients"],
                           "products": totals["products"],
                           **problem["figure"](detached(engine.inner), detached(engine.outer))})
            clock[0] = time.perf_counter()

    engine.on_step = on_step
    engine.run()
    return points
