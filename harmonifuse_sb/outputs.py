"""Results of ``HarmoniFuseSLM.analyze_file`` as text, JSON, CSV or subtitles.

One result is a dict with ``file``, each task's result (for the two-task
model ``transcript``, ``emotion``, ``probabilities``) and ``segments``
(``start``, ``end`` in seconds, and each task's result). Each task renders
its own fields (``harmonifuse_sb.tasks``: ``columns``, ``row``, ``cue``);
the classification tasks come first, then the transcriptions. The formats:

- ``text``: one line per file, ``file<TAB>emotion<TAB>transcript`` (an
  empty label field for a file without speech; a third task adds a field);
- ``json``: one array of results; ``jsonl``: one result per line;
- ``csv``: one row per segment: ``file, start, end, emotion, transcript``
  and a ``p_<label>`` column per emotion (a further classification task
  adds its label and ``p_<output>_<label>`` columns); a file without
  speech has one row with empty times;
- ``srt`` and ``vtt``: subtitles of one file, a cue per segment, its text
  ``[emotion] transcript``, written with the ``srt`` and ``webvtt-py``
  packages.

``done_files`` reads back which files an output already holds, so that a
run with the same output resumes where the last one stopped. A file's
result is appended to a ``text``, ``jsonl`` or ``csv`` output by
``append_committed``, which then records the file and the output's new
size in ``<output>.done``: only recorded files count as done, and what
follows the last record (the rows of a file whose writing was cut, even
between whole rows) is cut off before the run resumes.

Authors
 * HarmoniFuse-SB developers 2026
"""

import csv
import datetime
import io
import json
import os

from harmonifuse_sb.tasks import CLASSIFICATION, default_tasks

FORMATS = ("text", "json", "jsonl", "csv", "srt", "vtt")
EXTENSIONS = {
    "text": ".txt",
    "json": ".json",
    "jsonl": ".jsonl",
    "csv": ".csv",
    "srt": ".srt",
    "vtt": ".vtt",
}
# Formats that hold one file only.
PER_FILE = ("srt", "vtt")
CSV_FIELDS = ("file", "start", "end")


def rendered_tasks(tasks):
    """The tasks in the order outputs show them: labels, then texts.

    Arguments
    ---------
    tasks : dict or list of str
        The model's tasks, or (the two-task layout) its emotion labels.

    Returns
    -------
    list of harmonifuse_sb.tasks.Task

    Example
    -------
    >>> [t.name for t in rendered_tasks(["sad", "happy"])]
    ['ser', 'asr']
    """
    if not isinstance(tasks, dict):
        # The prompts play no part in rendering, and the labels only in the
        # CSV's probability columns (none given: a cue or a text line).
        labels = list(tasks or ()) or ["label_0", "label_1"]
        tasks = default_tasks({"asr": "-", "ser": "-"}, labels)
    ordered = list(tasks.values())
    return [t for t in ordered if t.kind == CLASSIFICATION] + [
        t for t in ordered if t.kind != CLASSIFICATION
    ]


def cue_text(segment, tasks=None):
    """Subtitle text of a segment: ``[emotion] transcript``.

    Example
    -------
    >>> cue_text({"transcript": "hi", "emotion": "sad"})
    '[sad] hi'
    """
    tasks = rendered_tasks(tasks)
    return " ".join(c for c in (t.cue(segment) for t in tasks) if c)


def to_srt(result, tasks=None):
    """SubRip subtitles of one result (``srt.compose``).

    Example
    -------
    >>> seg = {"start": 1.0, "end": 2.5, "transcript": "hi", "emotion": "sad"}
    >>> print(to_srt({"segments": [seg]}))
    1
    00:00:01,000 --> 00:00:02,500
    [sad] hi
    <BLANKLINE>
    """
    import srt

    return srt.compose(
        [
            srt.Subtitle(
                index=i,
                start=datetime.timedelta(seconds=seg["start"]),
                end=datetime.timedelta(seconds=seg["end"]),
                content=cue_text(seg, tasks) or "...",
            )
            for i, seg in enumerate(result["segments"], start=1)
        ]
    )


def _vtt_time(seconds):
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def to_vtt(result, tasks=None):
    """WebVTT subtitles of one result (``webvtt.WebVTT``).

    Example
    -------
    >>> seg = {"start": 61.5, "end": 62.0, "transcript": "hi", "emotion": None}
    >>> print(to_vtt({"segments": [seg]}))
    WEBVTT
    <BLANKLINE>
    00:01:01.500 --> 00:01:02.000
    hi
    <BLANKLINE>
    """
    import webvtt

    captions = [
        webvtt.Caption(
            start=_vtt_time(seg["start"]),
            end=_vtt_time(seg["end"]),
            text=cue_text(seg, tasks) or "...",
        )
        for seg in result["segments"]
    ]
    return webvtt.WebVTT(captions=captions).content


def csv_rows(result, tasks):
    """CSV rows (dicts) of one result: one per segment.

    Arguments
    ---------
    result : dict
        From ``analyze_file`` with ``file``.
    tasks : dict or list of str
        The model's tasks (or its emotion labels, see ``rendered_tasks``).

    Returns
    -------
    list of dict
    """
    tasks = rendered_tasks(tasks)
    empty = {"start": "", "end": ""}
    for task in tasks:
        empty.update(task.empty_result())
    rows = []
    for seg in result["segments"] or [empty]:
        row = {"file": result["file"], "start": seg["start"], "end": seg["end"]}
        for task in tasks:
            row.update(task.row(seg))
        rows.append(row)
    return rows


def csv_fields(tasks):
    """The CSV header: file, times, each task's columns, probabilities."""
    tasks = rendered_tasks(tasks)
    fields = list(CSV_FIELDS) + [c for t in tasks for c in t.columns()]
    return fields + [
        c for t in tasks if t.kind == CLASSIFICATION for c in t.prob_columns()
    ]


