"""Recipe tests: ``train.py`` with the paper's YAML, end to end, offline.

As SpeechBrain tests its recipes: the real ``hparams/harmonifuse.yaml`` runs
in a subprocess with ``--debug`` on small fake LibriSpeech and IEMOCAP trees
(real layouts, synthesised audio), with a tiny random WavLM (layer-norm CNN,
as WavLM Large) and a tiny random Qwen2 LLM saved with ``save_pretrained``
and passed as local folders instead of hub ids; only the sizes, precision
and batch sizes are overridden. Also checks that every top-level key of every
YAML in ``hparams/`` is used, and that a YAML missing a key the recipe needs
fails with an error that names it.
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from speechbrain.utils.run_opts import RunOptions
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm
from tests.fake_corpora import (
    IEMOCAP_EMOTIONS,
    WORDS,
    make_iemocap_tree,
    make_librispeech_tree,
)
from tests.test_inference import read_wer_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS_DIR = os.path.join(REPO, "hparams")
PAPER_YAML = os.path.join(HPARAMS_DIR, "harmonifuse.yaml")
TINY_YAML = os.path.join(HPARAMS_DIR, "harmonifuse_tiny.yaml")
CODE_FILES = [os.path.join(REPO, "train.py")] + sorted(
    glob.glob(
        os.path.join(REPO, "harmonifuse_sb", "**", "*.py"), recursive=True
    )
    # the recipes that read a YAML of their own (encoder pre-training)
    + glob.glob(os.path.join(REPO, "recipes", "**", "*.py"), recursive=True)
)
TIMEOUT_S = 300

LIBRISPEECH_SPLITS = {
    "train-clean-100": 8,
    "train-clean-360": 4,
    "train-other-500": 4,
    "dev-clean": 4,
    "test-clean": 4,
    "test-other": 4,
}
# WavLM Large's layout (layer-norm CNN, stable layer norm, 320x downsampling
# to 50 frames/s) at toy size.
TINY_WAVLM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32),
    conv_stride=(5, 8, 8),
    conv_kernel=(10, 8, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)
# Words of the fake transcripts (lower-cased by the preparation), labels,
# and the Qwen chat-template strings of the YAML's prompt_format.
TINY_VOCAB = (
    [w.lower() for w in WORDS]
    + sorted(set(IEMOCAP_EMOTIONS.values()))
    + ["<|im_start|>", "<|im_end|>", "user", "assistant"]
)


@pytest.fixture(scope="module")
def recipe_inputs(tmp_path_factory):
    """Fake corpora and tiny models, shared by the recipe runs."""
    root = tmp_path_factory.mktemp("recipe")
    librispeech = make_librispeech_tree(
        str(root / "librispeech"), LIBRISPEECH_SPLITS
    )
    iemocap = make_iemocap_tree(str(root / "iemocap"))
    wavlm = str(root / "wavlm")
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**TINY_WAVLM)).save_pretrained(wavlm)
    Wav2Vec2FeatureExtractor(
        return_attention_mask=True, do_normalize=True
    ).save_pretrained(wavlm)
    llm = make_tiny_causal_lm(
        str(root / "llm"), vocab=TINY_VOCAB, hidden_size=32, num_layers=2
    )
    return {
        "root": root,
        "data_folder": librispeech.data_folder,
        "iemocap_folder": iemocap.data_folder,
        "iemocap": iemocap,
        "librispeech": librispeech,
        "wavlm_source": wavlm,
        "llm_source": llm,
    }


def paper_overrides(inputs, output_folder):
    """Command-line overrides that shrink the paper's YAML to toy size."""
    return [
        f"--data_folder={inputs['data_folder']}",
        f"--iemocap_folder={inputs['iemocap_folder']}",
        f"--wavlm_source={inputs['wavlm_source']}",
        f"--llm_source={inputs['llm_source']}",
        f"--output_folder={output_folder}",
        "--num_layers=2",
        "--llm_layers=2",
        "--enc_dim=32",
        "--llm_dim=32",
        "--llm_dtype=float32",  # bf16 weights need the GPU's autocast
        "--dynamic_batching={asr: {max_batch_length: 2.0, num_buckets: 2}, "
        "ser: {max_batch_length: 2.0, num_buckets: 2}}",
        "--eval_batch_size=4",
        "--num_workers=0",
        "--max_new_tokens=4",
        # Run options (command line beats the YAML's bf16).
        "--precision=fp32",
        "--eval_precision=fp32",
        "--debug",
        "--debug_batches=4",  # ratio 3:1 -> asr, asr, asr, ser
        "--noprogressbar",
    ]


