"""The ablation study: every variant x seed, then a report with paired CIs.

    python -m harmonifuse_sb.ablation hparams/ablation_synthetic.yaml
        [--variants harmonifuse naive_multitask] [--seeds 1 2 3]
        [--output_folder DIR] [--debug] [--print-commands]
        [--jobs N | --devices cuda:0 cuda:1 ...] [--key=value ...]

Each variant is a set of overrides of the same training YAML (any YAML with
``fusion.mode``, ``gate.enabled`` and ``interleaving``, the paper's
``hparams/harmonifuse.yaml`` included); each run is an ordinary ``train.py``
run in ``<output_folder>/<variant>/<seed>/``. ``train.py`` writes
``test_results.json`` as its very last act, so a run that has it is finished
and is never run again: a study that was killed resumes where it stopped
(an unfinished run resumes from its own checkpoints, as ``train.py`` does).
``--print-commands`` prints one ``train.py`` command per unfinished run
instead, for a cluster scheduler; run the study again once they are done to
write the report.

``--jobs N`` runs N runs at a time (on a CPU each gets ``cpu_count // N``
threads, through ``OMP_NUM_THREADS``, unless that is set); ``--devices
cuda:0 cuda:1`` runs one run per device at a time, each with ``--device``.
The first run then runs alone: it prepares what every run shares (corpus,
pre-trained encoder and LLM). ``train.py`` also holds a file lock around its
preparations, so runs started by hand or by a scheduler do not prepare the
same folder at once.

The report, ``ablation.md`` and ``ablation.json`` in the output folder, gives
per variant and test set the mean and standard deviation over seeds of WER,
CER (ASR) and UA, WA, macro-F1 (SER), and for each variant the difference to
``naive_multitask`` with a 95 % confidence interval from a paired bootstrap:
the test utterances are resampled (the same resample for both variants and
every seed), each metric is recomputed at corpus level on the resample (WER
= sum of errors / sum of reference words; UA = mean per-class recall), and
the difference is averaged over the seeds that both variants ran. Pictures
(``harmonifuse_sb.plot``): layer weights per task, gate value distributions
per task, validation curves.

Extra ``--key=value`` arguments go to every run (e.g. ``--data_folder=...``).

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
import yaml

from harmonifuse_sb import data_size
from harmonifuse_sb.results import (
    TEST_RESULTS_FILE,
    read_emotion_report,
    read_error_rate_report,
    read_test_results,
)

BASELINE = "naive_multitask"
# The gate as it was before the readings of the gate (open start, no
# budget), and a gate that must select: neutral start and a budget term
# (keep at most half of the components of each task).
OPEN_GATE = {
    "enabled": True,
    "placement": "fused",
    "init_bias": 4.0,
    "sparsity_weight": 0.0,
}
BUDGET_GATE = {
    "enabled": True,
    "init_bias": 0.0,
    "sparsity_weight": 1.0,
    "keep_target": {"asr": 0.5, "ser": 0.5},
}
NO_GATE = {"enabled": False}
INTERLEAVED = {"interleaving": {"schedule": "interleaved"}}
# HarmoniFuse as this project defines it: the switches of the variant
# ``harmonifuse``, from which the single-part ablations derive. The
# reading chosen on validation (docs/ablation/data_size.md): the prompt-
# adaptive fusion of the encoder's layers, the SER classifier on a
# prompt-adaptive fusion of the LLM's layers, the gate as first built.
HARMONIFUSE = {
    "fusion": {"mode": "prompt"},
    "gate": dict(OPEN_GATE),
    "llm_fusion": {"mode": "prompt"},
    **INTERLEAVED,
}


def _derive(**changes):
    """HARMONIFUSE's switches with some replaced (a mapping is merged)."""
    merged = {key: dict(value) for key, value in HARMONIFUSE.items()}
    for key, value in changes.items():
        merged[key] = dict(merged.get(key, {}), **value)
    return merged


