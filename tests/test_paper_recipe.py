"""The paper recipe's choices, each tested alone (issue 21).

The 960 h training splits (prepared and concatenated), checkpoints kept and
used per task, the optimiser's parameter groups of
``hparams/harmonifuse.yaml`` (lrs, weight decay, clipping), length-aware
decoding (the token cap follows the duration; the repetition guard), and
the five-fold IEMOCAP command. ``tests/test_recipes.py`` runs the whole
recipe end to end on fake corpora.
"""

import json
import os

import pytest
import speechbrain as sb
import torch
import yaml
from speechbrain.nnet.schedulers import NoamScheduler
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.train_logger import FileTrainLogger

from harmonifuse_sb import folds
from harmonifuse_sb.brain import HarmoniFuseBrain
from harmonifuse_sb.dataio import ManifestError, load_manifest
from harmonifuse_sb.decoding import (
    LengthLoopGuard,
    measure_tokens_per_second,
    token_caps,
    trim_loop,
)
from harmonifuse_sb.lobes import (
    ConformerSpeechEncoder,
    PromptAdaptiveFusion,
    SpeechLM,
    SpeechProjector,
    TaskGate,
)
from harmonifuse_sb.lobes.speech_lm import make_tiny_causal_lm
from harmonifuse_sb.metrics import checkpoint_key
from harmonifuse_sb.model import HarmoniFuse
from recipes.LibriSpeech import librispeech_prepare as prep
from tests.fake_corpora import make_librispeech_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_YAML = os.path.join(REPO, "hparams", "harmonifuse.yaml")


def paper_yaml_value(key):
    """A plain top-level value of the paper's YAML (tags left out)."""
    with open(PAPER_YAML, encoding="utf-8") as f:
        root = yaml.compose(f)
    node = {k.value: v for k, v in root.value}[key]
    return yaml.safe_load(yaml.serialize(node))


# ---------------------------------------------------------------- data


def test_960h_default_prepares_and_concatenates(tmp_path):
    assert paper_yaml_value("asr_train_splits") == list(prep.TRAIN_960H)
    sizes = {"train-clean-100": 3, "train-clean-360": 2, "train-other-500": 4}
    corpus = make_librispeech_tree(
        str(tmp_path / "ls"), dict(sizes, **{"dev-clean": 2})
    )
    save = str(tmp_path / "manifests")
    written = prep.prepare_librispeech(
        corpus.data_folder,
        save,
        splits=["dev-clean"],
        train_splits=paper_yaml_value("asr_train_splits"),
    )
    assert list(written) == [*prep.TRAIN_960H, "dev-clean"]
    paths = prep.manifest_paths(save, prep.TRAIN_960H)
    data = load_manifest(paths, "asr", corpus.data_folder)
    expected = []
    for path, split in zip(paths, prep.TRAIN_960H):
        with open(path, encoding="utf-8") as f:
            ids = list(json.load(f))
        assert sorted(ids) == sorted(corpus.utterances[split])
        expected += ids
    assert list(data.data_ids) == expected  # in order, split after split
    assert len(data) == sum(sizes.values()) == 9
    # One manifest (a string) loads as before.
    assert len(load_manifest(paths[1], "asr", corpus.data_folder)) == 2


def test_missing_training_split_is_named(tmp_path):
    corpus = make_librispeech_tree(
        str(tmp_path / "ls"), {"train-clean-100": 2, "dev-clean": 2}
    )
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_librispeech(
            corpus.data_folder,
            str(tmp_path / "m"),
            splits=["dev-clean"],
            train_splits=prep.TRAIN_960H,
        )
    message = str(err.value)
    missing = os.path.join(corpus.corpus_dir, "train-clean-360")
    assert missing in message
    assert "--asr_train_splits=[train-clean-100]" in message


