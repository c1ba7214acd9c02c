r"""The SER data-size sweep: the ablation study at several SER training sizes.

    python -m harmonifuse_sb.ablation hparams/ablation_synthetic.yaml \\
        --ser-sizes 240 480 960 \\
        --variants harmonifuse naive_multitask naive_interleaved ser_only

runs the study once per size in ``<output_folder>/ser_<size>/`` (each run
gets ``--train_subset={ser: <size>}``: a nested subset of the SER training
set, balanced over emotions and speakers, see ``train.train_subset_ids``;
the ASR data stays the same), writes each size's ordinary report there,
and then ``data_size.md``, ``data_size.json`` and ``data_size.png`` in
``<output_folder>``: per size and variant the test metrics and the paired
differences to ``naive_multitask``, and the gate's mean value and share of
closed components (G < 0.5) per variant and task.

A single-task SER run (``ser_only``) counts its epochs in passes over the
SER set, so the sweep gives it ``max(sizes) / size`` times the epochs that
the YAML gives it (``ablation_overrides``) at the largest size: every size
then trains on the same number of SER batches as at the largest one.

Authors
 * HarmoniFuse-SB developers 2026
"""

import json
import os

import numpy as np

from harmonifuse_sb.results import TEST_RESULTS_FILE, read_test_results

REPORT_MD = "data_size.md"
REPORT_JSON = "data_size.json"
PICTURE = "data_size.png"


def size_folder(output_folder, size):
    """The study folder of one SER training size."""
    return os.path.join(output_folder, f"ser_{size}")


def ser_only_epochs(epochs, size, sizes):
    """Epochs of a ``ser_only`` run at ``size``: as many SER batches as
    ``epochs`` passes at the largest size.

    Arguments
    ---------
    epochs : int
        The YAML's epochs for ``ser_only`` (meant for the largest size).
    size : int
        This run's SER training size.
    sizes : list of int
        Every size of the sweep.

    Returns
    -------
    int

    Example
    -------
    >>> [ser_only_epochs(8, s, [240, 480, 960]) for s in (240, 480, 960)]
    [32, 16, 8]
    """
    return max(1, round(epochs * max(sizes) / size))


def gate_statistics(folders):
    """Mean gate value and share of closed components per task, averaged
    over runs (the test sets' ``gate_mean_<task>`` / ``gate_closed_<task>``
    statistics, written by ``HarmoniFuseBrain``).

    Arguments
    ---------
    folders : list of str
        Finished runs' folders.

    Returns
    -------
    tuple of dict
        ``(gate_mean, gate_closed)``: task -> value; empty for an ungated
        variant.

    Example
    -------
    >>> gate_statistics([])
    ({}, {})
    """
    values = {"mean": {}, "closed": {}}
    for folder in folders:
        results = read_test_results(os.path.join(folder, TEST_RESULTS_FILE))
        for entry in results["test_sets"].values():
            for key, value in entry["stats"].items():
                for kind in values:
                    prefix = f"gate_{kind}_"
                    if key.startswith(prefix):
                        task = key[len(prefix) :]
                        values[kind].setdefault(task, []).append(value)
    return tuple(
        {task: float(np.mean(v)) for task, v in sorted(values[k].items())}
        for k in ("mean", "closed")
    )


def summarize_sizes(summaries, gates):
    """The sweep's machine-readable summary (``data_size.json``).

    Arguments
    ---------
    summaries : dict
        size -> the study summary of that size
        (``harmonifuse_sb.ablation.summarize``).
    gates : dict
        variant -> ``(gate_mean, gate_closed)`` (:func:`gate_statistics`
        over every size and seed).

    Returns
    -------
    dict
        ``{"sizes": {"<size>": {"test_sets": ...}}, "gate_mean":
        {variant: {task: x}}, "gate_closed": {variant: {task: x}}}``.
    """
    return {
        "sizes": {
            str(size): {"test_sets": summary["test_sets"]}
            for size, summary in sorted(summaries.items())
        },
        "gate_mean": {v: g[0] for v, g in gates.items() if g[0]},
        "gate_closed": {v: g[1] for v, g in gates.items() if g[1]},
    }


def differences(data, metric, variant):
    """The paired differences to the baseline of one metric, by test set
    and size.

    Arguments
    ---------
    data : dict
        :func:`summarize_sizes` output.
    metric : str
        ``WER``, ``UA``, ...
    variant : str
        The variant compared with the baseline.

    Returns
    -------
    dict
        test set -> list of ``(size, difference, ci_low, ci_high)``, sizes
        ascending (a YAML with two ASR test sets, e.g. test-clean and
        test-other, gives two series).
    """
    series = {}
    for size, entry in sorted(data["sizes"].items(), key=lambda x: int(x[0])):
        for name, table in entry["test_sets"].items():
            result = table["vs_baseline"].get(variant, {}).get(metric)
            if result is not None:
                series.setdefault(name, []).append(
                    (int(size), result["difference"], *result["ci"])
                )
    return series


