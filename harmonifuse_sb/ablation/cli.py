"""The ablation study: every variant x seed, then a report with paired CIs.

The command line of ``python -m harmonifuse_sb.ablation`` (the package's
docstring describes the study).

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import shlex
import signal
import sys
import time

from harmonifuse_sb import data_size
from harmonifuse_sb.ablation.report import REPORT_JSON, REPORT_MD, write_report
from harmonifuse_sb.ablation.runner import (
    _run_all,
    job_slots,
    plan_runs,
    run_folder,
    run_study,
    size_studies,
)
from harmonifuse_sb.ablation.variants import (
    BASELINE,
    CORE_VARIANTS,
    DEFAULT_SEEDS,
    VARIANTS,
    check_yaml_has_switches,
    yaml_variant_overrides,
)


def run_sizes(args, extra):
    """Runs the data-size sweep (all sizes in one pool, seed by seed, so
    an interrupted sweep has every size of the first seeds) and writes
    each size's report and the sweep's.
    """
    studies = size_studies(args, extra)
    todo = []
    for seed in args.seeds:
        for _size, sub, sub_extra, overrides in studies:
            sub_seed = argparse.Namespace(**vars(sub))
            sub_seed.seeds = [seed]
            todo += plan_runs(sub_seed, sub_extra, overrides)
    if args.print_commands:
        for *_, command in todo:
            print(shlex.join(command))
        return None
    _run_all(todo, job_slots(args.jobs, args.devices))
    summaries, folders = {}, {}
    for size, sub, sub_extra, _ in studies:
        write_report(sub, sub_extra)
        with open(
            os.path.join(sub.output_folder, REPORT_JSON), encoding="utf-8"
        ) as f:
            summaries[size] = json.load(f)
        for variant in args.variants:
            folders.setdefault(variant, []).extend(
                run_folder(sub.output_folder, variant, seed)
                for seed in args.seeds
            )
    gates = {v: data_size.gate_statistics(f) for v, f in folders.items()}
    meta = {
        "command": "python -m harmonifuse_sb.ablation "
        + shlex.join(sys.argv[1:]),
        "variants": list(args.variants),
        "seeds": list(args.seeds),
        "sizes": list(args.ser_sizes),
        "baseline": BASELINE,
        "hparams_file": args.hparams_file,
    }
    return data_size.write_sizes_report(
        args.output_folder, summaries, gates, meta, plots=not args.no_plots
    )


def study_parser(prog, description, example):
    """The parser of a command that starts ``train.py`` runs of one YAML.

    Its positional argument is the training YAML; what it does not know
    goes to every run (``parse_known_args``), so abbreviations are off
    (``--seed`` must not read as ``--seeds``).

    Arguments
    ---------
    prog : str
        The command, e.g. ``python -m harmonifuse_sb.folds``.
    description : str
        The help's first line.
    example : str
        ``--key=value`` arguments for train.py, in the help's epilog.

    Returns
    -------
    argparse.ArgumentParser

    Example
    -------
    >>> parser = study_parser("study", "A study.", "--data_folder=/data")
    >>> parser.parse_known_args(["h.yaml", "--seed=2"])[1]
    ['--seed=2']
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description=description,
        epilog="Other --key=value arguments are passed to every train.py "
        f"run (e.g. {example}).",
    )
    parser.add_argument("hparams_file", help="the training YAML")
    return parser


def add_study_arguments(parser, unit, folder, print_commands_help):
    """Adds the options that the ablation study and the IEMOCAP folds share.

    Both start ``train.py`` runs through :func:`~.runner._run_all`:
    ``--output_folder``, ``--debug``, ``--print-commands``, ``--jobs``,
    ``--devices`` and ``--train-script`` mean the same in both.

    Arguments
    ---------
    parser : argparse.ArgumentParser
        The command's parser (its own arguments added before or after).
    unit : str
        What one ``train.py`` run is, in the help: ``"run"``, ``"fold"``.
    folder : str
        The default output folder is ``results/<folder>/<YAML name>``.
    print_commands_help : str
        The help of ``--print-commands`` (what happens once all are done).

    Example
    -------
    >>> parser = argparse.ArgumentParser()
    >>> add_study_arguments(parser, "run", "ablation", "print them")
    >>> parser.parse_args(["--jobs", "2", "--debug"]).jobs
    2
    """
    parser.add_argument(
        "--output_folder",
        default=None,
        help=f"default: results/{folder}/<name of the YAML>",
    )
    parser.add_argument(
        "--debug", action="store_true", help="SpeechBrain's --debug runs"
    )
    parser.add_argument(
        "--print-commands", action="store_true", help=print_commands_help
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"{unit}s at a time (default: one per --devices, else 1); on a "
        "CPU each gets cpu_count // jobs threads unless OMP_NUM_THREADS is set",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help=f"one {unit} at a time on each device (e.g. cuda:0 cuda:1)",
    )
    parser.add_argument(
        "--train-script",
        default="train.py",
        help="the recipe to run (default: train.py in the current folder)",
    )


