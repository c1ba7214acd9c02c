#!/usr/bin/env python3
r"""Long recordings: WER, segment boundaries, emotion over time, RTF, memory.

Builds long recordings from held-out test utterances of a corpus (pauses of
0.2-1.5 s between them, a few seconds of noise-only stretches, a level per
utterance, a low noise floor throughout), runs the command line on them
(``python -m harmonifuse_sb.infer --format json``, in a child process whose
peak memory is measured), and prints:

- the WER of the long-form transcript against the joined references, and
  the WER of the same utterances decoded one by one (their own files);
- the segment boundary error: for each utterance, the distance from its
  speech start (end) to the nearest segment start (end), and the share of
  utterances whose two boundaries are both within ``--tolerance`` s;
- the emotion read from the segments (the segment that overlaps the
  utterance most) against each utterance's own classification (agreement)
  and its label (accuracy);
- the real-time factor (decoding seconds / audio seconds, model loading
  excluded) and the peak resident memory of the decoding process.

Targets (issue 10): long-form WER <= 1.2 x one-by-one WER + 2 points;
>= 90 % of utterances with both boundaries within 0.3 s; emotion agreement
>= 90 %; peak memory < 2 GB for 60 minutes on 2 CPU cores.

The quick-start measurement (3 minutes of each task, 2 threads):

    python benchmarks/bench_longform.py --model results/harmonifuse_tiny/1986/inference \
        --manifest data/synthetic/asr_test.json \
        --ser-manifest data/synthetic/ser_test.json \
        --data-root data/synthetic --minutes 3 --threads 2

A 60-minute recording (memory and RTF; utterances are reused when the
manifest has fewer than needed):

    python benchmarks/bench_longform.py --model ... --manifest ... \
        --data-root ... --minutes 60 --tasks asr --threads 2

Without ``--model``, a tiny --debug model is trained first on a small
synthetic corpus (as ``bench_inference.py`` does; its WER is near 100 %, so
only the boundary, RTF and memory figures mean something then).

The speech span of each utterance inside its own file (files may hold
silence around the speech) is found by energy: 10 ms frames whose RMS is
within 35 dB of the loudest frame and 10 dB above the quietest tenth.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 16000
FRAME = 160  # 10 ms, for the energy trim


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        help="inference folder (default: train a tiny debug model first)",
    )
    parser.add_argument("--manifest", help="ASR test manifest (`wrd`)")
    parser.add_argument("--ser-manifest", help="SER test manifest (`emo`)")
    parser.add_argument(
        "--data-root",
        help="replaces {data_root} in the manifests (default: the "
        "manifest's folder)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=3.0,
        help="length of each recording (utterances reused if needed)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=("asr", "ser"),
        default=("asr", "ser"),
        help="which recordings to build (one per task)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workdir",
        help="where recordings (and a default model) go; default: a "
        "temporary folder, removed at the end",
    )
    parser.add_argument(
        "--json", help="also write the figures to this JSON file"
    )
    return parser.parse_args(argv)


# ---------------------------------------------------------------- recordings
def speech_span(wav, rate=SAMPLE_RATE):
    """(start, end) seconds of the speech in a clip, by frame energy.

    Arguments
    ---------
    wav : numpy.ndarray
        (N,) samples.
    rate : int
        Sample rate.

    Returns
    -------
    (float, float)

    Example
    -------
    >>> wav = np.zeros(16000, dtype="float32")
    >>> wav[4000:12000] = 0.1
    >>> speech_span(wav)
    (0.25, 0.75)
    """
    frames = len(wav) // FRAME
    if frames == 0:
        return 0.0, len(wav) / rate
    power = (wav[: frames * FRAME].reshape(frames, FRAME) ** 2).mean(1)
    level = 10 * np.log10(power + 1e-12)
    threshold = max(level.max() - 35.0, np.percentile(level, 10) + 10.0)
    loud = np.flatnonzero(level >= threshold)
    if len(loud) == 0:
        return 0.0, len(wav) / rate
    return float(loud[0] * FRAME / rate), float((loud[-1] + 1) * FRAME / rate)


def pink_noise(rng, n):
    """Unit-RMS 1/f noise of ``n`` samples (white noise shaped by FFT)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum))
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt((noise**2).mean()) + 1e-12)


