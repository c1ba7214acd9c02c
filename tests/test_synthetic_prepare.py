"""Tests of the synthetic corpus preparation (recipes/Synthetic)."""

import doctest
import importlib
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recipes.Synthetic.synthetic_prepare import (
    BASELINE_RANGES,
    EMOTION_AROUSAL,
    EMOTION_PROSODY,
    EMOTION_VALENCE,
    EMOTIONS,
    MANIFESTS,
    NOISE_CLIPS,
    RECORDING,
    VALENCE_PHRASES,
    ESpeakSynth,
    grammar_vocabulary,
    merge_emotion_prosody,
    plan_corpus,
    prepare_synthetic,
    random_sentence,
    select_voices,
    speech_level_db,
    utterance_prosody,
    vocal_effort_tilt,
)

REPO = Path(__file__).resolve().parents[1]

# Tiny counts: SER counts are multiples of 4 so that emotions balance.
COUNTS = {
    "asr_train": 10,
    "asr_valid": 4,
    "asr_test": 6,
    "ser_train": 16,
    "ser_valid": 8,
    "ser_test": 8,
}
VOICES = {"n_train_voices": 12, "n_valid_voices": 2, "n_test_voices": 4}


def load(folder, name):
    with open(os.path.join(folder, f"{name}.json")) as fin:
        return json.load(fin)


def wav_path(folder, entry):
    return entry["wav"].replace("{data_root}", str(folder))


def all_files(folder):
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic(str(folder), seed=7, **VOICES, **COUNTS)
    return folder


COMMON_KEYS = (
    "wav",
    "duration",
    "spk_id",
    "speech_start",
    "speech_end",
    "snr_db",
    "noise",
)


def test_manifests_counts_and_keys(corpus):
    vocabulary = grammar_vocabulary()
    for name in MANIFESTS:
        manifest = load(corpus, name)
        assert len(manifest) == COUNTS[name], name
        for utt_id, entry in manifest.items():
            assert utt_id.startswith(name)
            assert entry["wav"].startswith("{data_root}/wavs/")
            assert isinstance(entry["duration"], float)
            if name.startswith("asr"):
                # ASR: a transcript and no emotion.
                assert set(entry) == {*COMMON_KEYS, "wrd"}
                words = entry["wrd"].split()
                assert 3 <= len(words) <= 8
                assert entry["wrd"] == entry["wrd"].lower()
                assert set(words) <= vocabulary
            else:
                # SER: an emotion and no transcript.
                assert set(entry) == {*COMMON_KEYS, "emo"}
                assert entry["emo"] in EMOTIONS


def test_emotions_balanced(corpus):
    for name in ("ser_train", "ser_valid", "ser_test"):
        counts = Counter(e["emo"] for e in load(corpus, name).values())
        assert counts == dict.fromkeys(EMOTIONS, COUNTS[name] // 4), name


def test_voice_partition(corpus):
    voices = load(corpus, "voices")
    splits = {split: set(voices[split]) for split in ("train", "valid", "test")}
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 12,
        "valid": 2,
        "test": 4,
    }
    assert not splits["train"] & splits["valid"]
    assert not splits["train"] & splits["test"]
    assert not splits["valid"] & splits["test"]
    # Each voice is a distinct (language, variant) pair that eSpeak has.
    synth = ESpeakSynth()
    pairs = set()
    for split in splits:
        for name, voice in voices[split].items():
            assert name == f"{voice['language']}+{voice['variant']}"
            synth.check_voice(name)
            pairs.add((voice["language"], voice["variant"]))
            for key in ("pitch", "range", "rate"):
                low, high = BASELINE_RANGES[key]
                assert low <= voice[key] <= high
    assert len(pairs) == 18
    # Held-out sets use held-out voices only; both genders are held out.
    for name in MANIFESTS:
        split = name.split("_")[1]
        speakers = {e["spk_id"] for e in load(corpus, name).values()}
        assert speakers <= splits[split], name
    for split in ("valid", "test"):
        genders = {voices[split][v]["variant"][0] for v in splits[split]}
        assert genders == {"m", "f"}


