"""Tests of recipes/IEMOCAP/iemocap_prepare.py on fake corpora."""

import doctest
import json
import logging
import os
import subprocess
import sys

import pytest

from recipes.IEMOCAP import iemocap_prepare as prep
from recipes.IEMOCAP.iemocap_prepare import prepare_iemocap
from tests.fake_corpora import make_iemocap_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUR_CLASSES = {"neutral", "happy", "sad", "angry"}


@pytest.fixture
def corpus(tmp_path):
    return make_iemocap_tree(str(tmp_path / "data"))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_fold(save):
    return {
        split: load(os.path.join(save, name))
        for split, name in prep.MANIFESTS.items()
    }


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


def rewrite(path, old, new):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert old in text
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new, 1))


@pytest.mark.parametrize("nested", [True, False])
def test_manifests_match_the_tree(tmp_path, nested, caplog):
    corpus = make_iemocap_tree(str(tmp_path / "data"), nested=nested)
    save = str(tmp_path / "save")
    with caplog.at_level(logging.INFO, logger=prep.__name__):
        manifests = prepare_iemocap(corpus.data_folder, save)
    assert manifests == {
        split: os.path.join(save, name)
        for split, name in prep.MANIFESTS.items()
    }
    fold = load_fold(save)
    merged = {}
    for entries in fold.values():
        merged.update(entries)
    kept = {u: i for u, i in corpus.utterances.items() if i["emo"] is not None}
    assert len(merged) == sum(len(e) for e in fold.values())  # disjoint
    assert set(merged) == set(kept)
    for utt_id, entry in merged.items():
        truth = kept[utt_id]
        assert set(entry) == {"wav", "duration", "spk_id", "emo"}
        assert entry["emo"] in FOUR_CLASSES
        assert entry["emo"] == truth["emo"]
        assert entry["spk_id"] == truth["spk_id"]
        assert entry["duration"] == pytest.approx(truth["duration"], abs=1e-6)
        layout = "IEMOCAP_full_release/" if nested else ""
        dialog = utt_id.rsplit("_", 1)[0]
        assert entry["wav"] == (
            f"{{data_root}}/{layout}Session{truth['session']}/sentences/wav/"
            f"{dialog}/{utt_id}.wav"
        )
        real = entry["wav"].replace("{data_root}", corpus.data_folder)
        assert os.path.samefile(real, truth["path"])

    # exc is merged into happy; hap stays happy.
    raw = {u: i["label"] for u, i in corpus.utterances.items()}
    assert any(raw[u] == "exc" for u in merged)
    assert all(merged[u]["emo"] == "happy" for u in merged if raw[u] == "exc")
    assert all(merged[u]["emo"] == "happy" for u in merged if raw[u] == "hap")
    # Dropped labels are absent and their counts are logged by label.
    dropped = [u for u, label in raw.items() if label in prep.DROPPED_LABELS]
    assert dropped and not set(dropped) & set(merged)
    counts = {
        label: sum(1 for u in dropped if raw[u] == label)
        for label in ("xxx", "fru")
    }
    log = caplog.text
    assert f"xxx {counts['xxx']}" in log and f"fru {counts['fru']}" in log
    assert f"Dropped {len(dropped)} utterances" in log


def test_fold_holds_out_the_test_session(corpus, tmp_path):
    prepare_iemocap(corpus.data_folder, str(tmp_path / "f5"))
    fold = load_fold(str(tmp_path / "f5"))
    session5 = {
        u
        for u, i in corpus.utterances.items()
        if i["session"] == 5 and i["emo"]
    }
    assert set(fold["test"]) == session5
    assert not set(fold["train"]) & set(fold["valid"])
    for split in ("train", "valid"):
        assert fold[split]
        assert all(not u.startswith("Ses05") for u in fold[split])
    # Validation is a stratified seeded tenth of the training sessions.
    assert {e["emo"] for e in fold["valid"].values()} == FOUR_CLASSES
    for emo in FOUR_CLASSES:
        n_valid = sum(1 for e in fold["valid"].values() if e["emo"] == emo)
        n_train = sum(1 for e in fold["train"].values() if e["emo"] == emo)
        assert n_valid == int(0.1 * (n_valid + n_train) + 0.5)

    # Another fold: another test session.
    prepare_iemocap(corpus.data_folder, str(tmp_path / "f2"), test_session=2)
    fold2 = load_fold(str(tmp_path / "f2"))
    assert {u[:5] for u in fold2["test"]} == {"Ses02"}
    assert set(fold2["test"]) != set(fold["test"])
    assert any(u.startswith("Ses05") for u in fold2["train"])