def test_repeated_id_across_manifests_is_named(tmp_path):
    entry = {"wav": "{data_root}/a.flac", "duration": 1.0, "wrd": "a"}
    paths = []
    for name in ("one.json", "two.json"):
        paths.append(str(tmp_path / name))
        with open(paths[-1], "w", encoding="utf-8") as f:
            json.dump({"utt1": entry, f"only-{name}": entry}, f)
    with pytest.raises(ManifestError, match="'utt1' is in both .*one.json"):
        load_manifest(paths, "asr", ".")


def test_tiny_llm_vocabulary_from_a_list_of_manifests(tmp_path):
    """A list of training manifests feeds the quick-start's LLM too."""
    from harmonifuse_sb.tokenizer import prepare_tiny_llm

    paths = []
    for name, words in (("a.json", "alpha beta"), ("b.json", "gamma delta")):
        paths.append(str(tmp_path / name))
        with open(paths[-1], "w", encoding="utf-8") as f:
            json.dump({name: {"wrd": words}}, f)
    config = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1)
    config.update(num_attention_heads=2, num_key_value_heads=1)
    folder = prepare_tiny_llm(str(tmp_path / "llm"), paths, ["hi"], config)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in ("alpha beta", "gamma delta"):  # one token per word
        assert len(tokenizer(text)["input_ids"]) == 2, text


# ---------------------------------------------------------------- checkpoints


def valid_brain(tmp_path, checkpoint_keys):
    """A brain whose validation stats are set by the test, on one weight."""
    model = torch.nn.Linear(1, 1, bias=False)
    hparams = {
        "checkpoint_keys": checkpoint_keys,
        "keep_checkpoints": 1,
        "train_logger": FileTrainLogger(str(tmp_path / "log.txt")),
    }
    checkpointer = Checkpointer(str(tmp_path / "save"), {"model": model})
    brain = HarmoniFuseBrain(
        modules={"model": model},
        opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=checkpointer,
    )
    brain.init_optimizers()
    brain.train_stats = {"loss": 0.0}
    brain._gather_eval_results = lambda: 0.0
    return brain, model


# epoch -> (WER %, UA): epoch 1 is ASR's best, 2 SER's and the combined
# key's (0.25 against 0.30 and 0.35), 3 the latest.
EPOCHS = {1: (10.0, 0.5), 2: (20.0, 0.7), 3: (30.0, 0.6)}


def run_validations(brain, model):
    for epoch, (wer, ua) in EPOCHS.items():
        model.weight.data.fill_(float(epoch))  # which epoch a load restores
        combined = 0.5 * wer / 100 + 0.5 * (1 - ua)
        stats = {"WER": wer, "UA": ua, "combined_error": combined}
        brain._stage_stats = lambda stage, loss, stats=stats: dict(stats)
        brain.on_stage_end(sb.Stage.VALID, 0.0, epoch=epoch)
    kept = brain.checkpointer.list_checkpoints()
    return sorted(ckpt.meta["epoch"] for ckpt in kept)


def test_per_task_checkpoints_are_kept_and_used(tmp_path):
    keys = paper_yaml_value("checkpoint_keys")
    assert keys == {"asr": "WER", "ser": "UA", "export": "combined_error"}
    brain, model = valid_brain(tmp_path, keys)
    assert run_validations(brain, model) == [1, 2, 3]
    for task, epoch in (("asr", 1), ("ser", 2), ("export", 2)):
        key = checkpoint_key(keys, task)
        model.weight.data.zero_()
        brain.on_evaluate_start(**key)  # what evaluate_set loads
        assert model.weight.item() == float(epoch), task
        record = brain.describe_checkpoint(key)
        assert record["epoch"] == epoch
        assert record["key"] == keys[task]
    assert brain.describe_checkpoint(checkpoint_key(keys, "ser")) == {
        "key": "UA",
        "mode": "max",
        "value": 0.7,
        "epoch": 2,
        "folder": os.path.basename(
            brain.checkpointer.find_checkpoint(max_key="UA").path
        ),
    }