def test_wavs_match_manifests(corpus):
    for name in MANIFESTS:
        for entry in load(corpus, name).values():
            info = sf.info(wav_path(corpus, entry))
            assert info.samplerate == 16000
            assert info.channels == 1
            assert info.subtype == "PCM_16"
            assert info.frames / 16000 == pytest.approx(entry["duration"])
            assert 0.5 < entry["duration"] < 8.0


def test_ser_sentences_differ_from_asr(corpus):
    voices = load(corpus, "voices")
    plan = plan_corpus(voices, COUNTS, seed=7)
    # The plan is what was synthesised.
    manifest = load(corpus, "asr_train")
    assert [u["wrd"] for u in plan["asr_train"]] == [
        e["wrd"] for e in manifest.values()
    ]
    asr = {u["wrd"] for name in MANIFESTS[:3] for u in plan[name]}
    ser = {u["wrd"] for name in MANIFESTS[3:] for u in plan[name]}
    assert not asr & ser


def test_deterministic(corpus, tmp_path):
    # Same seed, other folder, one process instead of several.
    prepare_synthetic(str(tmp_path), seed=7, num_workers=1, **VOICES, **COUNTS)
    files = all_files(corpus)
    assert files == all_files(tmp_path)
    speech = [f for f in files if f.endswith(".wav") and "noise" not in f]
    assert len(speech) == sum(COUNTS.values())
    for name in files:
        assert (corpus / name).read_bytes() == (tmp_path / name).read_bytes()


def test_other_seed_differs(corpus, tmp_path):
    prepare_synthetic(str(tmp_path), seed=8, **VOICES, **COUNTS)
    assert load(corpus, "voices") != load(tmp_path, "voices")
    assert load(corpus, "asr_train") != load(tmp_path, "asr_train")


def test_skip_then_regenerate(tmp_path, caplog):
    kwargs = dict(COUNTS, n_train_voices=3, n_valid_voices=1, n_test_voices=1)
    prepare_synthetic(str(tmp_path), **kwargs)
    mtimes = {f: os.stat(tmp_path / f).st_mtime_ns for f in all_files(tmp_path)}

    with caplog.at_level(logging.INFO):
        prepare_synthetic(str(tmp_path), **kwargs)
    assert "skipping" in caplog.text
    assert {
        f: os.stat(tmp_path / f).st_mtime_ns for f in all_files(tmp_path)
    } == mtimes

    # A changed parameter regenerates, and no stale wav is left behind.
    prepare_synthetic(str(tmp_path), **dict(kwargs, asr_train=3))
    assert len(load(tmp_path, "asr_train")) == 3
    assert len(os.listdir(tmp_path / "wavs" / "asr_train")) == 3
    assert load(tmp_path, "prepare_params")["asr_train"] == 3
    assert (
        os.stat(tmp_path / "ser_test.json").st_mtime_ns
        != mtimes["ser_test.json"]
    )

    # A missing manifest regenerates too.
    os.remove(tmp_path / "ser_valid.json")
    prepare_synthetic(str(tmp_path), **dict(kwargs, asr_train=3))
    assert len(load(tmp_path, "ser_valid")) == COUNTS["ser_valid"]


def rms_db(wav):
    x = wav.astype(np.float64) / 32768
    return 10 * np.log10(np.mean(x**2))


def median_f0(wav, sample_rate, fmin=50, fmax=500):
    """Median autocorrelation pitch of the voiced 40 ms frames, in Hz."""
    n, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    frames = np.stack(
        [wav[i : i + n] for i in range(0, len(wav) - n, hop)]
    ).astype(np.float64)
    frames -= frames.mean(1, keepdims=True)
    spectrum = np.abs(np.fft.rfft(frames, 2 * n)) ** 2
    acf = np.fft.irfft(spectrum)[:, :n]
    acf /= acf[:, :1] + 1e-9
    low, high = int(sample_rate / fmax), int(sample_rate / fmin)
    lag = low + acf[:, low:high].argmax(1)
    voiced = acf[np.arange(len(lag)), lag] > 0.5
    return np.median(sample_rate / lag[voiced])


