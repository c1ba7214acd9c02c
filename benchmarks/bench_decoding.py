#!/usr/bin/env python3
r"""Times joint CTC/LLM decoding against the LLM's own beam search.

Joint decoding (``harmonifuse_sb/ctc_decoding.py``) scores each step's
``top_k`` tokens of every hypothesis with the CTC head; its cost on top of
the beam search it wraps is what this script measures: both decode the
same utterances with the same beams, in the same run, and it prints

    joint / LLM-only decoding time ratio X

(target: at most 1.5 with 8 beams) and the WER of each. The encoder runs
once per batch before timing: the times are those of the searches alone
(``HarmoniFuse.transcribe`` on the task features).

    OMP_NUM_THREADS=1 python benchmarks/bench_decoding.py \
        --model results/harmonifuse_tiny/1986/inference \
        --manifest data/synthetic/asr_test.json

Each search decodes every batch once untimed (warm-up), then ``--repeats``
times; within a repeat the two take turns on each batch and the one that
goes first alternates from batch to batch, so that a change of machine
load hits both alike. The ratio of each repeat is its total joint time over
its total LLM-only time; the median over repeats is reported, with the
lowest and highest. ``--reference`` also decodes once with the
per-hypothesis scorer that the batched one replaced (kept in
``tests/test_ctc_decoding.py``) and counts the transcripts that differ.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

import jiwer
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RATIO = 1.5


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="inference folder")
    parser.add_argument(
        "--manifest",
        required=True,
        help="ASR JSON manifest (wav with {data_root} = its folder, wrd)",
    )
    parser.add_argument("--num_files", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--num_beams",
        type=int,
        help="beams of both searches (default: the model's)",
    )
    parser.add_argument(
        "--top_k",
        type=int,
        help="tokens the CTC head scores per hypothesis and step (default: "
        "the model's)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also decode with the per-hypothesis scorer (slow) and compare",
    )
    parser.add_argument("--json", help="write the figures to this file")
    return parser.parse_args(argv)


def read_manifest(path, count):
    """The first ``count`` (audio path, transcript) pairs of a manifest."""
    with open(path, encoding="utf-8") as f:
        entries = list(json.load(f).values())[:count]
    root = os.path.dirname(os.path.abspath(path))
    missing = [i for i, e in enumerate(entries) if "wrd" not in e]
    if missing:
        sys.exit(f"{path}: entry {missing[0]} has no 'wrd' transcript.")
    return (
        [e["wav"].replace("{data_root}", root) for e in entries],
        [e["wrd"] for e in entries],
    )


@torch.no_grad()
def encode_batches(slm, files, batch_size):
    """The ASR task features of each batch (encoder run once, untimed) and
    the seconds of audio.
    """
    batches, seconds = [], 0.0
    for first in range(0, len(files), batch_size):
        wavs, wav_lens = slm.load_batch(files[first : first + batch_size])
        seconds += float(wav_lens.sum()) * wavs.shape[1]
        hidden, lens = slm._encode(wavs, wav_lens)
        batches.append(slm.model.task_features(hidden, lens, "asr"))
    return batches, seconds / slm.hparams.sample_rate


def time_searches(searches, batches, repeats):
    """Seconds of each search per repeat, taking turns on every batch.

    Arguments
    ---------
    searches : dict
        Name -> callable on one batch's features, returning transcripts.
    batches : list
        Task features of each batch.
    repeats : int
        Timed passes over the batches, after one untimed pass.

    Returns
    -------
    times : dict
        Name -> list of wall-clock seconds, one total per repeat.
    cpu_times : dict
        The same in CPU seconds of this process (what another process
        on a loaded machine takes away from the wall clock does not count).
    transcripts : dict
        Name -> transcripts of the last pass, in batch order.
    """
    names = list(searches)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    transcripts = {}
    for repeat in range(repeats + 1):  # repeat 0: warm-up
        total = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        texts = {name: [] for name in names}
        for index, feats in enumerate(batches):
            order = names if (repeat + index) % 2 == 0 else names[::-1]
            for name in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                with torch.no_grad():
                    texts[name] += searches[name](feats)
                total[name] += time.perf_counter() - start
                cpu[name] += time.process_time() - start_cpu
        if repeat:
            for name in names:
                times[name].append(total[name])
                cpu_times[name].append(cpu[name])
        transcripts = texts
    return times, cpu_times, transcripts


def reference_search(model, num_beams, top_k):
    """Joint decoding through ``model.transcribe`` with the per-hypothesis
    scorer of ``tests/test_ctc_decoding.py`` in place of the batched one
    (patched in, so that everything else is the same code path).
    """
    sys.path.insert(0, ROOT)
    from tests.test_ctc_decoding import ReferenceScorer

    tokenizer = model.speech_lm.tokenizer

    def build(logp, lens, characters, **kwargs):
        return ReferenceScorer(
            logp,
            lens,
            characters.alphabet,
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            **kwargs,
        )

    def search(feats):
        with mock.patch("harmonifuse_sb.model.CTCPrefixScorer", build):
            return model.transcribe(feats, num_beams=num_beams, ctc_top_k=top_k)

    return search


def wer(refs, hyps):
    """Word error rate in percent."""
    return 100 * jiwer.wer(refs, [h or "" for h in hyps])


def benchmark(args):
    """Loads the model, times both searches, prints and returns figures."""
    from harmonifuse_sb.inference import HarmoniFuseSLM

    with tempfile.TemporaryDirectory() as savedir:
        slm = HarmoniFuseSLM.from_hparams(
            source=args.model, savedir=savedir, run_opts={"device": args.device}
        )
    model = slm.model
    if model.ctc_head is None or model.ctc_decode_weight <= 0:
        sys.exit(
            f"{args.model}: the model decodes without its CTC head "
            "(ctc_decode_weight 0 or no ctc_alphabet): there is no joint "
            "decoding to time."
        )
    beams = args.num_beams or model.num_beams
    top_k = args.top_k or model.ctc_decode_top_k
    files, refs = read_manifest(args.manifest, args.num_files)
    batches, audio = encode_batches(slm, files, args.batch_size)
    searches = {
        "joint": lambda f: model.transcribe(
            f, num_beams=beams, ctc_top_k=top_k
        ),
        "LLM-only": lambda f: model.transcribe(
            f, num_beams=beams, ctc_weight=0.0
        ),
    }
    times, cpu_times, texts = time_searches(searches, batches, args.repeats)
    ratios = [j / o for j, o in zip(times["joint"], times["LLM-only"])]
    cpu_ratios = [
        j / o for j, o in zip(cpu_times["joint"], cpu_times["LLM-only"])
    ]
    figures = {
        "model": args.model,
        "utterances": len(files),
        "audio_seconds": audio,
        "batch_size": args.batch_size,
        "num_beams": beams,
        "ctc_weight": model.ctc_decode_weight,
        "ctc_top_k": top_k,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "seconds": times,
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "cpu_seconds": cpu_times,
        "cpu_ratio": statistics.median(cpu_ratios),
        "wer": {name: wer(refs, hyps) for name, hyps in texts.items()},
    }
    print(
        f"model: {args.model}\n{len(files)} utterances in batches of "
        f"{args.batch_size} ({audio:.1f} s of audio), {beams} beams, CTC weight "
        f"{model.ctc_decode_weight}, top {top_k}; device "
        f"{args.device}, torch threads {torch.get_num_threads()}; "
        f"{args.repeats} repeats after a warm-up, alternating order"
    )
    for name, seconds in times.items():
        print(
            f"  {name:<9} seconds per pass: median "
            f"{statistics.median(seconds):.2f} "
            f"(runs {', '.join(f'{s:.2f}' for s in seconds)}; RTF "
            f"{statistics.median(seconds) / audio:.3f}), WER "
            f"{figures['wer'][name]:.2f}"
        )
    if args.reference:
        start = time.perf_counter()
        search = reference_search(model, beams, top_k)
        old = [t for feats in batches for t in search(feats)]
        figures["reference"] = {
            "seconds": time.perf_counter() - start,
            "wer": wer(refs, old),
            "differing_transcripts": sum(
                a != b for a, b in zip(old, texts["joint"])
            ),
        }
        print(
            f"  reference (per-hypothesis scorer) one pass "
            f"{figures['reference']['seconds']:.2f} s, WER "
            f"{figures['reference']['wer']:.2f}; transcripts that differ "
            f"from the batched scorer's: "
            f"{figures['reference']['differing_transcripts']}"
        )
    low, high = figures["ratio_range"]
    verdict = "meets" if figures["ratio"] <= TARGET_RATIO else "MISSES"
    print(
        f"joint / LLM-only decoding time ratio {figures['ratio']:.2f} "
        f"(repeats {low:.2f} to {high:.2f}): {verdict} the target <= "
        f"{TARGET_RATIO}\n(in CPU time of this process: "
        f"{figures['cpu_ratio']:.2f})\nWER: joint {figures['wer']['joint']:.2f}, "
        f"LLM-only {figures['wer']['LLM-only']:.2f}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return figures


def main(argv=None):
    """Runs the benchmark; returns its figures."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    return benchmark(args)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # run from anywhere, as a script
    main()