# name -> (what it tests, overrides of the training YAML). Every variant
# sets every switch, so none depends on the YAML's defaults (the
# interleaved variants keep the YAML's ASR:SER ratio).
VARIANTS = {
    "harmonifuse": (
        "prompt-adaptive fusion + task gate, batch-interleaved",
        _derive(),
    ),
    "static_fusion": (
        "one learned layer weighting for both tasks (SUPERB style)",
        _derive(fusion={"mode": "static"}),
    ),
    "last_layer": (
        "the encoder's top layer only",
        _derive(fusion={"mode": "last"}),
    ),
    "no_gate": (
        "prompt-adaptive fusion, no gate",
        dict(_derive(), gate=dict(NO_GATE)),
    ),
    BASELINE: (
        "static fusion, no gate, both tasks in every batch",
        {
            "fusion": {"mode": "static"},
            "gate": dict(NO_GATE),
            "llm_fusion": {"mode": "last"},
            "interleaving": {"schedule": "mixed"},
        },
    ),
    "naive_interleaved": (
        "static fusion, no gate, batch-interleaved (the naive model with "
        "HarmoniFuse's schedule)",
        {
            "fusion": {"mode": "static"},
            "gate": dict(NO_GATE),
            "llm_fusion": {"mode": "last"},
            **INTERLEAVED,
        },
    ),
    "asr_only": (
        "the HarmoniFuse model trained on the ASR data only",
        _derive(
            interleaving={"ratio": [1, 0], "epoch_task": "asr"},
        ),
    ),
    "ser_only": (
        "the HarmoniFuse model trained on the SER data only (an epoch is "
        "one pass over the SER training set)",
        _derive(
            interleaving={"ratio": [0, 1], "epoch_task": "ser"},
        ),
    ),
}
# The readings of the paper tried on one seed (screening on validation;
# not run unless named with --variants).
READINGS = {
    "open_gate": (
        "HarmoniFuse as first built: the gate started open (0.98), no "
        "budget, the SER classifier on the LLM's last layer",
        _derive(llm_fusion={"mode": "last"}),
    ),
    "gate_neutral": (
        "HarmoniFuse with the gate started at 0.5, no budget",
        _derive(gate={"init_bias": 0.0}),
    ),
    "gate_budget": (
        "HarmoniFuse with a gate that must select: neutral start, budget "
        "term keeping at most half of each task's components",
        _derive(gate=dict(BUDGET_GATE, placement="fused")),
    ),
    "layer_gate": (
        "HarmoniFuse with the budget gate on every encoder layer before "
        "the fusion (a gated speech encoder)",
        _derive(gate=dict(BUDGET_GATE, placement="layers")),
    ),
    "llm_fusion": (
        "HarmoniFuse whose SER classifier reads a prompt-weighted sum of "
        "the LLM's layers",
        _derive(llm_fusion={"mode": "prompt"}),
    ),
    "llm_fusion_layer_gate": (
        "the two readings together: the LLM-layer fusion for SER and the "
        "budget gate on the encoder layers",
        _derive(
            gate=dict(BUDGET_GATE, placement="layers"),
            llm_fusion={"mode": "prompt"},
        ),
    ),
}
VARIANTS.update(READINGS)
CORE_VARIANTS = [v for v in VARIANTS if v not in READINGS]
DEFAULT_SEEDS = (1, 2, 3)
METRICS = {"asr": ("WER", "CER"), "ser": ("UA", "WA", "macro_F1")}
LOWER_IS_BETTER = ("WER", "CER")
PERCENT_METRICS = ("UA", "WA", "macro_F1")  # fractions, shown in percent
POLL_S = 2  # how often a running train.py is checked
EXIT_GRACE_S = 120  # see _wait_for_run
RUN_LOG = "study_stdout.txt"  # train.py's console output, per run
RUN_RECORD = "study_run.json"  # command and wall time, per run
REPORT_MD = "ablation.md"
REPORT_JSON = "ablation.json"


# ---------------------------------------------------------------- runs


def override_args(overrides):
    """Turns nested overrides into ``--key=value`` arguments of train.py.

    Arguments
    ---------
    overrides : dict
        Top-level key -> value (a mapping is merged into the YAML's).

    Returns
    -------
    list of str

    Example
    -------
    >>> override_args({"gate": {"enabled": False}, "seed": 2})
    ['--gate={enabled: false}', '--seed=2']
    """
    return [
        f"--{key}="
        + yaml.safe_dump(
            value, default_flow_style=True, sort_keys=False, width=10**6
        )
        .strip()
        .removesuffix("\n...")
        .removesuffix(" ...")
        for key, value in overrides.items()
    ]


