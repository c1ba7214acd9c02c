"""Training tests: exact resumption, clipping, DDP, the --debug run.

* A run killed mid-epoch and resumed from its intra-epoch checkpoint trains
  the same batches with the same losses and ends with the same weights and
  optimiser state as an uninterrupted run (CPU, fixed seed, dropout 0.1:
  the dropout masks are replayed too).
* ``HarmoniFuseBrain.optimizers_step`` clips the gradients of every
  parameter group with one norm (SpeechBrain's clips the first group only).
* ``torchrun`` with 2 CPU processes (gloo) trains the same task at every
  step on disjoint data, and tests with exactly the numbers and reports of
  one process.
* A ``--debug`` run of the tiny recipe tests (an untrained model's WER)
  and exports.

The runs go through the real ``train.py`` in subprocesses, with
``hparams/harmonifuse_tiny.yaml`` at toy size on a synthetic corpus prepared
once for the module. ``tests/train_probe.py`` runs ``train.py`` with a
recorder of the training batches (task, ids and exact loss per step, per
rank) and can kill the run right after a given optimiser step, as a
preempted job dies: nothing after the last intra-epoch checkpoint survives.
(SpeechBrain's ``--optimizer_step_limit`` cannot stand in for a kill: when
the limit is hit, ``fit`` validates and saves an end-of-epoch checkpoint, so
a resumed run skips the rest of the epoch; and from the command line
SpeechBrain 1.1.2 passes the limit as a string, which fails at the first
step.)
"""

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch

from harmonifuse_sb.brain import HarmoniFuseBrain
from recipes.Synthetic.synthetic_prepare import prepare_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join("hparams", "harmonifuse_tiny.yaml")
PROBE = os.path.join("tests", "train_probe.py")
CRASH_EXIT_CODE = 75  # tests/train_probe.py
TIMEOUT_S = 300

CORPUS = {
    "asr_train": 32,
    "asr_valid": 16,
    "asr_test": 16,
    "ser_train": 16,
    "ser_valid": 16,
    "ser_test": 16,
}
BATCH_SIZE = 4
# 8 ASR batches at ratio 2:1 (the YAML's): A A S A A S A A S A A
STEPS_PER_EPOCH = 11
TOY_SIZE = ["--enc_layers=2", "--enc_dim=64", "--llm_dim=64"]
# For the runs that compare ids, losses and logs, not decoding quality: a
# greedy decode instead of the YAML's 8-beam joint search.
GREEDY = ["--num_beams=1"]


def corpus_seed():
    """The YAML's ``corpus_seed``: train.py then finds the corpus ready."""
    with open(os.path.join(REPO, TINY_YAML), encoding="utf-8") as f:
        return int(re.search(r"^corpus_seed:\s*(\d+)", f.read(), re.M)[1])


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """The synthetic corpus, prepared as train.py would (it then skips)."""
    folder = str(tmp_path_factory.mktemp("synthetic"))
    prepare_synthetic(folder, seed=corpus_seed(), **CORPUS)
    return folder


def tiny_args(data_folder, output_folder, *extra):
    """train.py arguments: the tiny YAML at toy size on the test corpus."""
    corpus = ", ".join(f"{key}: {value}" for key, value in CORPUS.items())
    return [
        TINY_YAML,
        f"--data_folder={data_folder}",
        f"--output_folder={output_folder}",
        f"--corpus_size={{{corpus}}}",
        f"--batch_size={{asr: {BATCH_SIZE}, ser: {BATCH_SIZE}}}",
        *TOY_SIZE,
        "--rir_count=4",  # rooms are on in the YAML: 4 rooms, not 32
        "--noprogressbar",
        *extra,
    ]


def run(command, probe_log=None, crash_after=None):
    """Runs a command in the repository root, 1 thread per process."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HF_PROBE_")
        and key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["TRANSFORMERS_OFFLINE"] = "1"
    if probe_log is not None:
        env["HF_PROBE_LOG"] = str(probe_log)
    if crash_after is not None:
        env["HF_PROBE_CRASH_AFTER"] = str(crash_after)
    return subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def run_probed(args, probe_log, crash_after=None):
    """train.py under the probe, in one process."""
    command = [sys.executable, PROBE, "train.py", *args]
    return run(command, probe_log, crash_after)


def failure(result):
    """The end of a run's output, for assertion messages."""
    out, err = result.stdout[-3000:], result.stderr[-5000:]
    return f"exit {result.returncode}\n{out}\n{err}"