def test_emotion_prosody_is_audible():
    """Same voice, same sentences: the emotions change rate and pitch."""
    synth = ESpeakSynth()
    baseline = {"pitch": 50, "range": 48, "rate": 175}
    rng = np.random.default_rng(0)
    sentences = [random_sentence(rng) for _ in range(4)]
    stats = {emotion: [] for emotion in EMOTIONS}
    for sentence in sentences:
        for emotion in EMOTIONS:
            prosody = utterance_prosody(baseline, emotion, rng)
            wav = synth.synth(
                sentence,
                voice="en-gb-x-rp+m3",
                rate=prosody["rate"],
                pitch=prosody["pitch"],
                range_=prosody["range"],
            )
            seconds = len(wav) / synth.sample_rate
            stats[emotion].append(
                (
                    seconds / len(sentence.split()),
                    rms_db(wav),
                    median_f0(wav, synth.sample_rate),
                )
            )
    stats = {emotion: np.array(v) for emotion, v in stats.items()}
    per_word = {emotion: v[:, 0] for emotion, v in stats.items()}
    level = {emotion: v[:, 1] for emotion, v in stats.items()}
    pitch = {emotion: v[:, 2] for emotion, v in stats.items()}
    # Sentence by sentence: sad is much slower than angry, neutral between.
    assert np.all(per_word["sad"] > 1.6 * per_word["angry"])
    assert np.all(per_word["sad"] > per_word["neutral"])
    assert np.all(per_word["neutral"] > per_word["angry"])
    # eSpeak's volume is not an emotion cue (the level is set afterwards).
    assert np.ptp([v.mean() for v in level.values()]) < 3
    # Happy is higher than neutral, sad lower (more than 2 semitones).
    semitones = 12 * np.log2(pitch["happy"] / pitch["neutral"])
    assert np.all(semitones > 2), semitones
    assert np.all(12 * np.log2(pitch["neutral"] / pitch["sad"]) > 1)


