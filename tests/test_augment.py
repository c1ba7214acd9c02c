"""Rooms and codecs in the augmentation (issue 20, items 1 and 2).

Simulated rooms (``room_impulse_response``, the RIR set of
``recipes/Synthetic/rir_prepare.py`` read by SpeechBrain's ``AddReverb``),
MP3 and Opus at low bit rates (``LowBitrateCodec``), G.711 mu-law
(``TelephoneBand``), the share of utterances reverberated
(``UtteranceShare``, applied by ``HarmoniFuseBrain`` before
``wav_augment``), noise and rooms drawn so that a resumed run draws the
same (``ResumableAddNoise``, ``ResumableAddReverb``), and the training
YAML's two switches.
"""

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.augment.time_domain import AddReverb

from harmonifuse_sb.augment import (
    LOW_BITRATE_CODECS,
    LowBitrateCodec,
    ResumableAddNoise,
    ResumableAddReverb,
    TelephoneBand,
    UtteranceShare,
    rms,
    room_impulse_response,
)
from recipes.Synthetic.rir_prepare import VERSION, prepare_rirs, rir_grid
from tests.longform_helpers import ROOT, espeak_clips

SPEED_OF_SOUND = 343.0


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Four eSpeak NG utterances, 16 kHz, joined: (N,) float32."""
    clips = espeak_clips(str(tmp_path_factory.mktemp("clips")), count=4)
    return torch.cat([torch.from_numpy(sf.read(c["wav"])[0]) for c in clips])


def _bit_rate(wav, fmt, subtype, options):
    """kbit/s of one encoding of a (N,) 16 kHz waveform."""
    buffer = io.BytesIO()
    sf.write(buffer, wav.numpy(), 16000, format=fmt, subtype=subtype, **options)
    return 8 * buffer.tell() / (len(wav) / 16000) / 1000


def test_codec_bit_rates(speech):
    """The bit rates LOW_BITRATE_CODECS's comment states, on speech."""
    rates = [_bit_rate(speech, *codec) for codec in LOW_BITRATE_CODECS]
    print("kbit/s:", [round(r, 1) for r in rates])
    mp3_24, mp3_16, opus_31, opus_13 = rates
    assert 22 <= mp3_24 <= 26 and 14 <= mp3_16 <= 18
    assert 27 <= opus_31 <= 35 and 11 <= opus_13 <= 16


@pytest.mark.parametrize("index", range(len(LOW_BITRATE_CODECS)))
def test_each_codec_degrades_but_keeps_the_batch(speech, index):
    codec = LowBitrateCodec(codecs=[LOW_BITRATE_CODECS[index]])
    batch = torch.stack([speech[:32000], speech[32000:64000]]).float()
    coded = codec(batch)
    assert coded.shape == batch.shape and coded.dtype == batch.dtype
    assert 0.5 < float(rms(coded) / rms(batch)) < 1.5
    assert not torch.allclose(coded, batch, atol=1e-3)  # lossy


def test_codec_draws_from_its_list(monkeypatch):
    codec = LowBitrateCodec()
    used = []
    monkeypatch.setattr(
        codec, "apply_codec", lambda w, format, encoder: used.append(format)
    )
    for _ in range(40):
        codec(torch.zeros(1, 1600))
    assert set(used) == {"MP3", "OGG"}


def test_g711_quantises_at_8_khz(speech):
    wav = speech[None, :32000].float()
    band = TelephoneBand()(wav)
    g711 = TelephoneBand(quantization_channels=256)(wav)
    noise = g711 - band
    # 8-bit mu-law: about 38 dB signal-to-quantisation noise on speech.
    snr = 20 * torch.log10(rms(band) / rms(noise))
    assert 30 < float(snr) < 45
    spectrum = torch.fft.rfft(g711[0]).abs()
    top = spectrum[int(0.55 * len(spectrum)) :]  # above 4.4 kHz
    assert float(top.pow(2).sum() / spectrum.pow(2).sum()) < 1e-3


@pytest.mark.parametrize("rt60", [0.3, 0.6, 0.9])
def test_room_rt60_and_distance(rt60):
    rir, info = room_impulse_response(rt60, 3.0, seed=0)
    assert abs(info["rt60"] - rt60) <= 0.15 * rt60
    gap = np.subtract(info["talker"], info["microphone"])
    assert np.linalg.norm(gap) == pytest.approx(3.0, abs=0.02)
    room = np.array(info["room_dim"])
    for point in (info["talker"], info["microphone"]):
        assert np.all(np.array(point) >= 0.49) and np.all(point <= room - 0.49)
    # The direct sound is the first arrival: distance / c after the start
    # (pyroomacoustics delays every response by 40 samples).
    first = int(torch.nonzero(rir.abs() > 0.3)[0])
    assert abs(first - 40 - 3.0 / SPEED_OF_SOUND * 16000) < 30


