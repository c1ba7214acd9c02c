"""The training benchmark at toy size: it runs the paper's YAML through the
real loaders and training step, and reports what it promises.

``benchmarks/bench_train.py --size tiny`` builds WavLM Large's and
Qwen2.5-1.5B's layouts at toy size, saves and loads them through
``hparams/harmonifuse.yaml`` (LLM in bf16, LoRA, bf16 autocast on the CPU,
as at full size) and times HarmoniFuse, the plain speech LM and the memory
options. The full-size run is the benchmark's (docs/performance.md).
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    "harmonifuse",
    "plain (static, gate off)",
    "+ LLM checkpointing",
    "+ bf16 encoder outputs",
    "+ both",
]
STEPS = 2
WARMUP = 1
AA = "harmonifuse (A/A copy)"


def load_bench():
    """benchmarks/bench_train.py as a module (benchmarks is no package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_train", os.path.join(REPO, "benchmarks", "bench_train.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One toy-size run; its JSON output."""
    folder = tmp_path_factory.mktemp("bench_train")
    out = folder / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join("benchmarks", "bench_train.py"),
            "--size=tiny",
            "--device=cpu",
            f"--steps={STEPS}",
            f"--warmup={WARMUP}",
            "--flops=on",
            f"--workdir={folder / 'models'}",
            f"--json={out}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    with open(out, encoding="utf-8") as f:
        return json.load(f), result.stdout


def test_prints_the_ratio_and_the_table(bench):
    data, stdout = bench
    assert "HarmoniFuse / plain step time (paired" in stdout
    for name in CONFIGS:
        assert f"\n{name:<28} asr " in stdout, name
    ratios = data["ratios"]
    assert set(ratios) == {"asr", "ser", "all steps", "A/A"}
    for name, r in ratios.items():
        assert 0 < r["low"] <= r["ratio"] <= r["high"] < math.inf, name
        assert r["n"] == (2 * STEPS if name in ("all steps", "A/A") else STEPS)
    line = re.search(r"A/A control: ([\d.]+) \[([\d.]+), ([\d.]+)\]", stdout)
    assert line, stdout[-2000:]
    assert float(line[1]) == pytest.approx(ratios["A/A"]["ratio"], abs=1e-3)


def test_every_configuration_and_task_is_measured(bench):
    data, _ = bench
    assert sorted(data["results"]) == sorted(CONFIGS)
    for name, summary in data["results"].items():
        for task in ("asr", "ser"):
            row = summary[task]
            assert row["s_per_step"] > 0, name
            assert row["tokens_per_s"] > row["audio_s_per_s"] > 0, name
            assert row["peak_bytes"] > 2**20, name
            assert row["model_flops_per_step"] > 0, name
    records = data["records"]
    assert len(records["harmonifuse"]) == 2 * STEPS * (WARMUP + 1)
    # The same batches for all three, in the same order; every batch
    # stepped untimed by each before any timed step.
    for name in ("plain (static, gate off)", AA):
        for key in ("batch", "task", "audio_s", "tokens", "timed"):
            assert [r[key] for r in records["harmonifuse"]] == [
                r[key] for r in records[name]
            ]
    timed = [r["timed"] for r in records["harmonifuse"]]
    assert timed == [False] * (2 * STEPS * WARMUP) + [True] * (2 * STEPS)
    # The CPU defaults: one LibriSpeech-length batch, ~2 IEMOCAP utterances.
    asr = [r for r in records["harmonifuse"] if r["task"] == "asr"]
    assert all(1.4 <= r["audio_s"] <= 16.0 for r in asr)
    # ~12.5 speech tokens per second of audio plus prompt and transcript
    assert all(12 * r["audio_s"] < r["tokens"] for r in asr)


def test_activation_checkpointing_recomputes(bench):
    """More executed FLOPs (the recompute), the same model FLOPs."""
    data = bench[0]
    results = data["results"]
    for task in ("asr", "ser"):
        # The memory options run on the first batch of each task (one
        # option step on CPU): HarmoniFuse's own count on that batch.
        first = next(
            r
            for r in data["records"]["harmonifuse"]
            if r["task"] == task and "flops" in r
        )
        ckpt = results["+ LLM checkpointing"][task]
        assert ckpt["executed_flops_per_step"] > first["flops"]
        assert ckpt["model_flops_per_step"] == pytest.approx(first["flops"])
        # bf16 hidden states change no matrix product (the fusion's
        # einsum is counted with other shapes: +0.005 % at toy size)
        bf16 = results["+ bf16 encoder outputs"][task]
        assert bf16["executed_flops_per_step"] == pytest.approx(
            first["flops"], rel=1e-3
        )


def test_paper_dtypes_lora_and_gradients_work(bench):
    data, _ = bench
    checks = data["checks"]
    assert checks["llm_dtype"] == "bfloat16"  # as the YAML loads it
    assert checks["lora_parameters"] > 0
    for key in (
        "losses_finite",
        "llm_base_frozen",
        "lora_fp32",
        "lora_updated",
        "encoder_frozen",
    ):
        assert checks[key] is True, key
    weights = data["weights_bytes"]
    assert weights["LLM (frozen)"] > 0 and weights["trainable"] > 0
    # AdamW: two moments per trainable weight (and a step count per tensor)
    moments = 2 * weights["trainable"]
    assert moments <= data["optimizer_bytes"] < 1.01 * moments


class FakeConfig:
    """A configuration whose step on a batch shape that no configuration
    has met costs 40x the others, as a new shape does on a GPU (kernels
    chosen, memory allocated), whichever configuration meets it."""

    def __init__(self, name, log, seen, step_s=0.005, first_s=0.2):
        self.name, self.log, self.seen = name, log, seen
        self.step_s, self.first_s = step_s, first_s

    def step(self, batch):
        time.sleep(self.step_s if batch.index in self.seen else self.first_s)
        self.seen.add(batch.index)
        self.log.append((self.name, batch.index))
        return 0.0


class FakeBatch:
    def __init__(self, index, task):
        self.index, self.task = index, task


class FakeMeter:
    def reset_peak(self):
        return 0

    def peak(self):
        return 0


def fake_run(bench, names, batches, **kwargs):
    log, seen = [], set()
    configs = [FakeConfig(name, log, seen) for name in names]
    records = bench.run_steps(
        configs,
        batches,
        "cpu",
        FakeMeter(),
        False,
        facts=lambda config, batch: {"audio_s": 1.0, "tokens": 1},
        **kwargs,
    )
    return records, log


def test_every_shape_is_warm_before_timing_and_the_order_rotates():
    bench = load_bench()
    batches = [FakeBatch(i, task) for i, task in enumerate("aabbab")]
    names = ["h", "p", "c"]
    records, log = fake_run(bench, names, batches, warmup=1, rounds=2)
    n = len(names) * len(batches)
    # The warm-up pass: every (configuration, batch) once, before timing
    assert sorted(log[:n]) == sorted(
        (c, b.index) for c in names for b in batches
    )
    # Timed: the first-use cost reaches no timed step
    for name in names:
        timed = [r for r in records[name] if r["timed"]]
        assert len(timed) == 2 * len(batches)
        assert max(r["seconds"] for r in timed) < 0.1
    # Who goes first rotates over a task's batches and across rounds
    firsts = {}
    for step in range(n, len(log), len(names)):
        index = log[step][1]
        firsts.setdefault(batches[index].task, []).append(log[step][0])
    assert firsts["a"] == ["h", "p", "c"] * 2
    assert firsts["b"] == ["h", "p", "c"] * 2


def test_without_warm_up_the_first_configuration_would_pay():
    """Timed at once, the configuration that meets a shape first pays for
    it (what made the old HarmoniFuse / plain ratios 1.57 and 0.55); with
    the warm-up pass no timed step does, and two equal configurations
    come out equal."""
    bench = load_bench()
    batches = [FakeBatch(i, "asr") for i in range(4)]
    cold, log = fake_run(bench, ["h", "p"], batches, warmup=0, rounds=1)
    for step in cold["h"] + cold["p"]:
        went_first = log[2 * step["batch"]][0]
        name = "h" if step in cold["h"] else "p"
        assert (step["seconds"] > 0.15) == (name == went_first)
    warm, _ = fake_run(bench, ["h", "p"], batches, warmup=1, rounds=1)
    for name in "hp":
        assert max(r["seconds"] for r in warm[name] if r["timed"]) < 0.1
    assert 0.5 < bench.paired_ratio(warm["h"], warm["p"])["ratio"] < 2


def test_paired_ratio_and_its_interval():
    bench = load_bench()

    def records(seconds, task="asr"):
        return [
            {"batch": i, "round": 0, "timed": True, "task": task, "seconds": s}
            for i, s in enumerate(seconds)
        ]

    # Paired ratios all 2: geometric mean 2, no spread
    same = bench.paired_ratio(records([2, 4, 6]), records([1, 2, 3]))
    assert (same["ratio"], same["low"], same["high"], same["n"]) == (
        pytest.approx(2.0),
        pytest.approx(2.0),
        pytest.approx(2.0),
        3,
    )
    # log ratios 0 and log 4: mean log 2, sd log(4)/sqrt(2), t(0.975, 1)
    two = bench.paired_ratio(records([1, 4]), records([1, 1]))
    half = 12.7062047 * math.log(4) / math.sqrt(2) / math.sqrt(2)
    assert two["ratio"] == pytest.approx(2.0)
    assert two["low"] == pytest.approx(2 * math.exp(-half), rel=1e-6)
    assert two["high"] == pytest.approx(2 * math.exp(half), rel=1e-6)
    one = bench.paired_ratio(records([3]), records([1]))
    assert (one["low"], one["high"]) == (0.0, math.inf)
    assert bench.within(same, 0.03) and not bench.within(two, 0.03)
    assert bench.format_ratio(same) == "2.000 [2.000, 2.000]"
    # Only steps of the task asked for, paired by batch and round
    mixed = records([2, 8]) + records([5], task="ser")
    assert bench.paired_ratio(mixed, records([1, 2]), "asr")["n"] == 2
    with pytest.raises(ValueError, match="task ser"):
        bench.paired_ratio(records([1]), records([1]), "ser")
