#!/usr/bin/env python3
"""Trains HarmoniFuse on one corpus per task, batch-interleaved.

To run the quick-start (synthetic corpus, from scratch, CPU, minutes):

    python train.py hparams/harmonifuse_tiny.yaml

and the paper's setting (WavLM Large + an LLM with LoRA, LibriSpeech +
IEMOCAP, GPU):

    python train.py hparams/harmonifuse.yaml --data_folder=... \
        --iemocap_folder=...

The recipe is dataset-agnostic: the YAML names the data preparation(s)
(``data_preparation``) and its ``tasks:`` (``harmonifuse_sb.tasks``), each
with its manifests, batch size and interleaving ratio. After training it
tests every test set with its task's best checkpoint (``checkpoint_keys``;
``test_results.json`` names it) and writes an inference folder that
``HarmoniFuseSLM.from_hparams`` loads.

Authors
 * HarmoniFuse-SB developers 2026
"""

import hashlib
import logging
import math
import os
import random
import sys
import tempfile

import filelock
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.sampler import (
    DynamicBatchSampler,
    ReproducibleRandomSampler,
)
from speechbrain.utils.distributed import (
    if_main_process,
    main_process_only,
    run_on_main,
)

from harmonifuse_sb.brain import HarmoniFuseBrain
from harmonifuse_sb.dataio import SAMPLE_RATE, add_pipelines, load_manifest
from harmonifuse_sb.decoding import measure_tokens_per_second
from harmonifuse_sb.export import export_inference_folder
from harmonifuse_sb.interleaving import (
    make_eval_loader,
    make_interleaved_loader,
    trained_tasks,
)
from harmonifuse_sb.model import build_harmonifuse
from harmonifuse_sb.reproducibility import RandomState
from harmonifuse_sb.results import TEST_RESULTS_FILE, write_test_results
from harmonifuse_sb.tasks import (
    CLASSIFICATION,
    TRANSCRIPTION,
    bind_tasks,
    first_of_kind,
)

logger = logging.getLogger(__name__)


def fit_schedule_to_run(scheduler, epochs, updates_per_epoch):
    """Ends a per-update schedule with the run, where the YAML leaves it open.

    SpeechBrain's ``LinearWarmupScheduler`` warms up, then decays the
    learning rate linearly to 0 at ``num_training_steps``. A YAML that sets
    it to ``null`` gets ``epochs * updates_per_epoch``, so the decay ends
    with the last epoch whatever the corpus size, batch sizes, interleaving
    or ``--number_of_epochs``. A value given in the YAML, or restored from
    a checkpoint (it is saved with the scheduler), is kept.

    Arguments
    ---------
    scheduler : object or None
        The YAML's ``lr_scheduler``; others than one with a
        ``num_training_steps`` of None are left alone.
    epochs : int
        The run's epoch count (``epoch_counter.limit``).
    updates_per_epoch : int
        Optimiser updates per epoch: batches / gradient accumulation.

    Returns
    -------
    int or None
        The schedule's length in updates, set here, or None if not set.
    """
    if getattr(scheduler, "num_training_steps", 0) is not None:
        return None
    scheduler.num_training_steps = epochs * updates_per_epoch
    logger.info(
        "Learning rate: %s decays to 0 over %d updates (%d epochs x %d)",
        type(scheduler).__name__,
        scheduler.num_training_steps,
        epochs,
        updates_per_epoch,
    )
    return scheduler.num_training_steps


REQUIRED_KEYS = [
    "output_folder",
    "seed",
    "data_preparation",
    "tasks",
    "speech_lm",
    "model",
    "interleaving",
    "opt_class",
    "epoch_counter",
    "checkpointer",
    "train_logger",
    "eval_batch_size",
    "num_workers",
]
# What each task of ``tasks:`` needs to be trained and tested.
TASK_FIELDS = ("train", "valid", "test")


