"""``benchmarks/bench_robustness.py`` on a toy model: the room, far-talker
and codec conditions (issue 20, item 4) change the audio as they say, and
the benchmark runs end to end and writes its table.

The model is a tiny random one (``tests.longform_helpers``): its WER and UA
are meaningless, the code path is the one a trained model takes.
"""

import io
import json
import os
import sys

import pytest
import soundfile as sf
import torch

from tests.longform_helpers import ROOT, espeak_clips, export_untrained_model

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_robustness as bench  # noqa: E402

NEW = [
    *(
        f"room RT60 {rt60} s, talker {d} m"
        for rt60 in (0.3, 0.6, 0.9)
        for d in (1, 3)
    ),
    "far talker 3 m, RT60 0.5 s, babble 20 dB",
    "MP3 24 kbit/s",
    "Opus 12 kbit/s",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return espeak_clips(str(tmp_path_factory.mktemp("clips")), count=4)


@pytest.fixture(scope="module")
def conditions(clips):
    pool = [
        torch.from_numpy(sf.read(c["wav"], dtype="float32")[0]) for c in clips
    ]
    return pool, bench.perturbations(pool)


def test_new_conditions_are_listed(conditions):
    _, perturb = conditions
    assert set(NEW) <= set(perturb)


def _direct_to_reverberant(wav, wet):
    """Energy share of the reverberated signal explained by the dry one."""
    wet = wet[: len(wav)]
    gain = (wet @ wav) / (wav @ wav)
    return float((gain * wav).pow(2).sum() / wet.pow(2).sum())


def test_rooms_reverberate_more_when_longer_and_farther(conditions):
    pool, perturb = conditions
    wav = pool[0]
    share = {
        name: _direct_to_reverberant(wav, perturb[name](wav, 0))
        for name in NEW[:6]
    }
    for rt60 in (0.3, 0.6, 0.9):  # farther: less direct sound
        assert (
            share[f"room RT60 {rt60} s, talker 1 m"]
            > share[f"room RT60 {rt60} s, talker 3 m"]
        )
    assert (
        share["room RT60 0.3 s, talker 3 m"]
        > share["room RT60 0.9 s, talker 3 m"]
    )
    for name in NEW[:6]:  # the level is kept
        out = perturb[name](wav, 0)
        assert len(out) == len(wav) + 4000
        assert float(bench.rms(out)) == pytest.approx(float(bench.rms(wav)))


def test_far_talker_adds_babble(conditions):
    pool, perturb = conditions
    wav = pool[1]
    far = perturb["far talker 3 m, RT60 0.5 s, babble 20 dB"]
    out = far(wav, 1)
    assert torch.equal(out, far(wav, 1))  # seeded by the index
    assert not torch.equal(out, far(wav, 2))
    room_only = bench.reverberate(
        wav, bench.room_impulse_response(0.5, 3.0, seed=0)[0]
    )
    noise = out - room_only
    snr = 20 * torch.log10(bench.rms(room_only) / bench.rms(noise))
    assert float(snr) == pytest.approx(20, abs=0.1)


@pytest.mark.parametrize(
    "name, codec, rate",
    [
        ("MP3 24 kbit/s", bench.MP3_24, (22, 26)),
        ("Opus 12 kbit/s", bench.OPUS_12, (10, 14)),
    ],
)
def test_codec_conditions(conditions, name, codec, rate):
    pool, perturb = conditions
    wav = torch.cat(pool)
    out = perturb[name](wav, 0)
    assert out.shape == wav.shape and not torch.allclose(out, wav, atol=1e-3)
    fmt, subtype, options = codec
    buffer = io.BytesIO()
    sf.write(buffer, wav.numpy(), 16000, format=fmt, subtype=subtype, **options)
    kbits = 8 * buffer.tell() / (len(wav) / 16000) / 1000
    assert rate[0] <= kbits <= rate[1]


def test_benchmark_runs_on_a_toy_model(clips, tmp_path, capsys):
    model = export_untrained_model(str(tmp_path / "model"), str(tmp_path / "w"))
    emotions = ["neutral", "happy", "sad", "angry"]
    asr = {c["id"]: {"wav": c["wav"], "wrd": c["wrd"]} for c in clips}
    ser = {
        c["id"]: {"wav": c["wav"], "emo": emotions[i % 4]}
        for i, c in enumerate(clips)
    }
    paths = {}
    for name, manifest in (("asr", asr), ("ser", ser)):
        paths[name] = str(tmp_path / f"{name}.json")
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(manifest, f)
    out = str(tmp_path / "robustness.json")
    chosen = ["clean", NEW[0], NEW[6], NEW[7], NEW[8]]
    bench.main(
        [
            "--model",
            model,
            "--asr-manifest",
            paths["asr"],
            "--ser-manifest",
            paths["ser"],
            "--data-root",
            str(tmp_path),
            "--limit",
            "4",
            "--conditions",
            *chosen,
            "--json",
            out,
        ]
    )
    printed = capsys.readouterr().out
    with open(out, encoding="utf-8") as f:
        report = json.load(f)
    rows = report["conditions"]
    assert [r["condition"] for r in rows] == chosen
    for row in rows:
        assert row["WER"] >= 0 and 0 <= row["UA"] <= 100
        assert (
            f"| {row['condition']} | {row['WER']:.1f} | {row['UA']:.1f} |"
            in printed
        )
    assert 0 <= report["non_speech_empty"] <= 100
