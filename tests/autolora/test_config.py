import json

import pytest

from autolora.config import AutoLoraConfig, RetrainConfig, RunConfig, SearchConfig


@pytest.mark.parametrize("cls", [AutoLoraConfig, SearchConfig, RetrainConfig, RunConfig])
def test_json_round_trip(cls):
    cfg = cls()
    assert cls.from_json(json.dumps(json.loads(cfg.to_json()))) == cfg


def test_defaults_follow_the_original_code():
    s = SearchConfig()
    assert (s.validation_fraction, s.learning_rate, s.alpha_learning_rate, s.alpha_betas, s.batch_size) == \
        (0.3, 3e-4, 3e-4, [0.5, 0.999], 32)
    assert s.method == "finite_difference"
    a = AutoLoraConfig()
    assert a.k == 8 and a.effective_threshold == 1 / 8 and not a.allow_zero_rank


@pytest.mark.parametrize("cls,kwargs,field", [
    (AutoLoraConfig, {"k": 0}, "k"),
    (AutoLoraConfig, {"lora_dropout": 1.0}, "lora_dropout"),
    (AutoLoraConfig, {"rank_scaling": "other"}, "rank_scaling"),
    (AutoLoraConfig, {"target_modules": []}, "target_modules"),
    (SearchConfig, {"validation_fraction": 1.0}, "validation_fraction"),
    (SearchConfig, {"alpha_betas": [0.5]}, "alpha_betas"),
    (SearchConfig, {"max_steps": 0}, "max_steps"),
    (RetrainConfig, {"warmup_ratio": 1.0}, "warmup_ratio"),
    (RunConfig, {"device": "tpu"}, "device"),
])
def test_validation_names_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"{cls.__name__}: {field} "):
        cls(**kwargs)


def test_unknown_field_in_json():
    with pytest.raises(ValueError, match="unknown field"):
        SearchConfig.from_dict({"lr": 1})


def test_string_target_becomes_list():
    assert AutoLoraConfig(target_modules="query").target_modules == ["query"]


def test_a_method_setting_error_names_method_kwargs_whatever_the_names_case():
    from autolora.config import SearchConfig

    with pytest.raises(ValueError, match=r"^SearchConfig: method_kwargs is not usable: method 'CG' has no setting "
                                         r"bogus"):
        SearchConfig(method="CG", method_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match=r"^SearchConfig: method is not usable: unknown hypergradient method 'cgg'"):
        SearchConfig(method="cgg")
