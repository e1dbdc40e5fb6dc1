"""Task metrics from the ecosystem's packages (scikit-learn, scipy, seqeval, sacrebleu, rouge-score), no downloads.

Each task class (`autolora.tasks`) says which of these functions scores it (`Task.score`); `compute_metrics(kind,
...)` in `autolora.tasks` picks it by kind.

Scales follow each package: accuracy, F1, Matthews, Pearson/Spearman, seqeval and ROUGE-L lie in [0, 1]
(ROUGE-L up to 1), BLEU in [0, 100] as sacrebleu reports it.

- classification: accuracy, f1 (binary F1 of class 1 for two classes, macro F1 otherwise), matthews_correlation;
- regression: pearson, spearmanr, mse;
- token_classification: seqeval entity-level precision, recall, f1 and token accuracy (IOB tags);
- generation: bleu (sacrebleu corpus BLEU, several references per prediction allowed) and rougeL (mean
  ROUGE-L F-measure, best over the references of each prediction, stemmed).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

def classification_metrics(predictions: Sequence[int], references: Sequence[int],
                           num_labels: int | None = None) -> dict[str, float]:
    """accuracy, f1 (binary when num_labels == 2, else macro) and matthews_correlation."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, references = np.asarray(predictions), np.asarray(references)
    if num_labels is None:
        num_labels = len(np.union1d(predictions, references))
    average = "binary" if num_labels == 2 else "macro"
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "f1": float(f1_score(references, predictions, average=average, zero_division=0)),
        "matthews_correlation": float(matthews_corrcoef(references, predictions)),
    }


def regression_metrics(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """pearson, spearmanr (0 when either side is constant, where they are undefined) and mse."""
    from scipy.stats import pearsonr, spearmanr

    predictions = np.asarray(predictions, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    constant = np.ptp(predictions) == 0 or np.ptp(references) == 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(predictions, references)[0]),
        "spearmanr": 0.0 if constant else float(spearmanr(predictions, references)[0]),
        "mse": float(np.mean((predictions - references) ** 2)),
    }


def token_classification_metrics(predictions: Sequence[Sequence[str]],
                                 references: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval entity-level precision/recall/f1 and token accuracy over lists of tag strings."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    predictions, references = [list(p) for p in predictions], [list(r) for r in references]
    return {
        "precision": float(precision_score(references, predictions, zero_division=0)),
        "recall": float(recall_score(references, predictions, zero_division=0)),
        "f1": float(f1_score(references, predictions, zero_division=0)),
        "accuracy": float(accuracy_score(references, predictions)),
    }


def generation_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100) and mean best-reference ROUGE-L F-measure; references[i] lists the
    references of predictions[i] (any number >= 1)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    references = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(references) != len(predictions) or any(not refs for refs in references):
        raise ValueError("generation_metrics: need one non-empty list of references per prediction, got "
                         f"{len(predictions)} predictions and {len(references)} reference lists")
    width = max(len(refs) for refs in references)
    # sacrebleu wants one stream per reference position; None marks a missing reference
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    bleu = sacrebleu.corpus_bleu(list(predictions), streams).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score_multi(refs, prediction)["rougeL"].fmeasure
             for prediction, refs in zip(predictions, references)]
    return {"bleu": float(bleu), "rougeL": float(np.mean(rouge)) if rouge else 0.0}
