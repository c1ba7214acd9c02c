"""Emotion-recognition metrics and the combined ASR + SER checkpoint key.

All rates are fractions in [0, 1] (not percentages), except the word error
rate that SpeechBrain's ``ErrorRateStats`` reports in percent.

- UA (unweighted accuracy): the mean per-class recall over the classes that
  occur in the targets; the usual headline number on IEMOCAP.
- WA (weighted accuracy): the overall accuracy.
- macro-F1: the mean per-class F1 over the classes that occur in the targets
  or the predictions (as scikit-learn does without ``labels``); a class that
  is predicted but never true counts with F1 = 0.

Authors
 * HarmoniFuse-SB contributors 2025
"""

import torch
from speechbrain.utils.metric_stats import MetricStats

PERCENT = 100.0
DECIMALS = 4


class EmotionStats(MetricStats):
    """Accumulates emotion predictions and reports UA, WA, macro-F1.

    Arguments
    ---------
    labels : list of str
        The class labels, in the order of the classifier outputs; it fixes
        the rows (true) and columns (predicted) of the confusion matrix.

    Example
    -------
    >>> stats = EmotionStats(["neutral", "happy", "sad", "angry"])
    >>> stats.append(["u1", "u2", "u3"], torch.tensor([0, 2, 2]), [0, 1, 2])
    >>> stats.append(["u4"], ["angry"], ["angry"])
    >>> summary = stats.summarize()
    >>> summary["WA"], summary["UA"], round(summary["macro_F1"], 4)
    (0.75, 0.75, 0.6667)
    >>> summary["confusion"][1]  # the true "happy" was predicted "sad"
    [0, 0, 1, 0]
    >>> stats.summarize("UA")
    0.75
    """

    def __init__(self, labels):
        labels = list(labels)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(
                f"EmotionStats: labels must be a non-empty list of distinct "
                f"class names, got {labels!r}."
            )
        self.labels = labels
        self._index = {label: i for i, label in enumerate(labels)}
        self.clear()

    def clear(self):
        """Removes all stored examples."""
        self.ids = []
        self.predictions = []
        self.targets = []
        self.summary = {}

    def append(self, ids, predictions, targets):
        """Stores a batch of predictions and targets.

        Arguments
        ---------
        ids : list of str
            Utterance ids.
        predictions : torch.Tensor or list
            Predicted classes: an integer tensor of shape (B,) or (B, 1),
            a list of class indices, or a list of label strings.
        targets : torch.Tensor or list
            True classes, in any of the forms of ``predictions``.
        """
        ids = list(ids)
        predictions = self._to_indices(predictions, "predictions")
        targets = self._to_indices(targets, "targets")
        if not len(ids) == len(predictions) == len(targets):
            raise ValueError(
                f"EmotionStats.append: got {len(ids)} ids, "
                f"{len(predictions)} predictions and {len(targets)} "
                "targets; they must match."
            )
        self.ids.extend(ids)
        self.predictions.extend(predictions)
        self.targets.extend(targets)

    def _to_indices(self, values, name):
        """Converts labels or class indices to a list of class indices."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().reshape(-1).tolist()
        indices = []
        for value in values:
            if isinstance(value, str):
                if value not in self._index:
                    raise ValueError(
                        f"EmotionStats: unknown label {value!r} in {name}; "
                        f"known labels: {self.labels}."
                    )
                indices.append(self._index[value])
            elif int(value) == value and 0 <= value < len(self.labels):
                indices.append(int(value))
            else:
                raise ValueError(
                    f"EmotionStats: unknown class {value!r} in {name}; "
                    f"expected an index in [0, {len(self.labels)}) or one "
                    f"of {self.labels}."
                )
        return indices

    def summarize(self, field=None):
        """Computes the statistics of all stored examples.

        Arguments
        ---------
        field : str, optional
            Return only this entry of the summary.

        Returns
        -------
        dict or value
            ``UA``, ``WA``, ``macro_F1`` (fractions in [0, 1]),
            ``confusion`` (K x K list of counts, rows true, columns
            predicted, in the order of ``labels``), ``labels``,
            ``num_examples``, ``num_correct`` and ``per_class`` (label ->
            ``support``, ``recall``, ``precision``, ``F1``; None where
            undefined). Only ``field`` if given.
        """
        if not self.ids:
            raise ValueError("EmotionStats.summarize: no examples appended.")
        num_classes = len(self.labels)
        confusion = [[0] * num_classes for _ in range(num_classes)]
        for true, pred in zip(self.targets, self.predictions):
            confusion[true][pred] += 1
        per_class, recalls, f1s = {}, [], []
        for k, label in enumerate(self.labels):
            hits = confusion[k][k]
            support = sum(confusion[k])
            predicted = sum(row[k] for row in confusion)
            recall = hits / support if support else None
            precision = hits / predicted if predicted else None
            f1 = (
                2 * hits / (support + predicted)
                if support + predicted
                else None
            )
            per_class[label] = {
                "support": support,
                "recall": recall,
                "precision": precision,
                "F1": f1,
            }
            if recall is not None:
                recalls.append(recall)
            if f1 is not None:
                f1s.append(f1)
        num_correct = sum(confusion[k][k] for k in range(num_classes))
        self.summary = {
            "UA": sum(recalls) / len(recalls),
            "WA": num_correct / len(self.ids),
            "macro_F1": sum(f1s) / len(f1s),
            "confusion": confusion,
            "labels": list(self.labels),
            "num_examples": len(self.ids),
            "num_correct": num_correct,
            "per_class": per_class,
        }
        if field is not None:
            return self.summary[field]
        return self.summary

    def write_stats(self, filestream):
        """Writes a readable report: totals, per-class scores, confusion
        matrix and one line per utterance.

        Arguments
        ---------
        filestream : file-like
            Where to write, e.g. an open text file or ``sys.stdout``.

        Example
        -------
        >>> import sys
        >>> stats = EmotionStats(["neutral", "sad"])
        >>> stats.append(["u1", "u2"], ["neutral", "neutral"], ["neutral", "sad"])
        >>> stats.write_stats(sys.stdout)
        UA: 0.5000  WA: 0.5000  macro-F1: 0.3333  (1 / 2 correct)
        <BLANKLINE>
        class    support  recall  precision  F1
        neutral  1        1.0000  0.5000     0.6667
        sad      1        0.0000  -          0.0000
        <BLANKLINE>
        confusion (rows: true, columns: predicted)
        true/pred  neutral  sad
        neutral    1        0
        sad        1        0
        <BLANKLINE>
        utterances (id, true, predicted)
        u1  neutral  neutral
        u2  sad      neutral  *
        """
        summary = self.summarize()
        lines = [
            f"UA: {summary['UA']:.{DECIMALS}f}  "
            f"WA: {summary['WA']:.{DECIMALS}f}  "
            f"macro-F1: {summary['macro_F1']:.{DECIMALS}f}  "
            f"({summary['num_correct']} / {summary['num_examples']} correct)",
            "",
        ]
        rows = [["class", "support", "recall", "precision", "F1"]]
        for label, scores in summary["per_class"].items():
            rows.append(
                [label, str(scores["support"])]
                + [
                    "-"
                    if scores[key] is None
                    else f"{scores[key]:.{DECIMALS}f}"
                    for key in ("recall", "precision", "F1")
                ]
            )
        lines += _table(rows) + [
            "",
            "confusion (rows: true, columns: predicted)",
        ]
        rows = [["true/pred"] + self.labels]
        rows += [
            [label] + [str(count) for count in counts]
            for label, counts in zip(self.labels, summary["confusion"])
        ]
        lines += _table(rows) + ["", "utterances (id, true, predicted)"]
        rows = [
            [utt_id, self.labels[true], self.labels[pred]]
            + ([] if true == pred else ["*"])
            for utt_id, true, pred in zip(
                self.ids, self.targets, self.predictions
            )
        ]
        lines += _table(rows)
        filestream.write("\n".join(lines) + "\n")


def _table(rows):
    """Left-aligns the columns of a list of string rows."""
    widths = {}
    for row in rows:
        for col, cell in enumerate(row):
            widths[col] = max(widths.get(col, 0), len(cell))
    return [
        "  ".join(
            cell.ljust(widths[col]) for col, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def combined_error(wer_percent, ua, asr_weight=0.5):
    """The checkpoint key: a weighted ASR + SER error, lower is better.

    ``asr_weight * wer_percent / 100 + (1 - asr_weight) * (1 - ua)``; both
    terms are error fractions, so the key is in [0, 1] while WER <= 100 %.

    Arguments
    ---------
    wer_percent : float
        Word error rate in percent (as ``ErrorRateStats`` reports it).
    ua : float
        Unweighted accuracy, a fraction in [0, 1].
    asr_weight : float
        Weight of the ASR term, in [0, 1].

    Returns
    -------
    float
        The combined error.

    Example
    -------
    >>> combined_error(25.0, 0.5)
    0.375
    >>> combined_error(25.0, 0.5, asr_weight=1.0)
    0.25
    """
    if not 0.0 <= asr_weight <= 1.0:
        raise ValueError(
            f"combined_error: asr_weight must be in [0, 1], got {asr_weight}."
        )
    if not 0.0 <= ua <= 1.0:
        raise ValueError(
            f"combined_error: ua must be a fraction in [0, 1], got {ua} "
            "(a percentage? divide by 100)."
        )
    if wer_percent < 0:
        raise ValueError(
            f"combined_error: wer_percent must be >= 0, got {wer_percent}."
        )
    return float(
        asr_weight * wer_percent / PERCENT + (1.0 - asr_weight) * (1.0 - ua)
    )


# Whether a validation statistic is best low ("min") or high ("max").
KEY_MODES = {
    "combined_error": "min",
    "WER": "min",
    "CER": "min",
    "loss": "min",
    "loss_asr": "min",
    "loss_ser": "min",
    "UA": "max",
    "WA": "max",
    "macro_F1": "max",
}


def checkpoint_key(keys, purpose):
    """Which validation statistic picks the checkpoint for ``purpose``.

    ``keys`` is the YAML's ``checkpoint_keys``: a task (``asr``, ``ser``)
    or ``export`` -> a statistic of ``KEY_MODES``. A purpose it does not
    name, or no ``keys`` at all, gets ``combined_error`` (one checkpoint
    for everything, as before per-task selection).

    Arguments
    ---------
    keys : dict or None
        Purpose -> statistic name.
    purpose : str
        A task name, or ``"export"``.

    Returns
    -------
    dict
        ``{"min_key": name}`` or ``{"max_key": name}``: the arguments of
        SpeechBrain's ``Checkpointer.find_checkpoint``.

    Raises
    ------
    ValueError
        The statistic is not one that validation logs.

    Example
    -------
    >>> checkpoint_key({"asr": "WER", "ser": "UA"}, "ser")
    {'max_key': 'UA'}
    >>> checkpoint_key(None, "export")
    {'min_key': 'combined_error'}
    """
    name = (keys or {}).get(purpose, "combined_error")
    if name not in KEY_MODES:
        raise ValueError(
            f"checkpoint_keys: {purpose}: {name!r} is not a validation "
            f"statistic; use one of {sorted(KEY_MODES)}."
        )
    return {f"{KEY_MODES[name]}_key": name}
