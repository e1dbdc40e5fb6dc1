"""Tiny randomly initialised transformers built from configs (no downloads), shared by the autolora tests."""
from __future__ import annotations

import torch
import transformers as tf

VOCAB = 64


def tiny_model(arch: str, num_labels: int = 2, kind: str = "classification", seed: int = 0):
    """A 2-layer, 16-wide model of ``arch`` (bert, roberta, gpt2, llama, deberta-v2) with a task head."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, num_labels=num_labels)
    if arch == "bert":
        cfg = tf.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            max_position_embeddings=64, **common)
    elif arch == "roberta":
        cfg = tf.RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=70, pad_token_id=1, **common)
    elif arch == "deberta-v2":
        cfg = tf.DebertaV2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                 max_position_embeddings=64, **common)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=64, pad_token_id=0, **common)
    elif arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, **common)
    else:
        raise ValueError(arch)
    if kind == "regression":
        cfg.num_labels = 1
        cfg.problem_type = "regression"
    if kind == "generation":
        return tf.AutoModelForCausalLM.from_config(cfg).eval()
    return tf.AutoModelForSequenceClassification.from_config(cfg).eval()


def tiny_batch(batch_size: int = 4, length: int = 7, num_labels: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g)}