def check_study_arguments(parser, args, folder):
    """Checks the shared options (:func:`add_study_arguments`) once parsed.

    ``--jobs`` at least 1 and matching ``--devices``, the training YAML
    present; a missing ``--output_folder`` becomes
    ``results/<folder>/<YAML name>``.

    Arguments
    ---------
    parser : argparse.ArgumentParser
        Its ``error`` reports a bad value (exit status 2).
    args : argparse.Namespace
        The parsed arguments (``output_folder`` is set in place).
    folder : str
        As in :func:`add_study_arguments`.
    """
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        job_slots(args.jobs, args.devices)  # one device per job
    except ValueError as err:
        parser.error(str(err))
    if not os.path.isfile(args.hparams_file):
        parser.error(f"no training YAML at {args.hparams_file}")
    if args.output_folder is None:
        stem = os.path.splitext(os.path.basename(args.hparams_file))[0]
        args.output_folder = os.path.join("results", folder, stem)


def parse_args(argv=None):
    """Parses the command line; unknown ``--key=value`` go to train.py."""
    parser = study_parser(
        "python -m harmonifuse_sb.ablation",
        __doc__.split("\n\n")[0],
        "--data_folder=/data",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(CORE_VARIANTS),
        metavar="VARIANT",
        help=f"of {', '.join(VARIANTS)} (default: {', '.join(CORE_VARIANTS)})",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=list(DEFAULT_SEEDS),
        help="training seeds (default: 1 2 3)",
    )
    add_study_arguments(
        parser,
        unit="run",
        folder="ablation",
        print_commands_help="print one train.py command per unfinished run, "
        "run nothing",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap replicates (default 1000)",
    )
    parser.add_argument(
        "--no-plots", action="store_true", help="write no pictures"
    )
    parser.add_argument(
        "--ser-sizes",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="a data-size sweep: the study at each SER training size "
        "(utterances; harmonifuse_sb.data_size)",
    )
    args, extra = parser.parse_known_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(
            f"unknown variants {unknown}; known: {', '.join(VARIANTS)}"
        )
    if len(set(args.variants)) != len(args.variants):
        parser.error(f"--variants repeats a name: {args.variants}")
    for arg in extra:
        if not arg.startswith("--"):
            parser.error(
                f"unrecognised argument {arg!r}: arguments for train.py "
                "are written --key=value (or --flag)"
            )
        key = arg[2:].split("=", 1)[0]
        if key == "device" and args.devices:
            parser.error(f"{arg!r} with --devices: give one of the two")
        if key in ("seed", "output_folder", "debug"):
            parser.error(
                f"{arg!r}: the study sets --{key} itself (use --seeds, "
                "--output_folder or the study's --debug)"
            )
        if key in ("fusion", "gate", "llm_fusion", "interleaving"):
            parser.error(
                f"{arg!r}: the variants override `{key}`; change its other "
                "keys in the YAML instead"
            )
    if args.ser_sizes is not None:
        if min(args.ser_sizes) < 1 or len(set(args.ser_sizes)) != len(
            args.ser_sizes
        ):
            parser.error(
                f"--ser-sizes must be distinct numbers of utterances >= 1: "
                f"{args.ser_sizes}"
            )
        args.ser_sizes = sorted(args.ser_sizes)
        if any(a.startswith("--train_subset") for a in extra):
            parser.error(
                "--train_subset with --ser-sizes: the sweep sets it per size"
            )
    check_study_arguments(parser, args, folder="ablation")
    if not args.print_commands and not os.path.isfile(args.train_script):
        parser.error(
            f"no {args.train_script} here: run from the repository root or "
            "pass --train-script path/to/train.py"
        )
    return args, extra


def _interrupt(signum, frame):
    """Turns SIGTERM into ``KeyboardInterrupt`` (see :func:`main`)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    """Runs the study and writes its report; returns the exit status."""
    args, extra = parse_args(argv)
    try:
        check_yaml_has_switches(args.hparams_file, args.variants)
        yaml_variant_overrides(args.hparams_file)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    # A scheduler's SIGTERM stops the running train.py processes as Ctrl-C
    # does (their checkpoints stay; the next invocation resumes them).
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.ser_sizes:
            report = run_sizes(args, extra)
            if report is not None:
                print(report)
                print(
                    f"Sweep wall time (this invocation): "
                    f"{time.time() - start:.0f} s; report in "
                    f"{os.path.join(args.output_folder, data_size.REPORT_MD)}"
                )
            return 0
        run_study(args, extra)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, before)
    if args.print_commands:
        return 0
    print(write_report(args, extra))
    print(
        f"Study wall time (this invocation): {time.time() - start:.0f} s; "
        f"report in {os.path.join(args.output_folder, REPORT_MD)}"
    )
    return 0
