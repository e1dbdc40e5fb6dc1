"""Tokenizer and model loading from the hub or a local folder, with errors that name the folder.

    tokenizer = load_tokenizer("path/to/model")          # a pad token guaranteed (eos when the model has none)
    model = from_pretrained(AutoModelForSequenceClassification, "path/to/model", "load_model", num_labels=2)
"""
from __future__ import annotations

import os

__all__ = ["load_tokenizer", "from_pretrained"]


def _looks_like_path(name_or_path: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else is meant as a local folder."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


def from_pretrained(loader, name_or_path: str, what: str, **kwargs):
    """`loader.from_pretrained` with clear errors: a missing folder is named, not looked up on the hub."""
    if not os.path.isdir(name_or_path) and _looks_like_path(name_or_path):
        raise FileNotFoundError(f"{what}: model folder not found: {name_or_path}")
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise FileNotFoundError(f"{what}: {name_or_path} is not a Hugging Face model folder: no config.json")
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except OSError as error:
        raise OSError(f"{what}: cannot load {name_or_path!r}: not a local model folder and not loadable from the "
                      f"hub (offline? pass a local folder): {str(error).splitlines()[0]}") from error


def load_tokenizer(name_or_path: str, **kwargs):
    """AutoTokenizer from a hub name or a local folder, with a pad token (the eos token when it lacks one, as GPT-2).

    Extra kwargs go to `from_pretrained`, e.g. add_prefix_space=True for byte-level BPE on token classification.
    """
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, name_or_path, "load_tokenizer", **kwargs)
    special = len(set(tokenizer.all_special_tokens))
    if len(tokenizer) <= special:  # a folder without the tokenizer's files: transformers builds one all the same
        raise FileNotFoundError(f"load_tokenizer: {name_or_path} gives a tokenizer that knows only its {special} "
                                "special token(s): the tokenizer's files (tokenizer.json, vocab.txt, vocab.json + "
                                "merges.txt, a sentencepiece .model, ...) are missing; save the tokenizer there too "
                                "(tokenizer.save_pretrained(folder))")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"load_tokenizer: {name_or_path} has neither a pad nor an eos token; "
                             "set tokenizer.pad_token before building the task")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
