"""Tests for the emotion metrics and the combined checkpoint key."""

import io

import pytest
import torch

from harmonifuse_sb.metrics import EmotionStats, combined_error

LABELS = ["neutral", "happy", "sad", "angry"]


def example_stats():
    """Ten utterances; "angry" never occurs as a target but is predicted.

    true \\ pred   neutral happy sad angry
    neutral (4)      3      0    0    1
    happy   (3)      1      2    0    0
    sad     (3)      0      0    1    2
    angry   (0)      0      0    0    0
    """
    targets = ["neutral"] * 4 + ["happy"] * 3 + ["sad"] * 3
    predictions = [0, 0, 0, 3, 0, 1, 1, 2, 3, 3]
    stats = EmotionStats(LABELS)
    utt_ids = [f"utt{i}" for i in range(len(targets))]
    # two batches, mixing input forms: tensors (B, 1) and label strings
    stats.append(utt_ids[:5], torch.tensor(predictions[:5]), targets[:5])
    stats.append(
        utt_ids[5:],
        [LABELS[p] for p in predictions[5:]],
        torch.tensor([[LABELS.index(t)] for t in targets[5:]]),
    )
    return stats


def test_summary_numbers():
    summary = example_stats().summarize()
    assert summary["confusion"] == [
        [3, 0, 0, 1],
        [1, 2, 0, 0],
        [0, 0, 1, 2],
        [0, 0, 0, 0],
    ]
    assert summary["num_examples"] == 10
    assert summary["num_correct"] == 6
    assert summary["WA"] == pytest.approx(6 / 10)
    # recalls 3/4, 2/3, 1/3 over the three classes present in the targets
    assert summary["UA"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 3) / 3)
    # F1 = 2TP / (2TP + FP + FN): neutral 6/8, happy 4/5, sad 2/4, angry 0/3
    assert summary["macro_F1"] == pytest.approx((6 / 8 + 4 / 5 + 2 / 4 + 0) / 4)
    assert summary["per_class"]["angry"] == {
        "support": 0,
        "recall": None,
        "precision": 0.0,
        "F1": 0.0,
    }
    assert summary["per_class"]["neutral"]["precision"] == pytest.approx(3 / 4)
    assert summary["labels"] == LABELS


def test_summarize_field_and_perfect_score():
    stats = EmotionStats(LABELS)
    stats.append(["a", "b"], [2, 1], ["sad", "happy"])
    assert stats.summarize("UA") == 1.0
    assert stats.summarize("macro_F1") == 1.0
    stats.clear()
    with pytest.raises(ValueError, match="no examples"):
        stats.summarize()


def test_unknown_labels_and_mismatches():
    stats = EmotionStats(LABELS)
    with pytest.raises(ValueError, match="unknown label 'excited' in targets"):
        stats.append(["a"], ["happy"], ["excited"])
    with pytest.raises(ValueError, match="unknown class 4 in predictions"):
        stats.append(["a"], torch.tensor([4]), ["happy"])
    with pytest.raises(ValueError, match="must match"):
        stats.append(["a", "b"], [0], [0])
    with pytest.raises(ValueError, match="distinct"):
        EmotionStats(["sad", "sad"])
    assert stats.ids == []  # nothing half-appended


def test_write_stats_report():
    stream = io.StringIO()
    example_stats().write_stats(stream)
    report = stream.getvalue()
    assert (
        "UA: 0.5833  WA: 0.6000  macro-F1: 0.5125  (6 / 10 correct)" in report
    )
    matrix = [
        "true/pred  neutral  happy  sad  angry",
        "neutral    3        0      0    1",
        "happy      1        2      0    0",
        "sad        0        0      1    2",
        "angry      0        0      0    0",
    ]
    assert "\n".join(matrix) in report
    assert "utt3  neutral  angry    *" in report
    assert "utt0  neutral  neutral\n" in report


def test_combined_error():
    assert combined_error(30.0, 0.6) == pytest.approx(0.5 * 0.3 + 0.5 * 0.4)
    assert combined_error(30.0, 0.6, asr_weight=0.25) == pytest.approx(
        0.25 * 0.3 + 0.75 * 0.4
    )
    assert combined_error(0.0, 1.0) == 0.0
    # lower is better: a better UA at the same WER lowers the key
    assert combined_error(10.0, 0.7) < combined_error(10.0, 0.6)
    with pytest.raises(ValueError, match="percentage"):
        combined_error(10.0, 60.0)
    with pytest.raises(ValueError, match="asr_weight"):
        combined_error(10.0, 0.6, asr_weight=1.5)
    with pytest.raises(ValueError, match="wer_percent"):
        combined_error(-1.0, 0.6)