def run_train(hparams_file, overrides):
    """Runs ``train.py`` in a subprocess, offline; returns the result."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "train.py", hparams_file, *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_paper_recipe_runs_end_to_end(recipe_inputs, tmp_path):
    """Trains, tests and exports with the paper's YAML (toy sizes)."""
    from harmonifuse_sb import HarmoniFuseSLM

    output = tmp_path / "results"
    # The WER checkpoint is exported too (the YAML's export key is
    # combined_error), so the exported folder must transcribe the test
    # files as the test stage did.
    overrides = paper_overrides(recipe_inputs, output) + [
        "--checkpoint_keys={asr: WER, ser: UA, export: WER}"
    ]
    result = run_train(PAPER_YAML, overrides)
    assert result.returncode == 0, result.stderr[-5000:]

    # One test line per test set, with the task's metrics.
    for name in ("test-clean", "test-other"):
        assert re.search(
            rf"^Test {name}: WER [\d.]+%  CER [\d.]+%$",
            result.stdout,
            re.M,
        ), result.stdout
    assert re.search(
        r"^Test iemocap_test: UA [\d.]+%  WA [\d.]+%  macro-F1 [\d.]+%$",
        result.stdout,
        re.M,
    ), result.stdout

    # Both tasks trained: the 4 debug batches at ratio 3:1 hold an SER one.
    with open(output / "train_log.txt", encoding="utf-8") as f:
        train_log = f.read()
    assert "train loss_asr" in train_log and "train loss_ser" in train_log
    # SpeechBrain took the YAML's run option (DDP needs it).
    with open(output / "log.txt", encoding="utf-8") as f:
        log = f.read()
    assert "Run option find_unused_parameters from hparams" in log
    # The 960 h default: the three training splits, concatenated.
    train_splits = ("train-clean-100", "train-clean-360", "train-other-500")
    n_train = sum(LIBRISPEECH_SPLITS[s] for s in train_splits)
    match = re.search(r"asr training set: (\d+) utterances.*from (\[.*\])", log)
    assert match and int(match[1]) == n_train, log[-3000:]
    assert all(f"{s}.json" in match[2] for s in train_splits)
    # Each parameter group at its YAML lr, scaled by the same schedule.
    groups = re.search(
        r"^epoch: 1, lr: \S+, lr_lora: (\S+), lr_adapter: (\S+), "
        r"lr_heads: (\S+) - ",
        train_log,
        re.M,
    )
    assert groups, train_log
    lora, adapter, heads = (float(v.rstrip(",")) for v in groups.groups())
    assert adapter / lora == pytest.approx(5e-4 / 1.5e-5, rel=0.02)
    assert heads == adapter
    # Each test set names the checkpoint of its task's own key.
    with open(output / "test_results.json", encoding="utf-8") as f:
        tested = json.load(f)["test_sets"]
    for name, key in (("test-clean", "WER"), ("iemocap_test", "UA")):
        checkpoint = tested[name]["checkpoint"]
        assert checkpoint["key"] == key and checkpoint["epoch"] in (1, 2)
    # The measured decoding rate reached the inference folder.
    rate = float(re.search(r"Length-aware decoding: ([\d.]+) tokens", log)[1])

    # The preparation ran with the YAML's splits and fold.
    manifests = output / "save" / "manifests"
    for name in LIBRISPEECH_SPLITS:
        assert (manifests / f"{name}.json").is_file()
    for split in ("train", "valid", "test"):
        assert (manifests / f"iemocap_{split}.json").is_file()

    # The inference folder: only trainable weights, LoRA but no base LLM.
    export = output / "inference"
    for name in ("hyperparams.yaml", "model.ckpt", "label_encoder.txt"):
        assert (export / name).is_file(), name
    state = torch.load(export / "model.ckpt", map_location="cpu")
    llm_keys = [k for k in state if k.startswith("speech_lm.model.")]
    lora_keys = [k for k in llm_keys if ".lora_" in k]
    assert llm_keys == lora_keys, set(llm_keys) - set(lora_keys)
    # lora_A and lora_B of every linear layer (q, k, v, o, gate, up, down;
    # lora_target_modules) in each of the 2 layers.
    assert len(lora_keys) == 2 * 7 * 2, lora_keys
    assert not [k for k in state if k.startswith("encoder.")]  # frozen
    for prefix in ("fusion.", "gate.", "projector.", "heads.ser."):
        assert any(k.startswith(prefix) for k in state), prefix
    # LoRA B starts at zero: non-zero means the adapters were trained.
    lora_b = [state[k] for k in lora_keys if ".lora_B." in k]
    assert all(w.abs().sum() > 0 for w in lora_b)
    assert float(state["decode_tokens_per_second"]) == pytest.approx(
        rate, abs=0.01
    )

    # The folder loads on its own and runs both tasks (VAD off: the fake
    # corpus's audio is not speech, and the VAD would say so).
    slm = HarmoniFuseSLM.from_hparams(
        source=str(export), savedir=str(tmp_path / "pretrained"), vad=False
    )
    _, hyps = read_wer_report(str(output / "wer_test-clean.txt"))
    test_clean = recipe_inputs["librispeech"].utterances["test-clean"]
    assert sorted(hyps) == sorted(test_clean)
    for utt_id, utt in test_clean.items():
        assert slm.transcribe_file(utt["path"]).upper().split() == hyps[utt_id]
    assert any(hyps.values())  # not all empty: the words are compared
    wav = next(iter(recipe_inputs["iemocap"].utterances.values()))["path"]
    label, _ = slm.classify_file(wav)
    assert label in ("neutral", "happy", "sad", "angry")
    loaded = slm.model.state_dict()
    for key in lora_keys:
        assert torch.equal(loaded[key].cpu(), state[key]), key