def test_validation_draw_is_seeded(corpus, tmp_path):
    def valid(name, seed):
        save = str(tmp_path / name)
        prepare_iemocap(corpus.data_folder, save, valid_fraction=0.3, seed=seed)
        return set(load_fold(save)["valid"])

    assert valid("a", 1) == valid("b", 1)
    assert valid("a", 1) != valid("c", 2)


def test_valid_speaker_option(corpus, tmp_path):
    save = str(tmp_path / "save")
    prepare_iemocap(
        corpus.data_folder, save, test_session=1, valid_speaker="Ses04M"
    )
    fold = load_fold(save)
    assert {e["spk_id"] for e in fold["valid"].values()} == {"Ses04M"}
    n_spk = sum(
        1
        for i in corpus.utterances.values()
        if i["spk_id"] == "Ses04M" and i["emo"]
    )
    assert len(fold["valid"]) == n_spk
    assert "Ses04M" not in {e["spk_id"] for e in fold["train"].values()}
    assert {e["spk_id"] for e in fold["test"].values()} == {"Ses01F", "Ses01M"}
    with pytest.raises(ValueError, match="test session"):
        prepare_iemocap(
            corpus.data_folder, save, test_session=4, valid_speaker="Ses04M"
        )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"test_session": 0}, r"test_session must be one of .*got 0\."),
        ({"test_session": 6}, r"test_session must be one of .*got 6\."),
        (
            {"valid_fraction": 1.0},
            r"valid_fraction must be in \[0, 1\), got 1\.0",
        ),
        (
            {"valid_speaker": "Speaker1"},
            r"valid_speaker must look like 'Ses04M'.*got 'Speaker1'",
        ),
        (
            {"test_session": 2, "valid_speaker": "Ses02F"},
            r"valid_speaker Ses02F belongs to the test session 2; choose",
        ),
    ],
)
def test_bad_options_are_refused(corpus, tmp_path, options, message):
    """Each bad option is refused with an error naming it and its value."""
    save = tmp_path / "save"
    with pytest.raises(ValueError, match=message):
        prepare_iemocap(corpus.data_folder, str(save), **options)
    assert not save.exists()  # refused before anything is written


def test_second_call_skips_and_changed_fold_rebuilds(
    corpus, tmp_path, monkeypatch
):
    save = str(tmp_path / "save")
    prepare_iemocap(corpus.data_folder, save, test_session=5)
    age(save)
    before = mtimes(save)
    assert set(before) == set(prep.MANIFESTS.values()) | {prep.OPTIONS_FILE}

    def no_header_reads(path):
        raise AssertionError(f"read {path} on a skipped preparation")

    monkeypatch.setattr(prep, "audio_duration", no_header_reads)
    prepare_iemocap(corpus.data_folder, save, test_session=5)
    assert mtimes(save) == before
    monkeypatch.undo()

    prepare_iemocap(corpus.data_folder, save, test_session=3)
    after = mtimes(save)
    assert all(after[name] > before[name] for name in before)
    assert load(os.path.join(save, prep.OPTIONS_FILE))["test_session"] == 3
    assert {u[:5] for u in load_fold(save)["test"]} == {"Ses03"}

    # A changed seed also rebuilds.
    age(save)
    before = mtimes(save)
    prepare_iemocap(corpus.data_folder, save, test_session=3, seed=7)
    assert mtimes(save)["iemocap_valid.json"] > before["iemocap_valid.json"]


