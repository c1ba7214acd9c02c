#!/usr/bin/env python3
r"""Times ``analyze_batch`` (ASR + SER) against ``transcribe_batch`` (ASR).

``HarmoniFuseSLM.analyze_batch`` runs the speech encoder once and feeds its
hidden states to both task paths (fusion, gate, projector and LLM per
task), so on the same batch it should cost little more than
``transcribe_batch``: the target is analyze <= 1.2x transcribe. For context
the script also times the naive way to get both outputs,
``transcribe_batch`` followed by ``classify_batch`` (two encoder passes).

Self-contained run (trains a tiny --debug model on a small synthetic corpus
in a temporary folder first, about a minute on a CPU):

    python benchmarks/bench_inference.py

With an existing inference folder and audio:

    python benchmarks/bench_inference.py --model results/.../inference \\
        --manifest data/synthetic/asr_test.json --num_files 16

Each method runs ``--warmup`` times, then ``--repeats`` times, the methods
taking turns within a repeat so that a change of machine load hits all of
them alike; the median and the minimum are reported (on a loaded machine
the minimum is the less disturbed estimate). Audio is read once, before
timing.

Note: a barely trained model may stop decoding after a word or two; the
script prints the mean transcript length, since the ratio depends on how
much of ``transcribe_batch`` the autoregressive decoding takes.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RATIO = 1.2
DEBUG_CORPUS = (
    "{asr_train: 200, asr_valid: 40, asr_test: 40, ser_train: 80, "
    "ser_valid: 40, ser_test: 40}"
)


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        help="inference folder (default: train a tiny debug model first)",
    )
    parser.add_argument(
        "--manifest",
        help="JSON manifest whose files are used (with {data_root} set to "
        "its folder); default with no --model: the synthetic asr_test.json",
    )
    parser.add_argument("--files", nargs="+", help="audio files to use")
    parser.add_argument("--num_files", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads"
    )
    parser.add_argument(
        "--workdir",
        help="where the default run trains (kept); default: a temporary "
        "folder, removed at the end",
    )
    return parser.parse_args(argv)


def train_tiny_model(workdir):
    """Trains the tiny debug model; returns (inference folder, manifest).

    Arguments
    ---------
    workdir : str
        Folder for the synthetic data and the training run.

    Returns
    -------
    model : str
        The inference folder written by ``train.py``.
    manifest : str
        The synthetic ASR test manifest.
    """
    data = os.path.join(workdir, "data")
    out = os.path.join(workdir, "run")
    print(f"Training a tiny --debug model in {workdir} ...", file=sys.stderr)
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hparams/harmonifuse_tiny.yaml",
            f"--data_folder={data}",
            f"--output_folder={out}",
            "--debug",
            f"--corpus_size={DEBUG_CORPUS}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"train.py failed:\n{result.stderr[-3000:]}")
    return os.path.join(out, "inference"), os.path.join(data, "asr_test.json")


def manifest_files(path):
    """Audio paths of a SpeechBrain JSON manifest, in file order."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    root = os.path.dirname(os.path.abspath(path))
    return [e["wav"].replace("{data_root}", root) for e in entries.values()]


def time_methods(methods, warmup, repeats):
    """Wall-clock seconds of each run of each method.

    Arguments
    ---------
    methods : dict
        Name -> callable without arguments.
    warmup : int
        Untimed runs of each method first.
    repeats : int
        Timed runs of each; the methods take turns within a repeat.

    Returns
    -------
    dict
        Name -> list of seconds, one per repeat.
    """
    for _ in range(warmup):
        for method in methods.values():
            method()
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - start)
    return times


def benchmark(model, files, args):
    """Loads the model, times the methods and prints the report."""
    from harmonifuse_sb.inference import HarmoniFuseSLM

    with tempfile.TemporaryDirectory() as savedir:
        slm = HarmoniFuseSLM.from_hparams(
            source=model, savedir=savedir, run_opts={"device": args.device}
        )
    wavs, wav_lens = slm.load_batch(files)  # (B, N), (B,)

    def both_two_passes():
        slm.transcribe_batch(wavs, wav_lens)
        slm.classify_batch(wavs, wav_lens)

    @torch.no_grad()
    def encoder_only():
        slm._encode(wavs, wav_lens)

    methods = {
        "transcribe_batch": lambda: slm.transcribe_batch(wavs, wav_lens),
        "analyze_batch": lambda: slm.analyze_batch(wavs, wav_lens),
        "transcribe_batch + classify_batch": both_two_passes,
        "encoder pass only": encoder_only,
    }
    times = time_methods(methods, args.warmup, args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    words = [len(t.split()) for t in slm.transcribe_batch(wavs, wav_lens)]
    seconds = wav_lens * wavs.shape[1] / slm.hparams.sample_rate

    print(
        f"model: {model}\ndevice: {args.device}, torch threads: "
        f"{torch.get_num_threads()}, batch: {len(files)} files, "
        f"{float(seconds.mean()):.2f} s of audio each on average "
        f"(padded to {wavs.shape[1] / slm.hparams.sample_rate:.2f} s)\n"
        f"mean transcript length: {sum(words) / len(words):.1f} words\n"
        f"{args.repeats} runs after {args.warmup} warm-up; seconds, and "
        "ratio to transcribe_batch:\n"
        f"  {'':<34} {'median':>8} {'ratio':>6} {'min':>8} {'ratio':>6}"
    )
    for name in methods:
        print(
            f"  {name:<34} {median[name]:8.3f} "
            f"{median[name] / median['transcribe_batch']:6.2f} "
            f"{best[name]:8.3f} {best[name] / best['transcribe_batch']:6.2f}"
        )
    ratio = median["analyze_batch"] / median["transcribe_batch"]
    two_pass = "transcribe_batch + classify_batch"
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(
        f"analyze / transcribe (median) = {ratio:.2f}: {verdict} the target "
        f"<= {TARGET_RATIO}; two encoder passes: "
        f"{median[two_pass] / median['transcribe_batch']:.2f}"
    )
    return ratio


def main(argv=None):
    """Runs the benchmark; returns the analyze / transcribe ratio."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, manifest = args.model, args.manifest
        if model is None:
            workdir = args.workdir or tmp
            model, default_manifest = train_tiny_model(workdir)
            manifest = manifest or default_manifest
        if args.files:
            files = args.files
        elif manifest:
            files = manifest_files(manifest)
        else:
            sys.exit("With --model, give --files or --manifest.")
        if len(files) < args.num_files:
            print(
                f"Only {len(files)} files available (asked for "
                f"{args.num_files}).",
                file=sys.stderr,
            )
        return benchmark(model, files[: args.num_files], args)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # run from anywhere, as a script
    main()
