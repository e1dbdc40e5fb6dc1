"""A run with a stateful method (SOBA's v, AmIGO's warm start, F2SA's second inner copy and multiplier position,
BOME's moving inner copy and step-schedule position), checkpointed and resumed midway by a new Engine, ends bit for
bit where an uninterrupted run ends."""
import pytest
import torch

import bilevel
from tests.bilevel.stochastic_quadratic import quadratic_engine

STEPS = 12
METHODS = {
    "soba": bilevel.MethodSpec("soba", {"decay": 0.4}),  # the step depends on the call count
    "soba_finite_difference": bilevel.MethodSpec("soba", {"hessian": "finite_difference"}),
    "amigo": bilevel.MethodSpec("amigo", {"iterations": 3}),
    "amigo_cg": bilevel.MethodSpec("amigo", {"solver": "cg", "iterations": 2}),
    "amigo_fresh_batches": bilevel.MethodSpec("amigo", {"iterations": 3, "fresh_batches": True}),
    "f2sa": bilevel.MethodSpec("f2sa", {"multiplier": 10.0, "multiplier_growth": 5.0, "steps": 2}),
    "f2sa_papers_schedules": bilevel.MethodSpec("f2sa", {"multiplier": 10.0, "multiplier_growth": 5.0, "steps": 2,
                                                         "multiplier_growth_decay": 1 / 7, "decay": 5 / 7,
                                                         "y_step": "lr", "lr": 0.01, "fresh_batches": True}),
    "bome": bilevel.MethodSpec("bome", {"decay": 1.0, "decay_start": 3}),  # the step depends on the call count
}


def final_state(engine):
    return {**{k: p.detach().clone() for k, p in engine.inner.stored_params.items()},
            **{k: p.detach().clone() for k, p in engine.outer.stored_params.items()}}


def flat_state(state):
    """The method state's tensors and numbers, by path."""
    if isinstance(state, dict):
        return {f"{k}/{path}": v for k, value in state.items() for path, v in flat_state(value).items()}
    return {"": state}


@pytest.mark.parametrize("name", METHODS)
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(name, tmp_path):
    settings = dict(noise=0.1, inner_steps=2)
    uninterrupted = quadratic_engine(METHODS[name], outer_steps=STEPS, **settings)
    uninterrupted.run()
    first = quadratic_engine(METHODS[name], outer_steps=STEPS // 2, checkpoint_dir=str(tmp_path), **settings)
    first.run()
    midway = bilevel.checkpoint.load(tmp_path / bilevel.checkpoint.CHECKPOINT_NAME)
    resumed = quadratic_engine(METHODS[name], outer_steps=STEPS, checkpoint_dir=str(tmp_path), resume=True, **settings)
    resumed.run()
    assert resumed.step == STEPS and first.method_state is not None
    expected, got = final_state(uninterrupted), final_state(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    expected, got = flat_state(uninterrupted.method_state), flat_state(resumed.method_state)
    assert expected.keys() == got.keys()
    for key in expected:
        same = torch.equal(expected[key], got[key]) if torch.is_tensor(expected[key]) else expected[key] == got[key]
        assert same, key
    # the test can tell: resumed without the method state, the run ends elsewhere
    control = quadratic_engine(METHODS[name], outer_steps=STEPS, **settings)
    control.load_state_dict(midway)
    assert control.step == STEPS // 2
    control.method_state = None
    control.run()
    assert not torch.equal(final_state(control)["x"], final_state(uninterrupted)["x"])


def test_validation_leaves_the_runs_randomness_alone(tmp_path):
    """A validation that draws random numbers (a sampled subset, dropout) changes nothing in training: not the
    validation schedule, and not the validation at a run's last step, which a resumed run does not repeat."""
    import random

    import numpy as np

    def validate(engine):
        torch.randperm(10), np.random.rand(), random.random()
        return {"x_norm": float(engine.outer.stored_params["x"].detach().norm())}

    settings = dict(noise=0.1, inner_steps=2, rows=4)  # passes of 4 batches: the shuffles draw from torch's RNG
    method = METHODS["amigo_fresh_batches"]
    plain = quadratic_engine(method, outer_steps=STEPS, **settings)
    plain.run()
    validated = quadratic_engine(method, outer_steps=STEPS, validate_every=3, **settings)
    validated.on_validate = validate
    validated.run()
    first = quadratic_engine(method, outer_steps=5, validate_every=4, checkpoint_dir=str(tmp_path), **settings)
    first.on_validate = validate
    first.run()
    resumed = quadratic_engine(method, outer_steps=STEPS, validate_every=4, checkpoint_dir=str(tmp_path),
                               resume=True, **settings)
    resumed.on_validate = validate
    resumed.run()
    assert [step for step, _ in validated.history.series("val_x_norm")] == [3, 6, 9, 12]
    for engine in (validated, resumed):
        for key, value in final_state(plain).items():
            assert torch.equal(value, final_state(engine)[key]), key


def test_a_checkpoint_resumed_under_another_method_or_model_is_refused_in_one_line(tmp_path):
    first = quadratic_engine(METHODS["soba"], outer_steps=3, checkpoint_dir=str(tmp_path))
    first.run()
    other = quadratic_engine(METHODS["f2sa"], outer_steps=6, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match=r"^Engine: the checkpoint was written by method 'soba' and this run uses "
                                         r"'f2sa', whose state it cannot continue; resume with method 'soba', or start "
                                         r"the new method in another checkpoint_dir$"):
        other.run()
    bigger = quadratic_engine(METHODS["soba"], outer_steps=6, checkpoint_dir=str(tmp_path), resume=True)
    bigger.outer.stored_params["x"].data = torch.zeros(7, dtype=torch.float64)
    inner_before = final_state(bigger)
    with pytest.raises(ValueError, match=r"^Outer: the checkpoint's parameters do not fit this run's: 'x' \(\d+,\) "
                                         r"\(this run: \(7,\)\); resume with the model"):
        bigger.run()
    after = final_state(bigger)  # refused before anything was loaded: the inner level is untouched too
    assert all(torch.equal(after[name], value) for name, value in inner_before.items())