def build_recording(
    path,
    clips,
    seconds,
    rng,
    pause=(0.2, 1.5),
    noise_stretches=3,
    noise_duration=(2.0, 4.0),
    noise_db=(-40.0, -30.0),
    gain_db=(-6.0, 6.0),
    floor_db=-65.0,
    lead=1.0,
):
    """Writes a long recording made of clips, block by block.

    The recording starts with ``lead`` s of noise floor; then clips follow
    each other with a random pause (uniform in ``pause``) between them,
    each at a random gain (uniform in ``gain_db``), until ``seconds`` is
    reached, cycling through ``clips`` (in a random order) if they run
    out. ``noise_stretches`` times, at random places, a stretch of white or
    pink noise (length uniform in ``noise_duration`` s, RMS level in
    ``noise_db`` dBFS) sits between two clips, with a pause on either side.
    White noise at ``floor_db`` dBFS runs under everything. Only one clip
    is in memory at a time.

    Arguments
    ---------
    path : str
        16 kHz mono file to write (float WAV).
    clips : list of dict
        Each with ``id`` and ``wav`` (path of a 16 kHz mono file; another
        rate or channel count is read with ``harmonifuse_sb.dataio``).
    seconds : float or None
        Length to reach (the last clip is always whole); None: each clip
        once.
    rng : numpy.random.Generator
        Source of randomness.
    pause, noise_duration, noise_db, gain_db : (float, float)
        Ranges, see above.
    noise_stretches : int
        Noise-only stretches.
    floor_db : float
        Level of the noise floor, dBFS RMS.
    lead : float
        Seconds before the first clip.

    Returns
    -------
    list of dict
        Per placed clip: ``id``, ``start`` and ``end`` (seconds: the speech
        span of the clip inside the recording) and ``clip_start`` (where the
        clip's file begins).
    """
    from harmonifuse_sb.dataio import load_audio

    floor = 10 ** (floor_db / 20)
    order = list(rng.permutation(len(clips)))
    # Clips after which a noise stretch comes, spread over the expected run.
    mean_clip = 2.5 + np.mean(pause)
    if seconds is None:
        expected = len(clips)
    else:
        expected = max(1, int(seconds / mean_clip))
    noise_after = set(
        rng.choice(expected, min(noise_stretches, expected), replace=False)
    )
    placed, pos = [], 0
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="FLOAT") as out:

        def write(signal):
            nonlocal pos
            signal = signal + floor * rng.standard_normal(len(signal))
            out.write(signal.astype("float32"))
            pos += len(signal)

        write(np.zeros(int(lead * SAMPLE_RATE)))
        index = 0
        while order if seconds is None else pos < seconds * SAMPLE_RATE:
            if not order:
                order = list(rng.permutation(len(clips)))
            clip = clips[order.pop(0)]
            wav = load_audio(clip["wav"], SAMPLE_RATE).numpy()
            wav = wav * 10 ** (rng.uniform(*gain_db) / 20)
            start, end = speech_span(wav)
            placed.append(
                {
                    "id": clip["id"],
                    "clip_start": pos / SAMPLE_RATE,
                    "start": pos / SAMPLE_RATE + start,
                    "end": pos / SAMPLE_RATE + end,
                }
            )
            write(np.clip(wav, -1, 1))
            write(np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE)))
            if index in noise_after:
                n = int(rng.uniform(*noise_duration) * SAMPLE_RATE)
                shape = pink_noise(rng, n) if index % 2 else None
                if shape is None:
                    shape = rng.standard_normal(n)
                write(shape * 10 ** (rng.uniform(*noise_db) / 20))
                write(np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE)))
            index += 1
    return placed


# ---------------------------------------------------------------- scoring
def boundary_errors(placed, segments):
    """Distance (s) from each utterance's start/end to the nearest segment's.

    Arguments
    ---------
    placed : list of dict
        Utterances with ``start`` and ``end`` (seconds).
    segments : list of dict
        Segments with ``start`` and ``end``.

    Returns
    -------
    list of (float, float)
        (start error, end error) per utterance; ``inf`` without segments.

    Example
    -------
    >>> boundary_errors([{"start": 1.0, "end": 2.0}],
    ...                 [{"start": 0.9, "end": 2.5}, {"start": 3, "end": 4}])
    [(0.1, 0.5)]
    """
    starts = [s["start"] for s in segments]
    ends = [s["end"] for s in segments]
    errors = []
    for utt in placed:
        start = min((abs(utt["start"] - s) for s in starts), default=np.inf)
        end = min((abs(utt["end"] - e) for e in ends), default=np.inf)
        errors.append((round(start, 6), round(end, 6)))
    return errors


def segment_of(utt, segments):
    """The segment that overlaps an utterance most (None if none does)."""
    best, best_overlap = None, 0.0
    for seg in segments:
        overlap = min(utt["end"], seg["end"]) - max(utt["start"], seg["start"])
        if overlap > best_overlap:
            best, best_overlap = seg, overlap
    return best


def word_error_rate(refs, hyps):
    """WER (percent) of lists of word lists (SpeechBrain's ErrorRateStats)."""
    from speechbrain.utils.metric_stats import ErrorRateStats

    stats = ErrorRateStats()
    ids = [str(i) for i in range(len(refs))]
    stats.append(ids, hyps, refs)
    return stats.summarize("error_rate")


