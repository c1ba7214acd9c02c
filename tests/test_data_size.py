"""Tests of the data-size sweep's summary (``harmonifuse_sb.data_size``)."""

import json

from harmonifuse_sb import data_size


def table(task, metric, diffs):
    """A study summary's test-set table with given differences."""
    return {
        "task": task,
        "metrics": [metric],
        "variants": {
            "naive_multitask": {metric: {"mean": 10.0, "std": None}},
            "harmonifuse": {metric: {"mean": 10.0 + diffs, "std": 1.0}},
        },
        "vs_baseline": {
            "harmonifuse": {
                metric: {"difference": diffs, "ci": [diffs - 1, diffs + 1]}
            }
        },
    }


def summaries():
    return {
        size: {
            "test_sets": {
                "test-clean": table("asr", "WER", -1.0 * i),
                "test-other": table("asr", "WER", -2.0 * i),
                "iemocap": table("ser", "UA", 0.5 * i),
            }
        }
        for i, size in enumerate((480, 240), start=1)
    }


def test_one_series_per_test_set_sizes_ascending():
    data = data_size.summarize_sizes(summaries(), {})
    series = data_size.differences(data, "WER", "harmonifuse")
    assert sorted(series) == ["test-clean", "test-other"]
    assert series["test-clean"] == [
        (240, -2.0, -3.0, -1.0),
        (480, -1.0, -2.0, 0.0),
    ]
    assert series["test-other"][0] == (240, -4.0, -5.0, -3.0)
    assert data_size.differences(data, "UA", "naive_multitask") == {}


def test_report_files(tmp_path):
    gates = {
        "harmonifuse": ({"asr": 0.9, "ser": 0.4}, {"asr": 0.05, "ser": 0.6}),
        "naive_multitask": ({}, {}),
    }
    meta = {
        "command": "python -m harmonifuse_sb.ablation x.yaml --ser-sizes 240 480",
        "variants": ["harmonifuse", "naive_multitask"],
        "seeds": [1],
        "sizes": [240, 480],
        "baseline": "naive_multitask",
    }
    markdown = data_size.write_sizes_report(
        str(tmp_path), summaries(), gates, meta
    )
    data = json.loads((tmp_path / "data_size.json").read_text())
    assert list(data["sizes"]) == ["240", "480"]
    assert data["gate_mean"] == {"harmonifuse": {"asr": 0.9, "ser": 0.4}}
    assert data["gate_closed"]["harmonifuse"]["ser"] == 0.6
    assert (tmp_path / "data_size.png").stat().st_size > 1000
    assert "| harmonifuse | ser | 0.400 | 60.0 % |" in markdown
    assert "| harmonifuse | 11.00 ± 1.00 | +1.00 | [+0.00, +2.00] |" in markdown
