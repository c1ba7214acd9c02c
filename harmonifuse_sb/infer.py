"""Command line: transcript and emotion of audio files.

    python -m harmonifuse_sb.infer MODEL_DIR a.wav b.flac [--json]

prints, per file, its transcript and emotion (one JSON object per line with
``--json``). MODEL_DIR is an inference folder written by training (or a hub
id of one).

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
    parser.add_argument("audio", nargs="+", help="audio files")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per line"
    )
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--savedir", default=None, help="where to keep a downloaded model"
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = parse_args(argv)
    from harmonifuse_sb.dataio import AudioError
    from harmonifuse_sb.inference import HarmoniFuseSLM

    slm = HarmoniFuseSLM.from_hparams(
        source=args.model,
        savedir=args.savedir,
        run_opts={"device": args.device},
    )
    try:
        results = slm.analyze_files(args.audio, batch_size=args.batch_size)
    except AudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for res in results:
        if args.json:
            print(json.dumps(res))
        else:
            print(f"{res['file']}\t{res['emotion']}\t{res['transcript']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
