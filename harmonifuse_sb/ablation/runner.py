"""The ablation study's runs: one ``train.py`` process per variant x seed.

A run that wrote ``test_results.json`` is finished and never run again;
``--jobs`` and ``--devices`` run several at a time (:func:`job_slots`,
:func:`_run_all`, which ``harmonifuse_sb.folds`` shares).

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from harmonifuse_sb import data_size
from harmonifuse_sb.ablation.variants import (
    override_args,
    variant_overrides,
    yaml_variant_overrides,
)
from harmonifuse_sb.results import (
    TEST_RESULTS_FILE,
)

POLL_S = 2  # how often a running train.py is checked
EXIT_GRACE_S = 120  # see _wait_for_run
RUN_LOG = "study_stdout.txt"  # train.py's console output, per run
RUN_RECORD = "study_run.json"  # command and wall time, per run


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
