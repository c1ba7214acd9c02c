"""All five IEMOCAP folds in one command: UA and WA per fold, mean and std.

    python -m harmonifuse_sb.folds hparams/harmonifuse.yaml
        --data_folder=... --iemocap_folder=...
        [--folds 1 2 3 4 5] [--seed 1986] [--output_folder DIR] [--debug]
        [--print-commands] [--jobs N | --devices cuda:0 ... cuda:4]

SER on IEMOCAP is compared across leave-one-session-out folds: each session
in turn is the test set and the model trains on the other four (as SUPERB
and EmoBox report it, with the mean and spread over the five folds). Each
fold is an ordinary ``train.py`` run with ``--iemocap_fold=k`` in
``<output_folder>/fold<k>/<seed>/`` (the seed given, else the YAML's, as
``train.py``'s own ``fold<k>/<seed>``); a run that wrote
``test_results.json`` is finished and never run again, so a killed study
resumes. Another ``--seed`` runs in another folder; a kept run that was
made with other arguments (its ``study_run.json``) is named with a
warning. The runs are
started by the ablation study's machinery (``harmonifuse_sb.ablation``):
``--devices`` runs one fold per GPU at a time, ``--print-commands`` prints
one command per unfinished fold for a cluster scheduler (with ``--devices``,
each with its ``--device``, in turn), and once every fold is finished the
same command writes the report (what is not a command goes to stderr, so
the output can go to a file of jobs).

The report, ``folds.md`` and ``folds.json`` in the output folder, gives per
fold and test set UA, WA and macro-F1 (SER) or WER and CER (ASR: every fold
also trains and tests ASR), then their mean and sample standard deviation
(n - 1) over the folds.

Authors
 * HarmoniFuse-SB developers 2026
"""

import contextlib
import json
import os
import shlex
import sys

import numpy as np
import yaml

from harmonifuse_sb.ablation import (
    METRICS,
    PERCENT_METRICS,
    _run_all,
    add_study_arguments,
    check_study_arguments,
    is_finished,
    job_slots,
    override_args,
    study_parser,
    warn_if_other_command,
)
from harmonifuse_sb.results import TEST_RESULTS_FILE, read_test_results

FOLDS = (1, 2, 3, 4, 5)
REPORT_MD = "folds.md"
REPORT_JSON = "folds.json"


UNKNOWN_SEED = "yaml_seed"  # the folder name when the YAML's seed is a !ref


def yaml_seed(hparams_file):
    """The training YAML's own ``seed``: a plain top-level integer.

    Arguments
    ---------
    hparams_file : str
        The training YAML.

    Returns
    -------
    int or None
        None when the YAML has no plain integer ``seed`` (e.g. a ``!ref``).
    """
    with open(hparams_file, encoding="utf-8") as f:
        root = yaml.compose(f)
    node = {key.value: value for key, value in root.value}.get("seed")
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        value = yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError:
        return None
    return value if isinstance(value, int) else None


def fold_folder(output_folder, fold, seed):
    """The folder of one fold's run: ``<output_folder>/fold<k>/<seed>``.

    Arguments
    ---------
    output_folder : str
        The study's folder.
    fold : int
        The IEMOCAP session tested.
    seed : int or None
        The training seed (None: unknown, the YAML's).

    Returns
    -------
    str

    Example
    -------
    >>> fold_folder("out", 2, 7)
    'out/fold2/7'
    """
    name = UNKNOWN_SEED if seed is None else str(seed)
    return os.path.join(output_folder, f"fold{fold}", name)


def fold_command(
    hparams_file, fold, seed, folder, extra=(), debug=False, script=None
):
    """The ``train.py`` command of one fold.

    Arguments
    ---------
    hparams_file : str
        The training YAML (it must have ``iemocap_fold``).
    fold : int
        The IEMOCAP session tested (1..5).
    seed : int or None
        The training seed (None: the YAML's).
    folder : str
        The run's output folder.
    extra : list of str
        More ``--key=value`` arguments.
    debug : bool
        Pass SpeechBrain's ``--debug``.
    script : str, optional
        ``train.py``; default the one in the current folder.

    Returns
    -------
    list of str

    Example
    -------
    >>> fold_command("h.yaml", 2, 7, "out/fold2/7")[1:]
    ['train.py', 'h.yaml', '--iemocap_fold=2', '--seed=7', '--output_folder=out/fold2/7']
    """
    overrides = {"iemocap_fold": fold}
    if seed is not None:
        overrides["seed"] = seed
    overrides["output_folder"] = folder
    command = [sys.executable, script or "train.py", hparams_file]
    command += override_args(overrides) + list(extra)
    return command + (["--debug"] if debug else [])