def format_sizes_report(data, meta):
    """The human report of the sweep (``data_size.md``).

    Arguments
    ---------
    data : dict
        :func:`summarize_sizes` output.
    meta : dict
        ``command``, ``variants``, ``seeds``, ``baseline``, ``sizes``.

    Returns
    -------
    str
        Markdown.
    """
    baseline = meta["baseline"]
    lines = [
        "# SER data-size sweep",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Variants {', '.join(meta['variants'])}; seeds "
        f"{', '.join(map(str, meta['seeds']))}; SER training sizes "
        f"{', '.join(map(str, meta['sizes']))} utterances (nested subsets, "
        "the ASR data fixed). Mean ± standard deviation over seeds; "
        f"differences to `{baseline}` with a paired bootstrap 95 % "
        "interval (test utterances resampled).",
        "",
    ]
    for size, entry in sorted(data["sizes"].items(), key=lambda x: int(x[0])):
        lines += [f"## {size} SER training utterances", ""]
        for name, table in entry["test_sets"].items():
            for metric in table["metrics"][:1]:
                lines += [
                    f"{name}, {metric}:",
                    "",
                    f"| variant | {metric} | vs `{baseline}` | interval |",
                    "| --- | --- | --- | --- |",
                ]
                for variant, row in table["variants"].items():
                    stat = row[metric]
                    std = stat["std"]
                    value = f"{stat['mean']:.2f}" + (
                        f" ± {std:.2f}" if std is not None else ""
                    )
                    diff = table["vs_baseline"].get(variant, {}).get(metric)
                    if diff is None:
                        lines.append(f"| {variant} | {value} | | |")
                        continue
                    lines.append(
                        f"| {variant} | {value} | "
                        f"{diff['difference']:+.2f} | "
                        f"[{diff['ci'][0]:+.2f}, {diff['ci'][1]:+.2f}] |"
                    )
                lines.append("")
    lines += [
        "## The gate",
        "",
        "Mean gate value and share of closed components (G < 0.5) on the "
        "test sets, averaged over sizes and seeds:",
        "",
        "| variant | task | mean G | share G < 0.5 |",
        "| --- | --- | --- | --- |",
    ]
    for variant, means in data["gate_mean"].items():
        for task, mean in means.items():
            closed = data["gate_closed"].get(variant, {}).get(task, 0.0)
            lines.append(
                f"| {variant} | {task} | {mean:.3f} | {100 * closed:.1f} % |"
            )
    if meta.get("picture"):
        lines += ["", f"![differences by size]({meta['picture']})"]
    return "\n".join(lines) + "\n"


def plot_sizes(data, variants, baseline, path):
    """DWER and dUA to the baseline against the SER training size.

    Arguments
    ---------
    data : dict
        :func:`summarize_sizes` output.
    variants : list of str
        Variants to draw (the baseline and single-task runs are skipped
        where they have no difference).
    baseline : str
        The baseline's name (for the labels).
    path : str
        The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("WER", "UA")):
        for variant in variants:
            series = differences(data, metric, variant)
            for name, rows in series.items():
                sizes, diff, low, high = (np.array(c) for c in zip(*rows))
                label = variant if len(series) == 1 else f"{variant}, {name}"
                ax.errorbar(
                    sizes,
                    diff,
                    yerr=[diff - low, high - diff],
                    marker="o",
                    capsize=3,
                    label=label,
                )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("SER training utterances")
        better = "lower is better" if metric == "WER" else "higher is better"
        ax.set_ylabel(f"{metric} − {metric}({baseline}), points ({better})")
        ax.set_title(f"{metric} against {baseline}, 95 % interval")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_sizes_report(output_folder, summaries, gates, meta, plots=True):
    """Writes ``data_size.json``, ``data_size.md`` and the picture.

    Arguments
    ---------
    output_folder : str
        The sweep's folder.
    summaries : dict
        size -> study summary.
    gates : dict
        variant -> :func:`gate_statistics` output.
    meta : dict
        See :func:`format_sizes_report`.
    plots : bool
        Whether to draw ``data_size.png``.

    Returns
    -------
    str
        The markdown report.
    """
    data = summarize_sizes(summaries, gates)
    if plots:
        plot_sizes(
            data,
            [v for v in meta["variants"] if v != meta["baseline"]],
            meta["baseline"],
            os.path.join(output_folder, PICTURE),
        )
        meta = dict(meta, picture=PICTURE)
    with open(
        os.path.join(output_folder, REPORT_JSON), "w", encoding="utf-8"
    ) as w:
        json.dump(dict(data, meta=meta), w, indent=2)
    markdown = format_sizes_report(data, meta)
    with open(
        os.path.join(output_folder, REPORT_MD), "w", encoding="utf-8"
    ) as w:
        w.write(markdown)
    return markdown