def check_hparams(hparams, hparams_file):
    """Fails at once, naming every key the YAML lacks."""
    missing = [key for key in REQUIRED_KEYS if key not in hparams]
    if not missing:
        tasks = bind_tasks(hparams["tasks"])
        missing += [
            f"tasks.{name}.{field}"
            for name, task in tasks.items()
            for field in TASK_FIELDS
            if not getattr(task, field)
        ]
        if not hparams.get("dynamic_batching"):
            missing += [
                f"tasks.{name}.batch_size (or dynamic_batching)"
                for name, task in tasks.items()
                if task.batch_size is None
            ]
    if missing:
        raise KeyError(
            f"{hparams_file} lacks the keys {missing}; see "
            "hparams/harmonifuse_tiny.yaml for what each one holds."
        )


def preparation_lock_path(hparams):
    """The file locked while this run prepares its data and LLM.

    ``preparation_lock`` when the YAML has it; else ``.prepare.lock`` in
    ``data_folder`` when that folder can be written (the synthetic
    corpora), else a file named after ``data_folder`` in the temporary
    folder (a read-only corpus such as LibriSpeech: runs on one machine
    still wait for each other).

    Arguments
    ---------
    hparams : dict
        The loaded YAML (``preparation_lock``, ``data_folder``; both
        optional).

    Returns
    -------
    str
        The lock file's path.
    """
    if hparams.get("preparation_lock"):
        return hparams["preparation_lock"]
    data_folder = os.path.abspath(hparams.get("data_folder") or ".")
    try:
        os.makedirs(data_folder, exist_ok=True)
    except OSError:
        pass
    if os.access(data_folder, os.W_OK):
        return os.path.join(data_folder, ".prepare.lock")
    digest = hashlib.sha1(data_folder.encode("utf-8")).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"harmonifuse_{digest}.lock")


def run_preparations(hparams):
    """Runs the YAML's data preparation(s) and LLM preparation on rank 0.

    Under a file lock (:func:`preparation_lock_path`): runs started at once
    (``python -m harmonifuse_sb.ablation --jobs``, a cluster scheduler)
    wait for the first to prepare, then find everything up to date,
    instead of writing the same corpus or pre-trained model together.
    Only rank 0 takes the lock (the other ranks wait in ``run_on_main``'s
    barrier), and it waits without a time limit: under DDP a wait longer
    than the process group's timeout makes the other ranks fail, so start
    a multi-GPU run once the data is prepared.

    Arguments
    ---------
    hparams : dict
        The loaded YAML: ``data_preparation`` (a callable or a list of
        them), ``rir_preparation`` and ``prepare_llm`` (optional).
    """
    preparations = hparams["data_preparation"]
    if not isinstance(preparations, (list, tuple)):
        preparations = [preparations]
    if hparams.get("rir_preparation") is not None:  # rooms (augmentation)
        preparations = list(preparations) + [hparams["rir_preparation"]]
    if hparams.get("prepare_llm") is not None:
        preparations = list(preparations) + [hparams["prepare_llm"]]
    lock = None
    if if_main_process():  # the other ranks wait in run_on_main's barrier
        lock = filelock.FileLock(preparation_lock_path(hparams))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            logger.info(
                "Waiting for another run's data preparation (lock %s)",
                lock.lock_file,
            )
            lock.acquire()
    try:
        for prepare in preparations:
            run_on_main(prepare)
    finally:
        if lock is not None:
            lock.release()


