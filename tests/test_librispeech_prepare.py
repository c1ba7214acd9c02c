"""Tests of recipes/LibriSpeech/librispeech_prepare.py on fake corpora."""

import doctest
import json
import os
import subprocess
import sys

import pytest

from recipes import prepare_common
from recipes.LibriSpeech import librispeech_prepare as prep
from recipes.LibriSpeech.librispeech_prepare import prepare_librispeech
from tests.fake_corpora import make_librispeech_tree

SPLITS = {"train-clean-100": 6, "dev-clean": 3, "test-clean": 3}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def corpus(tmp_path):
    return make_librispeech_tree(str(tmp_path / "data"), SPLITS)


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def mtimes(folder):
    return {
        name: os.stat(os.path.join(folder, name)).st_mtime_ns
        for name in sorted(os.listdir(folder))
    }


def age(folder, seconds=1000):
    """Moves every file's mtime into the past, so a rewrite is visible."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        stat = os.stat(path)
        os.utime(
            path, ns=(stat.st_atime_ns, stat.st_mtime_ns - seconds * 10**9)
        )


@pytest.mark.parametrize("nested", [True, False])
def test_manifests_match_the_tree(tmp_path, nested):
    corpus = make_librispeech_tree(
        str(tmp_path / "data"), SPLITS, nested=nested
    )
    save = str(tmp_path / "save")
    manifests = prepare_librispeech(
        corpus.data_folder, save, splits=list(SPLITS)
    )
    assert manifests == {s: os.path.join(save, f"{s}.json") for s in SPLITS}
    for split, n_utts in SPLITS.items():
        data = load(manifests[split])
        expected = corpus.utterances[split]
        assert len(data) == n_utts
        assert set(data) == set(expected)
        for utt_id, entry in data.items():
            truth = expected[utt_id]
            assert set(entry) == {"wav", "duration", "spk_id", "wrd"}
            assert entry["wrd"] == " ".join(truth["text"].lower().split())
            assert entry["wrd"] == entry["wrd"].lower()
            assert "  " not in entry["wrd"]
            assert entry["spk_id"] == truth["spk_id"] == utt_id.split("-")[0]
            assert entry["duration"] == pytest.approx(
                truth["duration"], abs=1e-6
            )
            assert entry["wav"].startswith("{data_root}/")
            layout = "LibriSpeech/" if nested else ""
            spk, chapter = utt_id.split("-")[:2]
            assert entry["wav"] == (
                f"{{data_root}}/{layout}{split}/{spk}/{chapter}/{utt_id}.flac"
            )
            real = entry["wav"].replace("{data_root}", corpus.data_folder)
            assert os.path.samefile(real, truth["path"])


def test_data_folder_may_be_the_librispeech_folder(corpus, tmp_path):
    save = str(tmp_path / "save")
    prepare_librispeech(corpus.corpus_dir, save, splits=["dev-clean"])
    entry = next(iter(load(os.path.join(save, "dev-clean.json")).values()))
    assert entry["wav"].startswith("{data_root}/dev-clean/")
    real = entry["wav"].replace("{data_root}", corpus.corpus_dir)
    assert os.path.isfile(real)


def test_second_call_skips_and_changed_options_rebuild(
    corpus, tmp_path, monkeypatch
):
    save = str(tmp_path / "save")
    prepare_librispeech(
        corpus.data_folder, save, splits=["dev-clean", "test-clean"]
    )
    assert os.path.isfile(os.path.join(save, prep.OPTIONS_FILE))
    age(save)
    before = mtimes(save)

    # Same options: nothing is read or written (reading a header would fail).
    def no_header_reads(path):
        raise AssertionError(f"read {path} on a skipped preparation")

    monkeypatch.setattr(prep, "audio_duration", no_header_reads)
    prepare_librispeech(
        corpus.data_folder, save, splits=("dev-clean", "test-clean")
    )
    assert mtimes(save) == before
    monkeypatch.undo()

    # Another split list: rebuilt.
    prepare_librispeech(corpus.data_folder, save, splits=["dev-clean"])
    after = mtimes(save)
    assert after["dev-clean.json"] > before["dev-clean.json"]
    opts = load(os.path.join(save, prep.OPTIONS_FILE))
    assert opts["splits"] == ["dev-clean"]


def test_missing_manifest_rebuilds(corpus, tmp_path):
    save = str(tmp_path / "save")
    prepare_librispeech(corpus.data_folder, save, splits=["dev-clean"])
    os.remove(os.path.join(save, "dev-clean.json"))
    prepare_librispeech(corpus.data_folder, save, splits=["dev-clean"])
    assert (
        len(load(os.path.join(save, "dev-clean.json"))) == SPLITS["dev-clean"]
    )


def test_skip_prep_writes_nothing(corpus, tmp_path):
    save = tmp_path / "save"
    manifests = prepare_librispeech(
        corpus.data_folder, str(save), skip_prep=True
    )
    assert set(manifests) == set(prep.DEFAULT_SPLITS)
    assert not save.exists()


def test_missing_split_is_refused(corpus, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        prepare_librispeech(
            corpus.data_folder, str(tmp_path / "save"), splits=["dev-other"]
        )
    assert os.path.join(corpus.corpus_dir, "dev-other") in str(err.value)
    assert not (tmp_path / "save").exists()


def test_missing_flac_is_refused(corpus, tmp_path):
    utt_id, info = sorted(corpus.utterances["dev-clean"].items())[1]
    os.remove(info["path"])
    with pytest.raises(FileNotFoundError) as err:
        prepare_librispeech(
            corpus.data_folder, str(tmp_path / "save"), splits=["dev-clean"]
        )
    message = str(err.value)
    assert info["path"] in message
    spk, chapter = utt_id.split("-")[:2]
    trans = os.path.join(
        os.path.dirname(info["path"]), f"{spk}-{chapter}.trans.txt"
    )
    assert f"{trans}, line 2" in message


def test_flac_without_transcript_line_is_refused(corpus, tmp_path):
    info = next(iter(corpus.utterances["dev-clean"].values()))
    orphan = os.path.join(os.path.dirname(info["path"]), "1010-110-0099.flac")
    with open(info["path"], "rb") as src, open(orphan, "wb") as dst:
        dst.write(src.read())
    with pytest.raises(ValueError, match="no transcript line") as err:
        prepare_librispeech(
            corpus.data_folder, str(tmp_path / "save"), splits=["dev-clean"]
        )
    assert orphan in str(err.value)


@pytest.mark.parametrize(
    "bad_line",
    [
        "1010-110-0000\n",  # no transcript
        "1010-110 HELLO WORLD\n",  # not an utterance id
        "9999-110-0000 HELLO WORLD\n",  # belongs to another chapter file
    ],
)
def test_malformed_transcript_line_is_refused(corpus, tmp_path, bad_line):
    info = corpus.utterances["dev-clean"]["1010-110-0000"]
    trans = os.path.join(os.path.dirname(info["path"]), "1010-110.trans.txt")
    with open(trans, encoding="utf-8") as f:
        lines = f.readlines()
    lines[0] = bad_line
    with open(trans, "w", encoding="utf-8") as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match="malformed transcript line") as err:
        prepare_librispeech(
            corpus.data_folder, str(tmp_path / "save"), splits=["dev-clean"]
        )
    assert f"{trans}, line 1" in str(err.value)


def test_failed_rebuild_leaves_no_valid_looking_options(corpus, tmp_path):
    save = str(tmp_path / "save")
    prepare_librispeech(corpus.data_folder, save, splits=["dev-clean"])
    info = next(iter(corpus.utterances["test-clean"].values()))
    os.remove(info["path"])
    with pytest.raises(FileNotFoundError):
        prepare_librispeech(
            corpus.data_folder, save, splits=["dev-clean", "test-clean"]
        )
    assert not os.path.exists(os.path.join(save, prep.OPTIONS_FILE))


def test_command_line(corpus, tmp_path):
    save = str(tmp_path / "save")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.LibriSpeech.librispeech_prepare",
            corpus.data_folder,
            save,
            "--splits",
            "dev-clean",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        len(load(os.path.join(save, "dev-clean.json"))) == SPLITS["dev-clean"]
    )
    assert "3 utterances" in result.stderr


def test_docstring_examples_run():
    result = doctest.testmod(prep, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= 5


def test_missing_data_folder_is_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError,
        match=f"LibriSpeech data_folder {missing} does not exist",
    ):
        prepare_librispeech(missing, str(tmp_path / "save"))


def test_shared_helpers_docstring_examples_run():
    result = doctest.testmod(prepare_common, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= 10
