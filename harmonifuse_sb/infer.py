"""Command line: transcript and emotion over time of audio files.

Installed as ``harmonifuse-sb`` (``python -m harmonifuse_sb.infer`` works
too)::

    harmonifuse-sb MODEL_DIR meeting.wav interviews/ --format srt \
        --output subtitles/

MODEL_DIR is an inference folder written by training (or a hub id of one).
Inputs are audio files, folders (searched recursively for audio
extensions) and ``--manifest`` files (SpeechBrain JSON or CSV with a
``wav`` column). Each file, of any length, goes through
``HarmoniFuseSLM.analyze_file``: speech segments with their times,
transcript and emotion, and the whole file's transcript and emotion.

- ``--format text|json|jsonl|csv|srt|vtt`` (see ``harmonifuse_sb.outputs``);
- ``--output``: a file collecting every result (``text``, ``json``,
  ``jsonl``, ``csv``), or a folder (an existing one, or a path ending with
  ``/``; needed for ``srt``/``vtt`` of several files) with one output per
  input; default: the standard output;
- run again with the same ``--output``, the files it already holds are
  skipped (resume); a ``text``, ``jsonl`` or ``csv`` output file keeps
  the list of its finished files in ``<output>.done``, so that a run
  killed while writing a file's rows redoes that file
  (``harmonifuse_sb.outputs.append_committed``);
- a file that fails is reported on the standard error with its reason and
  the others go on (``--on-error skip``, the default) or the run stops
  (``--on-error stop``); the exit status is 1 if any file failed, 0 if
  none did, 2 for a bad command line;
- a progress bar over the files' audio duration (standard error, when it is
  a terminal; ``--no-progress`` turns it off).

With ``--asr-manifest`` / ``--ser-manifest`` instead, it scores the model:

    python -m harmonifuse_sb.infer MODEL_DIR --asr-manifest asr_test.json \
        --ser-manifest ser_test.json --data-root data/synthetic

prints the WER and CER of the ASR manifest and the UA, WA and macro-F1 of
the SER manifest, computed as the training run's test stage computes them
(so without the no-speech rule: every utterance is decoded).

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import csv
import json
import os
import sys
import time

from harmonifuse_sb.outputs import (
    EXTENSIONS,
    FORMATS,
    PER_FILE,
    append_committed,
    done_files,
    read_json_results,
    render,
    write_atomic,
)

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".au",
    ".caf",
    ".w64",
)


class UsageError(ValueError):
    """A command line that cannot run; the message says why."""


def parse_args(argv=None):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="harmonifuse-sb",
        description="Transcribe speech and recognise its emotion over time "
        "with a trained HarmoniFuse model.",
    )
    parser.add_argument("model", help="inference folder or hub id")
    parser.add_argument(
        "inputs", nargs="*", help="audio files or folders (recursive)"
    )
    parser.add_argument(
        "--manifest",
        action="append",
        default=[],
        help="JSON or CSV manifest whose `wav` entries are inputs",
    )
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument(
        "--json",
        action="store_true",
        help="same as --format jsonl (kept for older scripts)",
    )
    parser.add_argument(
        "--output", help="output file, or folder (ending with /)"
    )
    parser.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="after a file fails: go on with the others, or stop",
    )
    parser.add_argument("--asr-manifest", help="score: manifest with `wrd`")
    parser.add_argument("--ser-manifest", help="score: manifest with `emo`")
    parser.add_argument(
        "--data-root", default=".", help="replaces {data_root} in manifests"
    )
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="segments per batch"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads"
    )
    parser.add_argument("--vad-threshold", type=float, default=None)
    parser.add_argument(
        "--max-segment-duration",
        type=float,
        default=None,
        help="seconds (default: the model's YAML)",
    )
    parser.add_argument(
        "--min-pause",
        type=float,
        default=None,
        help="seconds (default: the model's YAML)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar"
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="print decoding time, real-time factor (model loading "
        "excluded) and peak memory of the process to stderr",
    )
    parser.add_argument(
        "--savedir", default=None, help="where to keep a downloaded model"
    )
    args = parser.parse_args(argv)
    if args.json:
        args.format = "jsonl"
    return args


def manifest_paths(path, data_root):
    """Audio paths of a JSON (id -> entry) or CSV manifest, in order.

    Arguments
    ---------
    path : str
        The manifest.
    data_root : str
        Replaces ``{data_root}`` in the paths.

    Returns
    -------
    list of str
    """
    if not os.path.isfile(path):
        raise UsageError(f"Manifest not found: {path}")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".csv"):
            rows = list(csv.DictReader(f))
        else:
            try:
                rows = list(json.load(f).values())
            except (json.JSONDecodeError, AttributeError) as err:
                raise UsageError(
                    f"Manifest {path} is not a JSON object of entries ({err})."
                ) from err
    if not rows or any(not isinstance(r, dict) or "wav" not in r for r in rows):
        raise UsageError(
            f"Manifest {path}: every entry needs a `wav` (JSON: "
            '{"id": {"wav": ...}}; CSV: a wav column).'
        )
    return [str(r["wav"]).replace("{data_root}", data_root) for r in rows]


def collect_inputs(inputs, manifests, data_root):
    """The audio files to process and the name of each one's output.

    Arguments
    ---------
    inputs : list of str
        Files and folders (searched recursively, sorted, for
        ``AUDIO_EXTENSIONS``).
    manifests : list of str
        Manifests whose entries are files.
    data_root : str
        For the manifests.

    Returns
    -------
    list of (str, str)
        (path, output stem): the stem is the path relative to its folder
        argument, or the file's name, without extension.
    """
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for folder, _dirs, names in os.walk(item):
                for name in names:
                    if name.lower().endswith(AUDIO_EXTENSIONS):
                        found.append(os.path.join(folder, name))
            if not found:
                raise UsageError(
                    f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) in "
                    f"the folder {item}."
                )
            for path in sorted(found):
                rel = os.path.relpath(path, item)
                files.append((path, os.path.splitext(rel)[0]))
        else:  # a missing file is reported like any failing file
            files.append((item, os.path.splitext(os.path.basename(item))[0]))
    for manifest in manifests:
        for path in manifest_paths(manifest, data_root):
            files.append((path, os.path.splitext(os.path.basename(path))[0]))
    seen = {}
    unique = []
    for path, stem in files:
        if path in seen:
            continue
        seen[path] = stem
        unique.append((path, stem))
    return unique


def folder_mode(args, num_files):
    """Whether ``--output`` is a folder (one output per input)."""
    if args.output is None:
        return False
    if os.path.isdir(args.output) or args.output.endswith(("/", os.sep)):
        return True
    if args.format in PER_FILE and num_files > 1:
        raise UsageError(
            f"--format {args.format} writes one file per input: give an "
            f"--output folder (ending with /), not {args.output}."
        )
    return False


class Sink:
    """Where results go: stdout, one file, or a folder; knows what is done.

    Arguments
    ---------
    args : argparse.Namespace
        ``output`` and ``format``.
    files : list of (str, str)
        Inputs and their output stems.
    tasks : dict
        The model's tasks (each renders its fields).
    """

    def __init__(self, args, files, tasks):
        self.fmt = args.format
        self.output = args.output
        self.tasks = tasks
        self.folder = folder_mode(args, len(files))
        self.stems = dict(files)
        if self.folder:
            by_target = {}
            for path, _stem in files:
                target = self.target(path)
                if target in by_target:
                    raise UsageError(
                        f"{path} and {by_target[target]} would both be "
                        f"written to {target}; give them separately."
                    )
                by_target[target] = path
        if self.output is None and self.fmt in PER_FILE and len(files) > 1:
            raise UsageError(
                f"--format {self.fmt} writes one file per input: give an "
                "--output folder (ending with /)."
            )
        self.results = []  # json output: all results so far
        if not self.folder and self.output and self.fmt == "json":
            self.results = read_json_results(self.output)
        self.header = not (
            self.output
            and not self.folder
            and os.path.isfile(self.output)
            and os.path.getsize(self.output) > 0
        )
        self.first_stdout = True

    def target(self, path):
        """The output file of an input in folder mode."""
        return os.path.join(
            self.output, self.stems[path] + EXTENSIONS[self.fmt]
        )

    def done(self):
        """Inputs already in the output (a resumed run skips them)."""
        if self.output is None:
            return set()
        if self.folder:
            return {p for p in self.stems if os.path.isfile(self.target(p))}
        if self.fmt in PER_FILE:
            return set(self.stems) if os.path.isfile(self.output) else set()
        done = done_files(self.output, self.fmt)  # may cut a torn tail
        self.header = not (
            os.path.isfile(self.output) and os.path.getsize(self.output) > 0
        )
        return done

    def write(self, result):
        """Writes one file's result (whole, or not at all on disk)."""
        if self.folder:
            text = render(result, self.fmt, self.tasks)
            if self.fmt == "json":
                text = json.dumps([result], ensure_ascii=False, indent=1)
            write_atomic(self.target(result["file"]), text)
        elif self.output is None:
            if self.fmt == "json":
                self.results.append(result)
            else:
                header = self.first_stdout
                sys.stdout.write(
                    render(result, self.fmt, self.tasks, header=header)
                )
                sys.stdout.flush()
            self.first_stdout = False
        elif self.fmt == "json":
            self.results.append(result)
            write_atomic(
                self.output,
                json.dumps(self.results, ensure_ascii=False, indent=1),
            )
        elif self.fmt in PER_FILE:
            write_atomic(self.output, render(result, self.fmt, self.tasks))
        else:
            text = render(result, self.fmt, self.tasks, header=self.header)
            append_committed(self.output, text, result["file"])
            self.header = False

    def close(self):
        """Ends the output (the JSON array on stdout)."""
        if self.output is None and self.fmt == "json":
            print(json.dumps(self.results, ensure_ascii=False, indent=1))