def render(result, fmt, tasks, header=True):
    """Text of one result in a format (a JSON array item for ``json``).

    Arguments
    ---------
    result : dict
        From ``analyze_file`` with ``file``.
    fmt : str
        One of ``FORMATS``.
    tasks : dict or list of str
        The model's tasks (or, for the two-task layout, its emotion labels).
    header : bool
        CSV only: start with the header row.

    Returns
    -------
    str
    """
    if fmt == "text":
        fields = [result["file"]] + [
            result.get(t.result_key) or "" for t in rendered_tasks(tasks)
        ]
        return "\t".join(fields) + "\n"
    if fmt in ("json", "jsonl"):
        return json.dumps(result, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=csv_fields(tasks), lineterminator="\n"
        )
        if header:
            writer.writeheader()
        writer.writerows(csv_rows(result, tasks))
        return buffer.getvalue()
    if fmt == "srt":
        return to_srt(result, tasks)
    if fmt == "vtt":
        return to_vtt(result, tasks)
    raise ValueError(f"Unknown format '{fmt}'; one of {FORMATS}.")


def write_atomic(path, text):
    """Writes a file through a temporary one, so it is whole or absent."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json_results(path):
    """The results of a ``json`` output (a JSON array); [] if absent."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        results = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise ValueError(
            f"The output {path} is not a JSON array of results ({err}); "
            "give another --output or remove it."
        ) from err
    if not isinstance(results, list):
        raise ValueError(f"The output {path} is not a JSON array of results.")
    return results


def commit_path(path):
    """The record of the finished files of an appended output."""
    return f"{path}.done"


def append_committed(path, text, file):
    """Appends one file's result to an output, then records it as done.

    The record (a JSON line ``{"file", "end"}`` in ``commit_path(path)``,
    ``end`` the output's size in bytes after the result) is written only
    once the result is on disk, so a process killed at any point leaves
    either a recorded, whole result or an unrecorded tail that
    ``done_files`` cuts off. One ``write`` is not enough: Python sends a
    long text to the file in 8 KiB pieces, and a kill between them left
    some of a file's CSV rows, which counted it as done.

    Arguments
    ---------
    path : str
        The output (``text``, ``jsonl`` or ``csv``).
    text : str
        The file's result, rendered.
    file : str
        The input file it belongs to.

    Example
    -------
    >>> import tempfile
    >>> out = tempfile.mktemp(suffix=".txt")
    >>> append_committed(out, "a.wav happy hi" + chr(10), "a.wav")
    >>> print(open(commit_path(out)).read(), end="")
    {"file": "a.wav", "end": 15}
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())  # the result is on disk before its record
        end = f.tell()
    record = json.dumps({"file": file, "end": end}, ensure_ascii=False)
    with open(commit_path(path), "a", encoding="utf-8") as f:
        f.write(record + "\n")
        f.flush()
        os.fsync(f.fileno())


def _whole_lines(path):
    """The text of a file, truncated on disk to its whole lines (a last
    line without its newline was cut by a killed run).
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def _committed(path):
    """``done_files`` of an output with a record: the recorded files,
    after cutting the output back to the end of the last of them.
    """
    marker = commit_path(path)
    if not os.path.isfile(path):  # the output was removed: start afresh
        os.remove(marker)
        return set()
    text = _whole_lines(marker)  # a record cut by a kill is dropped
    records = [json.loads(line) for line in text.splitlines() if line]
    end = records[-1]["end"] if records else 0
    size = os.path.getsize(path)
    if size < end:
        raise ValueError(
            f"The output {path} has {size} bytes but {marker} records "
            f"{end}: it was changed after the run; give another --output, "
            "or remove both files to start again."
        )
    if size > end:  # the unrecorded result of a run killed while writing
        with open(path, "r+b") as f:
            f.truncate(end)
    return {r["file"] for r in records}


def done_files(path, fmt):
    """Files that an output file already holds (for resuming).

    A ``text``, ``jsonl`` or ``csv`` output written by ``append_committed``
    holds the files its record names; anything after the last recorded
    result is cut off. An output without a record (written by an older
    version) whose last line was cut is truncated to its whole lines, and
    the file of that line counts as not done.

    Arguments
    ---------
    path : str
        The output file (absent: nothing done).
    fmt : str
        Its format (``text``, ``json``, ``jsonl`` or ``csv``).

    Returns
    -------
    set of str
        The ``file`` of each result.

    Raises
    ------
    ValueError
        If the output is shorter than its record says (edited after the
        run), or is not a JSON array (``json``).
    """
    if fmt == "json":
        return {r["file"] for r in read_json_results(path)}
    if fmt in PER_FILE:
        raise ValueError(
            f"A {fmt} output holds one file; use an output folder."
        )
    if os.path.isfile(commit_path(path)):
        return _committed(path)
    if not os.path.isfile(path):
        return set()
    text = _whole_lines(path)
    lines = text.splitlines()
    if fmt == "jsonl":
        done = [json.loads(line)["file"] for line in lines if line.strip()]
    elif fmt == "text":
        done = [line.split("\t", 1)[0] for line in lines if line]
    elif fmt == "csv":
        done = [row["file"] for row in csv.DictReader(io.StringIO(text))]
    else:
        raise ValueError(f"Unknown format '{fmt}'; one of {FORMATS}.")
    # From now on the record decides: it starts with what the lines hold.
    end = len(text.encode("utf-8"))
    with open(commit_path(path), "w", encoding="utf-8") as f:
        for file in dict.fromkeys(done):
            f.write(json.dumps({"file": file, "end": end}) + "\n")
    return set(done)