def test_test_set_without_its_checkpoint_is_named(tmp_path, caplog):
    """No checkpoint has SER's key (macro_F1 here): nothing is loaded, a
    warning names the test set, task and key, and the record is what the
    weights are, the checkpoint the ASR test set loaded, not None."""
    keys = {"asr": "WER", "ser": "macro_F1", "export": "macro_F1"}
    brain, model = valid_brain(tmp_path, keys)
    run_validations(brain, model)

    def evaluate(loader, min_key=None, max_key=None):
        brain.on_evaluate_start(min_key=min_key, max_key=max_key)
        brain.test_stats = {"weight": model.weight.item()}

    brain.evaluate = evaluate
    # Before any test set: the weights at the end of training (epoch 3).
    with caplog.at_level("WARNING", logger="harmonifuse_sb.brain"):
        assert brain.evaluate_set(None, "first", "ser") == {"weight": 3.0}
    assert brain.test_checkpoint is None
    assert "first (task ser)" in caplog.text
    assert "max key 'macro_F1'" in caplog.text
    assert "the end of training" in caplog.text
    caplog.clear()
    assert brain.evaluate_set(None, "test-clean", "asr") == {"weight": 1.0}
    asr = brain.test_checkpoint
    assert (asr["epoch"], asr["key"]) == (1, "WER")
    assert "no checkpoint" not in caplog.text
    with caplog.at_level("WARNING", logger="harmonifuse_sb.brain"):
        assert brain.evaluate_set(None, "iemocap_test", "ser") == {
            "weight": 1.0
        }
    assert brain.test_checkpoint == asr  # what is loaded: ASR's epoch 1
    assert "iemocap_test (task ser)" in caplog.text
    assert f"checkpoint loaded before (epoch 1, best WER, {asr['folder']})" in (
        caplog.text
    )
    # The export's load (train.py) says so too.
    caplog.clear()
    with caplog.at_level("WARNING", logger="harmonifuse_sb.brain"):
        assert brain.recover_checkpoint("export") == asr
    assert "export: no checkpoint" in caplog.text
    # Training again: the weights are no checkpoint's any more.
    brain.on_fit_start = HarmoniFuseBrain.on_fit_start.__get__(brain)
    brain.checkpointer.recover_if_possible = lambda *a, **k: None
    brain.on_fit_start()
    assert brain.loaded_checkpoint is None


def test_combined_key_alone_deletes_the_asr_best(tmp_path):
    """Without checkpoint_keys (the quick-start YAML): one key, as before;
    the epoch best for ASR is gone, as issue 21 says."""
    brain, model = valid_brain(tmp_path, None)
    assert run_validations(brain, model) == [2, 3]


def test_unknown_checkpoint_key_is_named():
    with pytest.raises(ValueError, match="asr: 'BLEU' is not a validation"):
        checkpoint_key({"asr": "BLEU"}, "asr")


# ---------------------------------------------------------------- groups


class PaperNamed(torch.nn.Module):
    """Parameters named as in HarmoniFuse: LoRA, projector, fusion, gate,
    SER head."""

    def __init__(self, extra=False):
        super().__init__()
        self.projector = torch.nn.Linear(3, 3)
        self.fusion = torch.nn.Linear(3, 3)
        self.gate = torch.nn.Linear(3, 3)
        self.speech_lm = torch.nn.Module()
        self.heads = torch.nn.ModuleDict(
            {"ser": torch.nn.Sequential(torch.nn.Linear(3, 2))}
        )
        self.speech_lm.model = torch.nn.ModuleDict(
            {"lora_A": torch.nn.Linear(3, 2, bias=False)}
        )
        if extra:
            self.speech_lm.embed = torch.nn.Linear(3, 3)


def group_brain(model, clip=1.0, specs=None):
    hparams = {
        "param_groups": specs or paper_yaml_value("param_groups"),
        "lr_scheduler": NoamScheduler(lr_initial=1e-4, n_warmup_steps=10),
    }
    brain = HarmoniFuseBrain(
        modules={"model": model},
        opt_class=lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.01),
        hparams=hparams,
        run_opts={"device": "cpu", "max_grad_norm": clip},
    )
    brain.init_optimizers()
    return brain