def summarize_folds(results):
    """Per-fold metrics and their mean and std over the folds.

    Arguments
    ---------
    results : dict
        fold -> the ``test_results.json`` content of its run.

    Returns
    -------
    dict
        test set -> ``task``, ``folds`` (fold -> metric -> value) and per
        metric ``mean`` and ``std`` (sample, n - 1; 0 for one fold). SER
        metrics in percent.

    Example
    -------
    >>> run = lambda ua: {"test_sets": {"iemocap_test": {
    ...     "task": "ser", "stats": {"UA": ua, "WA": ua, "macro_F1": ua}}}}
    >>> s = summarize_folds({1: run(0.6), 2: run(0.7)})["iemocap_test"]
    >>> round(s["UA"]["mean"], 1), round(s["UA"]["std"], 2)
    (65.0, 7.07)
    """
    summary = {}
    for fold, content in sorted(results.items()):
        for name, entry in content["test_sets"].items():
            task = entry["task"]
            row = summary.setdefault(name, {"task": task, "folds": {}})
            scale = {m: 100.0 for m in PERCENT_METRICS}
            row["folds"][fold] = {
                m: entry["stats"][m] * scale.get(m, 1.0)
                for m in METRICS[task]
                if m in entry["stats"]
            }
            row["folds"][fold]["checkpoint"] = entry.get("checkpoint")
    for row in summary.values():
        for metric in METRICS[row["task"]]:
            values = [f[metric] for f in row["folds"].values() if metric in f]
            if not values:
                continue
            row[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1))
                if len(values) > 1
                else 0.0,
            }
    return summary


def format_report(summary, folds, seed=None):
    """The Markdown report: one table per test set, folds then mean ± std."""
    lines = [
        "# IEMOCAP leave-one-session-out folds",
        "",
        f"Folds (test session): {', '.join(map(str, folds))}; training "
        f"seed {UNKNOWN_SEED if seed is None else seed}. Mean and "
        "sample standard deviation over the folds; SER metrics in %.",
    ]
    for name, row in summary.items():
        metrics = [m for m in METRICS[row["task"]] if m in row]
        lines += [
            "",
            f"## {name} ({row['task'].upper()})",
            "",
            "| fold | " + " | ".join(metrics) + " | checkpoint |",
            "| --- | " + " | ".join("---" for _ in metrics) + " | --- |",
        ]
        for fold, values in row["folds"].items():
            ckpt = values.get("checkpoint") or {}
            where = (
                f"epoch {ckpt['epoch']} ({ckpt['mode']} {ckpt['key']})"
                if ckpt
                else "weights in memory"
            )
            lines.append(
                f"| {fold} | "
                + " | ".join(f"{values[m]:.2f}" for m in metrics)
                + f" | {where} |"
            )
        lines.append(
            "| mean ± std | "
            + " | ".join(
                f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}" for m in metrics
            )
            + " | |"
        )
    return "\n".join(lines) + "\n"


def write_report(output_folder, folds, seed):
    """Reads every fold's results; writes and returns the Markdown report.

    Arguments
    ---------
    output_folder : str
        The study's folder (the report goes there).
    folds : list of int
        The folds to report.
    seed : int or None
        The training seed of the runs (:func:`fold_folder`).

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError
        A fold has not finished (named).
    """
    results = {}
    for fold in folds:
        path = os.path.join(
            fold_folder(output_folder, fold, seed), TEST_RESULTS_FILE
        )
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Fold {fold} has no {path}: it has not finished. Run the "
                "command again (finished folds are kept)."
            )
        results[fold] = read_test_results(path)
    summary = summarize_folds(results)
    with open(
        os.path.join(output_folder, REPORT_JSON), "w", encoding="utf-8"
    ) as w:
        json.dump(
            {"folds": list(folds), "seed": seed, "test_sets": summary},
            w,
            indent=2,
        )
    report = format_report(summary, folds, seed)
    with open(
        os.path.join(output_folder, REPORT_MD), "w", encoding="utf-8"
    ) as w:
        w.write(report)
    return report