def band_ratio_db(wav, sample_rate, low=500.0, high=3000.0):
    """Energy above ``high`` Hz minus energy below ``low`` Hz, in dB."""
    spectrum = np.abs(np.fft.rfft(wav.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / sample_rate)
    above = spectrum[freqs >= high].sum()
    return 10 * np.log10(above / spectrum[freqs < low].sum())


def test_vocal_effort_tilt_changes_the_spectral_slope_only():
    """The tilt (a first-order shelf at 1 kHz) moves the energy above 3 kHz
    against the energy below 500 Hz by most of its gain, in its direction,
    whatever the level, and keeps the length."""
    synth = ESpeakSynth()
    wav = synth.synth("the red cat sang near the river", "en-us+f2")
    x = wav.astype(np.float64) / 32768
    base = band_ratio_db(x, synth.sample_rate)
    for tilt in (-4.0, 3.0, 8.0):
        for gain in (1.0, 0.1):
            y = vocal_effort_tilt(gain * x, synth.sample_rate, tilt)
            assert y.shape == x.shape
            moved = band_ratio_db(y, synth.sample_rate) - base
            assert 0.65 * abs(tilt) < np.sign(tilt) * moved < abs(tilt), (
                tilt,
                moved,
            )
    assert np.array_equal(vocal_effort_tilt(x, synth.sample_rate, 0.0), x)
    # Angry has the flattest slope, sad the steepest.
    tilts = {emo: EMOTION_PROSODY[emo]["tilt"] for emo in EMOTIONS}
    assert max(tilts, key=tilts.get) == "angry"
    assert min(tilts, key=tilts.get) == "sad"


def test_emotion_prosody_overrides(tmp_path):
    table = merge_emotion_prosody({"angry": {"tilt": 0, "rate": 1.2}})
    assert table["angry"]["tilt"] == 0.0 and table["angry"]["rate"] == 1.2
    assert table["happy"] == EMOTION_PROSODY["happy"]
    assert EMOTION_PROSODY["angry"]["rate"] == 1.45  # the default is kept
    assert merge_emotion_prosody(None) == EMOTION_PROSODY
    with pytest.raises(ValueError, match="unknown emotion 'bored'"):
        merge_emotion_prosody({"bored": {"rate": 0.5}})
    with pytest.raises(ValueError, match="unknown cue 'volume' for 'sad'"):
        merge_emotion_prosody({"sad": {"volume": 3}})
    with pytest.raises(ValueError, match="sad.rate = 'slow' is not a number"):
        merge_emotion_prosody({"sad": {"rate": "slow"}})
    # The table is a parameter of the corpus: it is rendered with it and a
    # change regenerates it.
    kwargs = dict(
        asr_train=1,
        asr_valid=1,
        asr_test=1,
        ser_train=4,
        ser_valid=4,
        ser_test=4,
        n_train_voices=1,
        n_valid_voices=1,
        n_test_voices=1,
    )
    override = {"angry": {"tilt": 0.0}}
    prepare_synthetic(str(tmp_path), emotion_prosody=override, **kwargs)
    params = load(tmp_path, "prepare_params")
    assert params["emotion_prosody"]["angry"]["tilt"] == 0.0
    assert load(tmp_path, "voices")["emotion_prosody"]["angry"]["tilt"] == 0
    prepare_synthetic(str(tmp_path), **kwargs)
    assert load(tmp_path, "prepare_params")["emotion_prosody"] == (
        EMOTION_PROSODY
    )


def recorded(corpus):
    """(entry, float samples) of every utterance of the corpus."""
    for name in MANIFESTS:
        for entry in load(corpus, name).values():
            wav, _ = sf.read(wav_path(corpus, entry), dtype="float64")
            yield name, entry, wav


def test_levels_do_not_follow_emotions(corpus):
    """The level is the microphone's: drawn per utterance over 28 dB,
    independently of the emotion (the old corpus made angry 1.9x louder)."""
    level = {emotion: [] for emotion in EMOTIONS}
    for _, entry, wav in recorded(corpus):
        start, end = (
            int(16000 * entry[k]) for k in ("speech_start", "speech_end")
        )
        level[entry.get("emo", "neutral")].append(
            speech_level_db(wav[start:end])
        )
    every = np.concatenate([np.array(v) for v in level.values()])
    low, high = RECORDING["level_db"]
    # Within the drawn range (a limiter may lower the loudest a little).
    assert every.min() > low - 1.5 and every.max() < high + 1.5
    assert np.ptp(every) > 20
    means = [np.mean(v) for v in level.values()]
    # 8 to 38 utterances per emotion: means differ by chance only.
    assert np.ptp(means) < 9, means


def test_recordings_have_noisy_silence_and_their_snr(corpus):
    """Silence around the speech holds the background noise (no digital
    zeros, no exact trimming), at the SNR the manifest gives."""
    leads = []
    for name, entry, wav in recorded(corpus):
        start = int(16000 * entry["speech_start"])
        end = int(16000 * entry["speech_end"])
        leads.append(entry["speech_start"])
        assert 0 < start < end <= len(wav)
        lead = wav[: start - 16]
        assert np.all(np.abs(lead) < 0.5)
        level = speech_level_db(wav[start:end])
        # Noise well above the 16-bit step (-90 dBFS) is measurable.
        if level - entry["snr_db"] > -70:
            assert np.count_nonzero(lead) > 0.9 * len(lead), entry
            snr = level - 10 * np.log10(np.mean(lead**2))
            assert snr == pytest.approx(entry["snr_db"], abs=3.0), entry
        split = name.split("_")[1]
        low, high = RECORDING["snr_db"][split]
        assert low <= entry["snr_db"] <= high
        assert entry["noise"] in RECORDING["noise"]
    assert np.std(leads) > 0.05  # the silence before the speech varies


def test_noise_clips_for_augmentation(corpus):
    """noise.csv lists the clips in the format AddNoise reads."""
    from speechbrain.augment.time_domain import AddNoise

    lines = (corpus / "noise.csv").read_text().splitlines()
    assert lines[0] == "ID,duration,wav,wav_format,wav_opts"
    assert len(lines) == 1 + NOISE_CLIPS * len(RECORDING["noise"])
    torch = pytest.importorskip("torch")
    add_noise = AddNoise(
        str(corpus / "noise.csv"),
        replacements={"data_root": str(corpus)},
        snr_low=10,
        snr_high=10,
        pad_noise=True,
    )
    torch.manual_seed(0)
    clean = torch.sin(torch.arange(16000) / 5.0).repeat(2, 1) * 0.1
    noisy = add_noise(clean, torch.ones(2))
    # AddNoise scales the speech by 1 - f and the noise to f times its RMS,
    # f = 1 / (10^(SNR/20) + 1): the mixture's SNR is the one asked for.
    speech = clean * (1 - 1 / (10**0.5 + 1))
    noise = noisy - speech
    snr = 10 * torch.log10((speech**2).mean() / (noise**2).mean())
    assert float(snr) == pytest.approx(10.0, abs=0.5)


def test_grammar():
    assert len(grammar_vocabulary()) >= 200
    rng = np.random.default_rng(0)
    sentences = [random_sentence(rng) for _ in range(500)]
    assert {len(s.split()) for s in sentences} == set(range(3, 9))
    assert len(set(sentences)) > 490


def test_unknown_voice_is_named():
    synth = ESpeakSynth()
    with pytest.raises(ValueError, match="en-xx"):
        synth.synth("hello", voice="en-xx+m3")
    with pytest.raises(ValueError, match="zz9"):
        synth.synth("hello", voice="en-us+zz9")


def test_bad_voice_arguments_are_named_and_keep_the_corpus(tmp_path):
    kwargs = dict(COUNTS, n_train_voices=2, n_valid_voices=1, n_test_voices=1)
    prepare_synthetic(str(tmp_path), **kwargs)
    before = all_files(tmp_path)
    with pytest.raises(ValueError, match="nosuchvoice"):
        prepare_synthetic(
            str(tmp_path), variants=["m1", "f1", "nosuchvoice"], **kwargs
        )
    with pytest.raises(ValueError, match="en-xx"):
        prepare_synthetic(str(tmp_path), languages=["en-us", "en-xx"], **kwargs)
    with pytest.raises(ValueError, match="voices asked for"):
        prepare_synthetic(
            str(tmp_path), languages=["en-us"], variants=["m1", "f1"], **kwargs
        )
    # The arguments are checked before the old corpus is removed.
    assert all_files(tmp_path) == before


def test_missing_library_is_named(tmp_path):
    missing = str(tmp_path / "libespeak-ng.so")
    with pytest.raises(RuntimeError, match="libespeak-ng.so"):
        ESpeakSynth(library_path=missing)


def test_script(tmp_path):
    counts = [f"--{name}={n // 2}" for name, n in COUNTS.items()]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.Synthetic.synthetic_prepare",
            str(tmp_path),
            "--n_train_voices=2",
            "--n_valid_voices=1",
            "--n_test_voices=1",
            *counts,
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert len(load(tmp_path, "ser_train")) == COUNTS["ser_train"] // 2


# ---------------------------------------------------------------- wording

WORDING_COUNTS = {
    "asr_train": 30,
    "asr_valid": 5,
    "asr_test": 5,
    "ser_train": 16,
    "ser_valid": 8,
    "ser_test": 8,
}
# sha256 of the plan below, computed with the code before the wording
# option existed (main at 9014389): the default corpus must not change.
PLAN_SHA256 = "a7046d55c7b57bb6bbf52231e4cb3ecc11f012615287aea0e3e3efc3cfdfb787"


def wording_voices():
    return select_voices(
        ["en-us", "en-gb"],
        ["m1", "f1", "m2", "f2", "m3"],
        3,
        1,
        1,
        np.random.default_rng(0),
    )


def strip_phrase(sentence):
    """The grammar sentence and the phrase said before or after it."""
    for phrases in VALENCE_PHRASES.values():
        for phrase in phrases:
            if sentence.startswith(phrase + " "):
                return sentence[len(phrase) + 1 :], phrase
            if sentence.endswith(" " + phrase):
                return sentence[: -len(phrase) - 1], phrase
    return sentence, None


def test_default_plan_is_unchanged():
    import hashlib

    plan = plan_corpus(wording_voices(), WORDING_COUNTS, 1234)
    for utterances in plan.values():
        for utt in utterances:
            assert utt.pop("wording") == "none"
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode())
    assert digest.hexdigest() == PLAN_SHA256


