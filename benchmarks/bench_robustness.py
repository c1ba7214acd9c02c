#!/usr/bin/env python3
r"""WER and UA of an exported model under what recordings do to audio.

For any inference folder and any ASR and SER test manifests, decodes the
test utterances as they are ("clean") and under each perturbation:

- silence: 0.5 s of digital silence before and after the speech;
- white / babble noise at 30, 20 and 10 dB SNR (babble: four other
  utterances of the ASR manifest, mixed);
- gain -20, -12 and +6 dB (+6 dB clips at full scale, as a recorder would);
- speed 0.9 and 1.1 (resampling: tempo and pitch move together, as
  SpeechBrain's ``SpeedPerturb`` does);
- telephone: the 8 kHz band (down to 8 kHz and back);
- reverb: a room impulse response simulated with ``pyroomacoustics``
  (6 x 5 x 3 m room, RT60 0.5 s, talker 2 m from the microphone);
- rooms: RT60 0.3, 0.6 and 0.9 s (measured, within 15 %), the talker 1 m
  and 3 m from the microphone in the same room
  (``harmonifuse_sb.augment.room_impulse_response``, image method);
- a far talker: 3 m away in a room of RT60 0.5 s, with babble at 20 dB
  SNR through the same room;
- codecs: MP3 at 24 kbit/s (constant rate) and Opus at 12 kbit/s
  (``harmonifuse_sb.augment.LowBitrateCodec``; rates measured on speech);

and reports the share of non-speech clips (digital silence, white, pink and
brown noise at -60 to -20 dBFS, 1 to 4 s) that get an empty transcript.
Every perturbation is seeded by the utterance index, so runs repeat.

    python benchmarks/bench_robustness.py \
        --model results/harmonifuse_tiny/1986/inference \
        --asr-manifest data/synthetic/asr_test.json \
        --ser-manifest data/synthetic/ser_test.json \
        --data-root data/synthetic --limit 100

``--limit`` takes the first N utterances of each manifest (the synthetic
test sets cycle through their voices and emotions, so the first 100 are
balanced). ``--json FILE`` also writes the numbers.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import sys
import time

import jiwer
import numpy as np
import torch
import torchaudio
from speechbrain.utils.data_utils import batch_pad_right

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from harmonifuse_sb.augment import (  # noqa: E402
    LOW_BITRATE_CODECS,
    LowBitrateCodec,
    room_impulse_response,
)
from harmonifuse_sb.dataio import load_audio  # noqa: E402
from harmonifuse_sb.inference import HarmoniFuseSLM  # noqa: E402

SAMPLE_RATE = 16000


def rms(x):
    """Root mean square of a waveform."""
    return x.pow(2).mean().sqrt().clamp(min=1e-10)


def add_noise(wav, noise, snr_db):
    """Adds ``noise`` scaled to ``snr_db`` below the waveform's RMS."""
    noise = noise[: len(wav)]
    return wav + noise * rms(wav) / rms(noise) * 10 ** (-snr_db / 20)