def test_param_groups_get_their_lrs():
    brain = group_brain(PaperNamed())
    groups = {g["name"]: g for g in brain.optimizer.param_groups}
    assert sorted(groups) == ["adapter", "heads", "lora"]  # encoder frozen
    assert [len(groups[n]["params"]) for n in ("lora", "adapter", "heads")] == [
        1,
        6,
        2,
    ]
    assert groups["lora"]["lr"] == 1.5e-5 and groups["adapter"]["lr"] == 5e-4
    assert groups["lora"]["weight_decay"] == 0.0
    assert groups["heads"]["weight_decay"] == 0.01
    # The Noam schedule's lr for `lr` (1e-4), scaled per group.
    for step in (1, 2):
        brain.on_fit_batch_start(None, should_step=True)
        noam = 1e-4 * 10**0.5 * step * 10**-1.5
        for name, peak in (("lora", 1.5e-5), ("adapter", 5e-4)):
            assert groups[name]["lr"] == pytest.approx(noam * peak / 1e-4)


def test_resume_takes_the_yamls_group_options(tmp_path, caplog):
    """A save and recover round trip after param_groups changed in the
    YAML: the optimiser's state comes back, the YAML's lr ratio and weight
    decay stay (the checkpoint's are dropped, with a warning)."""
    model = PaperNamed()
    saved = group_brain(model)
    checkpointer = Checkpointer(str(tmp_path / "save"))
    checkpointer.add_recoverable("optimizer", saved.optimizer)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    saved.optimizer.step()
    checkpointer.save_checkpoint()

    specs = paper_yaml_value("param_groups")
    specs["lora"]["lr"] = 3e-5  # was 1.5e-5
    specs["heads"]["weight_decay"] = 0.05  # was 0.01
    resumed = group_brain(model, specs=specs)
    checkpointer = Checkpointer(str(tmp_path / "save"))
    checkpointer.add_recoverable("optimizer", resumed.optimizer)
    with caplog.at_level("WARNING", logger="harmonifuse_sb.brain"):
        assert checkpointer.recover_if_possible() is not None
    groups = {g["name"]: g for g in resumed.optimizer.param_groups}
    assert resumed.optimizer.state  # Adam's moments came back
    assert groups["lora"]["lr_scale"] == pytest.approx(0.3)
    assert groups["adapter"]["lr_scale"] == pytest.approx(5.0)
    assert groups["heads"]["weight_decay"] == 0.05
    assert groups["lora"]["weight_decay"] == 0.0
    assert "'lora' lr_scale is 0.3" in caplog.text
    assert "'heads' weight_decay is 0.05" in caplog.text
    assert "'adapter'" not in caplog.text  # unchanged: nothing logged
    resumed.on_fit_batch_start(None, should_step=True)
    noam = 1e-4 * 10**0.5 * 10**-1.5
    assert groups["lora"]["lr"] == pytest.approx(noam * 0.3)


def test_clipping_covers_every_group():
    model = PaperNamed()
    brain = group_brain(model, clip=1.0)
    for param in model.parameters():
        param.grad = torch.full_like(param, 100.0)
    seen = []

    def step(*args, **kwargs):
        grads = [
            p.grad for g in brain.optimizer.param_groups for p in g["params"]
        ]
        seen.append(
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        )

    brain.optimizer.step = step
    brain.optimizers_step()
    assert seen[0] == pytest.approx(1.0, rel=1e-5)


def test_unmatched_parameter_is_named():
    with pytest.raises(ValueError, match=r"speech_lm\.embed\.weight"):
        group_brain(PaperNamed(extra=True))


def test_lora_covers_the_mlp_projections():
    targets = paper_yaml_value("lora_target_modules")
    assert {"gate_proj", "up_proj", "down_proj"} <= set(targets)


# ---------------------------------------------------------------- decoding


