"""Helpers the LibriSpeech and IEMOCAP preparations share.

The corpus folder (given itself or its parent), the duration of an audio
file from its header, the check that a folder's manifests were written with
the same options, and an atomic JSON writer.

Authors
 * HarmoniFuse contributors
"""

import json
import os

import soundfile as sf


def find_corpus_dir(data_folder, corpus_dir, corpus):
    """Returns the corpus folder, and its path relative to ``data_folder``.

    Arguments
    ---------
    data_folder : str
        The corpus folder, or the folder that contains it.
    corpus_dir : str
        The corpus folder's name in its release (``LibriSpeech``,
        ``IEMOCAP_full_release``).
    corpus : str
        The corpus's name, for the error message.

    Returns
    -------
    corpus_dir : str
        ``data_folder/corpus_dir`` if that is a directory, else
        ``data_folder``.
    layout : str
        ``corpus_dir`` relative to ``data_folder``: ``corpus_dir`` or ``"."``.

    Raises
    ------
    FileNotFoundError
        ``data_folder`` does not exist.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> find_corpus_dir(root, "LibriSpeech", "LibriSpeech")[1]
    '.'
    >>> os.mkdir(os.path.join(root, "LibriSpeech"))
    >>> find_corpus_dir(root, "LibriSpeech", "LibriSpeech")[1]
    'LibriSpeech'
    """
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"{corpus} data_folder {data_folder} does not exist."
        )
    nested = os.path.join(data_folder, corpus_dir)
    if os.path.isdir(nested):
        return nested, corpus_dir
    return data_folder, "."


def audio_duration(path):
    """Returns the duration of an audio file in seconds, from its header.

    Arguments
    ---------
    path : str
        Path to the audio file.

    Returns
    -------
    float
        Number of frames divided by the sample rate.

    Raises
    ------
    ValueError
        The header cannot be read, or the file holds no samples.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, numpy.zeros(8000), 16000)
    >>> audio_duration(path)
    0.5
    """
    try:
        info = sf.info(path)
    except RuntimeError as err:  # soundfile.LibsndfileError
        raise ValueError(
            f"cannot read the audio header of {path}: {err}"
        ) from err
    if info.frames <= 0:
        raise ValueError(f"audio file {path} holds no samples.")
    return info.frames / info.samplerate


def already_prepared(options_path, manifests, options):
    """True if every manifest exists and the stored options equal these.

    Arguments
    ---------
    options_path : str
        The JSON file of the options the manifests were written with.
    manifests : iterable of str
        The manifest files.
    options : dict
        The options asked now.

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> opts, manifest = f"{folder}/opts.json", f"{folder}/m.json"
    >>> write_json({}, manifest); write_json({"seed": 1}, opts)
    >>> already_prepared(opts, [manifest], {"seed": 1})
    True
    >>> already_prepared(opts, [manifest], {"seed": 2})
    False
    """
    if not all(os.path.isfile(path) for path in manifests):
        return False
    try:
        with open(options_path, encoding="utf-8") as f:
            return json.load(f) == options
    except (OSError, ValueError):
        return False


def write_json(obj, path):
    """Writes ``obj`` to ``path`` through a temporary file (atomic).

    Arguments
    ---------
    obj : object
        Anything ``json.dump`` takes.
    path : str
        The file written (indented by 2).
    """
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
