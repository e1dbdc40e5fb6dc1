"""Text generation with a causal LM: source -> target (E2E-style data-to-text).

Training rows are `source + separator` (the prompt) followed by `target + eos`; the prompt's labels are -100 so
the loss covers the target only.  Evaluation decodes greedily from each distinct prompt (left-padded batches)
and scores the text against every reference of that source: E2E lists one row per reference.
"""
from __future__ import annotations

import torch

from autolora.data import DataError
from autolora.metrics import generation_metrics
from autolora.tasks.base import Task

IGNORE_INDEX = -100


class GenerationTask(Task):
    """AutoModelForCausalLM; rows carry input_ids, attention_mask, labels, prompt_length, source_text and
    target_text (the last three are for evaluation; `collate` drops them)."""

    kind = "generation"
    family = "generation"
    column_options = ("source_column", "target_column")
    auto_model_class_name = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    metric_names = ("loss", "bleu", "rougeL")
    default_metric = "bleu"
    replaces_mismatched_head = False

    @classmethod
    def score(cls, predictions, references, num_labels=None):
        return generation_metrics(predictions, references)

    def _setup_labels(self, train):
        if self.tokenizer.eos_token_id is None:
            raise DataError("generation needs a tokenizer with an eos token (it ends every target)")
        self.num_labels, self.label_names = 0, None

    def _tokenize(self, dataset, split):
        self._require(dataset, split, "source_column")
        source, target = self.columns["source_column"], self.columns["target_column"]
        has_targets = target in dataset.column_names
        if split != "test" or has_targets:
            self._require(dataset, split, "target_column")
        limit = self.config.max_length

        def tokenize(batch, indices):
            prompts = [text + self.config.generation_separator for text in batch[source]]
            # keep the end of over-long prompts (the separator) and room for one target token
            prompt_ids = [ids[-(limit - 1):] for ids in self.tokenizer(prompts)["input_ids"]]
            rows = {"input_ids": [], "attention_mask": [], "prompt_length": [], "source_text": batch[source]}
            if has_targets:
                rows.update(labels=[], target_text=batch[target])
                targets = self.tokenizer(batch[target], add_special_tokens=False)["input_ids"]
            for row, prompt in enumerate(prompt_ids):
                ids = list(prompt)
                if has_targets:
                    answer = (targets[row] + [self.tokenizer.eos_token_id])[: limit - len(prompt)]
                    rows["labels"].append([IGNORE_INDEX] * len(prompt) + answer)
                    ids += answer
                rows["input_ids"].append(ids)
                rows["attention_mask"].append([1] * len(ids))
                rows["prompt_length"].append(len(prompt))
            return rows

        return self._map(dataset, tokenize, split)

    def collate(self, features):
        """Right-pads input_ids (pad token), attention_mask (0) and labels (-100) to the longest row."""
        width = max(len(row["input_ids"]) for row in features)
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in features]),
            "attention_mask": torch.tensor([r["attention_mask"] + [0] * (width - len(r["attention_mask"]))
                                            for r in features]),
        }
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"]))
                                            for r in features])
        return batch

    def generate_texts(self, model, dataset, batch_size: int = 64, max_new_tokens: int | None = None):
        """Greedy continuations of each distinct source of `dataset`.

        Returns (sources, predictions, references), references[i] listing every target given for sources[i].
        """
        groups: dict[str, tuple[list[int], list[str]]] = {}
        targets = dataset["target_text"] if "target_text" in dataset.column_names else None
        for row, (ids, length, text) in enumerate(zip(dataset["input_ids"], dataset["prompt_length"],
                                                       dataset["source_text"])):
            references = groups.setdefault(text, (ids[:length], []))[1]
            if targets is not None:
                references.append(targets[row])
        sources = list(groups)
        predictions = []
        for start in range(0, len(sources), batch_size):
            prompts = [groups[text][0] for text in sources[start:start + batch_size]]
            predictions += self._decode(model, prompts, max_new_tokens or self.config.max_new_tokens)
        return sources, predictions, [groups[text][1] for text in sources]

    def _decode(self, model, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy decoding of left-padded prompts; the text after the prompt up to eos."""
        width, pad = max(len(p) for p in prompts), self.tokenizer.pad_token_id
        device = self._device(model)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        # never decode past the model's position limit (GPT-2's learned positions raise an IndexError there)
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if limit is not None:
            max_new_tokens = min(max_new_tokens, limit - width)
        if max_new_tokens < 1:
            return [""] * len(prompts)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=pad,
                                eos_token_id=self.tokenizer.eos_token_id)
        texts = []
        for row in output[:, width:].tolist():
            if self.tokenizer.eos_token_id in row:
                row = row[: row.index(self.tokenizer.eos_token_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    def _predictions(self, model, dataset, batch_size):
        """The greedy continuation of each row's source (decoded once per distinct source)."""
        sources, texts, _ = self.generate_texts(model, dataset, batch_size)
        by_source = dict(zip(sources, texts))
        return [by_source[text] for text in dataset["source_text"]]

    def _predict(self, model, dataset, batch_size):
        loss_sum, count = 0.0, 0
        for batch in self.batches(dataset, batch_size):
            batch = self._to(batch, model)
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # shifted targets the loss averages
            loss_sum += float(model(**batch).loss) * tokens
            count += tokens
        _, predictions, references = self.generate_texts(model, dataset, batch_size)
        return self._metrics(predictions, references, loss_sum, count)