def without_key(hparams_file, key, folder):
    """Copies a YAML without its top-level ``key`` (and the indented lines
    of its value); returns the copy."""
    lines, inside = [], False
    with open(hparams_file, encoding="utf-8") as f:
        for ln in f:
            if ln.startswith(f"{key}:"):
                inside = True
            elif inside and not ln.startswith(" "):
                inside = False
            if not inside:
                lines.append(ln)
    path = os.path.join(folder, os.path.basename(hparams_file))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return path


def test_missing_manifest_key_is_named(recipe_inputs, tmp_path):
    """train.py stops with a KeyError that names the task's missing key."""
    with open(PAPER_YAML, encoding="utf-8") as f:
        text = f.read()
    entry = "        train: !ref <asr_train_manifest>\n"
    assert entry in text  # the asr task's training manifest
    yaml_file = tmp_path / os.path.basename(PAPER_YAML)
    yaml_file.write_text(text.replace(entry, "", 1), encoding="utf-8")
    overrides = paper_overrides(recipe_inputs, tmp_path / "results")
    result = run_train(str(yaml_file), overrides)
    assert result.returncode != 0
    # SpeechBrain's exception hook logs the traceback to stdout.
    output = result.stdout + result.stderr
    assert re.search(r"KeyError: .*tasks\.asr\.train", output), output[-3000:]


def test_missing_referenced_key_is_named(tmp_path):
    """A key that the YAML itself references fails at load, named."""
    yaml_file = without_key(TINY_YAML, "asr_train_manifest", str(tmp_path))
    result = run_train(yaml_file, [f"--output_folder={tmp_path}/results"])
    assert result.returncode != 0
    assert "asr_train_manifest" in result.stderr.splitlines()[-1], result.stderr


# ---------------------------------------------------------------- key usage

TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]\w*)\s*:", re.M)
# hparams["key"], hparams.get("key", hparams[f"{task}_key"],
# getattr(self.hparams, "key", hparams.key
CODE_KEY = re.compile(
    r"""hparams(?:\[|\.get\(|,\s*)\s*(f?)["']([^"']+)["']"""
    r"|hparams\.(\w+)"
)


def code_key_patterns(paths):
    """Regexes of the keys that code reads from ``hparams``.

    An f-string key (``hparams[f"{task}_train_manifest"]``) becomes a
    pattern in which each ``{...}`` matches any word.
    """
    patterns = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for is_f, quoted, attribute in CODE_KEY.findall(text):
            if attribute:
                patterns.add(re.escape(attribute))
            elif is_f:
                parts = re.split(r"\{[^}]*\}", quoted)
                patterns.add(r"\w+".join(re.escape(p) for p in parts))
            else:
                patterns.add(re.escape(quoted))
    return [re.compile(p) for p in patterns]


def unused_keys(yaml_file, code_patterns):
    """Top-level keys of ``yaml_file`` that nothing uses.

    A key is used when the same YAML references it (``<key>``,
    ``<key[sub]>``), when the code reads it (``code_patterns``), when it is
    a SpeechBrain run option (``Brain`` reads those from the hparams), or
    when it starts with ``__`` (evaluated for its side effect at load).
    """
    with open(yaml_file, encoding="utf-8") as f:
        text = f.read()
    run_options = set(RunOptions().as_dict())
    unused = []
    for key in TOP_LEVEL_KEY.findall(text):
        if key.startswith("__") or key in run_options:
            continue
        if re.search(rf"<{re.escape(key)}[>\[]", text):
            continue
        if any(p.fullmatch(key) for p in code_patterns):
            continue
        unused.append(key)
    return unused


@pytest.mark.parametrize(
    "yaml_file",
    sorted(glob.glob(os.path.join(HPARAMS_DIR, "*.yaml"))),
    ids=os.path.basename,
)
def test_every_top_level_key_is_used(yaml_file):
    assert unused_keys(yaml_file, code_key_patterns(CODE_FILES)) == []


def test_key_usage_check_finds_unused_keys(tmp_path):
    """The check above is not vacuous: it sees keys and flags unused ones."""
    patterns = code_key_patterns(CODE_FILES)
    assert any(p.fullmatch("tasks") for p in patterns)
    assert not any(p.fullmatch("not_a_key") for p in patterns)
    yaml_file = tmp_path / "check.yaml"
    yaml_file.write_text(
        "seed: 1\n"
        "unused_size: 3\n"
        "used_size: 4\n"
        "precision: fp32\n"
        "model: !new:torch.nn.Linear\n"
        "    in_features: !ref <used_size>\n"
        "    out_features: !ref <seed>\n",
        encoding="utf-8",
    )
    assert unused_keys(str(yaml_file), patterns) == ["unused_size"]