def check_yaml_has_switches(hparams_file, variants):
    """Fails early if the YAML lacks a key that a variant overrides.

    The YAML is composed, not loaded: nothing is built.

    Arguments
    ---------
    hparams_file : str
        The training YAML.
    variants : list of str
        The variants to run.
    """
    with open(hparams_file, encoding="utf-8") as f:
        root = yaml.compose(f)
    top = {key.value: value for key, value in root.value}
    for variant in variants:
        for key, value in VARIANTS[variant][1].items():
            node = top.get(key)
            if node is None or not isinstance(node, yaml.MappingNode):
                raise ValueError(
                    f"{hparams_file} has no mapping `{key}`, which the "
                    f"variant {variant!r} overrides ({value}). Add it (see "
                    "hparams/harmonifuse.yaml) or leave the variant out."
                )
            inner = {k.value for k, _ in node.value}
            missing = [k for k in value if k not in inner]
            if missing and key != "interleaving":
                raise ValueError(
                    f"{hparams_file}: `{key}` has no key {missing}, which "
                    f"the variant {variant!r} sets. Add it to `{key}` (see "
                    "hparams/harmonifuse.yaml)."
                )


def yaml_variant_overrides(hparams_file):
    """The training YAML's own overrides per variant (``ablation_overrides``).

    A YAML may hold, for example::

        ablation_overrides:
            ser_only: {number_of_epochs: 8}

    to give a variant what it needs to be compared fairly in that setting
    (here: a single-task SER run as many SER batches as the interleaved
    runs see). They are applied after the variant's switches (a mapping is
    merged into the switch of the same name); a key that the study's
    command line also sets (``--number_of_epochs=5``) is left to the
    command line. Plain values only (no ``!ref``).

    Arguments
    ---------
    hparams_file : str
        The training YAML.

    Returns
    -------
    dict
        variant -> overrides (empty when the YAML has none).

    Raises
    ------
    ValueError
        An unknown variant, or a value that is not a plain mapping.
    """
    with open(hparams_file, encoding="utf-8") as f:
        root = yaml.compose(f)
    hparams = {key.value: value for key, value in root.value}  # nodes
    node = hparams.get("ablation_overrides")
    if node is None:
        return {}
    try:
        found = yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as err:
        raise ValueError(
            f"{hparams_file}: `ablation_overrides` must hold plain values "
            f"(no !ref or other tags): {err}"
        ) from None
    found = found or {}
    if not isinstance(found, dict) or not all(
        isinstance(v, dict) for v in found.values()
    ):
        raise ValueError(
            f"{hparams_file}: `ablation_overrides` must map variant names "
            f"to mappings of overrides, e.g. {{ser_only: {{number_of_epochs: "
            f"8}}}}; got {found!r}"
        )
    unknown = sorted(set(found) - set(VARIANTS))
    if unknown:
        raise ValueError(
            f"{hparams_file}: `ablation_overrides` names unknown variants "
            f"{unknown}; known: {', '.join(VARIANTS)}"
        )
    return found