def babble(index, pool, length):
    """Four other utterances of the pool, each looped to ``length``."""
    rng = np.random.default_rng(index)
    picks = rng.choice(len(pool), 4, replace=False)
    mix = torch.zeros(length)
    for i in picks:
        other = pool[(i + index + 1) % len(pool)]
        mix += other.repeat(length // len(other) + 1)[:length] / rms(other)
    return mix


def room_impulse_response_fixed(rt60=0.5):
    """The first room condition: a fixed shoebox (image-source method)."""
    import pyroomacoustics as pra

    dims = [6.0, 5.0, 3.0]
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(
        dims,
        fs=SAMPLE_RATE,
        materials=pra.Material(absorption),
        max_order=max_order,
    )
    room.add_source([2.0, 3.0, 1.6])
    room.add_microphone([4.0, 3.0, 1.2])
    room.compute_rir()
    rir = torch.tensor(room.rir[0][0], dtype=torch.float32)
    return rir / rir.abs().max()


# The codec conditions, (format, subtype, soundfile options): MP3 at 24.3
# and Opus at 12.3 kbit/s on eSpeak NG speech (tests/test_augment.py).
MP3_24 = LOW_BITRATE_CODECS[0]
OPUS_12 = ("OGG", "OPUS", {"compression_level": 0.98})


def reverberate(wav, rir):
    """``wav`` through a room, its tail kept for 0.25 s, at its own RMS."""
    wet = torchaudio.functional.fftconvolve(wav, rir)[: len(wav) + 4000]
    return wet * rms(wav) / rms(wet)


def codec(choice):
    """A condition coding each waveform with one codec."""
    coder = LowBitrateCodec(SAMPLE_RATE, codecs=[choice])
    return lambda w, i: coder(w[None])[0]


def rooms():
    """Room conditions: name -> function(wav, index)."""
    conditions = {}
    for rt60 in (0.3, 0.6, 0.9):
        for distance in (1.0, 3.0):  # seed 0: one room per RT60
            rir, _ = room_impulse_response(rt60, distance, seed=0)
            name = f"room RT60 {rt60} s, talker {distance:g} m"
            conditions[name] = lambda w, i, rir=rir: reverberate(w, rir)
    return conditions


def far_talker(pool):
    """The talker 3 m away (RT60 0.5 s) and babble at 20 dB SNR, both
    through the room.
    """
    rir, _ = room_impulse_response(0.5, 3.0, seed=0)

    def perturb(w, i):
        wet = reverberate(w, rir)
        noise = reverberate(babble(i, pool, len(w)), rir)
        return add_noise(wet, noise, 20)

    return perturb


def perturbations(pool):
    """Name -> function(wav, index) of every condition."""
    rir = room_impulse_response_fixed()

    def white(snr):
        return lambda w, i: add_noise(
            w,
            torch.randn(len(w), generator=torch.Generator().manual_seed(i)),
            snr,
        )

    def babble_at(snr):
        return lambda w, i: add_noise(w, babble(i, pool, len(w)), snr)

    def gain(db):
        return lambda w, i: (w * 10 ** (db / 20)).clamp(-1.0, 1.0)

    def speed(factor):
        # Read at SAMPLE_RATE, audio resampled from SAMPLE_RATE * factor
        # plays factor times faster (rates with a large common divisor keep
        # the resampling kernel small, as in SpeechBrain's SpeedPerturb).
        return lambda w, i: torchaudio.functional.resample(
            w, int(SAMPLE_RATE * factor), SAMPLE_RATE
        )

    def telephone(w, i):
        narrow = torchaudio.functional.resample(w, SAMPLE_RATE, 8000)
        return torchaudio.functional.resample(narrow, 8000, SAMPLE_RATE)[
            : len(w)
        ]

    silence = torch.zeros(SAMPLE_RATE // 2)
    return {
        "clean": lambda w, i: w,
        "silence 0.5 s around": lambda w, i: torch.cat([silence, w, silence]),
        **{f"white {s} dB SNR": white(s) for s in (30, 20, 10)},
        **{f"babble {s} dB SNR": babble_at(s) for s in (30, 20, 10)},
        **{f"gain {g:+d} dB": gain(g) for g in (-20, -12, 6)},
        "speed 0.9": speed(0.9),
        "speed 1.1": speed(1.1),
        "telephone 8 kHz": telephone,
        "reverb RT60 0.5 s": lambda w, i: reverberate(w, rir),
        **rooms(),
        "far talker 3 m, RT60 0.5 s, babble 20 dB": far_talker(pool),
        "MP3 24 kbit/s": codec(MP3_24),
        "Opus 12 kbit/s": codec(OPUS_12),
    }


def non_speech_clips(count=100, seed=0):
    """Digital silence, white, pink and brown noise; 1-4 s, -60..-20 dBFS."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        n = int(rng.uniform(1.0, 4.0) * SAMPLE_RATE)
        kind = ("silence", "white", "pink", "brown")[i % 4]
        if kind == "silence":
            clips.append(torch.zeros(n))
            continue
        x = rng.standard_normal(n)
        if kind != "white":
            spectrum = np.fft.rfft(x)
            f = np.maximum(np.arange(len(spectrum)), 1.0)
            spectrum /= f ** (0.5 if kind == "pink" else 1.0)
            x = np.fft.irfft(spectrum, n=n)
        x = x / np.sqrt(np.mean(x**2)) * 10 ** (rng.uniform(-60, -20) / 20)
        clips.append(torch.tensor(x, dtype=torch.float32))
    return clips


def unweighted_accuracy(truth, predicted):
    """Mean per-class recall; a prediction of None (no speech found by the
    VAD) counts as wrong.

    Example
    -------
    >>> unweighted_accuracy(["a", "a", "b"], ["a", None, "b"])
    0.75
    """
    recalls = []
    for label in sorted(set(truth)):
        pairs = [(t, p) for t, p in zip(truth, predicted) if t == label]
        recalls.append(sum(t == p for t, p in pairs) / len(pairs))
    return sum(recalls) / len(recalls)


def batches(wavs, size):
    """Padded (wavs, wav_lens) batches, in order."""
    for start in range(0, len(wavs), size):
        yield batch_pad_right(wavs[start : start + size])


def read_manifest(path, data_root, key, limit):
    """The first ``limit`` waveforms of a manifest and their ``key``."""
    with open(path, encoding="utf-8") as f:
        entries = list(json.load(f).values())[:limit]
    wavs = [
        load_audio(e["wav"].replace("{data_root}", data_root)) for e in entries
    ]
    return wavs, [e[key] for e in entries]


def main(argv=None):
    """Prints the table (and writes --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="inference folder")
    parser.add_argument("--asr-manifest", required=True)
    parser.add_argument("--ser-manifest", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--conditions", nargs="*", help="default: all")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument(
        "--device", default="cpu", help="where the model runs (cpu, cuda)"
    )
    parser.add_argument(
        "--no-non-speech",
        action="store_true",
        help="skip the non-speech clips (e.g. when conditions are split "
        "over several processes)",
    )
    args = parser.parse_args(argv)

    slm = HarmoniFuseSLM.from_hparams(
        source=args.model, run_opts={"device": args.device}
    )
    asr_wavs, refs = read_manifest(
        args.asr_manifest, args.data_root, "wrd", args.limit
    )
    ser_wavs, labels = read_manifest(
        args.ser_manifest, args.data_root, "emo", args.limit
    )
    conditions = perturbations(asr_wavs)
    if args.conditions:
        conditions = {k: conditions[k] for k in args.conditions}
    start = time.time()
    rows = []
    print("| condition | WER % | UA % |")
    print("| --- | --- | --- |")
    for name, perturb in conditions.items():
        asr = [perturb(w, i) for i, w in enumerate(asr_wavs)]
        ser = [perturb(w, i) for i, w in enumerate(ser_wavs)]
        hyps = []
        for wavs, lens in batches(asr, args.batch_size):
            hyps += slm.transcribe_batch(wavs, lens)
        predicted = []
        for wavs, lens in batches(ser, args.batch_size):
            predicted += slm.classify_batch(wavs, lens)[1]
        wer = 100 * jiwer.wer(refs, [h or "" for h in hyps])
        ua = 100 * unweighted_accuracy(labels, predicted)
        rows.append({"condition": name, "WER": wer, "UA": ua})
        print(f"| {name} | {wer:.1f} | {ua:.1f} |", flush=True)
    share = None
    if not args.no_non_speech:
        clips = non_speech_clips()
        empty = 0
        for wavs, lens in batches(clips, args.batch_size):
            hyps = slm.transcribe_batch(wavs, lens)
            empty += sum(not h.strip() for h in hyps)
        share = 100 * empty / len(clips)
        print(
            f"\nNon-speech clips with an empty transcript: {empty} / "
            f"{len(clips)} ({share:.0f} %)"
        )
    print(
        f"{len(refs)} ASR and {len(labels)} SER utterances per condition; "
        f"{time.time() - start:.0f} s"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"conditions": rows, "non_speech_empty": share}, f, indent=2
            )


if __name__ == "__main__":
    main()