def test_token_cap_follows_duration():
    caps = token_caps(torch.tensor([0.5, 2.0, 4.0, 100.0]), 3.0, 2, 40)
    assert caps.tolist() == [4, 8, 14, 40]


def test_measured_rate_is_a_high_quantile():
    texts = ["a"] * 99 + ["a b c d e f g h i j"]  # one fast speaker
    rate = measure_tokens_per_second(
        texts, [1.0] * 100, lambda t: [s.split() for s in t], quantile=0.99
    )
    assert 1.0 < rate < 10.0  # interpolated between the two rates
    with pytest.raises(ValueError, match="duration 0.0"):
        measure_tokens_per_second(["a"], [0.0], lambda t: [[1]])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    slm = SpeechLM(
        make_tiny_causal_lm(str(tmp_path_factory.mktemp("lm"))),
        num_classes=2,
        freeze=False,
    )
    enc = ConformerSpeechEncoder(
        n_mels=20, d_model=16, num_layers=2, nhead=2, d_ffn=32
    )
    return HarmoniFuse(
        enc,
        PromptAdaptiveFusion(2, 32),
        TaskGate(16, 32),
        SpeechProjector(16, 32),
        slm,
        prompts={"asr": "transcribe", "ser": "emotion"},
        emotions=["a", "b"],
        max_new_tokens=30,
        length_cap={"tokens_per_second": 4.0, "margin": 1},
    ).eval()


@pytest.mark.parametrize("num_beams", [1, 2])
def test_each_utterance_stops_at_its_cap(tiny_model, num_beams):
    """In transformers' generate, EOS suppressed: every transcript is as
    long as its utterance's cap (greedy and beam search)."""
    wavs, lens = torch.randn(3, 16000), torch.tensor([1.0, 0.5, 0.25])
    feats = tiny_model.task_features(
        *tiny_model.encode_speech(wavs, lens), "asr"
    )
    durations = lens * 1.0  # seconds
    caps = token_caps(durations, 4.0, 1, 30)
    assert caps.tolist() == [5, 3, 2]
    eos = tiny_model.speech_lm.eos_id
    guard = LengthLoopGuard(caps, eos, num_beams)
    ids = tiny_model.speech_lm.generate(
        feats["prompt_ids"],
        feats["speech"],
        feats["speech_lens"],
        max_new_tokens=int(caps.max()) + 1,
        num_beams=num_beams,
        logits_processor=[guard],
        suppress_tokens=[eos],
    )
    assert [len(seq) for seq in ids] == caps.tolist()


def test_transcribe_caps_by_duration(tiny_model, monkeypatch):
    seen = {}

    def spy(prompt_ids, speech, lens, max_new_tokens, num_beams, **kwargs):
        seen["max_new_tokens"] = max_new_tokens
        seen["caps"] = kwargs["logits_processor"][-1].caps.tolist()
        return [[] for _ in prompt_ids]

    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.5])
    feats = tiny_model.task_features(
        *tiny_model.encode_speech(wavs, lens), "asr"
    )
    monkeypatch.setattr(tiny_model.speech_lm, "generate", spy)
    tiny_model.transcribe(feats, durations=torch.tensor([1.0, 0.5]))
    assert seen == {"max_new_tokens": 6, "caps": [5, 3]}
    tiny_model.transcribe(feats, durations=torch.tensor([100.0, 0.5]))
    assert seen == {"max_new_tokens": 30, "caps": [30, 3]}  # the fixed cap
    # The rate is a buffer: checkpoints and the inference folder keep it.
    assert float(tiny_model.state_dict()["decode_tokens_per_second"]) == 4.0


def test_repetition_guard_ends_and_trims_a_loop():
    guard = LengthLoopGuard(
        torch.tensor([50]), eos_id=0, max_ngram=3, max_repeats=3
    )
    loop = torch.tensor([[9, 5, 6, 7, 5, 6, 7, 5, 6, 7]])
    scores = torch.zeros(1, 10)
    scores[0, 5] = 1.0
    assert guard(loop, scores).argmax().item() == 0
    assert guard(loop[:, :-1], scores).argmax().item() == 5  # 2.67 copies
    assert trim_loop(loop[0].tolist(), 3, 3) == [9, 5, 6, 7]
    # "had had" and the like are no loop.
    assert trim_loop([4, 4, 8], 3, 3) == [4, 4, 8]