def parse_args(argv=None):
    """Parses the command line; unknown ``--key=value`` go to train.py."""
    parser = study_parser(
        "python -m harmonifuse_sb.folds",
        __doc__.split("\n\n")[0],
        "--data_folder=/data --iemocap_folder=/data/IEMOCAP",
    )
    parser.add_argument(
        "--folds",
        nargs="+",
        type=int,
        default=list(FOLDS),
        help="test sessions (default: 1 2 3 4 5)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="default: the YAML's"
    )
    add_study_arguments(
        parser,
        unit="fold",
        folder="folds",
        print_commands_help="print one train.py command per unfinished fold "
        "(with --devices: each with its --device, in turn) and run nothing; "
        "with every fold finished, write the report",
    )
    args, extra = parser.parse_known_args(argv)
    bad = sorted(set(args.folds) - set(FOLDS))
    if bad or len(set(args.folds)) != len(args.folds):
        parser.error(
            f"--folds {args.folds}: give distinct IEMOCAP sessions among "
            f"{list(FOLDS)}"
        )
    for arg in extra:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key is None:
            parser.error(
                f"unrecognised argument {arg!r}: arguments for train.py "
                "are written --key=value"
            )
        if key in ("iemocap_fold", "output_folder", "seed", "debug"):
            parser.error(
                f"{arg!r}: the command sets --{key} itself (use --folds, "
                "--output_folder, --seed or --debug)"
            )
    check_study_arguments(parser, args, folder="folds")
    return args, extra


def plan_folds(args, extra):
    """The unfinished folds' runs, and the seed that names their folders.

    Arguments
    ---------
    args : argparse.Namespace
        From :func:`parse_args`.
    extra : list of str
        ``--key=value`` arguments for every run.

    Returns
    -------
    list of tuple
        ``(name, seed, folder, command)`` per unfinished fold.
    int or None
        The seed (given, else the YAML's; None: unknown).
    """
    # The folder names the seed, the YAML's when none is given: another
    # seed never finds (and keeps) this one's runs.
    seed = args.seed if args.seed is not None else yaml_seed(args.hparams_file)
    todo = []
    for fold in args.folds:
        folder = fold_folder(args.output_folder, fold, seed)
        command = fold_command(
            args.hparams_file,
            fold,
            args.seed,
            folder,
            extra,
            args.debug,
            args.train_script,
        )
        old_layout = os.path.dirname(folder)  # fold<k>, before the seed
        if is_finished(old_layout):
            print(
                f"fold {fold}: {old_layout} holds a run without a seed in "
                f"its path (an older version of this command); it is not "
                f"used: this seed's run is in {folder}"
            )
        if is_finished(folder):
            print(f"fold {fold} seed {seed}: finished before, kept")
            warn_if_other_command(folder, command)
            continue
        todo.append((f"fold{fold}", seed, folder, command))
    return todo, seed


def print_commands(todo, devices=None):
    """Prints one command per run; with devices, each gets one in turn.

    Arguments
    ---------
    todo : list of tuple
        ``(name, seed, folder, command)`` per unfinished fold.
    devices : list of str, optional
        ``--devices``: command ``i`` runs on ``devices[i % len(devices)]``.
    """
    for i, (*_, command) in enumerate(todo):
        if devices:
            command = command + [f"--device={devices[i % len(devices)]}"]
        print(shlex.join(command))


def main(argv=None):
    """Runs the unfinished folds, then prints and writes the report.

    With ``--print-commands`` the unfinished folds' commands are printed
    instead (the rest goes to stderr); with none left, the report is
    written.
    """
    args, extra = parse_args(argv)
    with contextlib.redirect_stdout(
        sys.stderr if args.print_commands else sys.stdout
    ):
        todo, seed = plan_folds(args, extra)
    if args.print_commands:
        if todo:
            print_commands(todo, args.devices)
            return 0
        report = write_report(args.output_folder, args.folds, seed)
        where = os.path.join(args.output_folder, REPORT_MD)
        print(f"{report}\nEvery fold is finished: {where}", file=sys.stderr)
        return 0
    try:
        # The folds share no preparation (each has its own manifests):
        # every slot starts a fold at once.
        _run_all(todo, job_slots(args.jobs, args.devices), first_alone=False)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(write_report(args.output_folder, args.folds, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