def test_room_is_deterministic_and_varies_with_the_seed():
    a, info_a = room_impulse_response(0.4, 1.0, seed=5)
    b, info_b = room_impulse_response(0.4, 1.0, seed=5)
    c, info_c = room_impulse_response(0.4, 1.0, seed=6)
    assert torch.equal(a, b) and info_a == info_b
    assert info_c["room_dim"] != info_a["room_dim"]


def test_room_errors_say_what_to_do():
    with pytest.raises(ValueError, match="give a larger room or a shorter"):
        room_impulse_response(0.3, 4.0, room_dim=[3.0, 3.0, 2.5])
    with pytest.raises(ValueError, match="give a smaller room"):
        room_impulse_response(0.1, 1.0, room_dim=[20.0, 15.0, 5.0])


def test_grid_covers_both_ranges():
    grid = rir_grid(32, (0.1, 0.9), (0.5, 4.0))
    rt60s, distances = zip(*grid)
    assert len(set(distances)) == 32 and min(rt60s) > 0.1
    assert max(rt60s) < 0.9 and min(distances) > 0.5 and max(distances) < 4
    # Interleaved: the reverberant half meets near and far talkers alike.
    late = [d for r, d in grid if r > 0.5]
    assert min(late) < 1.2 and max(late) > 3.2


@pytest.fixture(scope="module")
def rir_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("rirs") / "rirs")
    prepare_rirs(folder, count=4, rt60_range=(0.1, 0.5))
    return folder


def test_prepared_rirs(rir_folder):
    with open(os.path.join(rir_folder, "rooms.json")) as f:
        rooms = json.load(f)
    assert sorted(rooms) == [f"rir_0{i}" for i in range(4)]
    for room in rooms.values():
        assert (
            abs(room["rt60"] - room["rt60_asked"]) <= 0.15 * room["rt60_asked"]
            or room["rt60_asked"] < 0.2
        )  # the driest rooms: within 0.03 s
        assert abs(room["rt60"] - room["rt60_asked"]) < 0.06
    with open(os.path.join(rir_folder, "prepare_params.json")) as f:
        assert json.load(f)["version"] == VERSION
    # Up to date: a second call rewrites nothing.
    stamp = os.path.getmtime(os.path.join(rir_folder, "rir_00.wav"))
    prepare_rirs(rir_folder, count=4, rt60_range=(0.1, 0.5))
    assert os.path.getmtime(os.path.join(rir_folder, "rir_00.wav")) == stamp


