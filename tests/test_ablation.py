"""Tests of the ablation study: bootstrap, commands, a --debug study, resume.

* The paired bootstrap on constructed data: identical runs give a
  difference of 0 with the interval [0, 0]; a known difference lies in the
  interval and 0 does not; runs are paired by seed; the resampled metrics
  match ``EmotionStats`` and corpus-level WER.
* ``--print-commands`` prints one ordinary ``train.py`` command per
  unfinished run, with each variant's overrides.
* A ``--debug`` study of two variants and one seed on a small synthetic
  corpus, killed after its first run finished and started again: the
  finished run is not run again, the other one completes, and the report
  holds both variants, with the numbers that ``train.py`` reported and
  paired intervals recomputed from the per-utterance test reports.
* A single-task run (``ser_only``) trains, validates and tests SER only.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from harmonifuse_sb import ablation
from harmonifuse_sb.ablation import (
    VARIANTS,
    emotion_scores,
    error_rate,
    paired_bootstrap,
)
from harmonifuse_sb.metrics import EmotionStats
from harmonifuse_sb.results import read_test_results
from recipes.Synthetic.synthetic_prepare import prepare_synthetic
from tests.test_training import (
    BATCH_SIZE,
    CORPUS,
    GREEDY,
    REPO,
    TINY_YAML,
    TOY_SIZE,
    corpus_seed,
    failure,
    run,
)

STUDY_VARIANTS = ["harmonifuse", "naive_multitask"]
SEED = 7


# ---------------------------------------------------------------- bootstrap


def ser_run(true, pred, num_classes=4):
    return {
        "SER": {
            "true": np.asarray(true),
            "pred": np.asarray(pred),
            "num_classes": num_classes,
        }
    }


def asr_run(errors, tokens):
    outcomes = {"errors": np.asarray(errors), "tokens": np.asarray(tokens)}
    return {"WER": outcomes, "CER": outcomes}


@pytest.mark.parametrize("metric", ["WER", "CER", "UA", "WA", "macro_F1"])
def test_identical_runs_give_zero_interval(metric):
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    errors, tokens = rng.integers(0, 3, 50), rng.integers(1, 9, 50)
    runs = [dict(ser_run(true, pred), **asr_run(errors, tokens))] * 2
    result = paired_bootstrap(metric, runs, runs, replicates=200)
    assert result == {
        "difference": 0.0,
        "ci": [0.0, 0.0],
        "seeds": 2,
        "utterances": 50,
    }


def test_known_accuracy_difference_lies_in_interval():
    # 2000 utterances: the variant is right on 80 %, the baseline on 60 %.
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, 2000)
    wrong = (true + 1) % 4
    variant = np.where(rng.random(2000) < 0.8, true, wrong)
    baseline = np.where(rng.random(2000) < 0.6, true, wrong)
    result = paired_bootstrap(
        "WA", [ser_run(true, variant)], [ser_run(true, baseline)]
    )
    observed = (variant == true).mean() - (baseline == true).mean()
    assert result["difference"] == pytest.approx(observed)
    low, high = result["ci"]
    assert low < 0.2 < high  # the true difference
    assert low > 0.1  # and clearly not 0
    # The width matches the normal approximation of a paired difference.
    d = (variant == true).astype(float) - (baseline == true)
    half_width = 1.96 * d.std() / np.sqrt(len(d))
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_known_wer_difference():
    # Every utterance has 10 words; the variant makes 1 error more on each
    # of the first 50 of 100: its WER is 5 points higher.
    tokens = np.full(100, 10)
    base_errors = np.random.default_rng(2).integers(0, 4, 100)
    var_errors = base_errors + (np.arange(100) < 50)
    result = paired_bootstrap(
        "WER", [asr_run(var_errors, tokens)], [asr_run(base_errors, tokens)]
    )
    assert result["difference"] == pytest.approx(5.0)
    assert result["ci"][0] < 5.0 < result["ci"][1]
    assert result["ci"][0] > 0


def test_runs_are_paired_by_seed():
    # Seed 1: variant better by 1 error; seed 2: worse by 1. Mean: 0, and
    # every resample too (the same utterances for both seeds).
    tokens = np.full(20, 5)
    base = np.zeros(20, dtype=int)
    better, worse = base.copy(), base + 1
    base_hi = base + 1
    variant_runs = [asr_run(better, tokens), asr_run(worse, tokens)]
    baseline_runs = [asr_run(base_hi, tokens), asr_run(base, tokens)]
    result = paired_bootstrap("WER", variant_runs, baseline_runs)
    assert result["difference"] == 0.0
    assert result["ci"] == [0.0, 0.0]


def test_unpaired_runs_are_rejected():
    run = asr_run([1, 0], [3, 3])
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap("WER", [run, run], [run])
    with pytest.raises(ValueError, match="same test set"):
        paired_bootstrap("WER", [run], [asr_run([1], [3])])


def test_resampled_metrics_match_emotion_stats():
    # Class 3 never occurs in the targets and class 2 is never predicted:
    # UA and macro-F1 must skip and count them as EmotionStats does.
    rng = np.random.default_rng(3)
    true = rng.integers(0, 3, 40)
    pred = rng.choice([0, 1, 3], 40)
    idx = rng.integers(0, 40, size=(5, 40))
    scores = emotion_scores(ser_run(true, pred)["SER"], idx)
    for r in range(5):
        stats = EmotionStats(["a", "b", "c", "d"])
        stats.append([str(i) for i in range(40)], pred[idx[r]], true[idx[r]])
        summary = stats.summarize()
        for key in ("UA", "WA", "macro_F1"):
            assert scores[key][r] == pytest.approx(summary[key]), key


def test_error_rate_is_corpus_level():
    outcomes = {"errors": np.array([1, 3]), "tokens": np.array([2, 8])}
    # Corpus level: 4 / 10, not the mean of 50 % and 37.5 %.
    assert error_rate(outcomes, np.array([[0, 1]]))[0] == pytest.approx(40.0)


# ---------------------------------------------------------------- commands


def test_print_commands(tmp_path, capsys):
    output = tmp_path / "study"
    finished = output / "no_gate" / "1"
    finished.mkdir(parents=True)
    (finished / "test_results.json").write_text('{"test_sets": {}}')
    status = ablation.main(
        [
            TINY_YAML,
            "--variants",
            "no_gate",
            "ser_only",
            "--seeds",
            "1",
            "2",
            f"--output_folder={output}",
            "--print-commands",
            "--data_folder=/data",
        ]
    )
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    # no_gate seed 1 is finished: 3 commands remain.
    assert len(lines) == 3
    commands = [shlex.split(line) for line in lines]
    assert [c[1:3] for c in commands] == [["train.py", TINY_YAML]] * 3
    assert commands[0][3:] == [
        "--fusion={mode: prompt}",
        "--gate={enabled: false}",
        "--llm_fusion={mode: prompt}",
        "--interleaving={schedule: interleaved}",
        "--seed=2",
        f"--output_folder={output}/no_gate/2",
        "--data_folder=/data",
    ]
    assert (
        "--interleaving={schedule: interleaved, ratio: [0, 1], "
        "epoch_task: ser}" in commands[1]
    )
    assert f"--output_folder={output}/ser_only/1" in commands[1]


def test_kept_run_with_other_command_is_flagged(tmp_path, capsys):
    output = tmp_path / "study"
    folder = output / "no_gate" / "1"
    folder.mkdir(parents=True)
    (folder / "test_results.json").write_text('{"test_sets": {}}')
    before = ["python", "train.py", TINY_YAML, "--number_of_epochs=1"]
    (folder / "study_run.json").write_text(
        json.dumps({"command": before, "wall_time_s": 1.0})
    )
    args, extra = ablation.parse_args(
        [
            TINY_YAML,
            "--variants=no_gate",
            "--seeds=1",
            f"--output_folder={output}",
            f"--train-script={os.path.join(REPO, 'train.py')}",
        ]
    )
    ablation.run_study(args, extra)  # runs nothing: the run is finished
    out = capsys.readouterr().out
    assert "no_gate seed 1: finished before, kept" in out
    assert (
        f"warning: it was run as train.py {TINY_YAML} --number_of_epochs=1;"
        in out
    )


def test_every_variant_sets_every_switch():
    for name, (_, overrides) in VARIANTS.items():
        assert overrides["fusion"]["mode"] in ("prompt", "static", "last")
        assert overrides["llm_fusion"]["mode"] in ("prompt", "static", "last")
        assert isinstance(overrides["gate"]["enabled"], bool), name
        if overrides["gate"]["enabled"]:
            # a gated variant fixes its start and its budget too
            for key in ("placement", "init_bias", "sparsity_weight"):
                assert key in overrides["gate"], (name, key)
        assert overrides["interleaving"]["schedule"] in ("interleaved", "mixed")
    assert VARIANTS["naive_multitask"][1] == {
        "fusion": {"mode": "static"},
        "gate": {"enabled": False},
        "llm_fusion": {"mode": "last"},
        "interleaving": {"schedule": "mixed"},
    }
    # the interleaved baseline differs from it by the schedule alone
    naive_interleaved = VARIANTS["naive_interleaved"][1]
    assert naive_interleaved == dict(
        VARIANTS["naive_multitask"][1],
        interleaving={"schedule": "interleaved"},
    )
    # single-task runs are the harmonifuse model on one task's data
    for name in ("asr_only", "ser_only"):
        overrides = VARIANTS[name][1]
        for key in ("fusion", "gate", "llm_fusion"):
            assert overrides[key] == VARIANTS["harmonifuse"][1][key]


def test_yaml_without_a_switch_is_named(tmp_path):
    with open(os.path.join(REPO, TINY_YAML), encoding="utf-8") as f:
        text = f.read()
    yaml_file = tmp_path / "no_gate_switch.yaml"
    yaml_file.write_text(text.replace("    enabled: True\n", ""))
    with pytest.raises(ValueError, match=r"`gate` has no key \['enabled'\]"):
        ablation.check_yaml_has_switches(str(yaml_file), ["no_gate"])
    # Variants that leave the gate on set it too, so they fail the same way
    with pytest.raises(ValueError, match="harmonifuse"):
        ablation.check_yaml_has_switches(str(yaml_file), ["harmonifuse"])


def test_bad_arguments(capsys):
    for argv, match in [
        (["--variants", "nope"], "unknown variants"),
        (["--seed=3"], "--seeds"),
        (["--gate={enabled: true}"], "variants override"),
        (["stray"], "unrecognised argument"),
    ]:
        with pytest.raises(SystemExit):
            ablation.parse_args([TINY_YAML, *argv])
        assert match in capsys.readouterr().err


# ---------------------------------------------------------------- studies


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """The synthetic corpus, prepared as train.py would (it then skips)."""
    folder = str(tmp_path_factory.mktemp("synthetic"))
    prepare_synthetic(folder, seed=corpus_seed(), **CORPUS)
    return folder


def study_command(data_folder, output, variants=STUDY_VARIANTS):
    corpus = ", ".join(f"{key}: {value}" for key, value in CORPUS.items())
    return [
        sys.executable,
        "-m",
        "harmonifuse_sb.ablation",
        TINY_YAML,
        "--variants",
        *variants,
        "--seeds",
        str(SEED),
        f"--output_folder={output}",
        "--debug",
        "--bootstrap=200",
        f"--data_folder={data_folder}",
        f"--corpus_size={{{corpus}}}",
        f"--batch_size={{asr: {BATCH_SIZE}, ser: {BATCH_SIZE}}}",
        *TOY_SIZE,
        *GREEDY,  # the tests compare runs with their report, not quality
        "--noprogressbar",
    ]


@pytest.fixture(scope="module")
def killed_study(data_folder, tmp_path_factory):
    """A --debug study killed once its first run finished, then rerun.

    Returns the output folder, the first run's results file as it was at
    the kill (content, mtime), and the second invocation's result.
    """
    output = tmp_path_factory.mktemp("study") / "ablation"
    command = study_command(data_folder, output)
    first_results = output / STUDY_VARIANTS[0] / str(SEED) / "test_results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    study = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill it whole
    )
    deadline = time.time() + 300
    try:
        while not first_results.exists():
            if study.poll() is not None or time.time() > deadline:
                pytest.fail(
                    f"the study ended (exit {study.returncode}) or "
                    "timed out before its first run finished"
                )
            time.sleep(0.1)
        # Kill it (and its running train.py) as a preempted job dies
        os.killpg(study.pid, signal.SIGKILL)
    finally:
        study.wait()
    killed = {
        "content": first_results.read_text(),
        "mtime": first_results.stat().st_mtime_ns,
        "second_finished": (
            output / STUDY_VARIANTS[1] / str(SEED) / "test_results.json"
        ).exists(),
    }
    result = run(command)
    return output, killed, result


def test_killed_study_resumes_without_rerunning(killed_study):
    output, killed, result = killed_study
    assert result.returncode == 0, failure(result)
    assert not killed["second_finished"]  # the kill hit the second run
    first = output / STUDY_VARIANTS[0] / str(SEED)
    assert f"{STUDY_VARIANTS[0]} seed {SEED}: finished before, kept" in (
        result.stdout
    )
    assert "warning" not in result.stdout  # the same command both times
    assert (first / "test_results.json").stat().st_mtime_ns == killed["mtime"]
    assert (first / "test_results.json").read_text() == killed["content"]
    # train.py ran once in that folder
    log = (first / "study_stdout.txt").read_text()
    assert log.count("\n$ ") == 1, log[-2000:]
    second = output / STUDY_VARIANTS[1] / str(SEED)
    assert (second / "test_results.json").is_file()
    assert "[1/1] naive_multitask seed 7" in result.stdout


def table_rows(markdown, heading):
    """The data rows of the first table after a heading line."""
    section = markdown.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| variant"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows and not line.startswith("|"):
            break
    return rows


def test_report_rows(killed_study):
    output, _, result = killed_study
    assert result.returncode == 0, failure(result)
    markdown = (output / "ablation.md").read_text()
    report = json.loads((output / "ablation.json").read_text())
    runs = {
        v: read_test_results(str(output / v / str(SEED) / "test_results.json"))
        for v in STUDY_VARIANTS
    }
    for name, metrics in [
        ("synthetic_asr_test", ["WER", "CER"]),
        ("synthetic_ser_test", ["UA", "WA", "macro_F1"]),
    ]:
        rows = table_rows(markdown, f"## {name} ")
        assert [row[0] for row in rows] == STUDY_VARIANTS
        table = report["test_sets"][name]
        for row in rows:
            variant = row[0]
            assert row[1] == "1"  # seeds
            stats = runs[variant]["test_sets"][name]["stats"]
            for cell, metric in zip(row[2:], metrics):
                scale = 1 if metric in ("WER", "CER") else 100
                mean = table["variants"][variant][metric]["mean"]
                assert mean == pytest.approx(scale * stats[metric])
                assert cell == f"{mean:.2f} ± n/a"  # one seed: no std
        # The paired row: the point difference is that of train.py's numbers
        # (recomputed from the per-utterance reports), with an interval.
        diffs = table_rows(markdown.split(f"## {name} ")[1], "interval")
        assert [row[0] for row in diffs] == ["harmonifuse"]
        for metric in metrics:
            entry = table["vs_baseline"]["harmonifuse"][metric]
            scale = 1 if metric in ("WER", "CER") else 100
            expected = scale * (
                runs["harmonifuse"]["test_sets"][name]["stats"][metric]
                - runs["naive_multitask"]["test_sets"][name]["stats"][metric]
            )
            assert entry["difference"] == pytest.approx(expected, abs=1e-9)
            low, high = entry["ci"]
            assert low <= entry["difference"] <= high
            assert (
                entry["utterances"] == CORPUS[name.removeprefix("synthetic_")]
            )
    assert "## Does HarmoniFuse beat the naive multitask model?" in markdown
    for picture in ablation_pictures():
        assert (output / picture).stat().st_size > 1000, picture
        assert f"![{picture}]({picture})" in markdown
    # Layer weights of the static baseline do not depend on the task.
    assert report["layer_weights"]["naive_multitask"]["l1"] == 0.0
    weights = report["layer_weights"]["harmonifuse"]
    assert len(weights["asr"]) == int(TOY_SIZE[0].split("=")[1]) + 1
    assert sum(weights["ser"]) == pytest.approx(1.0)


def ablation_pictures():
    from harmonifuse_sb.plot import CURVES_PNG, GATES_PNG, LAYER_WEIGHTS_PNG

    return [LAYER_WEIGHTS_PNG, GATES_PNG, CURVES_PNG]


def test_plot_command(killed_study, tmp_path):
    output, _, _ = killed_study
    first = output / STUDY_VARIANTS[0] / str(SEED)
    results = read_test_results(str(first / "test_results.json"))
    ser = results["test_sets"]["synthetic_ser_test"]
    result = run(
        [
            sys.executable,
            "-m",
            "harmonifuse_sb.plot",
            str(first / "inference"),
            f"--manifest={ser['manifest']}",
            f"--data-root={ser['data_root']}",
            "--max-utterances=4",
            f"--output-dir={tmp_path}",
        ]
    )
    assert result.returncode == 0, failure(result)
    match = re.search(
        r"^L1 distance between the ASR and SER layer weights: ([\d.]+)$",
        result.stdout,
        re.M,
    )
    assert match, failure(result)
    report = json.loads((output / "ablation.json").read_text())
    l1 = report["layer_weights"]["harmonifuse"]["l1"]
    assert float(match[1]) == pytest.approx(l1, abs=1e-4)
    assert re.search(
        r"^gate asr: mean [\d.]+ over \d+ values$", result.stdout, re.M
    )
    assert (tmp_path / "layer_weights.png").is_file()
    assert (tmp_path / "gate_distributions.png").is_file()


def test_ser_only_run_trains_and_tests_ser_only(data_folder, tmp_path):
    output = tmp_path / "ser_only"
    command = ablation.train_command(
        TINY_YAML, "ser_only", SEED, str(output), debug=True
    )
    corpus = ", ".join(f"{key}: {value}" for key, value in CORPUS.items())
    command += [
        f"--data_folder={data_folder}",
        f"--corpus_size={{{corpus}}}",
        f"--batch_size={{asr: {BATCH_SIZE}, ser: {BATCH_SIZE}}}",
        *TOY_SIZE,
        "--noprogressbar",
    ]
    result = run(command)
    assert result.returncode == 0, failure(result)
    results = read_test_results(str(output / "test_results.json"))
    assert results["tasks"] == ["ser"]
    assert list(results["test_sets"]) == ["synthetic_ser_test"]
    assert not (output / "wer_synthetic_asr_test.txt").exists()
    log = (output / "train_log.txt").read_text()
    assert "loss_ser" in log and "loss_asr" not in log and "WER" not in log
    assert "Test synthetic_asr_test" not in result.stdout


def test_run_that_does_not_exit_after_its_results_is_stopped(
    tmp_path, monkeypatch
):
    # A "train.py" that writes its results and then hangs at exit.
    monkeypatch.setattr(ablation.runner, "EXIT_GRACE_S", 1)
    monkeypatch.setattr(ablation.runner, "POLL_S", 0.2)
    folder = tmp_path / "run"
    hang = (
        "import pathlib, sys, time; "
        "pathlib.Path(sys.argv[1], 'test_results.json').write_text('{}'); "
        "time.sleep(600)"
    )
    start = time.time()
    wall = ablation.run_one([sys.executable, "-c", hang, str(folder)], folder)
    assert wall < 60 and time.time() - start < 60
    log = (folder / "study_stdout.txt").read_text()
    assert "had not exited 1 s later: stopped." in log
    record = json.loads((folder / "study_run.json").read_text())
    assert record["command"][-1] == str(folder)


# ---------------------------------------------------------------- parallel


def fake_run(folder, seconds=0.0, fail=False):
    """A "train.py" command that records when it ran, with what, and ends."""
    script = (
        "import json, os, pathlib, sys, time\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        "start = time.time()\n"
        f"time.sleep({seconds})\n"
        f"if {fail}: sys.exit(3)\n"
        "(folder / 'ran.json').write_text(json.dumps({'start': start, "
        "'end': time.time(), 'argv': sys.argv[2:], "
        "'threads': os.environ.get('OMP_NUM_THREADS')}))\n"
        "(folder / 'test_results.json').write_text('{}')\n"
    )
    return [sys.executable, "-c", script, str(folder)]


@pytest.mark.parametrize(
    "cpus, jobs, threads",
    # the cores shared out, rounded down, at least 1 (unknown count: 1)
    [(16, 2, "8"), (7, 2, "3"), (2, 2, "1"), (3, 4, "1"), (None, 2, "1")],
)
def test_job_slots_share_the_cores(monkeypatch, cpus, jobs, threads):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    slots = ablation.job_slots(jobs, None, {"PATH": "/bin"})
    assert [args for args, _ in slots] == [[]] * jobs
    assert [env["OMP_NUM_THREADS"] for _, env in slots] == [threads] * jobs
    assert [env["PATH"] for _, env in slots] == ["/bin"] * jobs


def test_job_slots():
    slots = ablation.job_slots(None, ["cuda:0", "cuda:1"], {})
    assert [args for args, _ in slots] == [
        ["--device=cuda:0"],
        ["--device=cuda:1"],
    ]
    assert all("OMP_NUM_THREADS" not in env for _, env in slots)
    # a user's thread count is kept
    slots = ablation.job_slots(2, None, {"OMP_NUM_THREADS": "3"})
    assert [env["OMP_NUM_THREADS"] for _, env in slots] == ["3", "3"]
    assert ablation.job_slots(None, None, {}) == [([], {})]
    with pytest.raises(ValueError, match="one device per job"):
        ablation.job_slots(3, ["cuda:0", "cuda:1"], {})


def test_parallel_runs_first_alone_then_two_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation.runner, "POLL_S", 0.05)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    folders = [tmp_path / f"run{i}" for i in range(5)]
    todo = [
        ("v", i, str(folder), fake_run(folder, seconds=1.5))
        for i, folder in enumerate(folders)
    ]
    slots = ablation.job_slots(None, ["cuda:0", "cuda:1"])
    ablation._run_all(todo, slots)
    ran = [json.loads((f / "ran.json").read_text()) for f in folders]
    # the first one ran alone (it prepares the shared data)
    assert all(ran[0]["end"] <= other["start"] for other in ran[1:])
    # then two at a time: the second and the third overlap
    assert ran[2]["start"] < ran[1]["end"] and ran[1]["start"] < ran[2]["end"]
    # never more than two at once, each on its own device
    for r in ran[1:]:
        at_once = [o for o in ran if o["start"] < r["start"] < o["end"]]
        assert len(at_once) <= 1
        assert r["argv"] in (["--device=cuda:0"], ["--device=cuda:1"])
        if at_once:
            assert at_once[0]["argv"] != r["argv"]
    for folder in folders:
        record = json.loads((folder / "study_run.json").read_text())
        assert record["wall_time_s"] >= 1.5


def test_runs_that_share_nothing_start_together(tmp_path, monkeypatch):
    # The IEMOCAP folds (harmonifuse_sb.folds) share no preparation: with
    # first_alone=False the first run does not hold the other slots idle.
    monkeypatch.setattr(ablation.runner, "POLL_S", 0.05)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    folders = [tmp_path / f"run{i}" for i in range(3)]
    todo = [
        ("fold", i, str(f), fake_run(f, seconds=1.5))
        for i, f in enumerate(folders)
    ]
    ablation._run_all(todo, ablation.job_slots(2, None), first_alone=False)
    ran = [json.loads((f / "ran.json").read_text()) for f in folders]
    # the first and the second ran at once
    assert ran[1]["start"] < ran[0]["end"] and ran[0]["start"] < ran[1]["end"]
    # each with its slot's share of the threads, the first one too
    assert [r["threads"] for r in ran] == ["4", "4", "4"]
    # the third waited for a free slot
    assert ran[2]["start"] >= min(ran[0]["end"], ran[1]["end"])


def test_cpu_jobs_share_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation.runner, "POLL_S", 0.05)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    folders = [tmp_path / f"run{i}" for i in range(3)]
    todo = [("v", i, str(f), fake_run(f)) for i, f in enumerate(folders)]
    ablation._run_all(todo, ablation.job_slots(2, None))
    ran = [json.loads((f / "ran.json").read_text()) for f in folders]
    assert ran[0]["threads"] is None  # alone: every thread
    assert [r["threads"] for r in ran[1:]] == ["4", "4"]
    assert all(r["argv"] == [] for r in ran)


def test_parallel_failure_starts_no_other_run(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation.runner, "POLL_S", 0.05)
    folders = [tmp_path / f"run{i}" for i in range(6)]
    todo = [("v", 0, str(folders[0]), fake_run(folders[0]))]
    todo.append(("bad", 1, str(folders[1]), fake_run(folders[1], fail=True)))
    todo.append(("v", 2, str(folders[2]), fake_run(folders[2], seconds=1)))
    todo += [("v", i, str(f), fake_run(f)) for i, f in enumerate(folders[3:])]
    with pytest.raises(RuntimeError, match=r"run1 failed \(exit 3\)"):
        ablation._run_all(todo, ablation.job_slots(2, None))
    # the run beside the failed one finished; none was started after it
    assert (folders[2] / "test_results.json").is_file()
    assert not any((f / "study_stdout.txt").exists() for f in folders[3:])


def test_jobs_arguments_are_checked(capsys):
    for argv, message in [
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--jobs", "3", "--devices", "cuda:0"], "one device per job"),
        (["--devices", "cuda:0", "--device=cpu"], "give one of the two"),
    ]:
        with pytest.raises(SystemExit):
            ablation.parse_args([TINY_YAML, *argv])
        assert message in capsys.readouterr().err


def test_preparations_wait_for_each_other(tmp_path):
    # Two train.py processes prepare the same data folder at once: the
    # second waits for the first's lock, so the preparations do not overlap.
    # Both processes import train.py first, then start together.
    script = (
        "import json, os, pathlib, sys, time\n"
        "sys.path.insert(0, {repo!r})\n"
        "import train\n"
        "ready = pathlib.Path({log!r} + '.ready' + sys.argv[1])\n"
        "ready.write_text('')\n"
        "while len(list(pathlib.Path({log!r}).parent.glob('log.ready*')))"
        " < 2:\n"
        "    time.sleep(0.01)\n"
        "def prepare():\n"
        "    start = time.time(); time.sleep(1.0)\n"
        "    with open({log!r}, 'a') as f:\n"
        "        f.write(json.dumps([start, time.time()]) + '\\n')\n"
        "train.run_preparations({{'data_folder': {data!r}, "
        "'data_preparation': prepare}})\n"
    ).format(repo=REPO, log=str(tmp_path / "log"), data=str(tmp_path / "data"))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=REPO)
        for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    spans = sorted(
        json.loads(line) for line in (tmp_path / "log").read_text().splitlines()
    )
    assert len(spans) == 2 and spans[0][1] <= spans[1][0]


def test_preparation_lock_path(tmp_path, monkeypatch):
    import train

    data = tmp_path / "data"
    assert train.preparation_lock_path({"data_folder": str(data)}) == str(
        data / ".prepare.lock"
    )
    given = str(tmp_path / "my.lock")
    hparams = {"data_folder": str(data), "preparation_lock": given}
    assert train.preparation_lock_path(hparams) == given
    # a corpus folder that cannot be written: a lock in the temporary folder
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    path = train.preparation_lock_path({"data_folder": str(data)})
    assert os.path.dirname(path) == tempfile.gettempdir()
    assert path == train.preparation_lock_path({"data_folder": str(data)})


def test_yaml_overrides_per_variant(tmp_path):
    text = open(os.path.join(REPO, TINY_YAML), encoding="utf-8").read()
    yaml_file = tmp_path / "with_overrides.yaml"
    yaml_file.write_text(
        text + "\nablation_overrides:\n"
        "    ser_only: {number_of_epochs: 8, interleaving: {ratio: [0, 2]}}\n"
    )
    found = ablation.yaml_variant_overrides(str(yaml_file))
    assert found == {
        "ser_only": {"number_of_epochs": 8, "interleaving": {"ratio": [0, 2]}}
    }
    command = ablation.train_command(
        str(yaml_file),
        "ser_only",
        1,
        "out",
        ["--lr=1"],
        False,
        None,
        found["ser_only"],
    )
    assert command[3:] == [
        "--fusion={mode: prompt}",
        "--gate={enabled: true, placement: fused, init_bias: 4.0, "
        "sparsity_weight: 0.0}",
        "--llm_fusion={mode: prompt}",
        "--interleaving={schedule: interleaved, ratio: [0, 2], "
        "epoch_task: ser}",
        "--number_of_epochs=8",
        "--seed=1",
        "--output_folder=out",
        "--lr=1",  # the study's own arguments come last
    ]
    # a YAML without the key has none
    assert ablation.yaml_variant_overrides(os.path.join(REPO, TINY_YAML)) == {}


@pytest.mark.parametrize(
    "block, message",
    [
        ("    nope: {lr: 1}\n", r"unknown variants \['nope'\]"),
        ("    ser_only: 8\n", "must map variant names"),
        ("    ser_only: {lr: !ref <lr>}\n", "plain values"),
    ],
)
def test_bad_yaml_overrides_are_named(tmp_path, block, message, capsys):
    text = open(os.path.join(REPO, TINY_YAML), encoding="utf-8").read()
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(text + "\nablation_overrides:\n" + block)
    with pytest.raises(ValueError, match=message):
        ablation.yaml_variant_overrides(str(yaml_file))
    # the command says so before running anything
    assert ablation.main([str(yaml_file), "--print-commands"]) == 2
    assert message.split("\\")[0].split("(")[0] in capsys.readouterr().err


def test_command_line_key_wins_over_yaml_override():
    # SpeechBrain rejects a key given twice: the study's own --key=value
    # replaces the YAML's ablation_overrides for that key.
    command = ablation.train_command(
        "h.yaml",
        "ser_only",
        1,
        "out",
        ["--number_of_epochs=5"],
        yaml_overrides={"number_of_epochs": 8, "lr": 0.1},
    )
    epochs = [a for a in command if a.startswith("--number_of_epochs")]
    assert epochs == ["--number_of_epochs=5"]
    assert "--lr=0.1" in command


FAKE_TRAIN = """
import os, pathlib, sys, time
folder = pathlib.Path(sys.argv[-1].split("=", 1)[1])
folder.mkdir(parents=True, exist_ok=True)
(folder / "pid").write_text(str(os.getpid()))
if folder.parts[-2:] == ("harmonifuse", "1"):
    (folder / "test_results.json").write_text("{}")
    sys.exit(0)
time.sleep(600)
"""


def test_terminated_parallel_study_stops_its_runs(tmp_path):
    # A scheduler's SIGTERM to the study stops the runs it started.
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    output = tmp_path / "study"
    study = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harmonifuse_sb.ablation",
            TINY_YAML,
            "--variants",
            "harmonifuse",
            "--seeds",
            "1",
            "2",
            "3",
            "--jobs",
            "2",
            f"--train-script={script}",
            f"--output_folder={output}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pids = [output / "harmonifuse" / s / "pid" for s in ("2", "3")]
    deadline = time.time() + 120
    while not all(p.exists() and p.read_text() for p in pids):
        assert study.poll() is None and time.time() < deadline
        time.sleep(0.05)
    study.send_signal(signal.SIGTERM)
    study.wait(timeout=60)
    assert study.returncode != 0
    for pid_file in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)
