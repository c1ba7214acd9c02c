"""The ablation study's statistics: corpus-level metrics, paired bootstrap.

Authors
 * HarmoniFuse-SB developers 2026
"""

import numpy as np

from harmonifuse_sb.ablation.variants import BASELINE

METRICS = {"asr": ("WER", "CER"), "ser": ("UA", "WA", "macro_F1")}
LOWER_IS_BETTER = ("WER", "CER")
PERCENT_METRICS = ("UA", "WA", "macro_F1")  # fractions, shown in percent


def error_rate(outcomes, idx):
    """Corpus-level error rate in percent of each resample.

    Arguments
    ---------
    outcomes : dict
        ``errors`` and ``tokens``: int arrays (N,), per utterance.
    idx : numpy.ndarray
        (R, N) utterance indices, one resample per row.

    Returns
    -------
    numpy.ndarray
        (R,) ``100 * sum(errors) / sum(tokens)`` over each resample.

    Example
    -------
    >>> out = {"errors": np.array([1, 0]), "tokens": np.array([4, 6])}
    >>> error_rate(out, np.array([[0, 1], [0, 0]]))
    array([10., 25.])
    """
    return (
        100.0 * outcomes["errors"][idx].sum(1) / outcomes["tokens"][idx].sum(1)
    )


def emotion_scores(outcomes, idx):
    """UA, WA and macro-F1 of each resample, as ``EmotionStats`` defines them.

    UA averages the recall over the classes present in the resample's
    targets; macro-F1 averages F1 over the classes present in its targets or
    predictions.

    Arguments
    ---------
    outcomes : dict
        ``true`` and ``pred``: class indices (N,); ``num_classes``: K.
    idx : numpy.ndarray
        (R, N) utterance indices, one resample per row.

    Returns
    -------
    dict
        ``UA``, ``WA``, ``macro_F1``: (R,) fractions.

    Example
    -------
    >>> out = {"true": np.array([0, 1, 1]), "pred": np.array([0, 1, 0]),
    ...        "num_classes": 2}
    >>> scores = emotion_scores(out, np.array([[0, 1, 2]]))
    >>> float(scores["UA"][0]), round(float(scores["WA"][0]), 4)
    (0.75, 0.6667)
    """
    k = outcomes["num_classes"]
    resamples = idx.shape[0]
    cell = outcomes["true"][idx] * k + outcomes["pred"][idx]  # (R, N)
    flat = cell + (np.arange(resamples) * k * k)[:, None]
    confusion = np.bincount(flat.ravel(), minlength=resamples * k * k)
    confusion = confusion.reshape(resamples, k, k).astype(float)
    hits = np.diagonal(confusion, axis1=1, axis2=2)  # (R, K)
    support = confusion.sum(2)  # true counts (R, K)
    predicted = confusion.sum(1)  # (R, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        both = support + predicted
        f1 = np.where(both > 0, 2 * hits / both, np.nan)
    return {
        "UA": np.nanmean(recall, axis=1),
        "WA": hits.sum(1) / idx.shape[1],
        "macro_F1": np.nanmean(f1, axis=1),
    }


def metric_values(metric, outcomes, idx):
    """(R,) values of one metric (WER, CER, UA, WA, macro_F1) per resample."""
    if metric in LOWER_IS_BETTER:
        return error_rate(outcomes[metric], idx)
    return emotion_scores(outcomes["SER"], idx)[metric]


def paired_bootstrap(
    metric,
    variant_runs,
    baseline_runs,
    replicates=1000,
    confidence=0.95,
    seed=0,
):
    """Difference of a metric between two variants, with a bootstrap CI.

    Runs are paired by seed (``variant_runs[i]`` and ``baseline_runs[i]``
    share a seed) and all hold the same test utterances in the same order.
    Each replicate resamples the utterances with replacement, once for all
    runs, recomputes the metric at corpus level for every run, and averages
    the paired differences over the seeds. The interval is the percentile
    interval of the replicates.

    Arguments
    ---------
    metric : str
        ``WER``, ``CER`` (percent), ``UA``, ``WA`` or ``macro_F1``.
    variant_runs : list of dict
        Per seed, the per-utterance outcomes: ``{"WER": {"errors",
        "tokens"}, "CER": {...}, "SER": {"true", "pred", "num_classes"}}``
        (only the metric's entry is needed).
    baseline_runs : list of dict
        The same for the baseline, in the same seed order.
    replicates : int
        Bootstrap replicates.
    confidence : float
        Coverage of the interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``difference`` (variant - baseline, on the full test set, mean over
        seeds), ``ci`` ``[low, high]``, ``seeds`` (the number of pairs),
        ``utterances`` (N).

    Example
    -------
    >>> run = {"UA": None, "SER": {"true": np.array([0, 1, 1, 0]),
    ...        "pred": np.array([0, 1, 0, 0]), "num_classes": 2}}
    >>> paired_bootstrap("WA", [run], [run])
    {'difference': 0.0, 'ci': [0.0, 0.0], 'seeds': 1, 'utterances': 4}
    """
    if len(variant_runs) != len(baseline_runs) or not variant_runs:
        raise ValueError(
            "paired_bootstrap: needs the same number (>= 1) of variant and "
            f"baseline runs, got {len(variant_runs)} and "
            f"{len(baseline_runs)}."
        )
    num = _num_utterances(metric, variant_runs[0])
    for run in list(variant_runs) + list(baseline_runs):
        if _num_utterances(metric, run) != num:
            raise ValueError(
                f"paired_bootstrap: runs hold different numbers of {metric} "
                "test utterances; pairing needs the same test set."
            )
    rng = np.random.default_rng(seed)
    full = np.arange(num)[None, :]  # (1, N)
    idx = rng.integers(0, num, size=(replicates, num))  # (R, N)

    def mean_difference(indices):
        diffs = [
            metric_values(metric, v, indices)
            - metric_values(metric, b, indices)
            for v, b in zip(variant_runs, baseline_runs)
        ]
        return np.mean(diffs, axis=0)

    point = float(mean_difference(full)[0])
    samples = mean_difference(idx)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return {
        "difference": point,
        "ci": [float(low), float(high)],
        "seeds": len(variant_runs),
        "utterances": int(num),
    }


