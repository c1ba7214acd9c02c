"""Tests of the ablation study's CPU setting, ``hparams/ablation_synthetic.yaml``.

* The YAML loads; its encoder is a ``!name:`` built after the preparation
  (pre-trained, frozen), its LLM is pre-trained and frozen with LoRA, its
  corpus has emotional wording, and every variant's switches exist.
* A ``--debug`` study of two variants on it, at toy size: the corpus, the
  encoder and the LLM are prepared by the first run and found up to date by
  the second; the report holds both variants; the exported model carries
  the pre-trained encoder's folder, and its checkpoint none of its weights.
"""

import json
import os
import sys

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from harmonifuse_sb import ablation
from harmonifuse_sb.results import read_test_results
from tests.test_training import REPO, failure, run

YAML = "hparams/ablation_synthetic.yaml"
VARIANTS = ["harmonifuse", "naive_multitask"]
SEED = 3
ENC_LAYERS = 2
# Toy sizes: a few utterances, a 2-layer encoder and LLM, a few
# pre-training steps.
TOY = [
    "--corpus_size={asr_train: 16, asr_valid: 8, asr_test: 8, "
    "ser_train: 16, ser_valid: 8, ser_test: 8}",
    "--n_train_voices=4",
    "--enc_dim=16",
    f"--enc_layers={ENC_LAYERS}",
    "--llm_dim=32",
    "--llm_layers=2",
    "--encoder_pretraining_steps=3",
    "--llm_pretraining_steps=2",
    "--noprogressbar",
]


def test_yaml_loads_as_the_paper_shaped_setting():
    with open(os.path.join(REPO, YAML), encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f)
    # Built after the preparation, from the pre-trained folder, frozen.
    encoder = hparams["encoder"]
    assert not isinstance(encoder, torch.nn.Module)
    assert encoder.keywords == {
        "source": hparams["encoder_folder"],
        "freeze": True,
    }
    speech_lm = hparams["speech_lm"].keywords
    assert speech_lm["freeze"] and speech_lm["lora_config"]["r"] > 0
    assert hparams["prepare_llm"].keywords["pretrain"]["steps"] > 0
    prepare, pretrain = hparams["data_preparation"]
    assert prepare.keywords["emotional_wording"] > 0
    assert prepare.keywords["data_folder"] == "data/synthetic_ablation"
    assert pretrain.keywords["overrides"]["encoder"] == {
        "d_model": hparams["enc_dim"],
        "num_layers": hparams["enc_layers"],
    }
    # Limited SER data.
    sizes = hparams["corpus_size"]
    assert sizes["ser_train"] * 2 <= sizes["asr_train"]
    ablation.check_yaml_has_switches(
        os.path.join(REPO, YAML), list(ablation.VARIANTS)
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation_synthetic")
    output = root / "study"
    command = [
        sys.executable,
        "-m",
        "harmonifuse_sb.ablation",
        YAML,
        "--variants",
        *VARIANTS,
        "--seeds",
        str(SEED),
        f"--output_folder={output}",
        "--debug",
        "--bootstrap=100",
        "--jobs=2",  # the first run alone, then the pool
        f"--data_folder={root / 'data'}",
        f"--pretrained_folder={root / 'pretrained'}",
        *TOY,
    ]
    return root, output, run(command)


def test_debug_study_runs(study):
    root, output, result = study
    assert result.returncode == 0, failure(result)
    markdown = (output / "ablation.md").read_text()
    report = json.loads((output / "ablation.json").read_text())
    for name in ("synthetic_asr_test", "synthetic_ser_test"):
        assert sorted(report["test_sets"][name]["variants"]) == sorted(VARIANTS)
        assert f"## {name} " in markdown
    weights = report["layer_weights"]["harmonifuse"]
    assert len(weights["asr"]) == ENC_LAYERS + 1
    logs = [
        (output / variant / str(SEED) / "study_stdout.txt").read_text()
        for variant in VARIANTS
    ]
    # Prepared by the first run only.
    assert "Pre-training the speech encoder" in logs[0]
    assert "Pre-trained encoder in" in logs[1] and "is up to date" in logs[1]
    assert "Pre-training the speech encoder" not in logs[1]
    assert "Tiny LLM pre-trained" in logs[0]
    assert "Tiny LLM pre-trained" not in logs[1]
    # The corpus has the emotional wording.
    with open(root / "data" / "ser_test.json", encoding="utf-8") as f:
        entries = json.load(f).values()
    assert {e["wording"] for e in entries} <= {"positive", "negative", "none"}


def test_export_carries_the_pretrained_encoder(study):
    root, output, result = study
    assert result.returncode == 0, failure(result)
    run_folder = output / VARIANTS[0] / str(SEED)
    results = read_test_results(str(run_folder / "test_results.json"))
    assert results["tasks"] == ["asr", "ser"]
    export = run_folder / "inference"
    encoder_files = sorted(os.listdir(export / "encoder"))
    assert "encoder.ckpt" in encoder_files
    pretrained = root / "pretrained" / "encoder" / "encoder.ckpt"
    assert (export / "encoder" / "encoder.ckpt").read_bytes() == (
        pretrained.read_bytes()
    )
    # The frozen encoder's weights are not in the run's checkpoint.
    state = torch.load(export / "model.ckpt", map_location="cpu")
    assert not [k for k in state if k.startswith("encoder.layers")]
    assert any(k.startswith("fusion.") for k in state)
    # And the exported model loads with them, as a user loads it.
    from harmonifuse_sb.inference import HarmoniFuseSLM

    slm = HarmoniFuseSLM.from_hparams(
        source=str(export), savedir=str(root / "slm")
    )
    encoder = slm.mods.model.encoder
    assert encoder.freeze and encoder.num_layers == ENC_LAYERS
    loaded = torch.load(pretrained, map_location="cpu")
    own = encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in loaded.items())