def test_preparation_removes_only_its_own_files(tmp_path):
    """An existing folder given as rir_folder keeps its other files; an
    earlier preparation's responses (here one more) are replaced."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "rir_set").mkdir()
    (folder / "rir_set" / "rir_00.wav").write_text("mine too")
    (folder / "room.wav").write_text("and this")
    prepare_rirs(str(folder), count=3, rt60_range=(0.1, 0.3))
    assert (folder / "rir_02.wav").is_file()
    # Other arguments: prepared again, its own stale response removed.
    prepare_rirs(str(folder), count=2, rt60_range=(0.1, 0.3))
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt",
        "prepare_params.json",
        "rir_00.wav",
        "rir_01.wav",
        "rir_set",
        "rirs.csv",
        "room.wav",
        "rooms.json",
    ]
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "rir_set" / "rir_00.wav").read_text() == "mine too"
    assert (folder / "room.wav").read_text() == "and this"
    with open(folder / "rooms.json") as f:
        assert sorted(json.load(f)) == ["rir_00", "rir_01"]


def test_another_preparations_folder_is_refused(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    stamp = json.dumps({"version": "synthetic-7", "seed": 1})
    (folder / "prepare_params.json").write_text(stamp)
    (folder / "rirs.csv").write_text("its own")
    with pytest.raises(ValueError, match="not this recipe's"):
        prepare_rirs(str(folder), count=2)
    assert (folder / "prepare_params.json").read_text() == stamp
    assert (folder / "rirs.csv").read_text() == "its own"


def test_disabled_preparation_writes_nothing(tmp_path):
    prepare_rirs(str(tmp_path / "rirs"), count=2, enabled=False)
    assert not os.path.exists(tmp_path / "rirs")


def test_add_reverb_reads_the_set(rir_folder, speech):
    reverb = AddReverb(
        os.path.join(rir_folder, "rirs.csv"),
        replacements={"rir_folder": rir_folder},
    )
    torch.manual_seed(0)
    batch = speech[None, :32000].float()
    wet = reverb(batch)
    assert wet.shape == batch.shape
    # Reverberation smears energy into the pauses between words.
    envelope = batch.abs().unfold(1, 320, 320).mean(-1)
    quiet = envelope < 0.05 * envelope.max()
    wet_envelope = wet.abs().unfold(1, 320, 320).mean(-1)
    assert wet_envelope[quiet].mean() > 2 * envelope[quiet].mean()


def test_resumable_reverb_draws_rooms_from_torch(rir_folder, speech):
    """The rooms follow torch's generator (which a checkpoint restores),
    not a data loader's position (which it does not): the same seed gives
    the same rooms whenever the module was built; the convolution is
    AddReverb's wherever AddReverb's does not wrap round."""
    csv = os.path.join(rir_folder, "rirs.csv")
    batch = speech[None, :32000].float()

    def wet_after(seed, warm_up_calls):
        reverb = ResumableAddReverb(
            csv, replacements={"rir_folder": rir_folder}
        )
        for _ in range(warm_up_calls):  # a fresh module, or a used one
            reverb(batch)
        torch.manual_seed(seed)
        return [reverb(batch) for _ in range(3)]

    first, again = wet_after(0, 0), wet_after(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], wet_after(1, 0)[0])
    assert not all(torch.equal(first[0], w) for w in first[1:])

    # One room in the set, and silence after the speech longer than the
    # room's response (so that AddReverb's circular convolution is linear):
    # the same output as SpeechBrain's AddReverb.
    one = os.path.join(rir_folder, "one.csv")
    with open(csv, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(one, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:2]) + "\n")
    ours = ResumableAddReverb(one, replacements={"rir_folder": rir_folder})
    theirs = AddReverb(one, replacements={"rir_folder": rir_folder})
    padded = torch.cat([batch, torch.zeros(1, 32000)], dim=1)
    assert torch.allclose(ours(padded), theirs(padded), atol=1e-5)
    # Without that silence AddReverb's tail wraps onto the start; ours not.
    start = slice(0, 4000)
    wrapped = (theirs(batch) - ours(batch))[:, start].abs().max()
    assert wrapped > 0.01 * batch.abs().max()


def test_resumable_reverb_convolves_linearly(tmp_path):
    """An impulse 10 samples before the end of 1000, in a room whose echo
    comes 100 samples after the direct path: the echo falls past the end
    and is cut. SpeechBrain 1.1.2's AddReverb puts it at sample 90."""
    rir = np.zeros(200, dtype=np.float32)
    rir[10], rir[110] = 1.0, 0.5
    sf.write(tmp_path / "room.wav", rir, 16000)
    csv = tmp_path / "rirs.csv"
    csv.write_text(
        "ID,duration,wav,wav_format,wav_opts\n"
        f"r0,0.0125,{tmp_path / 'room.wav'},wav,\n"
    )
    x = torch.zeros(1, 1000)
    x[0, 500] = x[0, 990] = 1.0
    ours, theirs = ResumableAddReverb(str(csv)), AddReverb(str(csv))
    for model, expected in (
        (ours, [500, 600, 990]),
        (theirs, [90, 500, 600, 990]),
    ):
        y = model(x)
        assert y.shape == x.shape
        assert (y[0].abs() > 1e-4).nonzero()[:, 0].tolist() == expected
    y = ours(x)
    assert abs(y[0, 600] - 0.5 * y[0, 500]) < 1e-4  # the echo (16-bit)
    assert abs(y.abs().mean() - x.abs().mean()) < 1e-6  # "avg" amplitude
    stereo = ours(x[..., None].repeat(1, 1, 2))  # (B, N, C)
    assert torch.allclose(stereo[..., 1], y, atol=1e-6)


NOISE_HZ = (300.0, 1000.0, 3000.0)  # one tone per noise clip