def read_steps(probe_log, rank=0):
    """The probe's records of one rank: one dict per training batch."""
    path = f"{probe_log}.rank{rank}.jsonl"
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def batch_key(record):
    """What a step trained on: (epoch, step, task, asr ids, ser ids)."""
    return (
        record["epoch"],
        record["step"],
        record["task"],
        tuple(record["asr_ids"]),
        tuple(record["ser_ids"]),
    )


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_identical(a, b, where):
    """Asserts two (nested) checkpoint objects are equal, tensors bitwise."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item()
            pytest.fail(f"{where}: differs, max abs diff {diff:.3g}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def last_epoch_checkpoint(output_folder, epoch):
    """The end-of-epoch checkpoint folder of ``epoch``."""
    found = []
    for folder in glob.glob(os.path.join(output_folder, "save", "CKPT+*")):
        with open(os.path.join(folder, "CKPT.yaml"), encoding="utf-8") as f:
            end_of_epoch = "end-of-epoch: true" in f.read()
        with open(os.path.join(folder, "counter.ckpt"), encoding="utf-8") as f:
            if end_of_epoch and int(f.read()) == epoch:
                found.append(folder)
    assert len(found) == 1, (output_folder, found)
    return found[0]


# ---------------------------------------------------------------- resume

EPOCHS = 2
CKPT_EVERY = 2  # --ckpt_interval_steps
# Optimiser steps after which the interrupted run is killed: step 5 of
# epoch 1, then step 5 of epoch 2. Each time the last checkpoint holds step
# 4 of that epoch, so step 5 is lost and trained again.
CRASHES = (5, STEPS_PER_EPOCH + 5)
# 0.1 (the YAML has 0.0): resumption must also replay the dropout masks.
# (A failure of that is told apart from one of the rest -- loader,
# optimiser, scheduler, counter -- by rerunning with --dropout=0.0.)
DROPOUTS = (0.1,)


@pytest.fixture(scope="module")
def resume_runs(data_folder, tmp_path_factory):
    """``get(dropout)``: the resume experiment, run once per dropout (a
    failed one is not run again by the next test)."""
    cache, failed = {}, {}

    def get(dropout):
        if dropout in failed:
            pytest.fail(f"the runs with dropout {dropout} failed: see above")
        if dropout not in cache:
            root = tmp_path_factory.mktemp(f"resume_dropout{dropout}")
            try:
                cache[dropout] = resume_experiment(data_folder, root, dropout)
            except BaseException:
                failed[dropout] = True
                raise
        return cache[dropout]

    return get


def resume_experiment(data_folder, root, dropout):
    """An uninterrupted run and one killed twice and resumed, same seed."""
    common = [f"--number_of_epochs={EPOCHS}", f"--dropout={dropout}", *GREEDY]
    straight = root / "straight"
    result = run_probed(
        tiny_args(data_folder, straight, *common), root / "straight_probe"
    )
    assert result.returncode == 0, failure(result)

    resumed = root / "resumed"
    args = tiny_args(
        data_folder, resumed, *common, f"--ckpt_interval_steps={CKPT_EVERY}"
    )
    launches = []
    for i, crash_after in enumerate((*CRASHES, None)):
        probe_log = root / f"resumed_probe{i}"
        result = run_probed(args, probe_log, crash_after)
        expected = 0 if crash_after is None else CRASH_EXIT_CODE
        assert result.returncode == expected, failure(result)
        launches.append(read_steps(probe_log))
    return {
        "straight": straight,
        "straight_steps": read_steps(root / "straight_probe"),
        "resumed": resumed,
        "launches": launches,
    }


def stitch(launches):
    """The steps whose updates survive: each launch overrides the steps of
    the previous one from where it resumed (those were not checkpointed)."""
    steps = []
    for records in launches:
        if steps:
            start = batch_key(records[0])[:2]
            keys = [batch_key(r)[:2] for r in steps]
            steps = steps[: keys.index(start)]
        steps += records
    return steps


@pytest.mark.parametrize("dropout", DROPOUTS)
def test_resume_replays_the_same_batches(resume_runs, dropout):
    straight = resume_runs(dropout)["straight_steps"]
    launches = resume_runs(dropout)["launches"]
    assert len(straight) == EPOCHS * STEPS_PER_EPOCH
    tasks = [r["task"] for r in straight[:STEPS_PER_EPOCH]]
    assert tasks == ["asr", "asr", "ser"] * 3 + ["asr", "asr"]

    # Each launch was killed right after its crash step, and the next one
    # resumed mid-epoch at the first step after the last checkpoint, which
    # the killed run had trained but not saved.
    for records, crash_after in zip(launches, CRASHES):
        assert records[-1]["optimizer_step"] + 1 == crash_after
    starts = [(r[0]["epoch"], r[0]["step"]) for r in launches]
    assert starts == [(1, 1), (1, 5), (2, 5)]
    assert batch_key(launches[0][-1]) == batch_key(launches[1][0])
    assert batch_key(launches[1][-1]) == batch_key(launches[2][0])

    stitched = stitch(launches)
    assert [batch_key(r) for r in stitched] == [batch_key(r) for r in straight]
    # Exact losses: the same weights and the same dropout masks at each step
    # (float.hex: bitwise).
    assert [(r["optimizer_step"], r["loss"]) for r in stitched] == [
        (r["optimizer_step"], r["loss"]) for r in straight
    ]


@pytest.mark.parametrize("dropout", DROPOUTS)
def test_resume_reaches_the_same_weights(resume_runs, dropout):
    runs = resume_runs(dropout)
    straight = last_epoch_checkpoint(runs["straight"], EPOCHS)
    resumed = last_epoch_checkpoint(runs["resumed"], EPOCHS)
    for name in ("model", "optimizer", "lr_scheduler"):
        assert_identical(
            load(os.path.join(straight, f"{name}.ckpt")),
            load(os.path.join(resumed, f"{name}.ckpt")),
            name,
        )
    # The exported weights (the best checkpoint's) too.
    assert_identical(
        load(runs["straight"] / "inference" / "model.ckpt"),
        load(runs["resumed"] / "inference" / "model.ckpt"),
        "inference/model.ckpt",
    )


@pytest.mark.parametrize("dropout", DROPOUTS)
def test_resume_logs_the_same_epoch_statistics(resume_runs, dropout):
    """The per-epoch log (train loss and per-task losses, lr, validation
    metrics) of the resumed run is the uninterrupted run's, line for line:
    the running per-task losses are checkpointed with the brain."""
    runs = resume_runs(dropout)
    straight = (runs["straight"] / "train_log.txt").read_text().splitlines()
    resumed = (runs["resumed"] / "train_log.txt").read_text().splitlines()
    epochs = [line for line in straight if line.startswith("epoch:")]
    assert len(epochs) == EPOCHS
    assert all("train loss_asr" in line for line in epochs)
    assert resumed == straight  # the test lines too


def test_dropout_is_live_in_the_resume_runs(resume_runs, data_folder, tmp_path):
    """The dropout runs test what they claim: a run without dropout, killed
    after its first step, trains the same first batch to another loss
    (same initial weights, no masks)."""
    with_dropout = resume_runs(0.1)["straight_steps"]
    probe_log = tmp_path / "probe"
    args = tiny_args(data_folder, tmp_path / "out", "--dropout=0.0", *GREEDY)
    result = run_probed(args, probe_log, crash_after=1)
    assert result.returncode == CRASH_EXIT_CODE, failure(result)
    without = read_steps(probe_log)
    assert len(without) == 1
    assert batch_key(without[0]) == batch_key(with_dropout[0])
    assert without[0]["loss"] != with_dropout[0]["loss"]


# ---------------------------------------------------------------- schedule


def test_open_linear_schedule_ends_with_the_run():
    """num_training_steps null: the decay ends at the run's last update,
    epochs x updates per epoch; the warm-up is the YAML's."""
    from speechbrain.nnet.schedulers import LinearWarmupScheduler

    from train import fit_schedule_to_run

    scheduler = LinearWarmupScheduler(0.002, 3, None)
    assert fit_schedule_to_run(scheduler, 2, 5) == 10
    assert scheduler.num_training_steps == 10
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    lrs = [scheduler(optimizer)[1] for _ in range(10)]
    assert lrs[:3] == pytest.approx([0.002 / 3, 0.002 * 2 / 3, 0.002])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # decays ...
    assert lrs[-1] == 0.0  # ... to 0 at the last update


