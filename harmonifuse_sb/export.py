"""Writes a self-contained inference folder from a training run.

The folder holds:

- ``hyperparams.yaml``: the model part of the training YAML (with the run's
  overrides and every ``!ref`` resolved), the speech LM and the model built
  with ``!new:``, ``modules`` and a ``pretrainer``, as SpeechBrain's
  ``inference.yaml`` files are written, and the inference options (``vad``:
  the voice activity detector of ``HarmoniFuseSLM``);
- ``model.ckpt``: the trained weights (trainable ones only: LoRA adapters,
  heads, fusion, gate, projector, trained encoder layers);
- ``label_encoder.txt``: the classes of the first classification task
  (each task's labels are in ``hyperparams.yaml``'s ``tasks``);
- a copy of every model folder that the YAML loads from the local disk
  (e.g. the tiny LLM and its tokenizer), so nothing points back into the
  training folder. Hub ids stay hub ids.

``HarmoniFuseSLM.from_hparams(source=folder)`` loads it.

``train.py`` writes the folder at the end of training. To write it again
from the best checkpoint of a run (e.g. an interrupted one, or after a fix
to the export), give the training YAML and the run's overrides::

    python -m harmonifuse_sb.export hparams/harmonifuse_tiny.yaml
        --data_folder=... [--export_folder=elsewhere]

Authors
 * HarmoniFuse-SB developers 2026
"""

import io
import logging
import os
import shutil
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, TaggedScalar
from ruamel.yaml.tag import Tag

from harmonifuse_sb.lobes.checkpointing import trainable_state_dict
from harmonifuse_sb.metrics import checkpoint_key
from harmonifuse_sb.model import build_harmonifuse
from harmonifuse_sb.tasks import CLASSIFICATION, first_of_kind

logger = logging.getLogger(__name__)

MODEL_KEYS = (
    "tasks",
    "encoder",
    "fusion",
    "gate",
    "projector",
    "speech_lm",
    "model",
)
# Copied when the training YAML has them (inference options; the prompts
# and labels that the tasks refer to).
OPTIONAL_KEYS = ("vad", "emotions", "prompts")
# What a task entry holds for training only: left out of the inference
# folder, which must not point back into the training data.
TRAINING_ONLY_TASK_KEYS = (
    "train",
    "valid",
    "test",
    "data_root",
    "batch_size",
    "ratio",
    "loss_weight",
    "key_weight",
    "ctc_weight",
)
MODEL_DIR_KEY = "model_dir"


def _ref(text):
    return TaggedScalar(value=text, tag="!ref")


def _set_tag(node, callable_path, kind="!new:"):
    node.yaml_set_ctag(Tag(suffix=kind + callable_path))


def _strip_comments(node):
    """Drops the training YAML's comments, which would land out of place."""
    if hasattr(node, "ca"):
        node.ca.items.clear()
        node.ca.comment = None
    values = node.values() if isinstance(node, dict) else node
    if isinstance(node, (dict, list)):
        for value in values:
            _strip_comments(value)


def _localise_sources(doc, folder):
    """Copies local model folders named by ``source`` keys into ``folder``.

    Arguments
    ---------
    doc : CommentedMap
        The inference YAML being built.
    folder : str
        The export folder.
    """
    for key in MODEL_KEYS:
        node = doc.get(key)
        if not isinstance(node, CommentedMap) or "source" not in node:
            continue
        source = str(node["source"])
        if os.path.isdir(source):
            target = os.path.join(folder, key)
            if os.path.abspath(source) != os.path.abspath(target):
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
            node["source"] = _ref(f"<{MODEL_DIR_KEY}>/{key}")
            node.pop("save_path", None)