@pytest.fixture(scope="module")
def noise_csv(tmp_path_factory):
    """Three noise clips (tones at NOISE_HZ, 0.5-1 s) in AddNoise's CSV."""
    folder = tmp_path_factory.mktemp("noise")
    rows = ["ID,duration,wav,wav_format,wav_opts"]
    for i, hz in enumerate(NOISE_HZ):
        seconds = 0.5 + 0.25 * i  # shorter than the speech: padded
        t = np.arange(int(16000 * seconds)) / 16000
        path = folder / f"tone{i}.wav"
        sf.write(path, 0.3 * np.sin(2 * np.pi * hz * t), 16000)
        rows.append(f"tone{i},{seconds},$noise_root/tone{i}.wav,wav,")
    csv = folder / "noise.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(csv), {"noise_root": str(folder)}


def test_resumable_noise_draws_clips_from_torch(noise_csv):
    """The noise clips follow torch's generator (which a checkpoint
    restores), not a data loader's position (which it does not): the same
    seed gives the same noisy batches whenever the module was built and
    whatever it was called on before; AddNoise's SNR is kept, and each
    utterance gets a clip of its own, every clip in turn."""
    csv, replacements = noise_csv
    batch = 0.1 * torch.randn(3, 24000)
    lengths = torch.tensor([1.0, 0.8, 0.5])

    def noisy_after(seed, warm_up_sizes):
        noise = ResumableAddNoise(
            csv,
            replacements=replacements,
            snr_low=10,
            snr_high=10,
            pad_noise=True,
        )
        for size in warm_up_sizes:  # a fresh module, or a used one
            noise(torch.randn(size, 16000), torch.ones(size))
        torch.manual_seed(seed)
        return [noise(batch, lengths) for _ in range(4)]

    first = noisy_after(0, ())
    again = noisy_after(0, (2, 5, 3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], noisy_after(1, ())[0])

    # AddNoise's mixing: speech scaled by 1 - f, noise at 10 dB below it.
    f = 1 / (10 ** (10 / 20) + 1)
    heard = set()
    for noisy in first:
        added = noisy - (1 - f) * batch
        snr = 20 * torch.log10(rms((1 - f) * batch[:1]) / rms(added[:1]))
        assert abs(float(snr) - 10) < 0.5
        for utterance in added:  # which tone each utterance got
            peak = torch.fft.rfft(utterance[:16000]).abs().argmax()
            heard.add(float(peak))  # 1 Hz bins over one second
            assert float(peak) in NOISE_HZ
    assert heard == set(NOISE_HZ)


def test_resumable_noise_needs_a_csv():
    with pytest.raises(ValueError, match="csv_file"):
        ResumableAddNoise(None)


@pytest.mark.parametrize(
    "rooms,codecs", [(False, False), (True, False), (False, True)]
)
def test_yaml_switches(tmp_path, rooms, codecs):
    with open(os.path.join(ROOT, "hparams", "harmonifuse_tiny.yaml")) as f:
        hparams = load_hyperpyyaml(
            f,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path / "out"),
                "rooms": rooms,
                "codecs": codecs,
                "rir_count": 2,
            },
        )
    names = [
        type(a).__name__ for a in hparams["wav_augment"].augmentations.values()
    ]
    base = [
        "SpeedPerturb",
        "ResumableAddNoise",
        "RandAmp",
        "DropFreq",
        "DropChunk",
    ]
    base.append("TelephoneBand")
    extra = ["LowBitrateCodec", "TelephoneBand"]
    assert names == base + (extra if codecs else [])
    room_augment = hparams["room_augment"]
    assert room_augment.enabled == rooms and room_augment.share == 0.5
    assert type(room_augment.augmentation).__name__ == "ResumableAddReverb"
    hparams["rir_preparation"](rt60_range=(0.1, 0.2))
    assert os.path.isfile(tmp_path / "rirs" / "rirs.csv") == rooms


@pytest.mark.parametrize(
    "yaml_name", ["harmonifuse_tiny.yaml", "harmonifuse_tiny_3tasks.yaml"]
)
def test_tiny_yamls_draw_rooms_and_noises_resumably(tmp_path, yaml_name):
    """Both quick-start YAMLs draw rooms and noise clips from torch's
    generator, so that a resumed run with rooms on draws the same ones."""
    with open(os.path.join(ROOT, "hparams", yaml_name)) as f:
        hparams = load_hyperpyyaml(
            f, {"data_folder": str(tmp_path), "rooms": True}
        )
    assert type(hparams["add_reverb"]).__name__ == "ResumableAddReverb"
    assert type(hparams["add_noise"]).__name__ == "ResumableAddNoise"
    assert hparams["room_augment"].augmentation is hparams["add_reverb"]