def variant_overrides(variant, yaml_overrides=None):
    """A variant's switches with the YAML's overrides for it merged in.

    Arguments
    ---------
    variant : str
        A key of ``VARIANTS``.
    yaml_overrides : dict, optional
        Top-level key -> value; a mapping is merged into the variant's
        switch of the same name, anything else replaces it.

    Returns
    -------
    dict
        Top-level key -> value, for :func:`override_args`.

    Example
    -------
    >>> variant_overrides("ser_only", {"number_of_epochs": 8})["number_of_epochs"]
    8
    >>> variant_overrides("ser_only", {"interleaving": {"ratio": [0, 2]}})[
    ...     "interleaving"]
    {'schedule': 'interleaved', 'ratio': [0, 2], 'epoch_task': 'ser'}
    """
    merged = {key: dict(value) for key, value in VARIANTS[variant][1].items()}
    for key, value in (yaml_overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def run_folder(output_folder, variant, seed):
    """The folder of one run: ``<output_folder>/<variant>/<seed>``."""
    return os.path.join(output_folder, variant, str(seed))


def is_finished(folder):
    """Whether ``train.py`` finished in ``folder`` (its results exist)."""
    return os.path.isfile(os.path.join(folder, TEST_RESULTS_FILE))


def train_command(
    hparams_file,
    variant,
    seed,
    folder,
    extra=(),
    debug=False,
    script=None,
    yaml_overrides=None,
):
    """The ``train.py`` command of one run.

    Arguments
    ---------
    hparams_file : str
        The training YAML.
    variant : str
        A key of ``VARIANTS``.
    seed : int
        The training seed.
    folder : str
        The run's output folder.
    extra : list of str
        More ``--key=value`` arguments (after the variant's).
    debug : bool
        Pass SpeechBrain's ``--debug`` (a few batches, seconds).
    script : str, optional
        ``train.py``; default the one in the current folder.
    yaml_overrides : dict, optional
        The YAML's ``ablation_overrides`` for this variant
        (:func:`yaml_variant_overrides`); a key that ``extra`` also sets
        is left to ``extra``.

    Returns
    -------
    list of str

    Example
    -------
    >>> train_command("h.yaml", "no_gate", 2, "out/no_gate/2")[1:]
    ['train.py', 'h.yaml', '--fusion={mode: prompt}', '--gate={enabled: false}', '--llm_fusion={mode: prompt}', '--interleaving={schedule: interleaved}', '--seed=2', '--output_folder=out/no_gate/2']
    """
    # A key given on the command line (extra) is left to it: SpeechBrain
    # rejects a key given twice.
    given = {arg[2:].split("=", 1)[0] for arg in extra}
    mine = {k: v for k, v in (yaml_overrides or {}).items() if k not in given}
    overrides = variant_overrides(variant, mine)
    overrides.update(seed=seed, output_folder=folder)
    command = [sys.executable, script or "train.py", hparams_file]
    command += override_args(overrides) + list(extra)
    if debug:
        command.append("--debug")
    return command


def _wait_for_run(process, folder, log, abort=None):
    """Waits for a train.py process; returns its exit status.

    ``train.py`` writes ``test_results.json`` as its last act. Twice, on
    this project's overloaded 2-core machine, a run wrote it and then never
    exited (threads waiting at interpreter shutdown): a process that has
    not exited ``EXIT_GRACE_S`` after that file appeared is stopped and
    counts as finished, so a study does not hang on it. A study that is
    interrupted stops its run too (in a parallel study, through ``abort``,
    a ``threading.Event``).
    """
    results_seen = None
    try:
        while True:
            try:
                return process.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                if abort is not None and abort.is_set():
                    raise KeyboardInterrupt(
                        "the study was interrupted"
                    ) from None
                if not is_finished(folder):
                    continue
                results_seen = results_seen or time.time()
                if time.time() - results_seen > EXIT_GRACE_S:
                    process.kill()
                    process.wait()
                    log.write(
                        f"\n[study] train.py wrote {TEST_RESULTS_FILE} but "
                        f"had not exited {EXIT_GRACE_S} s later: stopped.\n"
                    )
                    return 0
    except BaseException:
        process.kill()
        process.wait()
        raise


def run_one(command, folder, env=None, abort=None):
    """Runs one ``train.py`` command; its output goes to the run's folder.

    Arguments
    ---------
    command : list of str
        From :func:`train_command`.
    folder : str
        The run's output folder.
    env : dict, optional
        The process's environment (default: this one's).
    abort : threading.Event, optional
        Set: the run is stopped (``KeyboardInterrupt``).

    Returns
    -------
    float
        Wall time in seconds.
    """
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, RUN_LOG)
    start = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(command)}\n")
        log.flush()
        code = _wait_for_run(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env
            ),
            folder,
            log,
            abort,
        )
    wall = time.time() - start
    if code != 0 or not is_finished(folder):
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(
            f"The run in {folder} failed (exit {code}); its output is in "
            f"{log_path}. Fix the cause and run the study again: finished "
            f"runs are kept.\n--- end of {log_path} ---\n{tail}"
        )
    with open(os.path.join(folder, RUN_RECORD), "w", encoding="utf-8") as w:
        json.dump({"command": command, "wall_time_s": wall}, w, indent=2)
    return wall


