"""The test results of a training run, as files: written, then read back.

``train.py`` ends by writing ``test_results.json`` in its output folder: the
test statistics of every test set and where its manifest is. The file comes
last, after the reports and the inference folder, so its presence marks a
run that finished (the ablation study skips such runs). The per-utterance
outcomes that a paired bootstrap needs are read back from the reports the
test stage writes: ``wer_<set>.txt`` and ``cer_<set>.txt`` (SpeechBrain's
``ErrorRateStats`` alignments) and ``ser_<set>.txt``
(``EmotionStats.write_stats``, one line per utterance at the end).

Authors
 * HarmoniFuse-SB developers 2026
"""

import json
import os
import re

TEST_RESULTS_FILE = "test_results.json"

# One utterance of an ErrorRateStats report:
# "<id>, %WER 33.33 [ 1 / 3, 0 ins, 1 del, 0 sub ]"
_ALIGNMENT_HEADER = re.compile(r"^(.+), %WER \S+ \[ (\d+) / (\d+),")
_SER_UTTERANCES = "utterances (id, true, predicted)"
_SER_CLASSES = "class"


def write_test_results(path, results, test_sets, tasks):
    """Writes the test statistics of a run as JSON (atomically).

    Arguments
    ---------
    path : str
        The file to write, usually ``<output_folder>/test_results.json``.
    results : dict
        Test set name -> statistics (``WER``, ``CER`` in percent; ``UA``,
        ``WA``, ``macro_F1`` as fractions; losses).
    test_sets : dict
        Test set name -> ``{"task", "manifest", "data_root"}``.
    tasks : sequence of str
        The tasks the run trained.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), TEST_RESULTS_FILE)
    >>> write_test_results(
    ...     path,
    ...     {"dev": {"UA": 0.5, "WA": 0.75}},
    ...     {"dev": {"task": "ser", "manifest": "d.json", "data_root": "."}},
    ...     ["ser"],
    ... )
    >>> read_test_results(path)["test_sets"]["dev"]["stats"]["UA"]
    0.5
    """
    content = {
        "tasks": list(tasks),
        "test_sets": {
            name: dict(
                test_sets[name],
                stats={
                    key: float(value)
                    for key, value in stats.items()
                    if isinstance(value, (int, float))
                },
            )
            for name, stats in results.items()
        },
    }
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as w:
        json.dump(content, w, indent=2)
    os.replace(tmp_path, path)


def read_test_results(path):
    """Reads a ``test_results.json`` written by :func:`write_test_results`.

    Arguments
    ---------
    path : str
        The file.

    Returns
    -------
    dict
        ``tasks`` and ``test_sets`` (name -> ``task``, ``manifest``,
        ``data_root``, ``stats``).
    """
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    if "test_sets" not in content:
        raise ValueError(
            f"{path} has no 'test_sets': not a file that train.py wrote."
        )
    return content


def read_error_rate_report(path):
    """Reads the per-utterance errors of an ``ErrorRateStats`` report.

    Arguments
    ---------
    path : str
        A ``wer_<set>.txt`` (or ``cer_<set>.txt``) written by
        ``ErrorRateStats.write_stats``.

    Returns
    -------
    dict
        Utterance id -> ``(errors, reference_tokens)`` (ints), in file
        order; errors are insertions + deletions + substitutions.

    Example
    -------
    >>> import sys, tempfile
    >>> from speechbrain.utils.metric_stats import ErrorRateStats
    >>> stats = ErrorRateStats()
    >>> stats.append(["u1", "u2"], [["A", "B"], ["C"]], [["A", "X", "B"], ["C"]])
    >>> path = os.path.join(tempfile.mkdtemp(), "wer.txt")
    >>> with open(path, "w") as w:
    ...     stats.write_stats(w)
    >>> read_error_rate_report(path)
    {'u1': (1, 3), 'u2': (0, 1)}
    """
    utterances = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = _ALIGNMENT_HEADER.match(line)
            if match:
                errors, tokens = int(match[2]), int(match[3])
                utterances[match[1]] = (errors, tokens)
    if not utterances:
        raise ValueError(
            f"{path} holds no per-utterance alignment (lines like "
            "'<id>, %WER 33.33 [ 1 / 3, ...'): not an ErrorRateStats report."
        )
    return utterances


def read_emotion_report(path):
    """Reads the classes and per-utterance predictions of an SER report.

    Arguments
    ---------
    path : str
        A ``ser_<set>.txt`` written by ``EmotionStats.write_stats``.

    Returns
    -------
    labels : list of str
        The classes, in the order of the classifier.
    utterances : dict
        Utterance id -> ``(true, predicted)`` labels, in file order.

    Example
    -------
    >>> import tempfile
    >>> from harmonifuse_sb.metrics import EmotionStats
    >>> stats = EmotionStats(["neutral", "sad"])
    >>> stats.append(["u1", "u2"], ["neutral", "neutral"], ["neutral", "sad"])
    >>> path = os.path.join(tempfile.mkdtemp(), "ser.txt")
    >>> with open(path, "w") as w:
    ...     stats.write_stats(w)
    >>> read_emotion_report(path)
    (['neutral', 'sad'], {'u1': ('neutral', 'neutral'), 'u2': ('sad', 'neutral')})
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    labels, utterances = [], {}
    section = None
    for line in lines:
        fields = line.split()
        if line.startswith(_SER_UTTERANCES):
            section = "utterances"
        elif fields[:1] == [_SER_CLASSES] and section is None:
            section = "classes"
        elif not fields:
            section = None if section == "classes" else section
        elif section == "classes":
            labels.append(fields[0])
        elif section == "utterances":
            if len(fields) not in (3, 4) or fields[1:3] == []:
                raise ValueError(f"{path}: cannot read the line {line!r}.")
            utterances[fields[0]] = (fields[1], fields[2])
    if not labels or not utterances:
        raise ValueError(
            f"{path} lists no classes or no utterances: write it with "
            "harmonifuse_sb.metrics.EmotionStats.write_stats."
        )
    unknown = {label for pair in utterances.values() for label in pair}
    unknown -= set(labels)
    if unknown:
        raise ValueError(f"{path}: labels {sorted(unknown)} are not classes.")
    return labels, utterances