def test_wording_label_rule_and_determinism():
    counts = dict(WORDING_COUNTS, ser_train=400, asr_train=400)
    voices = wording_voices()
    plain = plan_corpus(voices, counts, 1234)
    worded = plan_corpus(voices, counts, 1234, wording=0.75)
    assert worded == plan_corpus(voices, counts, 1234, wording=0.75)
    for name in MANIFESTS:
        shares = Counter()
        for before, after in zip(plain[name], worded[name]):
            sentence, phrase = strip_phrase(after["wrd"])
            # Everything but the phrase is the corpus without wording.
            assert sentence == before["wrd"]
            for key in before:
                if key not in ("wrd", "wording"):
                    assert after[key] == before[key], (name, key)
            if phrase is None:
                assert after["wording"] == "none"
                continue
            assert phrase in VALENCE_PHRASES[after["wording"]]
            shares[after["wording"]] += 1
            if name.startswith("ser"):
                # The label rule: the words carry the valence.
                assert after["wording"] == EMOTION_VALENCE[after["emo"]]
        if name in ("ser_train", "asr_train"):
            share = sum(shares.values()) / counts[name]
            assert 0.68 < share < 0.82, (name, share)
        if name == "asr_train":  # either valence, at random
            assert 0.35 < shares["positive"] / sum(shares.values()) < 0.65
    # Neither cue alone gives the class: each valence and each arousal
    # holds two emotions.
    for table in (EMOTION_VALENCE, EMOTION_AROUSAL):
        assert sorted(Counter(table.values()).values()) == [2, 2]
    pairs = {(EMOTION_AROUSAL[e], EMOTION_VALENCE[e]) for e in EMOTIONS}
    assert len(pairs) == 4