def _num_utterances(metric, run):
    key = metric if metric in LOWER_IS_BETTER else "SER"
    first = "errors" if key != "SER" else "true"
    return len(run[key][first])


def _aligned(entry, order, where):
    """The outcomes of a test set reordered to the utterance ids ``order``."""
    if sorted(entry["ids"]) != sorted(order):
        raise ValueError(
            f"{where} was tested on other utterances than the baseline's "
            "run; paired differences need the same test set (same "
            "manifests, and --debug for all runs or none)."
        )
    position = {utt: i for i, utt in enumerate(entry["ids"])}
    perm = np.array([position[utt] for utt in order])
    out = dict(entry)
    for key in ("WER", "CER"):
        if key in entry:
            out[key] = {k: v[perm] for k, v in entry[key].items()}
    if "SER" in entry:
        out["SER"] = dict(
            entry["SER"],
            true=entry["SER"]["true"][perm],
            pred=entry["SER"]["pred"][perm],
        )
    return out


def summarize(runs, baseline=BASELINE, replicates=1000, confidence=0.95):
    """The study's statistics: mean, std and paired CIs per test set.

    Arguments
    ---------
    runs : dict
        variant -> seed -> :func:`read_run` output (finished runs only).
    baseline : str
        The variant every other one is compared with.
    replicates : int
        Bootstrap replicates.
    confidence : float
        Coverage of the intervals.

    Returns
    -------
    dict
        ``test_sets``: name -> ``task``, ``metrics``, ``variants`` (variant
        -> ``seeds`` and per metric ``mean``, ``std`` (sample standard
        deviation, None with one seed), ``values``) and ``vs_baseline``
        (variant -> metric -> :func:`paired_bootstrap` output).
    """
    test_sets = {}
    for variant, by_seed in runs.items():
        for seed, run in sorted(by_seed.items()):
            for name, entry in run["test_sets"].items():
                task = entry["task"]
                table = test_sets.setdefault(
                    name,
                    {
                        "task": task,
                        "metrics": list(METRICS[task]),
                        "variants": {},
                        "vs_baseline": {},
                    },
                )
                row = table["variants"].setdefault(
                    variant, {"seeds": [], "values": {}}
                )
                row["seeds"].append(seed)
                for metric in METRICS[task]:
                    value = entry["stats"][metric]
                    if metric in PERCENT_METRICS:
                        value *= 100
                    row["values"].setdefault(metric, []).append(value)
    for table in test_sets.values():
        for row in table["variants"].values():
            for metric, values in row.pop("values").items():
                row[metric] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1))
                    if len(values) > 1
                    else None,
                    "values": values,
                }
    for name, table in test_sets.items():
        if baseline not in table["variants"]:
            continue
        for variant, row in table["variants"].items():
            if variant == baseline:
                continue
            seeds = [s for s in row["seeds"] if s in runs[baseline]]
            if not seeds:
                continue
            order = runs[baseline][seeds[0]]["test_sets"][name]["ids"]
            pairs = tuple(
                [
                    _aligned(
                        runs[v][s]["test_sets"][name],
                        order,
                        f"{v} seed {s}, test set {name}",
                    )
                    for s in seeds
                ]
                for v in (variant, baseline)
            )
            table["vs_baseline"][variant] = {}
            for metric in table["metrics"]:
                result = paired_bootstrap(
                    metric, *pairs, replicates=replicates, confidence=confidence
                )
                if metric in PERCENT_METRICS:
                    result["difference"] *= 100
                    result["ci"] = [100 * x for x in result["ci"]]
                result["seed_list"] = seeds
                table["vs_baseline"][variant][metric] = result
    return {"test_sets": test_sets}