def test_set_schedules_are_kept():
    """A length given in the YAML, and schedulers without one (Noam), are
    left as they are."""
    from speechbrain.nnet.schedulers import (
        LinearWarmupScheduler,
        NoamScheduler,
    )

    from train import fit_schedule_to_run

    given = LinearWarmupScheduler(0.002, 3, 1000)
    assert fit_schedule_to_run(given, 2, 5) is None
    assert given.num_training_steps == 1000
    noam = NoamScheduler(0.002, 3)
    assert fit_schedule_to_run(noam, 2, 5) is None
    assert not hasattr(noam, "num_training_steps")
    assert fit_schedule_to_run(None, 2, 5) is None


# ---------------------------------------------------------------- clipping


class ThreeGroups(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(4, 3))
        self.b = torch.nn.Parameter(torch.zeros(3))
        self.c = torch.nn.Parameter(torch.zeros(2, 2))


def sgd_three_groups(params):
    """SGD with lr 1: an update equals the (clipped) gradient."""
    params = list(params)
    groups = [{"params": params[:1]}, {"params": params[1:2]}]
    return torch.optim.SGD(groups + [{"params": params[2:]}], lr=1.0)


def clipped_updates(step, grad_scale, max_grad_norm=1.0):
    """Runs ``step(brain)`` on set gradients; returns (grads, updates)."""
    model = ThreeGroups()
    brain = HarmoniFuseBrain(
        modules={"model": model},
        opt_class=sgd_three_groups,
        run_opts={"device": "cpu", "max_grad_norm": max_grad_norm},
    )
    brain.init_optimizers()
    assert [len(g["params"]) for g in brain.optimizer.param_groups] == [
        1,
        1,
        1,
    ]
    generator = torch.Generator().manual_seed(0)
    grads = []
    for param in model.parameters():
        param.grad = grad_scale * torch.randn(param.shape, generator=generator)
        grads.append(param.grad.clone())
    before = [param.detach().clone() for param in model.parameters()]
    step(brain)
    updates = [b - p.detach() for b, p in zip(before, model.parameters())]
    assert all(param.grad is None for param in model.parameters())
    assert brain.optimizer_step == 1
    return grads, updates


