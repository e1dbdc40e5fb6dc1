"""docs/autolora.md's recipe for a generation adapter: reloaded with PEFT and prompted as in training (source +
separator), greedy generation gives the text the pipeline scored."""
import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BertTokenizerFast, GPT2Config, GPT2LMHeadModel

from autolora.cli import main
from autolora.config import DataConfig
from autolora.tasks import build_task

WORDS = "name eat type pub food french area city the is a in serves near centre cheap".split()


def test_a_reloaded_generation_adapter_generates_what_the_pipeline_decoded(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "=>"] + WORDS))
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"), eos_token="[SEP]")
    assert len(tokenizer) == len(WORDS) + 6, "the tokenizer lost its vocabulary"
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 6, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                               pad_token_id=0, bos_token_id=3, eos_token_id=3)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"source": f"name {a} food {b}", "target": f"the {a} serves {b} food"}
            for a in ("pub", "city", "centre") for b in ("french", "cheap")]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    assert main(["retrain", "--model-name-or-path", str(model_dir), "--train-file", str(data), "--validation-file",
                 str(data), "--output-dir", str(out), "--no-progress", "--target-modules", "all-linear", "--k", "4",
                 "--uniform-rank", "4", "--retrain-max-steps", "150", "--retrain-batch-size", "6",
                 "--retrain-learning-rate", "1e-2", "--max-new-tokens", "8"]) == 0

    # the recipe of docs/autolora.md, "Loading the adapter", for generation
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    inputs = tokenizer(rows[0]["source"] + " => ", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    task = build_task(DataConfig(train_file=str(data), max_new_tokens=8), tokenizer)
    prompt = task.train[0]["input_ids"][: task.train[0]["prompt_length"]]
    assert text == task._decode(model, [prompt], 8)[0]
    assert text.split()[0] == "the", text  # trained: the reloaded adapter generates, not the untrained base