def read_manifest(path, data_root, key):
    """Clips of a JSON manifest: ``id``, ``wav`` and ``key``'s value."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    root = data_root or os.path.dirname(os.path.abspath(path))
    return [
        {
            "id": utt_id,
            "wav": entry["wav"].replace("{data_root}", root),
            key: entry[key],
        }
        for utt_id, entry in entries.items()
    ]


def run_cli(model, recording, args):
    """Runs the command line on a recording in a child process.

    Returns
    -------
    result : dict
        The file's JSON result.
    seconds : float
        Wall-clock time of the decoding (model loading excluded, as the
        command line reports it).
    peak_mb : float
        Peak resident memory of the child process (its own
        ``getrusage`` figure, model included).
    """
    out = recording + ".json"
    if os.path.exists(out):  # the command line would resume from it
        os.remove(out)
    command = [
        sys.executable,
        "-m",
        "harmonifuse_sb.infer",
        model,
        recording,
        "--format",
        "json",
        "--output",
        out,
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--no-progress",
        "--timing",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"The command line failed:\n{result.stderr[-3000:]}")
    timing = [
        json.loads(line.split("timing: ", 1)[1])
        for line in result.stderr.splitlines()
        if line.startswith("timing: ")
    ]
    with open(out, encoding="utf-8") as f:
        (res,) = json.load(f)
    return res, timing[-1]["decode_seconds"], timing[-1]["peak_rss_mb"]


def one_by_one(slm, clips, task, batch_size):
    """Each clip decoded from its own file: transcripts or labels."""
    out = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        batch = slm.load_batch([c["wav"] for c in chunk])
        if task == "asr":
            out += slm.transcribe_batch(*batch)
        else:
            out += slm.classify_batch(*batch)[1]
    return out


def bench_task(task, clips, slm, model, workdir, args, rng):
    """Builds a recording of one task's clips, decodes it, scores it."""
    recording = os.path.join(workdir, f"longform_{task}.wav")
    placed = build_recording(recording, clips, 60 * args.minutes, rng)
    duration = sf.info(recording).duration
    result, seconds, peak_mb = run_cli(model, recording, args)
    segments = result["segments"]
    by_id = {c["id"]: c for c in clips}
    errors = boundary_errors(placed, segments)
    within = [max(e) <= args.tolerance for e in errors]
    figures = {
        "task": task,
        "recording_seconds": round(duration, 1),
        "utterances": len(placed),
        "segments": len(segments),
        "boundaries_within_tolerance": round(100 * np.mean(within), 2),
        "median_start_error_s": round(
            float(np.median([e[0] for e in errors])), 3
        ),
        "median_end_error_s": round(
            float(np.median([e[1] for e in errors])), 3
        ),
        "rtf": round(seconds / duration, 4),
        "peak_memory_mb": round(peak_mb, 1),
    }
    unique = list(dict.fromkeys(p["id"] for p in placed))
    own = dict(
        zip(unique, one_by_one(slm, [by_id[i] for i in unique], task, 8))
    )
    if task == "asr":
        refs = [by_id[p["id"]]["wrd"].upper().split() for p in placed]
        hyps = [own[p["id"]].upper().split() for p in placed]
        joined = [sum(refs, [])]
        figures["wer_longform"] = round(
            word_error_rate(joined, [result["transcript"].upper().split()]),
            2,
        )
        figures["wer_one_by_one"] = round(word_error_rate(refs, hyps), 2)
        target = 1.2 * figures["wer_one_by_one"] + 2
        figures["wer_target"] = round(target, 2)
        figures["wer_meets_target"] = figures["wer_longform"] <= target
    else:
        read = [segment_of(p, segments) for p in placed]
        labels = [s["emotion"] if s else None for s in read]
        figures["emotion_agreement"] = round(
            100
            * np.mean([lab == own[p["id"]] for lab, p in zip(labels, placed)]),
            2,
        )
        figures["emotion_accuracy_segments"] = round(
            100
            * np.mean(
                [lab == by_id[p["id"]]["emo"] for lab, p in zip(labels, placed)]
            ),
            2,
        )
        figures["emotion_accuracy_one_by_one"] = round(
            100
            * np.mean([own[p["id"]] == by_id[p["id"]]["emo"] for p in placed]),
            2,
        )
    return figures


def main(argv=None):
    """Runs the benchmark; returns the figures of each task."""
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from harmonifuse_sb.inference import HarmoniFuseSLM

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        model, manifest, ser_manifest = (
            args.model,
            args.manifest,
            args.ser_manifest,
        )
        if model is None:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_inference import train_tiny_model

            model, manifest = train_tiny_model(workdir)
            ser_manifest = os.path.join(
                os.path.dirname(manifest), "ser_test.json"
            )
        slm = HarmoniFuseSLM.from_hparams(
            source=model,
            savedir=os.path.join(workdir, "savedir"),
            run_opts={"device": args.device},
        )
        sources = {"asr": (manifest, "wrd"), "ser": (ser_manifest, "emo")}
        results = []
        for task in args.tasks:
            path, key = sources[task]
            if not path:
                sys.exit(f"--tasks {task} needs its manifest.")
            clips = read_manifest(path, args.data_root, key)
            figures = bench_task(task, clips, slm, model, workdir, args, rng)
            results.append(figures)
            print(json.dumps(figures))
    print(
        f"model: {model}; torch threads: {args.threads}; recordings of "
        f"{args.minutes} min; tolerance {args.tolerance} s"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # run from anywhere, as a script
    main()
