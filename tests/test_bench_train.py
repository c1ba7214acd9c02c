"""The training benchmark at toy size: it runs the paper's YAML through the
real loaders and training step, and reports what it promises.

``benchmarks/bench_train.py --size tiny`` builds WavLM Large's and
Qwen2.5-1.5B's layouts at toy size, saves and loads them through
``hparams/harmonifuse.yaml`` (LLM in bf16, LoRA, bf16 autocast on the CPU,
as at full size) and times HarmoniFuse, the plain speech LM and the memory
options. The full-size run is the benchmark's (see the README).
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    "harmonifuse",
    "plain (static, gate off)",
    "+ LLM checkpointing",
    "+ bf16 encoder outputs",
    "+ both",
]
STEPS = 1
WARMUP = 1


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
    assert "HarmoniFuse / plain step time: asr " in stdout
    for name in CONFIGS:
        assert f"\n{name:<28} asr " in stdout, name
    ratios = data["ratios"]
    assert set(ratios) == {"asr", "ser", "all steps"}
    assert all(0 < r < math.inf for r in ratios.values())


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
    assert len(records["harmonifuse"]) == 2 * (WARMUP + STEPS)
    # The same batches for both models, in the same order.
    for key in ("batch", "task", "audio_s", "tokens"):
        assert [r[key] for r in records["harmonifuse"]] == [
            r[key] for r in records["plain (static, gate off)"]
        ]
    # The CPU defaults: one LibriSpeech-length batch, ~2 IEMOCAP utterances.
    asr = [r for r in records["harmonifuse"] if r["task"] == "asr"]
    assert all(1.4 <= r["audio_s"] <= 16.0 for r in asr)
    # ~12.5 speech tokens per second of audio plus prompt and transcript
    assert all(12 * r["audio_s"] < r["tokens"] for r in asr)


def test_activation_checkpointing_recomputes(bench):
    """More executed FLOPs (the recompute), the same model FLOPs."""
    results = bench[0]["results"]
    for task in ("asr", "ser"):
        base = results["harmonifuse"][task]
        ckpt = results["+ LLM checkpointing"][task]
        assert ckpt["executed_flops_per_step"] > base["model_flops_per_step"]
        assert ckpt["model_flops_per_step"] == pytest.approx(
            base["model_flops_per_step"]
        )
        # bf16 hidden states change no matrix product (the fusion's
        # einsum is counted with other shapes: +0.005 % at toy size)
        bf16 = results["+ bf16 encoder outputs"][task]
        assert bf16["executed_flops_per_step"] == pytest.approx(
            base["model_flops_per_step"], rel=1e-3
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