# ---------------------------------------------------------------- folds

FAKE_TRAIN = """
import json, os, re, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if "=" in a)
fold = int(args["iemocap_fold"])
os.makedirs(args["output_folder"], exist_ok=True)
ua, wa = 0.5 + 0.05 * fold, 0.6 + 0.01 * fold
if args.get("seed") == "2":  # another seed, other numbers
    ua += 0.1
stats = {"UA": ua, "WA": wa, "macro_F1": ua}
sets = {"iemocap_test": {"task": "ser", "stats": stats,
        "checkpoint": {"key": "UA", "mode": "max", "value": ua,
                       "epoch": fold, "folder": "x"}},
        "test-clean": {"task": "asr", "stats": {"WER": 3.0 + fold, "CER": 1.0}}}
with open(os.path.join(args["output_folder"], "test_results.json"), "w") as f:
    json.dump({"tasks": ["asr", "ser"], "test_sets": sets}, f)
"""


def test_five_fold_command_reports_five_folds(tmp_path, capsys):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN, encoding="utf-8")
    output = tmp_path / "folds"
    argv = [
        PAPER_YAML,
        f"--output_folder={output}",
        f"--train-script={script}",
        "--data_folder=/data",
    ]
    assert folds.main(argv) == 0
    report = json.loads((output / folds.REPORT_JSON).read_text())
    ser = report["test_sets"]["iemocap_test"]
    assert sorted(ser["folds"]) == ["1", "2", "3", "4", "5"]
    uas = [100 * (0.5 + 0.05 * k) for k in range(1, 6)]
    assert [ser["folds"][str(k)]["UA"] for k in range(1, 6)] == pytest.approx(
        uas
    )
    assert ser["UA"]["mean"] == pytest.approx(65.0)
    assert ser["UA"]["std"] == pytest.approx(7.9057, abs=1e-4)  # n - 1
    assert ser["WA"]["mean"] == pytest.approx(63.0)
    assert report["test_sets"]["test-clean"]["WER"]["mean"] == pytest.approx(6)
    markdown = (output / folds.REPORT_MD).read_text()
    assert "| mean ± std | 65.00 ± 7.91 | 63.00 ± 1.58 |" in markdown
    assert "| 3 | 65.00 | 63.00 | 65.00 | epoch 3 (max UA) |" in markdown
    # Finished folds are kept; with none left to run, the commands for a
    # scheduler are none and the same command writes the report (what is
    # not a command goes to stderr: the output is a file of jobs).
    capsys.readouterr()
    (output / folds.REPORT_MD).unlink()
    (output / folds.REPORT_JSON).unlink()
    assert folds.main(argv + ["--print-commands"]) == 0
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.count("finished before, kept") == 5
    assert "| mean ± std | 65.00 ± 7.91 | 63.00 ± 1.58 |" in printed.err
    assert (output / folds.REPORT_MD).read_text() == markdown
    assert json.loads((output / folds.REPORT_JSON).read_text()) == report


SLOW_FAKE_TRAIN = (
    FAKE_TRAIN
    + """
import time
start = time.time()
time.sleep(1.5)
with open(os.path.join(args["output_folder"], "ran.json"), "w") as f:
    json.dump({"start": start, "end": time.time(),
               "device": args.get("device")}, f)
"""
)