def total_norm(tensors):
    return torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors]))


def test_optimizers_step_clips_every_group():
    grads, updates = clipped_updates(
        HarmoniFuseBrain.optimizers_step, grad_scale=1e3
    )
    assert total_norm(grads) > 1e3
    assert total_norm(updates) <= 1.0 + 1e-5
    assert total_norm(updates) == pytest.approx(1.0, rel=1e-5)
    # One norm over all groups: every gradient scaled by the same factor.
    scale = 1.0 / total_norm(grads)
    for grad, update in zip(grads, updates):
        torch.testing.assert_close(update, grad * scale)


def test_optimizers_step_leaves_small_gradients_alone():
    grads, updates = clipped_updates(
        HarmoniFuseBrain.optimizers_step, grad_scale=1e-2
    )
    assert total_norm(grads) < 1.0
    for grad, update in zip(grads, updates):
        torch.testing.assert_close(update, grad)


def test_speechbrain_optimizers_step_clips_only_the_first_group():
    """Why HarmoniFuseBrain overrides it: the stock step (SpeechBrain 1.1.2)
    leaves groups 2 and 3 unclipped."""
    grads, updates = clipped_updates(sb.Brain.optimizers_step, grad_scale=1e3)
    assert updates[0].norm() == pytest.approx(1.0, rel=1e-5)
    for grad, update in zip(grads[1:], updates[1:]):
        torch.testing.assert_close(update, grad)  # unclipped
    assert total_norm(updates) > 100.0


# ---------------------------------------------------------------- DDP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest_ids(data_folder, name):
    with open(os.path.join(data_folder, f"{name}.json"), encoding="utf-8") as f:
        return sorted(json.load(f))


# 16 utterances per validation and test set in batches of 6: 3 batches per
# set; a test set's go 2 to rank 0 and 1 to rank 1, validation's (both sets
# in one stage) 3 to each.
DDP_ARGS = [
    "--number_of_epochs=1",
    "--eval_batch_size=6",
    "--distributed_backend=gloo",
    *GREEDY,
]


@pytest.fixture(scope="module")
def ddp_run(data_folder, tmp_path_factory):
    """One epoch trained and tested by ``torchrun`` with 2 CPU processes
    (gloo), under the probe; shared by the DDP tests."""
    tmp = tmp_path_factory.mktemp("ddp")
    output, probe_log = tmp / "results", tmp / "probe"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        PROBE,
        "train.py",
        *tiny_args(data_folder, output, *DDP_ARGS),
    ]
    result = run(command, probe_log)
    assert result.returncode == 0, failure(result)
    return SimpleNamespace(output=output, probe_log=probe_log, result=result)