def dataio_prepare(hparams, min_duration=0.0, trained=None):
    """Builds the datasets of each task and split from the manifests.

    Arguments
    ---------
    hparams : dict
        Needs ``tasks`` (each with its ``train``, ``valid`` and ``test``
        manifests and ``data_root``); optionally ``valid_subset`` and
        ``train_subset`` (task -> size).
    min_duration : float
        Utterances shorter than this (seconds) are left out, with a warning.
    trained : tuple of str, optional
        The tasks trained (default all): a single-task run
        (``interleaving.ratio`` with a 0) neither validates nor tests the
        tasks it leaves out.

    Returns
    -------
    dict
        ``train`` and ``valid``: task -> dataset; ``test``: list of
        ``(name, task, dataset)``.
    """
    tasks = bind_tasks(hparams["tasks"])
    trained = list(tasks) if trained is None else trained
    subset = hparams.get("valid_subset") or {}

    def load(task, path):
        data = load_manifest(path, task, task.data_root, min_duration)
        if task.kind == CLASSIFICATION:
            task.check_labels(data, path)
        add_pipelines(data, task)
        return data

    train_subset = hparams.get("train_subset") or {}
    datasets = {"train": {}, "valid": {}, "test": []}
    for name in trained:
        task = tasks[name]
        train = load(task, task.train)
        if train_subset.get(name) is not None:
            keep = train_subset_ids(
                train,
                train_subset[name],
                hparams.get("train_subset_seed"),
                getattr(task, "label_key", None),
                task.train,
            )
            train = train.filtered_sorted(key_test={"id": keep.__contains__})
        hours = sum(float(e["duration"]) for e in train.data.values()) / 3600
        logger.info(
            f"{name} training set: {len(train)} utterances, {hours:.2f} h, "
            f"from {task.train}"
        )
        datasets["train"][name] = train
        valid = load(task, task.valid)
        keep = valid_subset_ids(
            valid, subset.get(name), hparams.get("valid_subset_seed")
        )
        datasets["valid"][name] = valid.filtered_sorted(
            key_test={"id": keep.__contains__}, sort_key="duration"
        )
        for set_name, path in task.test.items():
            test = load(task, path).filtered_sorted(sort_key="duration")
            datasets["test"].append((set_name, name, test))
    return datasets


def valid_subset_ids(dataset, size, seed):
    """The ids of a fixed random subset of a validation set.

    For big validation sets (``valid_subset`` in the YAML): the same
    ``size`` utterances every epoch and for every training seed, drawn with
    ``valid_subset_seed``.

    Arguments
    ---------
    dataset : DynamicItemDataset
        The whole validation set.
    size : int or None
        Utterances to keep; None keeps all.
    seed : int
        Seed of the draw.

    Returns
    -------
    set of str
    """
    ids = list(dataset.data_ids)
    if size is None or size >= len(ids):
        return set(ids)
    if not isinstance(size, int) or size < 1:
        raise ValueError(
            f"valid_subset: {size!r} is not a number of utterances (an "
            "integer >= 1, or null for the whole validation set)."
        )
    if seed is None:
        raise KeyError("valid_subset needs valid_subset_seed in the YAML.")
    return set(random.Random(seed).sample(sorted(ids), size))


def train_subset_ids(dataset, size, seed, label_key=None, manifest=""):
    """The ids of a nested, stratified subset of a training set.

    For data-size studies (``train_subset`` in the YAML, e.g. ``{ser:
    240}``): the ids are put in one seeded order in which every prefix is
    balanced over the labels (round robin over ``label_key``'s values) and,
    within a label, over the speakers (round robin over ``spk_id`` when
    the manifest has it); a subset is a prefix of that order, so the 240
    utterances of a small size are among the 480 of a bigger one.

    Arguments
    ---------
    dataset : DynamicItemDataset
        The whole training set (its ``data`` holds the manifest entries).
    size : int
        Utterances to keep (at most the set's size).
    seed : int
        Seed of the order (``train_subset_seed``).
    label_key : str, optional
        Manifest key to balance over (``emo``); None: no labels.
    manifest : str
        The manifest's path, for error messages.

    Returns
    -------
    set of str

    Raises
    ------
    ValueError
        ``size`` is not an integer in [1, size of the set].
    KeyError
        No ``train_subset_seed``.
    """
    ids = sorted(dataset.data_ids)
    if not isinstance(size, int) or not 1 <= size <= len(ids):
        raise ValueError(
            f"train_subset: {size!r} is not a number of utterances between "
            f"1 and {len(ids)}, the size of {manifest or 'the training set'}"
            " (null: the whole set)."
        )
    if seed is None:
        raise KeyError("train_subset needs train_subset_seed in the YAML.")
    rng = random.Random(seed)

    def round_robin(groups):
        keys = sorted(groups)
        rng.shuffle(keys)
        longest = max(len(groups[k]) for k in keys)
        return [
            groups[k][i]
            for i in range(longest)
            for k in keys
            if i < len(groups[k])
        ]

    by_label = {}
    for uid in ids:
        entry = dataset.data[uid]
        label = entry[label_key] if label_key else ""
        speaker = entry.get("spk_id", "")
        by_label.setdefault(label, {}).setdefault(speaker, []).append(uid)
    orders = {}
    for label, speakers in by_label.items():
        for members in speakers.values():
            rng.shuffle(members)
        orders[label] = round_robin(speakers)
    return set(round_robin(orders)[:size])