def test_yaml_defaults_are_the_measured_recipe(tmp_path):
    """The quick-start's defaults are those docs/robustness.md measured:
    rooms on, codecs on with MP3 only (Opus costs 5 times as much), 10
    epochs, linear decay to the run's end."""
    with open(os.path.join(ROOT, "hparams", "harmonifuse_tiny.yaml")) as f:
        hparams = load_hyperpyyaml(f, {"data_folder": str(tmp_path)})
    assert hparams["rooms"] is True and hparams["codecs"] is True
    formats = [fmt for fmt, _, _ in hparams["low_bitrate_codec"].codecs]
    assert formats == ["MP3", "MP3"]
    assert hparams["room_augment"].enabled and hparams["room_share"] == 0.5
    assert hparams["number_of_epochs"] == 10
    scheduler = hparams["lr_scheduler"]
    assert type(scheduler).__name__ == "LinearWarmupScheduler"
    assert scheduler.num_training_steps is None  # train.py sets it


class Recorder(torch.nn.Module):
    """Marks the utterances it is given (adds 1) and counts its calls."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, waveforms):
        self.sizes.append(waveforms.shape[0])
        return waveforms + 1


def test_utterance_share_augments_each_drawn_utterance_alone():
    torch.manual_seed(0)
    recorder = Recorder()
    wavs, lens = torch.zeros(2000, 8), torch.rand(2000)
    out, out_lens = UtteranceShare(recorder, share=0.3)(wavs, lens)
    drawn = out[:, 0] == 1
    assert 0.27 < drawn.float().mean().item() < 0.33
    assert torch.equal(out[drawn], torch.ones(int(drawn.sum()), 8))
    assert torch.equal(out[~drawn], wavs[~drawn])
    assert recorder.sizes == [1] * int(drawn.sum())  # one room each
    assert out_lens is lens
    assert torch.equal(wavs, torch.zeros(2000, 8))  # the input is kept


def test_utterance_share_off_draws_nothing():
    wavs, lens = torch.randn(4, 100), torch.ones(4)
    for module in (
        UtteranceShare(Recorder(), share=0.5, enabled=False),
        UtteranceShare(Recorder(), share=0.0),
    ):
        state = torch.get_rng_state()
        out, out_lens = module(wavs, lens)
        assert out is wavs and out_lens is lens
        assert torch.equal(torch.get_rng_state(), state)
        assert module.augmentation.sizes == []


def test_utterance_share_errors_say_what_to_do():
    with pytest.raises(ValueError, match="share=1.5 is not a probability"):
        UtteranceShare(Recorder(), share=1.5)
    shorten = UtteranceShare(lambda w: w[:, :-1], share=1.0)
    with pytest.raises(ValueError, match=r"turned a \(1, 100\) waveform into"):
        shorten(torch.randn(2, 100), torch.ones(2))


def test_utterance_share_passes_lengths_to_those_that_take_them():
    seen = []

    def with_lengths(waveforms, lengths):
        seen.append(float(lengths[0]))
        return 2 * waveforms, lengths

    out, _ = UtteranceShare(with_lengths, share=1.0)(
        torch.ones(3, 10), torch.tensor([1.0, 0.5, 0.25])
    )
    assert seen == [1.0, 0.5, 0.25]
    assert torch.equal(out, 2 * torch.ones(3, 10))


def test_brain_applies_room_augment_first_and_only_in_training():
    """HarmoniFuseBrain._augment: room_augment, then wav_augment, at TRAIN;
    validation and test see the batch as it is."""
    from types import SimpleNamespace

    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedData

    from harmonifuse_sb.brain import HarmoniFuseBrain

    calls = []

    def room(wavs, lens):
        calls.append("room")
        return wavs + 1, lens

    def rest(wavs, lens):
        calls.append("wav")
        return wavs * 10, lens

    brain = object.__new__(HarmoniFuseBrain)
    brain.hparams = SimpleNamespace(room_augment=room, wav_augment=rest)
    sig = PaddedData(torch.zeros(2, 5), torch.ones(2))
    wavs, _ = brain._augment(sig, sb.Stage.TRAIN)
    assert calls == ["room", "wav"] and torch.equal(
        wavs, torch.full((2, 5), 10.0)
    )
    for stage in (sb.Stage.VALID, sb.Stage.TEST):
        wavs, _ = brain._augment(sig, stage)
        assert wavs is sig.data and calls == ["room", "wav"]
    brain.hparams = SimpleNamespace(room_augment=lambda w, n: (w[:1], n[:1]))
    with pytest.raises(ValueError, match="room_augment turned a batch of 2"):
        brain._augment(sig, sb.Stage.TRAIN)