def test_folds_start_on_every_gpu_at_once(tmp_path, monkeypatch):
    """The folds share nothing: with two devices, folds 1 and 2 run at
    once (fold 1 does not run alone first, as an ablation's first run)."""
    from harmonifuse_sb import ablation

    monkeypatch.setattr(ablation.runner, "POLL_S", 0.05)
    script = tmp_path / "fake_train.py"
    script.write_text(SLOW_FAKE_TRAIN, encoding="utf-8")
    output = tmp_path / "folds"
    argv = [
        PAPER_YAML,
        f"--output_folder={output}",
        f"--train-script={script}",
        "--folds",
        "1",
        "2",
        "--devices",
        "cuda:0",
        "cuda:1",
    ]
    assert folds.main(argv) == 0
    ran = [
        json.loads(next((output / f"fold{k}").rglob("ran.json")).read_text())
        for k in (1, 2)
    ]
    assert ran[0]["start"] < ran[1]["end"] and ran[1]["start"] < ran[0]["end"]
    assert sorted(r["device"] for r in ran) == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--jobs", "0"], "--jobs must be at least 1, got 0"),
        (["--jobs", "2", "--devices", "cuda:0"], "give one device per job"),
    ],
)
def test_folds_check_the_options_shared_with_the_ablation(
    tmp_path, capsys, extra, message
):
    """folds and the ablation study check --jobs and --devices alike
    (ablation.add_study_arguments / check_study_arguments)."""
    from harmonifuse_sb import ablation

    for parse in (folds.parse_args, ablation.parse_args):
        with pytest.raises(SystemExit) as exit_:
            parse([PAPER_YAML, "--print-commands", *extra])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    args, _ = folds.parse_args([PAPER_YAML])
    assert args.output_folder == os.path.join("results", "folds", "harmonifuse")


def test_fold_folders_name_the_seed(tmp_path, capsys):
    """--seed 1 then --seed 2: the second runs its own folds (the first's
    are not kept for it) and reports its own numbers; a kept fold run with
    other arguments is named with a warning, not the same on another
    device."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN, encoding="utf-8")
    output = tmp_path / "folds"
    argv = [
        PAPER_YAML,
        f"--output_folder={output}",
        f"--train-script={script}",
        "--folds",
        "1",
        "2",
    ]
    assert folds.main(argv + ["--seed", "1", "--devices", "cuda:0"]) == 0
    assert (output / "fold1" / "1" / "test_results.json").is_file()
    capsys.readouterr()
    assert folds.main(argv + ["--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "finished before, kept" not in out
    report = json.loads((output / folds.REPORT_JSON).read_text())
    assert report["seed"] == 2
    ser = report["test_sets"]["iemocap_test"]
    assert ser["folds"]["1"]["UA"] == pytest.approx(65.0)  # seed 2's
    assert ser["folds"]["2"]["UA"] == pytest.approx(70.0)
    # The same again (seed 1 ran on cuda:0): kept, no warning.
    assert folds.main(argv + ["--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("fold 1 seed 1: finished before, kept") == 1
    assert "warning" not in out
    report = json.loads((output / folds.REPORT_JSON).read_text())
    assert report["test_sets"]["iemocap_test"]["folds"]["1"]["UA"] == (
        pytest.approx(55.0)
    )
    # Other arguments: the kept run is named.
    assert folds.main(argv + ["--seed", "1", "--number_of_epochs=3"]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: it was run as") == 2
    assert "--number_of_epochs=3" in out
    # Without --seed: the YAML's (1986) names the folder.
    assert folds.main(argv + ["--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"--output_folder={output}/fold1/1986")


def test_fold_commands_one_per_gpu(tmp_path, capsys):
    argv = [PAPER_YAML, f"--output_folder={tmp_path}", "--print-commands"]
    assert folds.main(argv + ["--devices", "cuda:0", "cuda:1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    devices = ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]  # in turn
    for k, (line, device) in enumerate(zip(lines, devices), 1):
        assert f"--iemocap_fold={k} " in line
        assert f"--output_folder={tmp_path}/fold{k}/1986 " in line
        assert line.endswith(f" --device={device}")
        assert line.count("--device") == 1
    # Without --devices: no --device (train.py's default).
    assert folds.main(argv) == 0
    assert "--device" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        folds.main([PAPER_YAML, "--folds", "6"])
    assert "--folds [6]" in capsys.readouterr().err
