"""Tests for tasks as YAML entries: the task interface, checkpoints of the
two-task layout, and a third task (the accent) trained by YAML alone."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset

from harmonifuse_sb.dataio import ManifestError
from harmonifuse_sb.lobes.checkpointing import (
    load_trainable_state_dict,
    trainable_state_dict,
)
from harmonifuse_sb.metrics import combined_error
from harmonifuse_sb.model import HarmoniFuse, build_harmonifuse
from harmonifuse_sb.outputs import csv_fields, render
from harmonifuse_sb.tasks import (
    Classification,
    Transcription,
    bind_tasks,
    combined_key,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "hparams", "harmonifuse_tiny.yaml")
THREE_YAML = os.path.join("hparams", "harmonifuse_tiny_3tasks.yaml")
ACCENTS = ["en-us", "en-gb-x-rp", "en-gb-scotland", "en-029"]


def three_tasks():
    return bind_tasks(
        {
            "asr": Transcription("transcribe", key_weight=0.5),
            "ser": Classification(
                "emotion", labels=["sad", "happy"], output="emotion"
            ),
            "accent": Classification(
                "accent", labels=["us", "gb"], label_key="accent"
            ),
        }
    )


# ---------------------------------------------------------------- interface


def test_names_suffixes_and_result_keys():
    tasks = three_tasks()
    assert [t.suffix for t in tasks.values()] == ["", "", "_accent"]
    assert tasks["accent"].stat("UA") == "UA_accent"
    assert tasks["ser"].result_key == "emotion"
    assert tasks["accent"].result_key == "accent"
    assert tasks["accent"].probs_key == "probabilities_accent"
    assert tasks["accent"].output_key == "accent_encoded"


@pytest.mark.parametrize(
    "tasks, match",
    [
        ({}, "expected a mapping"),
        ({"asr": "transcribe"}, "is str, not a"),
        ({"mixed": Transcription("x")}, "'mixed' is reserved"),
        ({"my task": Transcription("x")}, "not a valid task name"),
        (
            {
                "ser": Classification("a", labels=["x", "y"], output="e"),
                "age": Classification("b", labels=["x", "y"], output="e"),
            },
            r"result key\(s\) \['e'\]",
        ),
    ],
)
def test_bad_task_mappings_are_named(tasks, match):
    with pytest.raises(ValueError, match=match):
        bind_tasks(tasks)


def test_bad_task_arguments_are_named():
    with pytest.raises(ValueError, match="two or more distinct"):
        Classification("x", labels=["a", "a"])
    with pytest.raises(ValueError, match="mode 'vote' not in"):
        Classification("x", labels=["a", "b"], mode="vote")
    with pytest.raises(ValueError, match="ratio must be an integer >= 0"):
        Transcription("x", ratio=-1)
    with pytest.raises(ValueError, match="non-empty text"):
        Transcription(" ")


def test_two_task_key_is_combined_error_bit_for_bit():
    tasks = three_tasks()
    del tasks["accent"]
    tasks["ser"].key_weight = 1 - 0.5
    for wer, ua in [(6.45, 0.8125), (33.3333, 0.2), (100.0, 0.0)]:
        assert combined_key(tasks, {"WER": wer, "UA": ua}) == combined_error(
            wer, ua, 0.5
        )


def test_three_task_key_is_the_weighted_mean_of_the_errors():
    tasks = three_tasks()  # weights 0.5, 1, 1
    stats = {"WER": 20.0, "UA": 0.5, "UA_accent": 0.75}
    expected = (0.5 * 0.2 + 1 * 0.5 + 1 * 0.25) / 2.5
    assert combined_key(tasks, stats) == pytest.approx(expected, abs=1e-12)
    # a task validated alone gives its own error
    assert combined_key(tasks, {"UA_accent": 0.75}) == 0.25
    assert combined_key(tasks, {"loss": 1.0}) is None


def test_classification_pipeline_and_label_check():
    task = three_tasks()["accent"]
    data = DynamicItemDataset(
        {
            "u0": {"accent": "gb", "task": "accent"},
            "u1": {"accent": "us", "task": "accent"},
        }
    )
    data.set_output_keys(["id"] + task.add_pipeline(data))
    assert [int(item["accent_encoded"]) for item in data] == [1, 0]
    bad = DynamicItemDataset({"u2": {"accent": "scot"}})
    with pytest.raises(ManifestError, match=r"m.json: labels \['scot'\]"):
        task.check_labels(bad, "m.json")


def test_each_task_renders_its_fields():
    tasks = three_tasks()
    seg = {
        "start": 0.0,
        "end": 1.0,
        "transcript": "hi",
        "emotion": "sad",
        "probabilities": {"sad": 0.9, "happy": 0.1},
        "accent": "gb",
        "probabilities_accent": {"us": 0.3, "gb": 0.7},
    }
    result = {"file": "a.wav", **seg, "segments": [seg]}
    assert render(result, "text", tasks) == "a.wav\tsad\tgb\thi\n"
    assert csv_fields(tasks) == [
        "file", "start", "end", "emotion", "accent", "transcript",
        "p_sad", "p_happy", "p_accent_us", "p_accent_gb",
    ]  # fmt: skip
    rows = render(result, "csv", tasks).splitlines()
    assert rows[1] == "a.wav,0.0,1.0,sad,gb,hi,0.9,0.1,0.3,0.7"
    assert "[sad] [gb] hi" in render(result, "srt", tasks)
    # the two-task layout, given by its emotion labels, as before
    two = {k: v for k, v in result.items() if "accent" not in k}
    assert render(two, "text", ["sad", "happy"]) == "a.wav\tsad\thi\n"


def test_classification_merges_segments_by_duration():
    task = three_tasks()["accent"]
    segments = [
        {"start": 0.0, "end": 1.0, "probabilities_accent": {"us": 1, "gb": 0}},
        {"start": 1.0, "end": 4.0, "probabilities_accent": {"us": 0, "gb": 1}},
    ]
    merged = task.merge(segments)
    assert merged == {
        "accent": "gb",
        "probabilities_accent": {"us": 0.25, "gb": 0.75},
    }
    assert task.merge([]) == {"accent": None, "probabilities_accent": {}}


# ------------------------------------------- the two-task layout still loads


@pytest.fixture(scope="module")
def toy_hparams(tmp_path_factory):
    """The quick-start YAML at toy size, its LLM prepared."""
    work = tmp_path_factory.mktemp("toy")
    data = work / "data"
    data.mkdir()
    manifest = {
        f"u{i}": {"wav": "x.wav", "duration": 1.0, "wrd": "the cat sat"}
        for i in range(3)
    }
    (data / "asr_train.json").write_text(json.dumps(manifest))
    overrides = {
        "data_folder": str(data),
        "output_folder": str(work / "out"),
        "enc_dim": 32,
        "enc_layers": 1,
        "llm_dim": 32,
        "llm_layers": 1,
        "llm_heads": 2,
    }
    with open(TINY_YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    hparams["prepare_llm"]()
    return hparams


def old_layout(state):
    """A state dict as the two-task code saved it: the SER head was a part
    of the speech LM (``speech_lm.ser_head.<i>.*``), and no ``heads``.
    """
    return {
        key.replace("heads.ser.", "speech_lm.ser_head.", 1): value
        for key, value in state.items()
    }


def test_checkpoint_of_the_two_task_layout_loads(toy_hparams):
    torch.manual_seed(0)
    trained = build_harmonifuse(toy_hparams)
    with torch.no_grad():
        trained.heads["ser"][1].weight.normal_()
    saved = old_layout(trainable_state_dict(trained))
    assert "speech_lm.ser_head.1.weight" in saved
    assert not any(key.startswith("heads.") for key in saved)
    torch.manual_seed(1)
    fresh = build_harmonifuse(toy_hparams)
    assert not torch.equal(
        fresh.heads["ser"][1].weight, trained.heads["ser"][1].weight
    )
    load_trainable_state_dict(fresh, saved, source="old.ckpt")
    for key, value in trainable_state_dict(trained).items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_model_of_the_two_task_arguments_is_the_tasks_model(toy_hparams):
    """An exported hyperparams.yaml of the two-task code builds HarmoniFuse
    with prompts, emotions, ser_mode and ser_pooling, and a SpeechLM with
    num_classes: it gets the same tasks, and the SER head moves to
    ``heads.ser``, with the same statistics and logits.
    """
    from harmonifuse_sb.lobes import SpeechLM

    torch.manual_seed(0)
    new = build_harmonifuse(toy_hparams)
    h = toy_hparams
    old = HarmoniFuse(
        h["encoder"],
        h["fusion"],
        h["gate"],
        h["projector"],
        SpeechLM(h["llm_source"], freeze=False, num_classes=4),
        prompts=h["prompts"],
        emotions=h["emotions"],
        ser_mode="classifier",
        ser_pooling="mean",
        llm_fusion=h["llm_fusion"],
        ctc_alphabet="abcdefghijklmnopqrstuvwxyz' ",
    )
    assert [(t.name, t.kind) for t in old.tasks.values()] == [
        ("asr", "transcription"),
        ("ser", "classification"),
    ]
    assert old.tasks["ser"].pooling == "mean"
    assert old.speech_lm.ser_head is None
    assert sorted(trainable_state_dict(old)) == sorted(
        trainable_state_dict(new)
    )
    load_trainable_state_dict(old, old_layout(trainable_state_dict(new)))
    old.eval(), new.eval()
    wavs = torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.8])
    with torch.no_grad():
        logits = [
            m.classify(m.task_features(*m.encode_speech(wavs, lens), "ser"))
            for m in (old, new)
        ]
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ctc_upsample_gives_k_ctc_frames_per_encoder_frame(toy_hparams, k):
    torch.manual_seed(0)
    model = toy_hparams["model"](
        speech_lm=toy_hparams["speech_lm"](), ctc_upsample=k
    ).eval()
    classes = len(model.ctc_alphabet) + 1
    assert model.ctc_head.out_features == k * classes
    wavs = 0.1 * torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        feats = model.task_features(*model.encode_speech(wavs, lens), "asr")
        logp, ctc_lens = model.ctc_log_probs(feats)
        raw = model.ctc_head(feats["features"])
        texts = model.transcribe(feats, num_beams=2, ctc_weight=0.9)
    frames = feats["features"].shape[1]
    assert logp.shape == (2, k * frames, classes)
    expected = torch.round(feats["lens"] * k * frames).long()
    assert ctc_lens.tolist() == expected.tolist()
    assert ctc_lens[0] == k * frames
    # CTC frame k t + j is the j-th slice of the head's output at frame t
    for t, j in [(0, 0), (3, k - 1), (frames - 1, k // 2)]:
        piece = raw[:, t, j * classes : (j + 1) * classes]
        assert torch.allclose(logp[:, k * t + j], piece.log_softmax(-1))
    assert len(texts) == 2 and all(isinstance(x, str) for x in texts)


@pytest.mark.parametrize("k", [0, 1.5, -2])
def test_ctc_upsample_must_be_a_whole_number(toy_hparams, k):
    with pytest.raises(ValueError, match=f"ctc_upsample={k!r}"):
        toy_hparams["model"](
            speech_lm=toy_hparams["speech_lm"](), ctc_upsample=k
        )


def to_two_task_layout(folder):
    """Rewrites an inference folder as the two-task code wrote it: no
    ``tasks``; ``HarmoniFuse`` with ``prompts``, ``emotions``, ``ser_mode``
    and ``ser_pooling``; ``SpeechLM`` with ``num_classes``; the SER head's
    weights under ``speech_lm.ser_head.*`` in ``model.ckpt``.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    path = os.path.join(folder, "hyperparams.yaml")
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f)
    ser = doc.pop("tasks")["ser"]
    model = doc["model"]
    del model["tasks"]
    model["prompts"] = doc["prompts"]
    model["emotions"] = doc["emotions"]
    model["ser_mode"] = ser["mode"]
    model["ser_pooling"] = ser["pooling"]
    doc["speech_lm"]["num_classes"] = len(doc["emotions"])
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(doc, f)
    ckpt = os.path.join(folder, "model.ckpt")
    torch.save(old_layout(torch.load(ckpt)), ckpt)


