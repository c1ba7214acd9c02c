"""End-to-end tests of the inference folder, ``HarmoniFuseSLM``, the CLI
and the standalone export.

One toy training run (synthetic eSpeak corpus, the tiny YAML at toy
size, two epochs of 16 batches) is shared by the whole file
(module-scoped fixture). The run is not
``--debug``: a debug run keeps its checkpoints in a temporary folder, and
the standalone export (``python -m harmonifuse_sb.export``) needs them.
After the run its inference folder is copied elsewhere and the training
folder is moved away, so every test loads a folder that cannot point back
into the run.

The model is barely trained (WER near 100 %), so besides the metrics the
tests compare each transcript and label with the ones that the training
run's test stage wrote (``wer_*.txt``, ``ser_*.txt``), and the emotion
probabilities with the test stage's SER loss (their mean cross-entropy).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from speechbrain.utils.metric_stats import ErrorRateStats

from harmonifuse_sb.dataio import AudioError
from harmonifuse_sb.inference import HarmoniFuseSLM
from harmonifuse_sb.metrics import EmotionStats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOTIONS = ["neutral", "happy", "sad", "angry"]
# The tiny YAML at toy size (the quick-start's code paths, not its size):
# 2 epochs of 8 ASR + 8 SER batches of 4, at a short warm-up and a higher
# lr, so that the SER head no longer gives every test file one label (one
# epoch at the YAML's warm-up does); one test batch per task
# (eval_batch_size 32); validation decodes greedily (cheaper).
RUN_OVERRIDES = [
    "--number_of_epochs=2",
    "--corpus_size={asr_train: 32, asr_valid: 16, asr_test: 24, "
    "ser_train: 16, ser_valid: 16, ser_test: 24}",
    "--batch_size={asr: 4, ser: 4}",
    "--enc_layers=2",
    "--enc_dim=64",
    "--llm_dim=64",
    "--lr=0.005",
    "--lr_scheduler={num_warmup_steps: 10}",
    "--rir_count=4",
    "--interleaving={schedule: interleaved, ratio: [1, 1], epoch_task: asr}",
    "--valid_decoding={num_beams: 1}",
]
PROB_TOL = 1e-5


def _python(*args, timeout=600):
    """Runs ``python args`` in the repository root; returns the result."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _manifest(data, name):
    """(ids, paths, labels) of a synthetic manifest, in file order."""
    with open(os.path.join(data, f"{name}.json"), encoding="utf-8") as f:
        entries = json.load(f)
    key = "wrd" if name.startswith("asr") else "emo"
    ids = list(entries)
    paths = [entries[i]["wav"].replace("{data_root}", data) for i in ids]
    return ids, paths, [entries[i][key] for i in ids]