SWEEP_VARIANTS = ["llm_fusion_layer_gate", "naive_multitask", "ser_only"]
SWEEP_SIZES = [8, 16]


@pytest.fixture(scope="module")
def sweep(study):
    """A --debug data-size sweep on the study's prepared corpus."""
    root, _, _ = study
    output = root / "sweep"
    command = [
        sys.executable,
        "-m",
        "harmonifuse_sb.ablation",
        YAML,
        "--variants",
        *SWEEP_VARIANTS,
        "--seeds",
        str(SEED),
        "--ser-sizes",
        *map(str, reversed(SWEEP_SIZES)),  # any order
        f"--output_folder={output}",
        "--debug",
        "--bootstrap=100",
        "--jobs=2",
        f"--data_folder={root / 'data'}",
        f"--pretrained_folder={root / 'pretrained'}",
        *TOY,
    ]
    return output, run(command)


def test_data_size_sweep_report(sweep):
    output, result = sweep
    assert result.returncode == 0, failure(result)
    data = json.loads((output / "data_size.json").read_text())
    assert sorted(data["sizes"], key=int) == ["8", "16"]
    for size in SWEEP_SIZES:
        tables = data["sizes"][str(size)]["test_sets"]
        ser = tables["synthetic_ser_test"]
        assert sorted(ser["variants"]) == sorted(SWEEP_VARIANTS)
        assert set(ser["vs_baseline"]) == {"llm_fusion_layer_gate", "ser_only"}
        assert "UA" in ser["vs_baseline"]["ser_only"]
        # each run trained on a nested subset of that size
        folder = output / f"ser_{size}" / "ser_only" / str(SEED)
        record = json.loads((folder / "study_run.json").read_text())
        assert f"--train_subset={{ser: {size}}}" in record["command"]
        # ser_only trains on as many SER batches at every size
        epochs = 8 * max(SWEEP_SIZES) // size
        assert f"--number_of_epochs={epochs}" in record["command"]
    # the gated reading's gate: neutral start under a budget of 0.5
    for task in ("asr", "ser"):
        mean = data["gate_mean"]["llm_fusion_layer_gate"][task]
        closed = data["gate_closed"]["llm_fusion_layer_gate"][task]
        assert 0.3 < mean < 0.7 and 0.0 < closed < 1.0
    assert "naive_multitask" not in data["gate_mean"]  # no gate
    assert (output / "data_size.png").stat().st_size > 0
    markdown = (output / "data_size.md").read_text()
    assert "## 8 SER training utterances" in markdown
    assert "| llm_fusion_layer_gate | ser |" in markdown
    # each size's own report shows the last validation for choosing
    size_report = (output / "ser_16" / "ablation.md").read_text()
    assert "## Validation (last epoch)" in size_report
