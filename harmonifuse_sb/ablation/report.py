"""The ablation study's report: finished runs read, summarised, written.

Authors
 * HarmoniFuse-SB developers 2026
"""

import json
import os

import numpy as np

from harmonifuse_sb.ablation.runner import RUN_RECORD, is_finished, run_folder
from harmonifuse_sb.ablation.statistics import LOWER_IS_BETTER, summarize
from harmonifuse_sb.ablation.variants import BASELINE, VARIANTS
from harmonifuse_sb.results import (
    TEST_RESULTS_FILE,
    read_emotion_report,
    read_error_rate_report,
    read_test_results,
)

REPORT_MD = "ablation.md"
REPORT_JSON = "ablation.json"


def read_run(folder):
    """Reads one finished run: its statistics and per-utterance outcomes.

    Arguments
    ---------
    folder : str
        The run's output folder.

    Returns
    -------
    dict
        ``tasks``; ``test_sets``: name -> ``task``, ``manifest``,
        ``data_root``, ``stats`` and ``ids`` plus ``WER`` and ``CER``
        (``errors``, ``tokens``) or ``SER`` (``true``, ``pred``,
        ``num_classes``, ``labels``) outcomes; ``wall_time_s`` if the study
        ran it.
    """
    results = read_test_results(os.path.join(folder, TEST_RESULTS_FILE))
    for name, entry in results["test_sets"].items():
        if entry["task"] == "asr":
            for metric in ("WER", "CER"):
                report = os.path.join(folder, f"{metric.lower()}_{name}.txt")
                utts = read_error_rate_report(report)
                entry["ids"] = list(utts)
                entry[metric] = {
                    "errors": np.array([e for e, _ in utts.values()]),
                    "tokens": np.array([t for _, t in utts.values()]),
                }
        else:
            report = os.path.join(folder, f"ser_{name}.txt")
            labels, utts = read_emotion_report(report)
            index = {label: i for i, label in enumerate(labels)}
            entry["ids"] = list(utts)
            entry["SER"] = {
                "true": np.array([index[t] for t, _ in utts.values()]),
                "pred": np.array([index[p] for _, p in utts.values()]),
                "num_classes": len(labels),
                "labels": labels,
            }
    record = os.path.join(folder, RUN_RECORD)
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            results["wall_time_s"] = json.load(f)["wall_time_s"]
    return results


VALIDATION_KEYS = (
    "WER",
    "CER",
    "UA",
    "WA",
    "macro_F1",
    "gate_mean_asr",
    "gate_mean_ser",
    "gate_closed_asr",
    "gate_closed_ser",
)


def read_final_validation(folder):
    r"""The last epoch's validation statistics of a run (its train_log.txt).

    Arguments
    ---------
    folder : str
        A run's output folder.

    Returns
    -------
    dict
        Statistic -> value, for the keys of ``VALIDATION_KEYS`` that the
        last ``valid`` entry has (empty without a log).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "train_log.txt"), "w") as w:
    ...     _ = w.write("epoch: 1 - train loss: 2.0 - valid loss: 1.5, "
    ...                 "valid WER: 30.00, valid UA: 7.50e-01\n")
    >>> read_final_validation(folder)
    {'WER': 30.0, 'UA': 0.75}
    """
    path = os.path.join(folder, "train_log.txt")
    if not os.path.isfile(path):
        return {}
    last = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if " - valid " in line:
                last = line
    if last is None:
        return {}
    stats = {}
    for part in last.split(" - "):
        for item in part.split(", "):
            key, _, value = item.partition(": ")
            key = key.strip()
            if key.startswith("valid ") and key[6:] in VALIDATION_KEYS:
                stats[key[6:]] = float(value.strip())
    return stats