def warn_if_other_command(folder, command):
    """Warns when a kept run was made with other arguments than asked now.

    The device (``--device=...``, which ``--devices`` adds to the recorded
    command) is left out of the comparison: it does not change the run.
    """
    record = os.path.join(folder, RUN_RECORD)
    if not os.path.isfile(record):
        return  # run outside the study (e.g. on a cluster)
    with open(record, encoding="utf-8") as f:
        before = json.load(f)["command"]

    def setting(args):  # the interpreter's path may differ
        return [a for a in args[1:] if not a.startswith("--device=")]

    if setting(before) != setting(command):
        print(
            f"    warning: it was run as {shlex.join(before[1:])}; now asked: "
            f"{shlex.join(command[1:])}. The finished run is kept; use "
            "another --output_folder to run the new setting."
        )


def job_slots(jobs, devices, environ=None):
    """What each of the study's parallel slots adds to its runs.

    Arguments
    ---------
    jobs : int or None
        Runs at a time (default: one per device, else 1).
    devices : list of str or None
        Devices (``cuda:0``, ...): slot ``i`` runs on ``devices[i]``.
    environ : dict, optional
        The environment (default ``os.environ``).

    Returns
    -------
    list of (list of str, dict)
        Per slot: the extra ``train.py`` arguments and the environment.

    Raises
    ------
    ValueError
        ``jobs`` differs from the number of ``devices``.

    Example
    -------
    >>> [args for args, _ in job_slots(None, ["cuda:0", "cuda:1"], {})]
    [['--device=cuda:0'], ['--device=cuda:1']]
    >>> [env["OMP_NUM_THREADS"] for _, env in job_slots(2, None, {})][0] > "0"
    True
    """
    environ = dict(os.environ if environ is None else environ)
    devices = list(devices or [])
    jobs = jobs or max(1, len(devices))
    if devices and jobs != len(devices):
        raise ValueError(
            f"--jobs {jobs} with {len(devices)} --devices: give one device "
            "per job (repeat a device to run two runs on it)"
        )
    slots = []
    for i in range(jobs):
        env = dict(environ)
        if jobs > 1 and not devices and "OMP_NUM_THREADS" not in environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        slots.append(([f"--device={devices[i]}"] if devices else [], env))
    return slots


def _run_all(todo, slots, first_alone=True):
    """Runs ``todo`` on the slots, the first run alone; stops at a failure.

    A failed run lets the running ones finish, starts no other and raises
    its error; an interrupted study stops its running ``train.py``
    processes (:func:`_wait_for_run`).

    Arguments
    ---------
    todo : list of tuple
        ``(variant, seed, folder, command)`` per run.
    slots : list of (list of str, dict)
        From :func:`job_slots`.
    first_alone : bool
        Run the first run alone (with every thread) before the others: it
        prepares what every run of a study shares (corpus, pre-trained
        encoder and LLM). False: runs that share no preparation (the IEMOCAP
        folds, each with its own manifests) all start at once, one per
        slot.
    """
    free = queue.Queue()
    for slot in slots:
        free.put(slot)
    stop = threading.Event()  # start no other run
    abort = threading.Event()  # stop the running ones
    count = len(todo)

    def work(i, variant, seed, folder, command, alone=False):
        if stop.is_set():
            return
        args, env = free.get()
        try:
            if stop.is_set():
                return
            print(f"[{i}/{count}] {variant} seed {seed} ...", flush=True)
            try:
                wall = run_one(
                    command + args,
                    folder,
                    None if alone else env,  # alone: every thread
                    abort,
                )
            except BaseException:
                stop.set()
                raise
            print(
                f"    {variant} seed {seed} done in {wall:.0f} s ({folder})",
                flush=True,
            )
        finally:
            free.put((args, env))

    numbered = [(i, *run) for i, run in enumerate(todo, 1)]
    if len(slots) == 1 or not numbered:
        for run in numbered:
            work(*run)
        return
    if first_alone:
        work(*numbered[0], alone=True)  # it prepares what every run shares
        numbered = numbered[1:]
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        try:
            futures = [pool.submit(work, *run) for run in numbered]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() for f in futures):
                stop.set()  # start no other run; let the running ones end
                wait(futures)
        except BaseException:
            stop.set()
            abort.set()
            raise
    errors = [f.exception() for f in futures if f.exception() is not None]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RuntimeError(
            f"{len(errors)} runs failed:\n\n"
            + "\n\n".join(str(e) for e in errors)
        )


