"""Tests of the encoder pre-training of the synthetic ablation setting.

``recipes/Synthetic/pretrain_encoder.py`` trains a Conformer with CTC on
its top layer and saves it where ``ConformerSpeechEncoder(source=...)``
loads it; it runs once: a second call with the same arguments does
nothing, a changed argument or corpus trains again.
"""

import json
import logging
import os

import pytest
import torch

from harmonifuse_sb.lobes import ConformerSpeechEncoder
from recipes.Synthetic.pretrain_encoder import LOG_FILE, pretrain_encoder
from recipes.Synthetic.synthetic_prepare import prepare_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML = os.path.join(REPO, "hparams", "pretrain_encoder_synthetic.yaml")
TINY_ENCODER = {"d_model": 16, "num_layers": 2, "nhead": 2, "d_ffn": 32}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synthetic"))
    prepare_synthetic(
        folder,
        n_train_voices=2,
        n_valid_voices=1,
        n_test_voices=1,
        asr_train=8,
        asr_valid=4,
        asr_test=1,
        ser_train=4,
        ser_valid=4,
        ser_test=4,
        emotional_wording=0.5,
    )
    return folder


def overrides(corpus, folder, **extra):
    return {
        "data_folder": corpus,
        "encoder_folder": str(folder),
        "steps": 12,
        "batch_size": 4,
        "warmup_steps": 2,
        "lr": 0.003,
        "log_interval": 1,
        "encoder": TINY_ENCODER,
        **extra,
    }


def mtimes(folder):
    return {
        name: os.stat(os.path.join(folder, name)).st_mtime_ns
        for name in os.listdir(folder)
    }


def test_pretraining_runs_once(corpus, tmp_path, caplog):
    folder = tmp_path / "encoder"
    assert pretrain_encoder(YAML, overrides(corpus, folder)) == str(folder)
    with open(folder / LOG_FILE, encoding="utf-8") as f:
        log = json.load(f)
    steps, losses = zip(*log["losses"])
    assert steps == tuple(range(1, 13))
    assert losses[-1] < losses[0]  # it learns
    # 12 steps leave the CTC head on its blank plateau: it writes (almost)
    # nothing, so nearly every reference character is an error
    assert 90.0 <= log["valid_CER"] <= 100.0
    before = mtimes(folder)

    # The same arguments: nothing is trained or written.
    with caplog.at_level(logging.INFO):
        pretrain_encoder(YAML, overrides(corpus, folder))
    assert "is up to date" in caplog.text
    assert mtimes(folder) == before

    # What it wrote is a frozen multi-layer encoder of the asked size.
    encoder = ConformerSpeechEncoder(source=str(folder), freeze=True)
    assert (encoder.num_layers, encoder.output_dim) == (2, 16)
    hidden, _ = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    assert hidden.shape[:2] == (3, 2) and not hidden.requires_grad

    # Another argument trains again.
    pretrain_encoder(YAML, overrides(corpus, folder, steps=3))
    with open(folder / LOG_FILE, encoding="utf-8") as f:
        assert len(json.load(f)["losses"]) == 3
    assert mtimes(folder)["encoder.ckpt"] != before["encoder.ckpt"]


def test_corpus_change_trains_again(corpus, tmp_path, caplog):
    folder = tmp_path / "encoder"
    pretrain_encoder(YAML, overrides(corpus, folder, steps=2))
    manifest = os.path.join(corpus, "asr_train.json")
    with open(manifest, encoding="utf-8") as f:
        original = f.read()
    # Rewritten with the same content: nothing to do.
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(original)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pretrain_encoder(YAML, overrides(corpus, folder, steps=2))
    assert "is up to date" in caplog.text
    # Another training set: trained again.
    entries = json.loads(original)
    del entries[sorted(entries)[0]]
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pretrain_encoder(YAML, overrides(corpus, folder, steps=2))
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(original)
    assert "Pre-training the speech encoder" in caplog.text
    assert "is up to date" not in caplog.text


def test_missing_corpus_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Prepare the corpus first"):
        pretrain_encoder(YAML, overrides(str(tmp_path), tmp_path / "enc"))
