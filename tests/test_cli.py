"""The command line (``harmonifuse-sb`` / ``python -m harmonifuse_sb.infer``)
on files, folders and manifests: output formats read back by their own
libraries, failing files, resume, and the console script's declaration.

The model is a tiny random one exported as an inference folder
(``tests.longform_helpers``); ``main`` runs in the test's process.
"""

import configparser
import csv
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from harmonifuse_sb.infer import main
from harmonifuse_sb.inference import HarmoniFuseSLM
from harmonifuse_sb.outputs import (
    FORMATS,
    append_committed,
    commit_path,
    done_files,
    render,
)
from tests.longform_helpers import (
    EMOTIONS,
    ROOT,
    espeak_clips,
    export_untrained_model,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A model, a folder of audio (2 recordings, 1 noise file), results."""
    tmp = tmp_path_factory.mktemp("cli")
    model = export_untrained_model(str(tmp / "model"), str(tmp / "work"))
    clips = espeak_clips(str(tmp / "clips"), count=4)
    audio = tmp / "audio"
    (audio / "sub").mkdir(parents=True)
    pause = np.zeros(8000, dtype="float32")
    for name, picked in (("two.wav", clips[:2]), ("sub/three.flac", clips[1:])):
        parts = []
        for clip in picked:
            parts += [sf.read(clip["wav"], dtype="float32")[0], pause]
        sf.write(str(audio / name), np.concatenate(parts), 16000)
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(16000)).astype("float32")
    sf.write(str(audio / "noise.wav"), noise, 16000)
    (audio / "notes.txt").write_text("not audio")
    slm = HarmoniFuseSLM.from_hparams(source=model, run_opts={"device": "cpu"})
    files = sorted(
        str(audio / n) for n in ("two.wav", "sub/three.flac", "noise.wav")
    )
    expected = {f: {"file": f, **slm.analyze_file(f)} for f in files}
    return tmp, model, str(audio), expected


def run(capsys, *argv):
    """main(argv); returns (exit status, stdout, stderr)."""
    status = main([*map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_results_have_segments(env):
    _, _, audio, expected = env
    two = expected[os.path.join(audio, "two.wav")]
    three = expected[os.path.join(audio, "sub", "three.flac")]
    assert len(two["segments"]) == 2 and len(three["segments"]) == 3
    assert expected[os.path.join(audio, "noise.wav")]["segments"] == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back(env, capsys, tmp_path, fmt):
    _, model, audio, expected = env
    out = str(tmp_path / "out") + "/"
    status, _, err = run(capsys, model, audio, "--format", fmt, "--output", out)
    assert status == 0, err
    ext = {"text": ".txt"}.get(fmt, "." + fmt)
    for path, res in expected.items():
        stem = os.path.splitext(os.path.relpath(path, audio))[0]
        with open(os.path.join(out, stem + ext), encoding="utf-8") as f:
            text = f.read()
        segs = res["segments"]
        if fmt == "json":
            assert json.loads(text) == [res]
        elif fmt == "jsonl":
            assert [json.loads(line) for line in text.splitlines()] == [res]
        elif fmt == "text":
            assert text == f"{path}\t{res['emotion'] or ''}\t" + (
                f"{res['transcript']}\n"
            )
        elif fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            assert len(rows) == max(1, len(segs))
            for row, seg in zip(rows, segs):
                assert row["file"] == path
                assert float(row["start"]) == seg["start"]
                assert float(row["end"]) == seg["end"]
                assert row["transcript"] == seg["transcript"]
                assert row["emotion"] == seg["emotion"]
                for emo in EMOTIONS:
                    assert float(row[f"p_{emo}"]) == seg["probabilities"][emo]
            if not segs:
                assert rows[0]["start"] == "" and rows[0]["emotion"] == ""
        elif fmt == "srt":
            subs = list(srt.parse(text))
            assert len(subs) == len(segs)
            for sub, seg in zip(subs, segs):
                assert sub.start.total_seconds() == pytest.approx(seg["start"])
                assert sub.end.total_seconds() == pytest.approx(seg["end"])
                assert sub.content.startswith(f"[{seg['emotion']}]")
        else:
            captions = webvtt.from_string(text).captions
            assert len(captions) == len(segs)
            for cap, seg in zip(captions, segs):
                assert cap.start_in_seconds == int(seg["start"])
                assert cap.end_in_seconds == int(seg["end"])
                assert cap.start.endswith(f"{seg['start'] % 1:.3f}"[1:])
                assert cap.text.startswith(f"[{seg['emotion']}]")


# One result with two segments (one without an emotion, non-ASCII text)
# and one without speech, and their text in every format, written by hand.
RESULT = {
    "file": "a.wav",
    "transcript": "hi there ça va",
    "emotion": "sad",
    "probabilities": {"neutral": 0.1, "happy": 0.2, "sad": 0.6, "angry": 0.1},
    "segments": [
        {
            "start": 0.25,
            "end": 1.5,
            "transcript": "hi there",
            "emotion": "sad",
            "probabilities": {"neutral": 0.1, "sad": 0.9},
        },
        {"start": 61.0, "end": 62.125, "transcript": "ça va", "emotion": None},
    ],
}
SILENT = {
    "file": "n.wav",
    "transcript": "",
    "emotion": None,
    "probabilities": None,
    "segments": [],
}
RENDERED = {
    "text": "a.wav\tsad\thi there ça va\n",
    "csv": (
        "file,start,end,emotion,transcript,p_neutral,p_happy,p_sad,p_angry\n"
        "a.wav,0.25,1.5,sad,hi there,0.1,,0.9,\n"
        "a.wav,61.0,62.125,,ça va,,,,\n"
    ),
    "srt": (
        "1\n00:00:00,250 --> 00:00:01,500\n[sad] hi there\n\n"
        "2\n00:01:01,000 --> 00:01:02,125\nça va\n\n"
    ),
    "vtt": (
        "WEBVTT\n\n00:00:00.250 --> 00:00:01.500\n[sad] hi there\n\n"
        "00:01:01.000 --> 00:01:02.125\nça va\n"
    ),
}
RENDERED_SILENT = {
    "text": "n.wav\t\t\n",
    "csv": "n.wav,,,,,,,,\n",  # header=False
    "srt": "",
    "vtt": "WEBVTT\n",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_of_every_format(fmt):
    if fmt in ("json", "jsonl"):  # one line, UTF-8 kept as is
        for res in (RESULT, SILENT):
            text = render(res, fmt, EMOTIONS)
            assert text.endswith("\n") and text.count("\n") == 1
            assert json.loads(text) == res
        assert "ça va" in render(RESULT, fmt, EMOTIONS)
        return
    assert render(RESULT, fmt, EMOTIONS) == RENDERED[fmt]
    assert render(SILENT, fmt, EMOTIONS, header=False) == RENDERED_SILENT[fmt]


def test_folder_with_a_corrupt_file(env, capsys, tmp_path):
    _, model, audio, expected = env
    folder = str(tmp_path / "audio")
    shutil.copytree(audio, folder)
    corrupt = os.path.join(folder, "broken.wav")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(1).bytes(5000))
    out = str(tmp_path / "results.jsonl")
    status, stdout, err = run(
        capsys, model, folder, "--format", "jsonl", "--output", out
    )
    assert status == 1
    assert stdout == ""
    assert f"error: {corrupt}: Cannot read audio file {corrupt}" in err
    assert "1 of 4 files failed" in err
    with open(out, encoding="utf-8") as f:
        done = [json.loads(line) for line in f]
    assert sorted(r["file"] for r in done) == sorted(
        os.path.join(folder, os.path.relpath(p, audio)) for p in expected
    )
    # --on-error stop: the files after the corrupt one are not done.
    out2 = str(tmp_path / "stop.jsonl")
    status, _, err = run(
        capsys,
        model,
        folder,
        "--format",
        "jsonl",
        "--output",
        out2,
        "--on-error",
        "stop",
    )
    assert status == 1  # broken.wav sorts first: nothing done
    assert "Stopped (--on-error stop): 3 files not done." in err
    assert not os.path.exists(out2)


def test_resume_an_output_without_record(env, capsys, tmp_path):
    """An output of a version without ``.done`` records, cut mid-line: the
    cut line is redone and the record starts from the whole lines. (This
    version's outputs have a record; a real kill while writing one is
    ``test_resume_after_sigkill_mid_write``.)"""
    _, model, audio, expected = env
    files = sorted(expected)
    out = str(tmp_path / "results.jsonl")
    # Such a run stopped after one file, killed while writing the second.
    first = dict(expected[files[0]], transcript="WRITTEN BEFORE")
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(first) + "\n" + '{"file": "' + files[1][:5])
    assert not os.path.exists(commit_path(out))
    status, _, err = run(
        capsys, model, *files, "--format", "jsonl", "--output", out
    )
    assert status == 0, err
    assert "Resuming: 1 of 3 files" in err
    with open(out, encoding="utf-8") as f:
        results = [json.loads(line) for line in f]
    assert results[0] == first  # kept, not redone
    assert results[1:] == [expected[files[1]], expected[files[2]]]
    with open(commit_path(out), encoding="utf-8") as f:
        assert [json.loads(line)["file"] for line in f] == files
    # Done: a third run decodes nothing and changes nothing.
    status, _, err = run(
        capsys, model, *files, "--format", "jsonl", "--output", out
    )
    assert status == 0 and "Resuming: 3 of 3 files" in err
    with open(out, encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == results


# Runs the command line in a child process whose write of VICTIM's rows
# stops after CUT bytes (on disk, fsynced), touches FLAG and waits to be
# killed: the output code is the real one, only the moment is chosen.
KILLED_CHILD = """
import builtins, os, sys, time
from harmonifuse_sb.infer import main

victim, cut, flag, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
real_open = builtins.open


class Torn:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        text = data if isinstance(data, str) else data.decode()
        if victim not in text:
            return self.f.write(data)
        first_row = text.index(chr(10)) + 1
        end = first_row if cut == "row" else first_row + 20
        self.f.write(data[:end])
        self.f.flush()
        os.fsync(self.f.fileno())
        real_open(flag, "w").close()
        time.sleep(600)

    def __getattr__(self, name):
        return getattr(self.f, name)


def torn_open(path, mode="r", *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    return Torn(f) if path == out and "a" in mode else f


builtins.open = torn_open
sys.exit(main(sys.argv[5:]))
"""


@pytest.mark.parametrize("cut", ["row", "mid-row"])
def test_resume_after_sigkill_mid_write(env, capsys, tmp_path, cut):
    """A real process is SIGKILLed while writing a file's CSV rows, after
    its first whole row (what ``done_files`` used to count as done) or in
    its second; the rerun redoes that file and loses nothing."""
    _, model, audio, expected = env
    files = sorted(expected)  # noise.wav, sub/three.flac, two.wav
    victim = files[1]
    assert len(expected[victim]["segments"]) == 3  # rows to tear apart
    out, flag = str(tmp_path / "results.csv"), str(tmp_path / "torn")
    argv = [model, *files, "--format", "csv", "--output", out]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, victim, cut, flag, out, *argv],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not os.path.exists(flag):
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline, "the child never wrote"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    with open(out, encoding="utf-8") as f:
        torn = f.read()
    rows = list(csv.DictReader(io.StringIO(torn)))
    assert [r["file"] for r in rows if r["file"] == victim] != []
    with open(commit_path(out), encoding="utf-8") as f:
        assert [json.loads(line)["file"] for line in f] == [files[0]]

    status, _, err = run(capsys, *argv)
    assert status == 0, err
    assert "Resuming: 1 of 3 files" in err
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert text.count("file,start,end") == 1  # one header
    rows = list(csv.DictReader(io.StringIO(text)))
    segments = [
        (path, seg)
        for path in files
        for seg in expected[path]["segments"] or [None]
    ]
    assert [r["file"] for r in rows] == [path for path, _ in segments]
    for row, (_, seg) in zip(rows, segments):
        if seg is None:  # noise.wav: one row without speech
            assert row["start"] == "" and row["transcript"] == ""
            continue
        assert float(row["start"]) == seg["start"]
        assert float(row["end"]) == seg["end"]
        assert row["transcript"] == seg["transcript"]
        assert row["emotion"] == seg["emotion"]
        for emo in EMOTIONS:
            assert float(row[f"p_{emo}"]) == pytest.approx(
                seg["probabilities"][emo], abs=1e-5
            )
    with open(commit_path(out), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [r["file"] for r in records] == files
    assert records[-1]["end"] == len(text.encode("utf-8"))


def test_done_files_trusts_the_record_only(tmp_path):
    out = str(tmp_path / "out.txt")
    append_committed(out, "a.wav\t\thi\n", "a.wav")
    append_committed(out, "b.wav\t\tho\n", "b.wav")
    with open(out, "a", encoding="utf-8") as f:  # c.wav: written, unrecorded
        f.write("c.wav\t\tlost\n")
    with open(commit_path(out), "a", encoding="utf-8") as f:
        f.write('{"file": "c.wa')  # killed while recording it
    assert done_files(out, "text") == {"a.wav", "b.wav"}
    with open(out, encoding="utf-8") as f:
        assert f.read() == "a.wav\t\thi\nb.wav\t\tho\n"
    with open(commit_path(out), encoding="utf-8") as f:
        assert f.read().count("\n") == 2
    with open(out, "w", encoding="utf-8") as f:  # edited after the run
        f.write("a.wav\t\thi\n")
    with pytest.raises(
        ValueError, match=r"out.txt has 10 bytes but .*records 20"
    ):
        done_files(out, "text")
    os.remove(out)  # removed: a fresh start, the stale record goes too
    assert done_files(out, "text") == set()
    assert not os.path.exists(commit_path(out))


def test_resume_a_subtitle_folder(env, capsys, tmp_path):
    _, model, audio, expected = env
    out = str(tmp_path / "subs") + "/"
    status, _, _ = run(capsys, model, audio, "--format", "vtt", "--output", out)
    assert status == 0
    marker = os.path.join(out, "two.vtt")
    with open(marker, "w", encoding="utf-8") as f:
        f.write("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nkept\n")
    os.remove(os.path.join(out, "noise.vtt"))
    status, _, err = run(
        capsys, model, audio, "--format", "vtt", "--output", out
    )
    assert status == 0 and "Resuming: 2 of 3 files" in err
    assert webvtt.read(marker).captions[0].text == "kept"
    assert webvtt.read(os.path.join(out, "noise.vtt")).captions == []


def test_manifest_input_and_stdout(env, capsys, tmp_path):
    _, model, audio, expected = env
    manifest = str(tmp_path / "m.json")
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump(
            {
                "a": {"wav": "{data_root}/two.wav"},
                "b": {"wav": "{data_root}/noise.wav"},
            },
            f,
        )
    status, out, _ = run(
        capsys, model, "--manifest", manifest, "--data-root", audio, "--json"
    )
    assert status == 0
    got = [json.loads(line) for line in out.splitlines()]
    assert got == [
        expected[os.path.join(audio, "two.wav")],
        expected[os.path.join(audio, "noise.wav")],
    ]
    assert got[1]["transcript"] == "" and got[1]["emotion"] is None


def test_usage_errors(env, capsys, tmp_path):
    _, model, audio, _ = env
    status, _, err = run(capsys, model, audio, "--format", "srt")
    assert status == 2 and "--output folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run(capsys, model, str(empty))
    assert status == 2 and "No audio files" in err and str(empty) in err


def test_console_script_is_declared():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    scripts = config["options.entry_points"]["console_scripts"]
    name, target = (s.strip() for s in scripts.strip().split("="))
    assert name == "harmonifuse-sb"
    module, func = target.split(":")
    assert getattr(importlib.import_module(module), func) is main