def audio_seconds(path):
    """Duration of a file by its header (0 if it cannot be read)."""
    import soundfile as sf

    try:
        return sf.info(path).duration
    except Exception:  # reported when the file is processed
        return 0.0


def process(slm, args, files):
    """Analyses every file not yet in the output; returns the exit status.

    Arguments
    ---------
    slm : HarmoniFuseSLM
        The model.
    args : argparse.Namespace
        The command line.
    files : list of (str, str)
        Inputs and their output stems.

    Returns
    -------
    int
        1 if a file failed, else 0.
    """
    from tqdm import tqdm

    sink = Sink(args, files, slm.model.tasks)
    done = sink.done()
    todo = [path for path, _ in files if path not in done]
    if done:
        print(
            f"Resuming: {len(files) - len(todo)} of {len(files)} files are "
            f"already in {args.output}.",
            file=sys.stderr,
        )
    durations = {path: audio_seconds(path) for path in todo}
    bar = tqdm(
        total=round(sum(durations.values()), 1),
        unit="s",
        desc="audio",
        disable=True if args.no_progress else None,
        file=sys.stderr,
    )
    failed, decode_seconds, decoded_audio = [], 0.0, 0.0
    for number, path in enumerate(todo, start=1):
        start = time.perf_counter()
        position = {"done": 0.0}

        def progress(seconds, position=position):
            bar.update(round(seconds - position["done"], 3))
            position["done"] = seconds

        try:
            result = slm.analyze_file(
                path,
                vad_threshold=args.vad_threshold,
                max_segment_duration=args.max_segment_duration,
                min_pause=args.min_pause,
                batch_size=args.batch_size,
                progress=progress,
            )
        except Exception as err:  # reported, and the run goes on
            failed.append(path)
            bar.update(round(durations[path] - position["done"], 3))
            tqdm.write(f"error: {path}: {err}", file=sys.stderr)
            if args.on_error == "stop":
                left = len(todo) - number
                tqdm.write(
                    f"Stopped (--on-error stop): {left} files not done.",
                    file=sys.stderr,
                )
                break
            continue
        decode_seconds += time.perf_counter() - start
        decoded_audio += durations[path]
        sink.write({"file": path, **result})
        bar.set_postfix(files=f"{number}/{len(todo)}")
    bar.close()
    sink.close()
    if args.timing:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        timing = {
            "decode_seconds": round(decode_seconds, 3),
            "audio_seconds": round(decoded_audio, 3),
            "rtf": round(decode_seconds / max(decoded_audio, 1e-9), 4),
            "peak_rss_mb": round(peak_kb / 1024, 1),  # Linux: ru_maxrss in KiB
        }
        print(f"timing: {json.dumps(timing)}", file=sys.stderr)
    if failed:
        print(
            f"{len(failed)} of {len(todo)} files failed: " + ", ".join(failed),
            file=sys.stderr,
        )
        return 1
    return 0