def test_inference_folder_of_the_two_task_layout_loads(tmp_path):
    from harmonifuse_sb.inference import HarmoniFuseSLM
    from tests.longform_helpers import export_untrained_model

    new = str(tmp_path / "new")
    export_untrained_model(new, str(tmp_path / "work"))
    old = str(tmp_path / "old")
    shutil.copytree(new, old)
    to_two_task_layout(old)
    text = open(os.path.join(old, "hyperparams.yaml")).read()
    assert "tasks" not in text and "num_classes: 4" in text
    models = [
        HarmoniFuseSLM.from_hparams(source=f, savedir=str(tmp_path / n))
        for n, f in (("a", new), ("b", old))
    ]
    assert list(models[1].model.tasks) == ["asr", "ser"]
    for m in models:
        m.vad = None  # every item is decoded: the outputs are the model's
    torch.manual_seed(0)
    wavs = 0.1 * torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.75])
    results = [m.analyze_batch(wavs, lens) for m in models]
    assert all(sum(r["probabilities"].values()) > 0.99 for r in results[1])
    assert results[0] == results[1]
    probs = [m.classify_batch(wavs, lens)[0] for m in models]
    assert torch.equal(probs[0], probs[1])


# ------------------------------------------------- a third task by YAML alone


def run(command):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["TRANSFORMERS_OFFLINE"] = "1"
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def three_task_run(tmp_path_factory):
    """``--debug`` training of the 3-task YAML at toy size: 4 training
    batches (the pattern A A S accent), every validation and test set.
    """
    root = tmp_path_factory.mktemp("three")
    output = root / "results"
    corpus = (
        "{asr_train: 16, asr_valid: 8, asr_test: 8, ser_train: 16, "
        "ser_valid: 8, ser_test: 8}"
    )
    args = [
        THREE_YAML,
        f"--data_folder={root / 'data'}",
        f"--output_folder={output}",
        f"--corpus_size={corpus}",
        "--accent_corpus_size={train: 16, valid: 16, test: 16}",
        "--batch_size={asr: 4, ser: 4, accent: 4}",
        "--enc_layers=1",
        "--enc_dim=32",
        "--llm_dim=32",
        "--llm_layers=1",
        "--llm_heads=2",
        "--num_beams=1",
        "--noprogressbar",
        "--debug",
        "--debug_batches=4",
    ]
    result = run([sys.executable, "train.py", *args])
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result