def _fmt(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(metric, result):
    """Reads a paired interval: better, worse or no clear difference."""
    low, high = result["ci"]
    if low <= 0 <= high:
        return "no clear difference"
    better = high < 0 if metric in LOWER_IS_BETTER else low > 0
    return "better" if better else "worse"


def format_report(summary, meta):
    """The study's Markdown report.

    Arguments
    ---------
    summary : dict
        :func:`summarize` output, with ``layer_weights`` optionally added
        (variant -> ``l1`` and per task weights).
    meta : dict
        ``hparams_file``, ``seeds``, ``variants``, ``baseline``,
        ``replicates``, ``confidence``, ``runs_wall_time_s``, ``debug``,
        ``overrides``.

    Returns
    -------
    str
    """
    baseline = meta["baseline"]
    level = round(100 * meta["confidence"])
    lines = [
        "# Ablation study",
        "",
        f"Training YAML: `{meta['hparams_file']}`"
        + (
            f" with `{' '.join(meta['overrides'])}`"
            if meta["overrides"]
            else ""
        )
        + f"; seeds {', '.join(map(str, meta['seeds']))}"
        + (
            " (**--debug: a few batches per run, numbers mean nothing**)"
            if meta["debug"]
            else ""
        )
        + ".",
        "",
        "Variants:",
        "",
    ]
    lines += [f"- `{v}`: {VARIANTS[v][0]}" for v in meta["variants"]]
    lines += [
        "",
        "WER and CER in percent (lower is better); UA, WA and macro-F1 in "
        "percent (higher is better). Mean ± sample standard deviation over "
        "the seeds (n: number of seeds).",
    ]
    for name, table in summary["test_sets"].items():
        metrics = table["metrics"]
        lines += ["", f"## {name} ({table['task'].upper()})", ""]
        lines.append("| variant | n | " + " | ".join(metrics) + " |")
        lines.append("|---|---|" + "---|" * len(metrics))
        for variant in meta["variants"]:
            row = table["variants"].get(variant)
            if row is None:
                continue
            cells = [
                f"{_fmt(row[m]['mean'])} ± {_fmt(row[m]['std'])}"
                for m in metrics
            ]
            lines.append(
                f"| {variant} | {len(row['seeds'])} | "
                + " | ".join(cells)
                + " |"
            )
        if not table["vs_baseline"]:
            continue
        lines += [
            "",
            f"Difference to `{baseline}` (variant − baseline, mean over "
            f"seeds paired by seed) with its {level} % paired bootstrap "
            f"interval ({meta['replicates']} resamples of the test "
            "utterances):",
            "",
            "| variant | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for variant in meta["variants"]:
            diffs = table["vs_baseline"].get(variant)
            if diffs is None:
                continue
            cells = [
                f"{diffs[m]['difference']:+.2f} "
                f"[{diffs[m]['ci'][0]:+.2f}, {diffs[m]['ci'][1]:+.2f}] "
                f"{verdict(m, diffs[m])}"
                for m in metrics
            ]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "## Does HarmoniFuse beat the naive multitask model?", ""]
    lines += headline(summary, baseline)
    weights = summary.get("layer_weights")
    if weights:
        lines += [
            "",
            "## Layer weights",
            "",
            "L1 distance between the ASR and SER layer-weight vectors "
            "(mean over seeds; 0 when the fusion does not depend on the "
            "prompt):",
            "",
            "| variant | L1(ASR, SER) |",
            "|---|---|",
        ]
        for variant in meta["variants"]:
            if variant in weights and weights[variant].get("l1") is not None:
                lines.append(f"| {variant} | {weights[variant]['l1']:.3f} |")
    validation = summary.get("validation")
    if validation:
        keys = sorted({k for row in validation.values() for k in row})
        lines += [
            "",
            "## Validation (last epoch)",
            "",
            "What to choose a variant on (never the test sets): the last "
            "epoch's validation statistics from each run's train_log.txt, "
            "mean over seeds (UA, WA, macro-F1 and gate shares as "
            "fractions).",
            "",
            "| variant | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for variant, row in validation.items():
            cells = [f"{row[k]:.4g}" if k in row else "" for k in keys]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if meta.get("pictures"):
        lines += ["", "## Pictures", ""]
        lines += [f"![{p}]({p})" for p in meta["pictures"]]
    lines += [
        "",
        "Sum of the wall times of the runs (each from its start to its "
        "end; runs made with --jobs overlap, so the study took less): "
        f"{meta['runs_wall_time_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def headline(summary, baseline, variant="harmonifuse"):
    """One line per test set and metric: HarmoniFuse against the baseline."""
    lines = []
    for name, table in summary["test_sets"].items():
        diffs = table["vs_baseline"].get(variant)
        if diffs is None:
            continue
        for metric in table["metrics"]:
            result = diffs[metric]
            lines.append(
                f"- {name} {metric}: `{variant}` is "
                f"**{verdict(metric, result)}** than `{baseline}` "
                f"({result['difference']:+.2f} points, interval "
                f"[{result['ci'][0]:+.2f}, {result['ci'][1]:+.2f}])."
                if verdict(metric, result) != "no clear difference"
                else f"- {name} {metric}: no clear difference between "
                f"`{variant}` and `{baseline}` ({result['difference']:+.2f} "
                f"points, interval [{result['ci'][0]:+.2f}, "
                f"{result['ci'][1]:+.2f}] holds 0)."
            )
    if not lines:
        lines.append(
            f"- Not measured: the study needs `{variant}` and `{baseline}` "
            "runs with a common seed."
        )
    return lines


def write_report(args, extra):
    """Reads every finished run and writes the report and pictures."""
    runs = {}
    missing = []
    for variant in args.variants:
        for seed in args.seeds:
            folder = run_folder(args.output_folder, variant, seed)
            if is_finished(folder):
                runs.setdefault(variant, {})[seed] = read_run(folder)
            else:
                missing.append(folder)
    if missing:
        raise RuntimeError(
            f"{len(missing)} runs have not finished (e.g. {missing[0]}); "
            "run them (or the study) first."
        )
    summary = summarize(
        runs, BASELINE, replicates=args.bootstrap, confidence=0.95
    )
    summary["validation"] = {}
    for variant in args.variants:
        per_seed = [
            read_final_validation(run_folder(args.output_folder, variant, s))
            for s in args.seeds
        ]
        keys = {k for stats in per_seed for k in stats}
        summary["validation"][variant] = {
            k: float(np.mean([s[k] for s in per_seed if k in s]))
            for k in sorted(keys)
        }
    pictures = []
    if not args.no_plots:
        from harmonifuse_sb import plot

        summary["layer_weights"], pictures = plot.study_pictures(
            runs, args.output_folder, args.variants
        )
    wall = sum(
        run.get("wall_time_s", 0.0)
        for by_seed in runs.values()
        for run in by_seed.values()
    )
    meta = {
        "hparams_file": args.hparams_file,
        "seeds": list(args.seeds),
        "variants": list(args.variants),
        "baseline": BASELINE,
        "replicates": args.bootstrap,
        "confidence": 0.95,
        "runs_wall_time_s": wall,
        "debug": args.debug,
        "overrides": list(extra),
        "pictures": pictures,
    }
    markdown = format_report(summary, meta)
    with open(
        os.path.join(args.output_folder, REPORT_MD), "w", encoding="utf-8"
    ) as w:
        w.write(markdown)
    with open(
        os.path.join(args.output_folder, REPORT_JSON), "w", encoding="utf-8"
    ) as w:
        json.dump(dict(meta, **summary), w, indent=2)
    return markdown
