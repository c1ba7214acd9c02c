"""Command line: transcript and emotion of audio files.

    python -m harmonifuse_sb.infer MODEL_DIR a.wav b.flac [--json]

prints, per file, its transcript and emotion (one JSON object per line with
``--json``). MODEL_DIR is an inference folder written by training (or a hub
id of one). With manifests instead of files, it scores the model:

    python -m harmonifuse_sb.infer MODEL_DIR --asr-manifest asr_test.json \
        --ser-manifest ser_test.json --data-root data/synthetic

prints the WER and CER of the ASR manifest and the UA, WA and macro-F1 of the
SER manifest, computed as the training run's test stage computes them.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import sys


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m harmonifuse_sb.infer",
        description="Transcribe speech and recognise its emotion with a "
        "trained HarmoniFuse model.",
    )
    parser.add_argument("model", help="inference folder or hub id")
    parser.add_argument("audio", nargs="*", help="audio files")
    parser.add_argument("--asr-manifest", help="JSON manifest with `wrd`")
    parser.add_argument("--ser-manifest", help="JSON manifest with `emo`")
    parser.add_argument(
        "--data-root", default=".", help="replaces {data_root} in manifests"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per line"
    )
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--savedir", default=None, help="where to keep a downloaded model"
    )
    return parser.parse_args(argv)


def evaluate(slm, task, manifest, data_root, batch_size):
    """Scores the model on a manifest as the training's test stage does.

    Arguments
    ---------
    slm : HarmoniFuseSLM
        The model.
    task : str
        ``"asr"`` or ``"ser"``.
    manifest : str
        JSON manifest.
    data_root : str
        Replaces ``{data_root}`` in its paths.
    batch_size : int
        Files per batch.

    Returns
    -------
    dict
        ``WER`` and ``CER`` (percent) or ``UA``, ``WA``, ``macro_F1``.
    """
    from speechbrain.utils.metric_stats import ErrorRateStats

    from harmonifuse_sb.dataio import load_manifest
    from harmonifuse_sb.metrics import EmotionStats

    data = load_manifest(manifest, task, data_root).data
    ids = list(data)
    if task == "asr":
        wer, cer = ErrorRateStats(), ErrorRateStats(split_tokens=True)
    else:
        emo = EmotionStats(slm.model.emotions)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        wavs, lens = slm.load_batch([data[i]["wav"] for i in chunk], start)
        if task == "asr":
            hyps = [h.upper() for h in slm.transcribe_batch(wavs, lens)]
            refs = [" ".join(data[i]["wrd"].split()).upper() for i in chunk]
            wer.append(
                chunk, [h.split() for h in hyps], [r.split() for r in refs]
            )
            cer.append(chunk, [list(h) for h in hyps], [list(r) for r in refs])
        else:
            _, labels = slm.classify_batch(wavs, lens)
            emo.append(chunk, labels, [data[i]["emo"] for i in chunk])
    if task == "asr":
        return {
            "WER": wer.summarize("error_rate"),
            "CER": cer.summarize("error_rate"),
        }
    stats = emo.summarize()
    return {k: stats[k] for k in ("UA", "WA", "macro_F1")}


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = parse_args(argv)
    if not (args.audio or args.asr_manifest or args.ser_manifest):
        print("error: give audio files or a manifest", file=sys.stderr)
        return 2
    from harmonifuse_sb.dataio import AudioError
    from harmonifuse_sb.inference import HarmoniFuseSLM

    slm = HarmoniFuseSLM.from_hparams(
        source=args.model,
        savedir=args.savedir,
        run_opts={"device": args.device},
    )
    try:
        for task, manifest in (
            ("asr", args.asr_manifest),
            ("ser", args.ser_manifest),
        ):
            if manifest:
                scores = evaluate(
                    slm, task, manifest, args.data_root, args.batch_size
                )
                print(json.dumps({"manifest": manifest, **scores}))
        if args.audio:
            results = slm.analyze_files(args.audio, batch_size=args.batch_size)
            for res in results:
                if args.json:
                    print(json.dumps(res))
                else:
                    print(
                        f"{res['file']}\t{res['emotion']}\t{res['transcript']}"
                    )
    except AudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