def test_third_task_trains_and_is_tested(three_task_run):
    output, result = three_task_run
    log = (output / "train_log.txt").read_text()
    # the accent batch (4th of A A S accent) trained, and validated
    assert re.search(r"train loss_accent: [\d.e+-]+", log), log
    assert re.search(r"valid UA_accent: [\d.e+-]+", log), log
    assert re.search(
        r"^Test synthetic_accent_test: UA [\d.]+%  WA [\d.]+%  "
        r"macro-F1 [\d.]+%$",
        result.stdout,
        re.M,
    ), result.stdout
    results = json.loads((output / "test_results.json").read_text())
    assert results["tasks"] == ["asr", "ser", "accent"]
    accent = results["test_sets"]["synthetic_accent_test"]
    assert accent["task"] == "accent"
    assert 0.0 <= accent["stats"]["UA_accent"] <= 1.0
    # four accents, 16 test utterances: a UA is a mean of 4 recalls of
    # 4 utterances each, so a multiple of 1/16
    assert (accent["stats"]["UA_accent"] * 16) % 1 == pytest.approx(0)
    # the two tasks of before keep their statistics' names
    assert "WER" in results["test_sets"]["synthetic_asr_test"]["stats"]
    assert "UA" in results["test_sets"]["synthetic_ser_test"]["stats"]
    report = (output / "accent_synthetic_accent_test.txt").read_text()
    assert "en-gb-scotland" in report