def inference_yaml(hparams_file, overrides, folder):
    """Builds the text of the inference ``hyperparams.yaml``.

    Arguments
    ---------
    hparams_file : str
        The training YAML.
    overrides : str or dict
        The training run's overrides.
    folder : str
        The export folder (local model folders are copied into it).

    Returns
    -------
    str
        The YAML text.
    """
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides).getvalue()
    yaml = YAML()
    train_doc = yaml.load(resolved)
    missing = [k for k in MODEL_KEYS if k not in train_doc]
    if missing:
        raise KeyError(
            f"{hparams_file} lacks the model keys {missing} needed to export "
            "an inference folder."
        )
    doc = CommentedMap()
    doc[MODEL_DIR_KEY] = "."  # set to the folder by HarmoniFuseSLM
    doc["sample_rate"] = 16000
    for key in MODEL_KEYS:
        doc[key] = train_doc[key]
        _strip_comments(doc[key])
    for key in OPTIONAL_KEYS:
        if key in train_doc:
            doc[key] = train_doc[key]
            _strip_comments(doc[key])
    for task in doc["tasks"].values():
        for key in TRAINING_ONLY_TASK_KEYS:
            task.pop(key, None)
    _set_tag(doc["speech_lm"], "harmonifuse_sb.lobes.SpeechLM")
    # An encoder built after the preparation (``!name:``) is built at once
    # at inference, where its folder exists.
    encoder_tag = getattr(getattr(doc["encoder"], "tag", None), "value", None)
    if encoder_tag and encoder_tag.startswith("!name:"):
        _set_tag(doc["encoder"], encoder_tag.removeprefix("!name:"))
    _set_tag(doc["model"], "harmonifuse_sb.model.HarmoniFuse")
    doc["model"]["speech_lm"] = doc["speech_lm"]
    _localise_sources(doc, folder)
    label_encoder = CommentedMap()
    _set_tag(label_encoder, "speechbrain.dataio.encoder.CategoricalEncoder")
    doc["label_encoder"] = label_encoder
    doc["modules"] = CommentedMap(model=doc["model"])
    pretrainer = CommentedMap()
    _set_tag(pretrainer, "speechbrain.utils.parameter_transfer.Pretrainer")
    pretrainer["loadables"] = CommentedMap(
        model=doc["model"], label_encoder=label_encoder
    )
    pretrainer["paths"] = CommentedMap(
        model=_ref(f"<{MODEL_DIR_KEY}>/model.ckpt"),
        label_encoder=_ref(f"<{MODEL_DIR_KEY}>/label_encoder.txt"),
    )
    doc["pretrainer"] = pretrainer
    buffer = io.StringIO()
    buffer.write(
        "# HarmoniFuse inference hyperparameters, written by "
        "harmonifuse_sb.export\n# from "
        + os.path.basename(hparams_file)
        + ".\n"
    )
    yaml.dump(doc, buffer)
    return buffer.getvalue()


def export_inference_folder(hparams_file, overrides, model, folder):
    """Writes the inference folder of a trained model.

    Arguments
    ---------
    hparams_file : str
        The training YAML.
    overrides : str or dict
        The training run's overrides (applied to the exported YAML too).
    model : HarmoniFuse
        The trained model (best checkpoint loaded).
    folder : str
        Where to write.

    Returns
    -------
    str
        ``folder``.
    """
    os.makedirs(folder, exist_ok=True)
    text = inference_yaml(hparams_file, overrides, folder)
    with open(
        os.path.join(folder, "hyperparams.yaml"), "w", encoding="utf-8"
    ) as f:
        f.write(text)
    torch.save(trainable_state_dict(model), os.path.join(folder, "model.ckpt"))
    # The inference YAML's pretrainer loads it (the two-task layout's
    # emotion classes); every task's labels are in its entry in ``tasks``.
    classes = first_of_kind(model.tasks, CLASSIFICATION)
    classes.label_encoder.save(os.path.join(folder, "label_encoder.txt"))
    logger.info(f"Inference folder written to {folder}")
    return folder


def main(argv=None):
    """Rebuilds the model of a run from its best checkpoint and exports it.

    The command line is ``train.py``'s: the training YAML and the run's
    overrides (``--output_folder`` and ``--export_folder`` among them). The
    LLM preparation runs again (it does nothing when its folder is up to
    date); the data preparation does not.

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    str
        The folder written.

    Raises
    ------
    FileNotFoundError
        If the run's ``save_folder`` holds no checkpoint.
    """
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, _run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    checkpointer = hparams["checkpointer"]
    # The checkpoint train.py exports: checkpoint_keys' export choice.
    key = checkpoint_key(hparams.get("checkpoint_keys"), "export")
    # Checked before anything is built: a wrong --output_folder fails fast.
    if checkpointer.find_checkpoint(**key) is None:
        raise FileNotFoundError(
            f"No checkpoint with a '{next(iter(key.values()))}' key in "
            f"{checkpointer.checkpoints_dir} (save_folder of {hparams_file} "
            "with these overrides). Pass the training run's overrides, "
            "e.g. its --output_folder; a --debug run keeps its checkpoints "
            "only with --debug_persistently."
        )
    if hparams.get("prepare_llm") is not None:
        hparams["prepare_llm"]()
    model = build_harmonifuse(hparams)
    checkpointer.add_recoverable("model", model)
    checkpoint = checkpointer.recover_if_possible(**key)
    logger.info(f"Model loaded from {checkpoint.path}")
    return export_inference_folder(
        hparams_file,
        overrides,
        model,
        hparams["export_folder"],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        folder = main()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"Inference folder written to {folder}")