def test_skip_prep_writes_nothing(corpus, tmp_path):
    save = tmp_path / "save"
    prepare_iemocap(corpus.data_folder, str(save), skip_prep=True)
    assert not save.exists()


def test_missing_session_is_refused(corpus, tmp_path):
    session3 = os.path.join(corpus.corpus_dir, "Session3")
    os.rename(session3, session3 + "_moved")
    with pytest.raises(FileNotFoundError) as err:
        prepare_iemocap(corpus.data_folder, str(tmp_path / "save"))
    assert session3 in str(err.value)


def test_missing_wav_is_refused(corpus, tmp_path):
    utt_id, info = next(
        (u, i)
        for u, i in sorted(corpus.utterances.items())
        if i["label"] == "sad"
    )
    os.remove(info["path"])
    with pytest.raises(FileNotFoundError) as err:
        prepare_iemocap(corpus.data_folder, str(tmp_path / "save"))
    message = str(err.value)
    assert info["path"] in message and info["eval_file"] in message
    assert utt_id in message


def test_missing_wav_of_a_dropped_label_is_refused(corpus, tmp_path):
    # Unused, but a missing file means an incomplete corpus.
    info = next(i for i in corpus.utterances.values() if i["label"] == "xxx")
    os.remove(info["path"])
    with pytest.raises(FileNotFoundError) as err:
        prepare_iemocap(corpus.data_folder, str(tmp_path / "save"))
    assert info["path"] in str(err.value)


@pytest.mark.parametrize(
    "bad",
    [
        "[1.0000 - 2.1369]\tSes01F_impro01_F000\tneu\n",  # no [V, A, D]
        "[1.0000 2.1369]\tSes01F_impro01_F000\tneu\t[2.5, 3.0, 2.5]\n",
        "[1.0000 - 2.1369] Ses01F_impro01_F000\n",
    ],
)
def test_malformed_bracket_line_is_refused(corpus, tmp_path, bad):
    info = corpus.utterances["Ses01F_impro01_F000"]
    with open(info["eval_file"], encoding="utf-8") as f:
        lines = f.readlines()
    lineno = next(
        n for n, line in enumerate(lines, 1) if "Ses01F_impro01_F000" in line
    )
    lines[lineno - 1] = bad
    with open(info["eval_file"], "w", encoding="utf-8") as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match="cannot parse") as err:
        prepare_iemocap(corpus.data_folder, str(tmp_path / "save"))
    assert f"{info['eval_file']}, line {lineno}" in str(err.value)


def test_unknown_label_is_refused(corpus, tmp_path):
    info = corpus.utterances["Ses01F_impro01_F000"]
    rewrite(
        info["eval_file"],
        "Ses01F_impro01_F000\tneu",
        "Ses01F_impro01_F000\tjoy",
    )
    with pytest.raises(ValueError, match="unknown emotion label 'joy'") as err:
        prepare_iemocap(corpus.data_folder, str(tmp_path / "save"))
    assert info["eval_file"] in str(err.value)


def test_utterance_in_the_wrong_session_is_refused(corpus, tmp_path):
    info = corpus.utterances["Ses01F_impro01_F000"]
    rewrite(info["eval_file"], "Ses01F_impro01_F000", "Ses02F_impro01_F000")
    with pytest.raises(ValueError, match="listed under Session1") as err:
        prepare_iemocap(corpus.data_folder, str(tmp_path / "save"))
    assert info["eval_file"] in str(err.value)


def test_command_line(corpus, tmp_path):
    save = str(tmp_path / "save")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.IEMOCAP.iemocap_prepare",
            corpus.data_folder,
            save,
            "--test-session",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert {u[:5] for u in load_fold(save)["test"]} == {"Ses02"}
    assert "Dropped" in result.stderr


def test_docstring_examples_run():
    result = doctest.testmod(prep, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= 5


def test_missing_data_folder_is_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=f"IEMOCAP data_folder {missing} does not exist"
    ):
        prepare_iemocap(missing, str(tmp_path / "save"))