def test_held_out_accent_voices(three_task_run):
    output, _ = three_task_run
    data = output.parent / "data" / "accent"
    voices = {}
    for split in ("train", "valid", "test"):
        manifest = json.loads((data / f"accent_{split}.json").read_text())
        voices[split] = {e["spk_id"] for e in manifest.values()}
        accents = {e["accent"] for e in manifest.values()}
        assert accents == set(ACCENTS), split
        assert all(e["spk_id"].startswith(e["accent"] + "+") for e in
                   manifest.values())  # fmt: skip
    assert not voices["test"] & voices["train"]
    assert not voices["valid"] & voices["train"]


def test_cli_and_analyze_file_show_the_third_task(three_task_run):
    from harmonifuse_sb.inference import HarmoniFuseSLM

    output, _ = three_task_run
    folder = str(output / "inference")
    manifest = output.parent / "data" / "accent" / "accent_test.json"
    entry = next(iter(json.loads(manifest.read_text()).values()))
    wav = entry["wav"].replace("{data_root}", str(manifest.parent))
    slm = HarmoniFuseSLM.from_hparams(source=folder, savedir=tempfile.mkdtemp())
    res = slm.analyze_file(wav)
    assert res["accent"] in ACCENTS
    assert sorted(res["probabilities_accent"]) == sorted(ACCENTS)
    assert sum(res["probabilities_accent"].values()) == pytest.approx(
        1.0, abs=1e-4
    )
    assert res["emotion"] in slm.model.emotions
    assert isinstance(res["transcript"], str)
    label, probs = slm.classify_file(wav, task="accent")
    assert label == res["accent"] and probs == res["probabilities_accent"]
    # the exported YAML does not point back into the training data
    exported = (output / "inference" / "hyperparams.yaml").read_text()
    assert "accent_train.json" not in exported
    cli = run(
        [
            sys.executable,
            "-m",
            "harmonifuse_sb.infer",
            folder,
            wav,
            "--savedir",
            tempfile.mkdtemp(),
            "--format",
            "csv",
            "--no-progress",
        ]
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    header, row = cli.stdout.splitlines()[:2]
    assert header.split(",")[3:6] == ["emotion", "accent", "transcript"]
    assert "p_accent_en-us" in header
    assert row.split(",")[4] == res["accent"]


def test_padded_batch_part_targets():
    """A batch part's targets come from the task's own output key."""
    task = three_tasks()["accent"]
    part = PaddedBatch([{"id": "u0", "accent_encoded": torch.tensor([1])}])
    assert task.targets(part).tolist() == [1]


def test_cli_scoring_of_a_classification_task(three_task_run):
    """``infer.evaluate`` scores any task with its own metrics: on the
    accent test set, as the test stage did (same checkpoint, one batch).
    """
    from harmonifuse_sb.infer import evaluate
    from harmonifuse_sb.inference import HarmoniFuseSLM

    output, _ = three_task_run
    slm = HarmoniFuseSLM.from_hparams(
        source=str(output / "inference"), savedir=tempfile.mkdtemp()
    )
    data = output.parent / "data" / "accent"
    stats = evaluate(
        slm, "accent", str(data / "accent_test.json"), str(data), 32
    )
    assert sorted(stats) == ["UA_accent", "WA_accent", "macro_F1_accent"]
    results = json.loads((output / "test_results.json").read_text())
    tested = results["test_sets"]["synthetic_accent_test"]["stats"]
    assert stats["UA_accent"] == pytest.approx(tested["UA_accent"])