def task_batch_sampler(hparams, dataset, task):
    """A deterministic (seeded, epoch-aware) batch sampler for one task
    (its name), of the task's ``batch_size`` or ``dynamic_batching[task]``.
    """
    dynamic = hparams.get("dynamic_batching")
    if dynamic:
        return DynamicBatchSampler(
            dataset,
            length_func=lambda item: float(item["duration"]),
            shuffle=True,
            batch_ordering="random",
            seed=hparams["seed"],
            **dynamic[task],
        )
    sampler = ReproducibleRandomSampler(dataset, seed=hparams["seed"])
    return torch.utils.data.BatchSampler(
        sampler, hparams["tasks"][task].batch_size, drop_last=False
    )


def measure_decoding_rate(model, dataset, text_key="wrd"):
    """Measures the tokens per second of length-aware decoding if needed.

    When the model's ``length_cap`` gives no ``tokens_per_second``, the
    rate is the 99th percentile of the ASR training transcripts' tokens
    (the model's tokenizer) per second of audio, over a seeded draw of at
    most 5,000 utterances; it is logged and kept in the model's checkpoints
    and inference folder.

    Arguments
    ---------
    model : HarmoniFuse
        The model (``length_cap``, ``speech_lm.tokenize``).
    dataset : DynamicItemDataset or None
        The ASR training set (None in an SER-only run: nothing to do).
    text_key : str
        The manifest key of its transcripts.
    """
    cap = model.length_cap
    if dataset is None or cap is None or cap.get("tokens_per_second"):
        return
    entries = [dataset.data[i] for i in dataset.data_ids]
    rate = measure_tokens_per_second(
        [" ".join(str(e[text_key]).split()) for e in entries],
        [float(e["duration"]) for e in entries],
        model.speech_lm.tokenize,
    )
    model.set_tokens_per_second(rate)
    logger.info(
        "Length-aware decoding: %.2f tokens per second of audio (99th "
        "percentile of the ASR training transcripts), plus %d tokens.",
        rate,
        cap.get("margin", 0),
    )


def build_model(hparams):
    """Builds the model once the prepared folders exist (after preparation).

    The speech LM (``!name:`` in the YAML) is built here, and so is the
    encoder when the YAML gives it as ``!name:`` (a pre-trained encoder that
    a preparation writes, as in ``hparams/ablation_synthetic.yaml``).
    """
    return build_harmonifuse(hparams)