def evaluate(slm, task, manifest, data_root, batch_size):
    """Scores the model on a manifest as the training's test stage does.

    Arguments
    ---------
    slm : HarmoniFuseSLM
        The model.
    task : str
        A task of the model (its ``tasks``).
    manifest : str
        JSON manifest (entries with the task's ``manifest_keys``).
    data_root : str
        Replaces ``{data_root}`` in its paths.
    batch_size : int
        Files per batch.

    Returns
    -------
    dict
        The task's statistics: ``WER`` and ``CER`` (percent), or ``UA``,
        ``WA``, ``macro_F1`` (with the task's suffix, e.g. ``UA_accent``).
    """
    from harmonifuse_sb.dataio import load_manifest

    task = slm.model.tasks[task]
    data = load_manifest(manifest, task, data_root).data
    ids = list(data)
    vad, slm.vad = slm.vad, None  # the test stage decodes every utterance
    try:
        return _score(slm, task, data, ids, batch_size)
    finally:
        slm.vad = vad


def _score(slm, task, data, ids, batch_size):
    """``evaluate``'s loop over the manifest's batches, scored with the
    task's own metrics as the test stage does.
    """
    from types import SimpleNamespace

    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.utils.metric_stats import ErrorRateStats

    from harmonifuse_sb.tasks import TRANSCRIPTION

    metrics = task.make_metrics(
        SimpleNamespace(
            error_rate_computer=ErrorRateStats,
            cer_computer=lambda: ErrorRateStats(split_tokens=True),
        )
    )
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        wavs, lens = slm.load_batch([data[i]["wav"] for i in chunk], start)
        if task.kind == TRANSCRIPTION:
            out = {"hyps": slm.transcribe_batch(wavs, lens)}
            texts = [str(data[i][task.text_key]) for i in chunk]
            items = [
                {"id": i, "wrd_norm": " ".join(text.split())}
                for i, text in zip(chunk, texts)
            ]
        else:
            probs, _ = slm.classify_batch(wavs, lens, task=task.name)
            out = {"logits": probs}
            items = [
                {
                    "id": i,
                    task.output_key: task.label_encoder.encode_label_torch(
                        data[i][task.label_key]
                    ),
                }
                for i in chunk
            ]
        task.update_metrics(metrics, out, PaddedBatch(items), slm.model)
    return task.summarize(metrics)


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = parse_args(argv)
    if not (
        args.inputs or args.manifest or args.asr_manifest or args.ser_manifest
    ):
        print(
            "error: give audio files, folders, --manifest, or a scoring "
            "manifest",
            file=sys.stderr,
        )
        return 2
    try:
        files = collect_inputs(args.inputs, args.manifest, args.data_root)
        if files:
            Sink(args, files, [])  # checks the output before loading
    except ValueError as err:  # UsageError, or an unreadable json output
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    from harmonifuse_sb.dataio import AudioError
    from harmonifuse_sb.inference import HarmoniFuseSLM
    from harmonifuse_sb.tasks import (
        CLASSIFICATION,
        TRANSCRIPTION,
        first_of_kind,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    slm = HarmoniFuseSLM.from_hparams(
        source=args.model,
        savedir=args.savedir,
        run_opts={"device": args.device},
    )
    try:
        # The first transcription and the first classification task
        for kind, manifest in (
            (TRANSCRIPTION, args.asr_manifest),
            (CLASSIFICATION, args.ser_manifest),
        ):
            if manifest:
                task = first_of_kind(slm.model.tasks, kind).name
                scores = evaluate(
                    slm, task, manifest, args.data_root, args.batch_size
                )
                print(json.dumps({"manifest": manifest, **scores}))
    except AudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if files:
        try:
            return process(slm, args, files)
        except (UsageError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
