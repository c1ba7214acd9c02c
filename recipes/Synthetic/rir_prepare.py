"""Room impulse responses for on-the-fly reverberation of the training set.

Writes a set of simulated rooms (``harmonifuse_sb.augment.
room_impulse_response``: pyroomacoustics' image method) once, next to the
synthetic corpus, for SpeechBrain's ``AddReverb``:

- ``rir_XX.wav``: 16 kHz float responses, peak 1;
- ``rirs.csv``: ``ID, duration, wav, wav_format, wav_opts`` with
  ``$rir_folder`` in the paths (the format ``AddReverb`` reads, through
  ``ExtendedCSVDataset``);
- ``rooms.json``: each response's measured RT60, distance, room size and
  positions;
- ``prepare_params.json``: the arguments and ``VERSION``, written last.

The RT60s are spread evenly over ``rt60_range`` and the distances over
``distance_range`` (an even grid, interleaved, so that each part of one
range meets the whole other); each room is drawn from its own seed. The
output depends only on the arguments: a folder whose
``prepare_params.json`` holds the same ones is left as it is. Otherwise
only the files above are removed and written again: other files in the
folder are left alone, and a folder whose ``prepare_params.json`` belongs to
something else (e.g. the synthetic corpus) is refused.

Validation and test data are never reverberated: the robustness benchmark
(``benchmarks/bench_robustness.py``) measures rooms with its own
responses.

Authors
 * HarmoniFuse-SB developers 2026
"""

import logging
import math
import os
import re

import soundfile as sf

from harmonifuse_sb.augment import room_impulse_response
from recipes.Synthetic.synthetic_prepare import _read_json, _write_json

logger = logging.getLogger(__name__)

# Changed whenever the same arguments would give other responses.
VERSION = "rirs-1"
SAMPLE_RATE = 16000
PARAMS_FILE = "prepare_params.json"
# What a preparation writes, and so all it removes before writing again.
RIR_FILE = re.compile(r"rir_\d+\.wav")
OUTPUT_FILES = ("rirs.csv", "rooms.json", PARAMS_FILE)


def _remove_outputs(rir_folder):
    """Removes what an earlier preparation wrote there, and nothing else.

    Arguments
    ---------
    rir_folder : str
        The responses' folder (it may hold other files: they are kept).

    Raises
    ------
    ValueError
        The folder's ``prepare_params.json`` is not this recipe's.
    """
    if not os.path.isdir(rir_folder):
        return
    stamp = _read_json(os.path.join(rir_folder, PARAMS_FILE))
    if isinstance(stamp, dict) and not str(stamp.get("version", "")).startswith(
        "rirs-"
    ):
        raise ValueError(
            f"{rir_folder} holds a {PARAMS_FILE} that is not this recipe's "
            f"(version {stamp.get('version')!r}, not {VERSION!r}): it is "
            "another preparation's folder. Give the room impulse responses "
            "a folder of their own (rir_folder)."
        )
    for name in os.listdir(rir_folder):
        if RIR_FILE.fullmatch(name) or name in OUTPUT_FILES:
            os.remove(os.path.join(rir_folder, name))


def rir_grid(count, rt60_range, distance_range):
    """(RT60, distance) of each response: even grids, interleaved.

    Arguments
    ---------
    count : int
        Number of responses.
    rt60_range : (float, float)
        Lowest and highest RT60, in seconds.
    distance_range : (float, float)
        Nearest and farthest talker, in metres.

    Returns
    -------
    list of (float, float)

    Example
    -------
    >>> rir_grid(4, (0.1, 0.9), (0.5, 4.0))
    [(0.2, 0.938), (0.4, 3.562), (0.6, 2.688), (0.8, 1.812)]
    """
    # A stride coprime with count visits every distance once.
    stride = next(
        s for s in range(count // 2 + 1, count + 2) if math.gcd(s, count) == 1
    )
    low, high = rt60_range
    near, far = distance_range
    grid = []
    for i in range(count):
        j = (i * stride) % count
        rt60 = low + (high - low) * (i + 0.5) / count
        distance = near + (far - near) * (j + 0.5) / count
        grid.append((round(rt60, 3), round(distance, 3)))
    return grid


def prepare_rirs(
    rir_folder,
    seed=1234,
    count=32,
    rt60_range=(0.1, 0.9),
    distance_range=(0.5, 4.0),
    enabled=True,
):
    """Writes the room impulse responses and their CSV (see the module).

    Arguments
    ---------
    rir_folder : str
        Where to write them.
    seed : int
        Response ``i`` uses the seed ``seed + i``.
    count : int
        Number of responses.
    rt60_range : (float, float)
        Reverberation times, in seconds.
    distance_range : (float, float)
        Talker-microphone distances, in metres.
    enabled : bool
        False: nothing is done (the training YAML's ``rooms`` switch is
        off).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> prepare_rirs(folder, count=2, rt60_range=(0.1, 0.3))
    >>> print(open(os.path.join(folder, "rirs.csv")).read().splitlines()[1])
    rir_00,0.681125,$rir_folder/rir_00.wav,wav,
    """
    if not enabled:
        return
    params = {
        "version": VERSION,
        "seed": seed,
        "count": count,
        "rt60_range": list(rt60_range),
        "distance_range": list(distance_range),
    }
    params_file = os.path.join(rir_folder, PARAMS_FILE)
    if _read_json(params_file) == params:
        logger.info("Room impulse responses in %s are ready.", rir_folder)
        return
    # Only this recipe's own files: the folder may hold a user's others.
    _remove_outputs(rir_folder)
    os.makedirs(rir_folder, exist_ok=True)
    rows = ["ID,duration,wav,wav_format,wav_opts"]
    rooms = {}
    grid = rir_grid(count, rt60_range, distance_range)
    for i, (rt60, distance) in enumerate(grid):
        rir, info = room_impulse_response(rt60, distance, seed=seed + i)
        name = f"rir_{i:02d}"
        sf.write(
            os.path.join(rir_folder, f"{name}.wav"),
            rir.numpy(),
            SAMPLE_RATE,
            subtype="FLOAT",
        )
        duration = len(rir) / SAMPLE_RATE
        rows.append(f"{name},{duration},$rir_folder/{name}.wav,wav,")
        rooms[name] = {"rt60_asked": rt60, **info}
    with open(os.path.join(rir_folder, "rirs.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    _write_json(os.path.join(rir_folder, "rooms.json"), rooms)
    # Written last: an interrupted preparation is redone from scratch.
    _write_json(params_file, params)
    logger.info("Wrote %d room impulse responses in %s", count, rir_folder)