def main():
    """Prepares the data, trains, tests and exports the model."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    check_hparams(hparams, hparams_file)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_preparations(hparams)
    # Preparation may draw random numbers; what is built next must not
    # depend on whether the corpus was already there.
    sb.utils.seed_everything(hparams["seed"])

    tasks = bind_tasks(hparams["tasks"])
    model = build_model(hparams)
    hparams["checkpointer"].add_recoverable("model", model)
    # Random generators too, so a resumed run continues exactly
    hparams["checkpointer"].add_recoverable("random_state", RandomState())
    interleaving = dict(hparams["interleaving"])
    # An explicit ratio list (one integer per task, as an ablation's
    # single-task variants write it) replaces the tasks' own ratios.
    if interleaving.get("ratio") is None:
        interleaving["ratio"] = {n: t.ratio for n, t in tasks.items()}
    trained = trained_tasks(
        interleaving.get("schedule", "interleaved"),
        interleaving["ratio"],
        list(tasks),
    )
    min_samples = getattr(model.encoder, "min_samples", 1)
    datasets = dataio_prepare(hparams, min_samples / SAMPLE_RATE, trained)
    asr = first_of_kind(tasks, TRANSCRIPTION)
    if asr is not None:
        measure_decoding_rate(
            model, datasets["train"].get(asr.name), asr.text_key
        )

    brain = HarmoniFuseBrain(
        modules={"model": model},
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    train = datasets["train"]
    samplers = {
        task: task_batch_sampler(hparams, data, task)
        for task, data in train.items()
    }
    train_loader, sampler = make_interleaved_loader(
        {name: train.get(name) for name in tasks},
        samplers,
        num_workers=hparams["num_workers"],
        # Each epoch's iterator draws a base seed from this generator, not
        # from torch's global one that RandomState restores: otherwise a
        # run resumed mid-epoch makes that draw after the restore and its
        # dropout masks differ from the uninterrupted run's.
        loader_kwargs={
            "generator": torch.Generator().manual_seed(hparams["seed"])
        },
        **interleaving,
    )
    brain.train_sampler = sampler  # Brain calls set_epoch on it
    hparams["checkpointer"].add_recoverable("train_loader", train_loader)
    valid_loader = make_eval_loader(
        list(datasets["valid"].values()),
        hparams["eval_batch_size"],
        hparams["num_workers"],
    )

    fit_schedule_to_run(
        hparams.get("lr_scheduler"),
        hparams["epoch_counter"].limit,
        math.ceil(len(train_loader) / brain.grad_accumulation_factor),
    )
    brain.fit(hparams["epoch_counter"], train_loader, valid_loader)

    # Each task is tested with its own best checkpoint (checkpoint_keys).
    results, checkpoints = {}, {}
    for name, task, data in datasets["test"]:
        loader = make_eval_loader(
            [data], hparams["eval_batch_size"], hparams["num_workers"]
        )
        results[name] = brain.evaluate_set(loader, name, task)
        checkpoints[name] = brain.test_checkpoint
    report(results, {name: task for name, task, _ in datasets["test"]}, tasks)
    if hparams.get("export_folder"):
        # One model serves all tasks: the checkpoint_keys' export choice
        # (without a checkpoint that has its key, a warning names it).
        brain.recover_checkpoint("export")
        run_on_main(
            export_inference_folder,
            args=[
                hparams_file,
                overrides,
                brain.raw_model,
                hparams["export_folder"],
            ],
        )
    # Last: the file marks a run that finished (the ablation study skips it)
    run_on_main(
        write_test_results,
        args=[
            os.path.join(hparams["output_folder"], TEST_RESULTS_FILE),
            results,
            {
                name: {
                    "task": task,
                    "manifest": tasks[task].test[name],
                    "data_root": tasks[task].data_root,
                    "checkpoint": checkpoints[name],
                }
                for name, task, _data in datasets["test"]
            },
            trained,
        ],
    )


@main_process_only
def report(results, set_tasks, tasks):
    """Prints the test results of every set (once, under DDP).

    Arguments
    ---------
    results : dict
        Test set name -> statistics.
    set_tasks : dict
        Test set name -> the name of its task.
    tasks : dict
        Task name -> Task (each renders its own line).
    """
    for name, stats in results.items():
        line = f"Test {name}: " + tasks[set_tasks[name]].report_line(stats)
        logger.info(line)
        print(line)


if __name__ == "__main__":
    finished = False
    try:
        main()
        finished = True
    finally:
        # Under DDP: leave the process group before the interpreter exits;
        # a gloo group torn down at exit aborted a rank ("terminate called
        # without an active exception") after a finished run, twice. The
        # barrier first keeps one rank from closing its connections while
        # the other still talks (after a failure it could wait forever, so
        # only after a finished run).
        if torch.distributed.is_available() and (
            torch.distributed.is_initialized()
        ):
            if finished:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