def test_ddp_two_processes_gloo(data_folder, ddp_run):
    output, result = ddp_run.output, ddp_run.result
    for name in ("synthetic_asr_test", "synthetic_ser_test"):
        assert re.search(rf"^Test {name}: ", result.stdout, re.M), failure(
            result
        )
    # The tiny YAML carries find_unused_parameters (an ASR batch leaves the
    # SER head unused, which DDP otherwise rejects).
    with open(output / "log.txt", encoding="utf-8") as f:
        assert "Run option find_unused_parameters from hparams" in f.read()

    ranks = [read_steps(ddp_run.probe_log, rank) for rank in (0, 1)]
    # Each rank: half the ASR batches (4) at ratio 2:1, the same length.
    assert [len(steps) for steps in ranks] == [5, 5]
    # The same task at every step.
    assert [r["task"] for r in ranks[0]] == [r["task"] for r in ranks[1]]
    assert [r["task"] for r in ranks[0]] == ["asr", "asr", "ser", "asr", "asr"]
    # Disjoint data: the ASR batches of both ranks are one pass over the
    # corpus; the SER batches (one per rank, of the 4 of a pass) differ.
    asr = [i for steps in ranks for r in steps for i in r["asr_ids"]]
    assert sorted(asr) == manifest_ids(data_folder, "asr_train")
    ser = [{i for r in steps for i in r["ser_ids"]} for steps in ranks]
    assert len(ser[0]) == len(ser[1]) == BATCH_SIZE
    assert not ser[0] & ser[1]
    for step0, step1 in zip(*ranks):
        assert step0["step"] == step1["step"]
        assert step0["optimizer_step"] == step1["optimizer_step"]


def test_ddp_evaluation_equals_one_process(data_folder, ddp_run, tmp_path):
    """Testing sharded over 2 ranks gives exactly the numbers and reports of
    one process: the checkpoint that ``torchrun`` trained and tested is
    tested again by one process (train.py finds the epoch done and only
    tests)."""
    sharded = ddp_run.output
    single = tmp_path / "single"
    shutil.copytree(sharded, single)
    reports = sorted(
        os.path.basename(p)
        for p in glob.glob(str(sharded / "*_synthetic_*_test.txt"))
    )
    assert reports == [
        "cer_synthetic_asr_test.txt",
        "ser_synthetic_ser_test.txt",
        "wer_synthetic_asr_test.txt",
    ]
    for name in reports:
        os.remove(single / name)
    args = [a for a in DDP_ARGS if not a.startswith("--distributed_backend")]
    result = run(
        [sys.executable, "train.py", *tiny_args(data_folder, single, *args)]
    )
    assert result.returncode == 0, failure(result)

    # The evaluation was split between the ranks.
    with open(sharded / "log.txt", encoding="utf-8") as f:
        log = f.read()
    assert log.count("6 batches from 2 processes (per process: [3, 3])") == 1
    assert log.count("3 batches from 2 processes (per process: [2, 1])") == 2

    def test_lines(output):
        return re.findall(r"^Test .*$", output, re.M)

    assert len(test_lines(result.stdout)) == 2
    assert test_lines(ddp_run.result.stdout) == test_lines(result.stdout)
    # WER, CER, UA, WA, macro-F1 and the losses, as logged (repr of floats)
    single_log = (single / "train_log.txt").read_text().splitlines()
    sharded_log = (sharded / "train_log.txt").read_text().splitlines()
    tests = [line for line in single_log if line.startswith("Epoch loaded")]
    assert len(tests) == 4  # copied from the sharded run, then its own
    assert "test WER" in tests[-2] and "test UA" in tests[-1]
    assert sharded_log[-2:] == tests[-2:]
    # The written alignments and the SER report, byte for byte.
    for name in reports:
        assert (sharded / name).read_bytes() == (single / name).read_bytes()


# ---------------------------------------------------------------- --debug