def plan_runs(args, extra, from_yaml=None, seeds_first=False):
    """The unfinished runs of a study: ``(variant, seed, folder, command)``.

    Arguments
    ---------
    args : argparse.Namespace
        ``hparams_file``, ``variants``, ``seeds``, ``output_folder``,
        ``debug``, ``train_script``, ``print_commands``.
    extra : list of str
        ``--key=value`` arguments for every run.
    from_yaml : dict, optional
        variant -> overrides (default: the YAML's ``ablation_overrides``).
    seeds_first : bool
        Order the runs seed by seed (all variants of seed 1 first) rather
        than variant by variant.

    Returns
    -------
    list of tuple
    """
    if from_yaml is None:
        from_yaml = yaml_variant_overrides(args.hparams_file)
    plan = [(v, s) for v in args.variants for s in args.seeds]
    if seeds_first:
        plan = [(v, s) for s in args.seeds for v in args.variants]
    todo = []
    for variant, seed in plan:
        folder = run_folder(args.output_folder, variant, seed)
        command = train_command(
            args.hparams_file,
            variant,
            seed,
            folder,
            extra,
            args.debug,
            args.train_script,
            from_yaml.get(variant),
        )
        if is_finished(folder):
            if not args.print_commands:
                print(f"{variant} seed {seed}: finished before, kept")
                warn_if_other_command(folder, command)
            continue
        todo.append((variant, seed, folder, command))
    return todo


def run_study(args, extra):
    """Runs (or prints the commands of) every unfinished run."""
    todo = plan_runs(args, extra)
    if args.print_commands:
        for *_, command in todo:
            print(shlex.join(command))
        return
    _run_all(todo, job_slots(args.jobs, args.devices))


def size_studies(args, extra):
    """The per-size studies of ``--ser-sizes``: ``(size, args, extra,
    from_yaml)`` each, with ``--train_subset={ser: size}`` and the
    ``ser_only`` epochs scaled (``harmonifuse_sb.data_size``).
    """
    from_yaml = yaml_variant_overrides(args.hparams_file)
    studies = []
    for size in args.ser_sizes:
        sub = argparse.Namespace(**vars(args))
        sub.output_folder = data_size.size_folder(args.output_folder, size)
        sub_extra = list(extra) + [f"--train_subset={{ser: {size}}}"]
        overrides = {v: dict(o) for v, o in from_yaml.items()}
        epochs = overrides.get("ser_only", {}).get("number_of_epochs")
        if epochs is not None:
            overrides["ser_only"]["number_of_epochs"] = (
                data_size.ser_only_epochs(epochs, size, args.ser_sizes)
            )
        studies.append((size, sub, sub_extra, overrides))
    return studies


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


# ---------------------------------------------------------------- bootstrap


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


# ---------------------------------------------------------------- report


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


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    """Parses the command line; unknown ``--key=value`` go to train.py."""
    parser = argparse.ArgumentParser(
        prog="python -m harmonifuse_sb.ablation",
        allow_abbrev=False,  # --seed must not read as --seeds
        description=__doc__.split("\n\n")[0],
        epilog="Other --key=value arguments are passed to every train.py "
        "run (e.g. --data_folder=/data).",
    )
    parser.add_argument("hparams_file", help="the training YAML")
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
    parser.add_argument(
        "--output_folder",
        default=None,
        help="default: results/ablation/<name of the YAML>",
    )
    parser.add_argument(
        "--debug", action="store_true", help="SpeechBrain's --debug runs"
    )
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one train.py command per unfinished run, run nothing",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at a time (default: one per --devices, else 1); on a "
        "CPU each gets cpu_count // jobs threads unless OMP_NUM_THREADS is set",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="run one run at a time on each device (e.g. cuda:0 cuda:1)",
    )
    parser.add_argument(
        "--train-script",
        default="train.py",
        help="the recipe to run (default: train.py in the current folder)",
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
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        job_slots(args.jobs, args.devices)  # one device per job
    except ValueError as err:
        parser.error(str(err))
    if not os.path.isfile(args.hparams_file):
        parser.error(f"no training YAML at {args.hparams_file}")
    if not args.print_commands and not os.path.isfile(args.train_script):
        parser.error(
            f"no {args.train_script} here: run from the repository root or "
            "pass --train-script path/to/train.py"
        )
    if args.output_folder is None:
        stem = os.path.splitext(os.path.basename(args.hparams_file))[0]
        args.output_folder = os.path.join("results", "ablation", stem)
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


if __name__ == "__main__":
    sys.exit(main())