@pytest.mark.parametrize("share", [-0.1, 1.5, "a lot", True])
def test_bad_wording_share_is_named(share, tmp_path):
    with pytest.raises(ValueError, match="emotional_wording"):
        prepare_synthetic(str(tmp_path), emotional_wording=share)
    assert not os.listdir(tmp_path)


def test_worded_corpus_manifests(tmp_path):
    kwargs = dict(COUNTS, n_train_voices=3, n_valid_voices=1, n_test_voices=1)
    prepare_synthetic(str(tmp_path / "plain"), **kwargs)
    prepare_synthetic(str(tmp_path / "worded"), emotional_wording=1.0, **kwargs)
    plain_params = load(tmp_path / "plain", "prepare_params")
    worded_params = load(tmp_path / "worded", "prepare_params")
    assert "emotional_wording" not in plain_params
    assert worded_params.pop("emotional_wording") == 1.0
    assert worded_params == plain_params
    for name in MANIFESTS:
        manifest = load(tmp_path / "worded", name)
        for entry in manifest.values():
            if name.startswith("ser"):
                assert set(entry) == {*COMMON_KEYS, "emo", "wording"}
                assert entry["wording"] == EMOTION_VALENCE[entry["emo"]]
            else:
                assert strip_phrase(entry["wrd"])[1] is not None
    voices = load(tmp_path / "worded", "voices")
    assert voices["emotion_valence"] == EMOTION_VALENCE


def test_docstring_examples_run():
    # The package's examples (setup.cfg's doctests cover tests/ and
    # harmonifuse_sb/ only).
    attempted = 0
    for name in ("grammar", "espeak", "prosody", "recording", "prepare"):
        module = importlib.import_module(
            f"recipes.Synthetic.synthetic_prepare.{name}"
        )
        result = doctest.testmod(
            module,
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        )
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted >= 40