def test_debug_run_tests_and_exports(data_folder, tmp_path):
    output = tmp_path / "results"
    args = tiny_args(data_folder, output, "--debug")
    result = run([sys.executable, "train.py", *args])
    assert result.returncode == 0, failure(result)
    asr = re.search(
        r"^Test synthetic_asr_test: WER ([\d.]+)%  CER ([\d.]+)%$",
        result.stdout,
        re.M,
    )
    assert asr, failure(result)
    # 4 steps at the start of the warm-up leave the model untrained: every
    # word wrong, some letters right. Measured with seeds 1986 (the YAML's),
    # 1 and 2: WER 100.00, 118.68, 100.00; CER 63.72, 64.41, 65.51. Near 0
    # would mean the references leaked into the decoding; a CER near 100 an
    # empty or misaligned hypothesis.
    wer, cer = float(asr[1]), float(asr[2])
    assert 95.0 <= wer <= 130.0 and 55.0 <= cer <= 75.0, (wer, cer)
    with open(output / "wer_synthetic_asr_test.txt", encoding="utf-8") as f:
        header = f.read().splitlines()[:3]
    assert header[0].startswith(f"%WER {wer:.2f} [")
    assert header[2].startswith("Scored 16 sentences")  # all of asr_test
    assert re.search(
        r"^Test synthetic_ser_test: UA [\d.]+%  WA [\d.]+%  "
        r"macro-F1 [\d.]+%$",
        result.stdout,
        re.M,
    ), failure(result)
    assert (output / "wer_synthetic_asr_test.txt").is_file()
    assert (output / "ser_synthetic_ser_test.txt").is_file()
    for name in ("hyperparams.yaml", "model.ckpt", "label_encoder.txt"):
        assert (output / "inference" / name).is_file(), name
    # --debug keeps its checkpoints in a temporary folder.
    assert not glob.glob(str(output / "save" / "CKPT+*"))


def test_debug_run_with_rooms_and_codecs(data_folder, tmp_path):
    """Both switches on: the rooms are prepared next to the corpus and the
    training, which then reverberates a share of its utterances and draws
    the codecs, runs."""
    output = tmp_path / "results"
    rirs = tmp_path / "rirs"
    args = tiny_args(
        data_folder,
        output,
        "--debug",
        "--rooms=True",
        "--codecs=True",
        f"--rir_folder={rirs}",
        *GREEDY,
    )
    result = run([sys.executable, "train.py", *args])
    assert result.returncode == 0, failure(result)
    assert re.search(r"^Test synthetic_asr_test: WER", result.stdout, re.M)
    with open(rirs / "rirs.csv", encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 1 + 4  # tiny_args' rir_count


# ---------------------------------------------------------------- validation


def test_valid_search_interval(data_folder, tmp_path):
    """Epoch 1 of 2 with valid_search_interval 2: CTC greedy WER, no key;
    epoch 2 (the last) decodes with the LLM and is the best checkpoint."""
    output = tmp_path / "results"
    args = tiny_args(
        data_folder,
        output,
        "--number_of_epochs=2",
        "--valid_search_interval=2",
        "--valid_subset={asr: 5, ser: null}",
        *GREEDY,
    )
    result = run([sys.executable, "train.py", *args])
    assert result.returncode == 0, failure(result)
    lines = (output / "train_log.txt").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch:")]
    assert len(epochs) == 2
    assert "valid CTC_WER" in epochs[0] and "valid CTC_CER" in epochs[0]
    assert "valid WER" not in epochs[0]
    assert "combined_error" not in epochs[0]
    assert "valid UA" in epochs[0] and "valid loss_asr" in epochs[0]
    assert "valid WER" in epochs[1] and "combined_error" in epochs[1]
    assert "CTC_WER" not in epochs[1]
    tests = [line for line in lines if line.startswith("Epoch loaded")]
    assert tests and all(line.startswith("Epoch loaded: 2") for line in tests)
    assert "test WER" in tests[0]  # tests always decode


def test_valid_subset_is_fixed_and_seeded(data_folder):
    from harmonifuse_sb.dataio import load_manifest
    from train import valid_subset_ids

    data = load_manifest(
        os.path.join(data_folder, "asr_valid.json"), "asr", data_folder
    )
    everything = set(data.data_ids)
    assert valid_subset_ids(data, None, 1) == everything
    assert valid_subset_ids(data, len(everything) + 3, 1) == everything
    subset = valid_subset_ids(data, 5, 1234)
    assert len(subset) == 5 and subset < everything
    assert valid_subset_ids(data, 5, 1234) == subset
    assert valid_subset_ids(data, 5, 99) != subset
    with pytest.raises(ValueError, match="valid_subset: 0 "):
        valid_subset_ids(data, 0, 1234)
    with pytest.raises(KeyError, match="valid_subset_seed"):
        valid_subset_ids(data, 5, None)