def read_wer_report(path):
    """Parses ErrorRateStats.write_stats output.

    Returns the header numbers and, per utterance, the hypothesis words
    (upper case, ``<eps>`` dropped) of its alignment.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = re.match(
        r"^%WER (\d+\.\d+) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, "
        r"(\d+) sub \]$",
        lines[0],
    )
    assert header, f"unexpected first line of {path}: {lines[0]!r}"
    scored = re.match(r"^Scored (\d+) sentences", lines[2])
    assert scored, f"unexpected third line of {path}: {lines[2]!r}"
    hyps = {}
    for i, line in enumerate(lines):
        match = re.match(r"^(\S+), %WER \d+\.\d+ \[", line)
        if match:
            ref, ops, hyp = lines[i + 1 : i + 4]
            assert len(ref.split(";")) == len(ops.split(";"))
            assert len(ops.split(";")) == len(hyp.split(";"))
            words = [w.strip() for w in hyp.split(";")]
            hyps[match.group(1)] = [w for w in words if w and w != "<eps>"]
    assert len(hyps) == int(scored.group(1))
    return float(header.group(1)), hyps


def read_ser_report(path):
    """Parses EmotionStats.write_stats output: UA and label per utterance."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = re.match(
        r"^UA: (\d\.\d{4})  WA: (\d\.\d{4})  macro-F1: (\d\.\d{4})  "
        r"\((\d+) / (\d+) correct\)$",
        lines[0],
    )
    assert header, f"unexpected first line of {path}: {lines[0]!r}"
    start = lines.index("utterances (id, true, predicted)") + 1
    predicted = {}
    for line in lines[start:]:
        utt_id, true, pred, *mark = line.split()
        assert mark == ([] if true == pred else ["*"]), line
        predicted[utt_id] = pred
    assert len(predicted) == int(header.group(5))
    return float(header.group(1)), predicted


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Trains once; copies the inference folder out; moves the run away."""
    tmp = tmp_path_factory.mktemp("harmonifuse_run")
    data, out = str(tmp / "data"), str(tmp / "out")
    result = _python(
        "train.py",
        "hparams/harmonifuse_tiny.yaml",
        f"--data_folder={data}",
        f"--output_folder={out}",
        *RUN_OVERRIDES,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wer = re.search(
        r"^Test synthetic_asr_test: WER ([\d.]+)%", result.stdout, re.M
    )
    ua = re.search(
        r"^Test synthetic_ser_test: UA ([\d.]+)%", result.stdout, re.M
    )
    assert wer and ua, result.stdout[-3000:]
    model = str(tmp / "model")
    shutil.copytree(os.path.join(out, "inference"), model)
    moved = str(tmp / "run_moved")
    shutil.move(out, moved)
    assert not os.path.exists(out)
    return SimpleNamespace(
        data=data,
        run=moved,
        model=model,
        tmp=tmp,
        wer=float(wer.group(1)),
        ua=float(ua.group(1)),
    )


@pytest.fixture(scope="module")
def slm(run):
    """The interface loaded from the copied folder."""
    return HarmoniFuseSLM.from_hparams(
        source=run.model,
        savedir=str(run.tmp / "savedir"),
        run_opts={"device": "cpu"},
    )


@pytest.fixture(scope="module")
def decoded(run, slm):
    """Both test sets decoded through the interface, in batches of 8."""
    out = SimpleNamespace(transcripts={}, probs={}, labels={})
    ids, paths, _ = _manifest(run.data, "asr_test")
    for start in range(0, len(ids), 8):
        batch = slm.load_batch(paths[start : start + 8])
        texts = slm.transcribe_batch(*batch)
        out.transcripts.update(zip(ids[start : start + 8], texts))
    ids, paths, _ = _manifest(run.data, "ser_test")
    for start in range(0, len(ids), 8):
        probs, labels = slm.classify_batch(
            *slm.load_batch(paths[start : start + 8])
        )
        out.probs.update(zip(ids[start : start + 8], probs))
        out.labels.update(zip(ids[start : start + 8], labels))
    return out


def test_reproduces_training_test_stage(run, decoded):
    ids, _, refs = _manifest(run.data, "asr_test")
    file_wer, file_hyps = read_wer_report(
        os.path.join(run.run, "wer_synthetic_asr_test.txt")
    )
    assert sorted(file_hyps) == sorted(ids)
    assert abs(file_wer - run.wer) < 0.01
    # The strong check: every transcript is the one the test stage decoded.
    for utt_id in ids:
        assert decoded.transcripts[utt_id].upper().split() == file_hyps[utt_id]
    wer = ErrorRateStats()
    wer.append(
        ids,
        [decoded.transcripts[i].upper().split() for i in ids],
        [r.upper().split() for r in refs],
    )
    assert abs(wer.summarize("error_rate") - run.wer) <= 0.1

    ids, _, targets = _manifest(run.data, "ser_test")
    file_ua, file_labels = read_ser_report(
        os.path.join(run.run, "ser_synthetic_ser_test.txt")
    )
    assert sorted(file_labels) == sorted(ids)
    assert abs(100 * file_ua - run.ua) < 0.01
    assert {i: decoded.labels[i] for i in ids} == file_labels
    # A model that gave every file one label would hide a mix-up of files.
    assert len(set(file_labels.values())) >= 2, file_labels
    stats = EmotionStats(EMOTIONS)
    stats.append(ids, [decoded.labels[i] for i in ids], targets)
    assert abs(100 * stats.summarize("UA") - run.ua) <= 0.1
    for probs in decoded.probs.values():
        assert probs.shape == (len(EMOTIONS),)
        assert abs(float(probs.sum()) - 1) < 1e-5
    # The probabilities, not only their argmax: the test stage's loss (its
    # one batch's mean cross-entropy, in test_results.json) from ours. They
    # are near uniform (loss ~1.33, ln 4 = 1.39): logits doubled move the
    # loss by 4e-4, so the tolerance is tight (batches of 8 against one of
    # 24 differ by float rounding only).
    with open(
        os.path.join(run.run, "test_results.json"), encoding="utf-8"
    ) as f:
        tested = json.load(f)["test_sets"]["synthetic_ser_test"]["stats"]
    nll = [
        -torch.log(decoded.probs[i][EMOTIONS.index(t)]).item()
        for i, t in zip(ids, targets)
    ]
    assert sum(nll) / len(nll) == pytest.approx(tested["loss"], abs=1e-5)


def _pick_files(run):
    """Shortest and longest files of each test set (the most padding)."""
    picked = []
    for name in ("asr_test", "ser_test"):
        ids, paths, _ = _manifest(run.data, name)
        paths = sorted(paths, key=lambda p: sf.info(p).frames)
        picked += [(name, ids, paths[0]), (name, ids, paths[-1])]
    return picked


def test_batch_equals_one_by_one(run, slm, decoded):
    picked = _pick_files(run)
    paths = [p for _, _, p in picked]
    batched = slm.analyze_files(paths, batch_size=len(paths))
    for res, path in zip(batched, paths):
        single = slm.analyze_file(path)
        assert res["file"] == path
        assert res["transcript"] == single["transcript"]
        assert res["transcript"] == slm.transcribe_file(path)
        assert res["emotion"] == single["emotion"]
        label, probs = slm.classify_file(path)
        assert label == res["emotion"]
        for emo in EMOTIONS:
            assert (
                abs(res["probabilities"][emo] - single["probabilities"][emo])
                < PROB_TOL
            )
            assert abs(res["probabilities"][emo] - probs[emo]) < PROB_TOL
    # The same files inside the batches of 8 of the manifest decoding, for
    # the files that the VAD takes as one utterance (a file it cuts into
    # several segments is decoded segment by segment: test_longform.py).
    whole = 0
    for (name, _, path), res in zip(picked, batched):
        if len(res["segments"]) != 1:
            continue
        whole += 1
        utt_id = os.path.splitext(os.path.basename(path))[0]
        if name == "asr_test":
            assert res["transcript"] == decoded.transcripts[utt_id]
        else:
            assert res["emotion"] == decoded.labels[utt_id]
            probs = torch.tensor([res["probabilities"][e] for e in EMOTIONS])
            assert torch.allclose(probs, decoded.probs[utt_id], atol=PROB_TOL)
    assert whole >= 2, [len(r["segments"]) for r in batched]


def test_44k_stereo_same_as_16k_mono(run, slm, decoded, tmp_path):
    # Resampling twice (16 -> 44.1 -> 16 kHz) and 16-bit storage move the
    # probabilities by ~1e-3; the barely trained model has near-ties, so the
    # SER file is the one with the clearest decision at 16 kHz.
    def margin(utt_id):
        top2 = decoded.probs[utt_id].topk(2).values
        return float(top2[0] - top2[1])

    ser_ids, ser_paths, _ = _manifest(run.data, "ser_test")
    clearest = max(range(len(ser_ids)), key=lambda i: margin(ser_ids[i]))
    assert margin(ser_ids[clearest]) > 0.02
    longest_asr = _pick_files(run)[1][2]
    for path in (longest_asr, ser_paths[clearest]):
        wav, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and wav.ndim == 1
        wav44 = torchaudio.functional.resample(
            torch.from_numpy(wav), 16000, 44100
        )
        stereo = torch.stack([wav44, wav44], dim=1).numpy()  # (N, 2)
        copy = str(tmp_path / ("stereo_" + os.path.basename(path)))
        sf.write(copy, stereo, 44100, subtype="FLOAT")  # no 16-bit rounding
        assert sf.info(copy).channels == 2
        assert sf.info(copy).samplerate == 44100
        # The interface hands the model the same 16 kHz mono signal (up to
        # the resampling error, more than 25 dB below the signal: the two
        # resamplings' roll-off removes what lies near 8 kHz; measured
        # -29.5 dB on one of these files).
        loaded, reference = slm.load_audio(copy), slm.load_audio(path)
        assert abs(len(loaded) - len(reference)) <= 1  # rounding of 44.1 kHz
        n = min(len(loaded), len(reference))
        loaded, reference = loaded[:n], reference[:n]
        error = (loaded - reference).pow(2).mean() / reference.pow(2).mean()
        assert 10 * torch.log10(error) < -25
        # ...so the model's outputs on the whole file agree. (Transcripts
        # are not compared: this barely trained model writes repetitive
        # near-ties that a 1e-3 change of the input flips.)
        probs, labels = slm.classify_batch(slm.load_audio(path)[None])
        probs44, labels44 = slm.classify_batch(slm.load_audio(copy)[None])
        assert labels44 == labels
        assert (probs44 - probs).abs().max() < 0.01
        # The VAD finds the same speech. (It may cut a pause near its
        # threshold in one and not the other: ser_test_00022 is one segment
        # at 16 kHz, two at 44.1 kHz; so segments are not compared.)
        mono, stereo44 = slm.analyze_file(path), slm.analyze_file(copy)
        for key, at in (("start", 0), ("end", -1)):
            edges = [r["segments"][at][key] for r in (mono, stereo44)]
            assert abs(edges[0] - edges[1]) < 0.05, (key, edges)


@pytest.fixture
def bad_files(tmp_path):
    missing = str(tmp_path / "missing.wav")
    empty = str(tmp_path / "empty.wav")
    sf.write(empty, np.zeros(0, dtype="float32"), 16000)
    corrupt = str(tmp_path / "corrupt.wav")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4000))
    return [missing, empty, corrupt]


def test_bad_audio_is_named(run, slm, bad_files):
    for path in bad_files:
        for method in (
            slm.transcribe_file,
            slm.classify_file,
            slm.analyze_file,
        ):
            with pytest.raises(AudioError, match=re.escape(path)):
                method(path)
    good = _manifest(run.data, "asr_test")[1][:2]
    for bad in bad_files:
        # Index 2 of the list, item 0 of its chunk: the list index is named.
        with pytest.raises(AudioError) as err:
            slm.analyze_files([*good, bad], batch_size=2)
        assert bad in str(err.value)
        assert "item 2" in str(err.value)


def test_device_and_frozen(slm):
    assert slm.device == "cpu"
    params = list(slm.mods.parameters())
    assert params and all(p.device.type == "cpu" for p in params)
    assert not any(p.requires_grad for p in params)
    assert not slm.mods.model.training  # dropout off: outputs reproducible


def _folder_with_yaml(run, tmp_path, edit):
    folder = str(tmp_path / "edited")
    shutil.copytree(run.model, folder)
    path = os.path.join(folder, "hyperparams.yaml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = edit(text)
    assert new != text
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return folder


def test_hyperparams_without_model_module(run, tmp_path):
    def drop_modules(text):
        return re.sub(r"^modules:\n(  .*\n)+", "", text, flags=re.M)

    folder = _folder_with_yaml(run, tmp_path, drop_modules)
    with pytest.raises(ValueError, match="no `modules` key") as err:
        HarmoniFuseSLM.from_hparams(source=folder, savedir=str(tmp_path / "s1"))
    assert os.path.join(folder, "hyperparams.yaml") in str(err.value)

    def empty_modules(text):
        return re.sub(
            r"^modules:\n(  .*\n)+", "modules: {}\n", text, flags=re.M
        )

    folder = _folder_with_yaml(run, tmp_path / "b", empty_modules)
    with pytest.raises(ValueError, match=r"lack \['model'\]"):
        HarmoniFuseSLM.from_hparams(source=folder, savedir=str(tmp_path / "s2"))


def test_cli_json(run, slm, decoded):
    (_, _, asr), (_, _, ser) = _pick_files(run)[::2]
    result = _python(
        "-m", "harmonifuse_sb.infer", run.model, asr, ser, "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, (asr, ser)):
        res = json.loads(line)
        assert set(res) == {
            "file",
            "transcript",
            "emotion",
            "probabilities",
            "segments",
        }
        assert res["file"] == path
        expected = slm.analyze_file(path)
        assert len(res["segments"]) == 1  # one utterance per test file
        assert res["segments"][0]["transcript"] == expected["transcript"]
        assert res["transcript"] == expected["transcript"]
        assert res["emotion"] == expected["emotion"]
        assert set(res["probabilities"]) == set(EMOTIONS)
        for emo in EMOTIONS:
            assert (
                abs(res["probabilities"][emo] - expected["probabilities"][emo])
                < PROB_TOL
            )


def test_cli_bad_file(run, tmp_path):
    # The missing file is reported with its reason, the good one is done.
    good = _manifest(run.data, "asr_test")[1][0]
    missing = str(tmp_path / "nope.wav")
    result = _python(
        "-m", "harmonifuse_sb.infer", run.model, missing, good, "--json"
    )
    assert result.returncode == 1
    assert [
        json.loads(line)["file"] for line in result.stdout.splitlines()
    ] == [good]
    assert f"error: {missing}: Audio file not found: {missing}" in (
        result.stderr
    )
    assert "1 of 2 files failed" in result.stderr


def test_standalone_export_matches_training_export(run, slm, tmp_path):
    folder = str(tmp_path / "reexported")
    result = _python(
        "-m",
        "harmonifuse_sb.export",
        "hparams/harmonifuse_tiny.yaml",
        f"--data_folder={run.data}",
        f"--output_folder={run.run}",
        f"--export_folder={folder}",
        *RUN_OVERRIDES,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "hyperparams.yaml",
        "label_encoder.txt",
        "speech_lm/tokenizer.json",
    ):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            new = f.read()
        with open(os.path.join(run.model, name), encoding="utf-8") as f:
            assert new == f.read(), name
    new = torch.load(os.path.join(folder, "model.ckpt"))
    old = torch.load(os.path.join(run.model, "model.ckpt"))
    assert sorted(new) == sorted(old)
    assert all(torch.equal(new[k], old[k]) for k in old)

    reloaded = HarmoniFuseSLM.from_hparams(
        source=folder, savedir=str(tmp_path / "savedir")
    )
    paths = [p for _, _, p in _pick_files(run)]
    assert reloaded.analyze_files(paths) == slm.analyze_files(paths)


def test_export_without_checkpoint_fails_clearly(tmp_path):
    from harmonifuse_sb.export import main

    empty = str(tmp_path / "no_run")
    with pytest.raises(FileNotFoundError, match="No checkpoint") as err:
        main(
            [
                os.path.join(ROOT, "hparams", "harmonifuse_tiny.yaml"),
                f"--data_folder={tmp_path / 'data'}",
                f"--output_folder={empty}",
            ]
        )
    assert os.path.join(empty, "save") in str(err.value)
    assert not os.path.exists(os.path.join(empty, "inference"))
