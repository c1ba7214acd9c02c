"""Pictures of what a HarmoniFuse model learnt: layer weights, gates, curves.

    python -m harmonifuse_sb.plot MODEL_DIR [--manifest M.json ...]
        [--data-root DIR] [AUDIO ...] [--output-dir DIR]

loads an exported model (the ``inference`` folder of a run) and writes

- ``layer_weights.png``: the fusion's weight of each encoder layer for each
  task's prompt (the weights depend on the prompt only, not on the audio);
- ``gate_distributions.png``: the distribution of the task gate's values
  for each task on the given audio (manifests and/or files), over every
  valid frame and feature channel;

and prints the layer weights and the L1 distance between the ASR and SER
weight vectors. The ablation study (``harmonifuse_sb.ablation``) calls the
same functions for each variant, and also plots each variant's validation
curves from the runs' ``train_log.txt``.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import os
import re
import sys
import tempfile

import numpy as np
import torch

TASKS = ("asr", "ser")
TASK_COLOURS = {"asr": "tab:blue", "ser": "tab:orange"}
GATE_BINS = 50
LAYER_WEIGHTS_PNG = "layer_weights.png"
GATES_PNG = "gate_distributions.png"
CURVES_PNG = "validation_curves.png"
# metrics that train_log.txt holds as fractions, drawn in percent
PERCENT_FRACTIONS = ("UA", "WA", "macro_F1")
# The study's gate pictures use this many utterances of each test set.
STUDY_GATE_UTTERANCES = 32
_LOG_PAIR = re.compile(r"valid (\w+): ([-+\d.eE]+|nan|inf)")


def _pyplot():
    """The pyplot of matplotlib on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def layer_weights(model, tasks=TASKS):
    """The fusion's layer weights for each task's prompt.

    Arguments
    ---------
    model : harmonifuse_sb.model.HarmoniFuse
        A model (``HarmoniFuseSLM(...).model`` for an exported one).
    tasks : sequence of str
        The tasks whose prompts to weigh.

    Returns
    -------
    dict
        task -> numpy array (L+1,) summing to one: index 0 is the encoder's
        input to its first layer, L its top layer.
    """
    weights = {}
    for task in tasks:
        prompt = model.speech_lm.prompt_embedding([model.prompts[task]])
        weights[task] = model.fusion.layer_weights(prompt)[0].float()
        weights[task] = weights[task].cpu().numpy()
    return weights


def l1_distance(weights):
    """L1 distance between the ASR and SER layer-weight vectors.

    Arguments
    ---------
    weights : dict
        ``asr`` and ``ser`` -> (L+1,) arrays, as :func:`layer_weights`.

    Returns
    -------
    float
        ``sum_l |a_asr,l - a_ser,l|``, in [0, 2].

    Example
    -------
    >>> l1_distance({"asr": np.array([0.5, 0.5]), "ser": np.array([1.0, 0.0])})
    1.0
    """
    return float(np.abs(weights["asr"] - weights["ser"]).sum())


@torch.no_grad()
def gate_histograms(slm, wav_paths, tasks=TASKS, batch_size=8):
    """Histograms of the task gate's values on some audio, per task.

    Arguments
    ---------
    slm : harmonifuse_sb.inference.HarmoniFuseSLM
        The loaded model.
    wav_paths : list of str
        Audio files (any rate; read as 16 kHz mono).
    tasks : sequence of str
        The tasks whose gates to record.
    batch_size : int
        Files per encoder pass.

    Returns
    -------
    dict
        task -> ``counts`` (``GATE_BINS`` fractions summing to one over
        bins of equal width on [0, 1]), ``mean`` (the mean gate value) and
        ``values`` (the number of gate values counted: valid frames x
        channels).
    """
    if not wav_paths:
        raise ValueError("gate_histograms: no audio given.")
    model = slm.model
    counts = {task: np.zeros(GATE_BINS) for task in tasks}
    sums = dict.fromkeys(tasks, 0.0)
    for start in range(0, len(wav_paths), batch_size):
        wavs, lens = slm.load_batch(
            wav_paths[start : start + batch_size], start
        )
        hidden, frame_lens = slm._encode(wavs, lens)  # (L+1, B, T, D)
        frames = hidden.shape[2]
        valid = (
            torch.arange(frames, device=hidden.device)[None, :]
            < (torch.round(frame_lens * frames)[:, None])
        )  # (B, T)
        for task in tasks:
            gate = model.task_features(hidden, frame_lens, task)["gate"]
            if gate.dim() == 4:  # a gate on the layers: (L+1, B, T, D)
                gate = gate.transpose(0, 1).transpose(1, 2)  # (B, T, L+1, D)
            values = gate[valid].float().cpu().numpy().ravel()  # frames x D
            counts[task] += np.histogram(values, GATE_BINS, (0.0, 1.0))[0]
            sums[task] += float(values.sum())
    return {
        task: {
            "counts": counts[task] / counts[task].sum(),
            "mean": sums[task] / counts[task].sum(),
            "values": int(counts[task].sum()),
        }
        for task in tasks
    }


def read_validation_curves(train_log):
    """The validation metrics of each epoch from a ``train_log.txt``.

    Arguments
    ---------
    train_log : str
        The log that ``HarmoniFuseBrain`` writes with SpeechBrain's
        ``FileTrainLogger``.

    Returns
    -------
    dict
        metric (``WER``, ``UA``, ``loss``, ...) -> (epochs, values) lists.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> with open(path, "w") as w:
    ...     print("epoch: 1, lr: 1.00e-03 - train loss: 2.0 - valid loss: "
    ...           "1.5, valid WER: 80.0, valid UA: 5.00e-01", file=w)
    >>> read_validation_curves(path)["UA"]
    ([1], [0.5])
    """
    curves = {}
    with open(train_log, encoding="utf-8") as f:
        for line in f:
            match = re.match(r"epoch: (\d+)", line)
            if not match:
                continue  # test lines
            epoch = int(match[1])
            for metric, value in _LOG_PAIR.findall(line):
                epochs, values = curves.setdefault(metric, ([], []))
                epochs.append(epoch)
                values.append(float(value))
    return curves


def _panels(plt, count, columns=4):
    """A figure of ``count`` panels, at most ``columns`` per row.

    Returns the figure and the used axes, in reading order (unused ones are
    hidden).
    """
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.4 * columns, 3.1 * rows), squeeze=False
    )
    axes = list(axes.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def plot_layer_weights(models, path):
    """Bars of the layer weights per task, one panel per model.

    Arguments
    ---------
    models : dict
        title -> task -> (L+1,) weights.
    path : str
        The PNG to write.
    """
    plt = _pyplot()
    fig, axes = _panels(plt, len(models))
    for ax, (title, weights) in zip(axes, models.items()):
        tasks = [t for t in TASKS if t in weights]
        width = 0.8 / len(tasks)
        for i, task in enumerate(tasks):
            layers = np.arange(len(weights[task]))
            ax.bar(
                layers + (i - (len(tasks) - 1) / 2) * width,
                weights[task],
                width,
                label=task.upper(),
                color=TASK_COLOURS[task],
            )
        if len(tasks) == 2:
            title += f"\nL1(ASR, SER) = {l1_distance(weights):.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("encoder layer (0: input)")
        ax.set_xticks(np.arange(len(weights[tasks[0]])))
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("fusion weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gate_distributions(models, path):
    """Histograms of the gate values per task, one panel per model.

    Arguments
    ---------
    models : dict
        title -> :func:`gate_histograms` output.
    path : str
        The PNG to write.
    """
    plt = _pyplot()
    fig, axes = _panels(plt, len(models))
    centres = (np.arange(GATE_BINS) + 0.5) / GATE_BINS
    for ax, (title, hists) in zip(axes, models.items()):
        for task, hist in hists.items():
            ax.step(
                centres,
                hist["counts"],
                where="mid",
                color=TASK_COLOURS[task],
                label=f"{task.upper()} (mean {hist['mean']:.2f})",
            )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("gate value")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("fraction of values")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_validation_curves(curves, path, metrics=("loss_asr", "UA")):
    """Validation metrics per epoch: one panel per metric, a line per run.

    The default draws the validation ASR loss (the YAML's CTC + LLM
    mixture, every epoch) rather than the WER, which the study's YAMLs
    compute with autoregressive decoding only at the last epoch.

    Arguments
    ---------
    curves : dict
        variant -> seed -> :func:`read_validation_curves` output.
    path : str
        The PNG to write.
    metrics : sequence of str
        The metrics to draw (those found in some log).
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    metrics = [
        m
        for m in metrics
        if any(m in c for runs in curves.values() for c in runs.values())
    ]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for i, (variant, runs) in enumerate(curves.items()):
            colour = colours[i % len(colours)]
            label = variant
            for seed_curves in runs.values():
                if metric not in seed_curves:
                    continue
                epochs, values = seed_curves[metric]
                scale = 100 if metric in PERCENT_FRACTIONS else 1
                ax.plot(
                    epochs,
                    [scale * v for v in values],
                    color=colour,
                    label=label,
                    alpha=0.8,
                    marker=".",
                )
                label = None  # one legend entry per variant
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        percent = metric in PERCENT_FRACTIONS + ("WER", "CER")
        ax.set_ylabel(f"validation {metric}" + (" (%)" if percent else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_model(model_dir, savedir=None, device="cpu"):
    """Loads an exported model as a user does.

    Arguments
    ---------
    model_dir : str
        An inference folder (written by ``train.py`` or
        ``harmonifuse_sb.export``).
    savedir : str, optional
        Where SpeechBrain may keep fetched files.
    device : str
        e.g. ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    harmonifuse_sb.inference.HarmoniFuseSLM
    """
    from harmonifuse_sb.inference import HarmoniFuseSLM

    if savedir is None:
        # A local folder is read in place; the savedir stays empty.
        with tempfile.TemporaryDirectory() as tmp:
            return load_model(model_dir, tmp, device)
    slm = HarmoniFuseSLM.from_hparams(
        source=model_dir, savedir=savedir, run_opts={"device": device}
    )
    slm.model.eval()
    return slm


def manifest_audio(manifests, data_root=None, limit=None):
    """The audio files listed in manifests (the first ``limit`` of each).

    Arguments
    ---------
    manifests : list of (task, path, data_root) or str
        JSON manifests; a plain path reads as an SER manifest whose
        ``{data_root}`` is ``data_root``.
    data_root : str, optional
        Default for plain paths.
    limit : int, optional
        Files per manifest.

    Returns
    -------
    list of str
    """
    from harmonifuse_sb.dataio import load_manifest

    paths = []
    for entry in manifests:
        if isinstance(entry, str):
            entry = ("ser", entry, data_root or "")
        task, path, root = entry
        data = load_manifest(path, task, root).data
        paths += [item["wav"] for item in list(data.values())[:limit]]
    return paths


def study_pictures(runs, output_folder, variants, device="cpu"):
    """The ablation study's pictures and layer-weight statistics.

    Loads the exported model of every run for the layer weights (mean over
    seeds per variant), the first seed's for the gate distributions (on the
    first ``STUDY_GATE_UTTERANCES`` utterances of each test set), and reads
    every run's validation curves.

    Arguments
    ---------
    runs : dict
        variant -> seed -> ``harmonifuse_sb.ablation.read_run`` output.
    output_folder : str
        The study's folder; its runs are ``<variant>/<seed>``.
    variants : list of str
        In the order of the pictures.
    device : str
        Where to run the models.

    Returns
    -------
    weights : dict
        variant -> task -> mean weights (lists), ``l1`` (mean over seeds of
        the L1 distance, when both tasks were trained) and ``l1_per_seed``.
    pictures : list of str
        PNG file names, relative to ``output_folder``.
    """
    weights, gates, curves = {}, {}, {}
    for variant in variants:
        seeds = sorted(runs.get(variant, {}))
        per_seed, l1s = [], []
        for seed in seeds:
            folder = os.path.join(output_folder, variant, str(seed))
            tasks = [t for t in TASKS if t in runs[variant][seed]["tasks"]]
            log = os.path.join(folder, "train_log.txt")
            if os.path.isfile(log):
                curves.setdefault(variant, {})[seed] = read_validation_curves(
                    log
                )
            model_dir = os.path.join(folder, "inference")
            if not os.path.isdir(model_dir):
                continue
            slm = load_model(model_dir, device=device)
            seed_weights = layer_weights(slm.model, tasks)
            per_seed.append(seed_weights)
            if len(tasks) == 2:
                l1s.append(l1_distance(seed_weights))
            if seed == seeds[0] and slm.model.gate.enabled:
                audio = manifest_audio(
                    [
                        (entry["task"], entry["manifest"], entry["data_root"])
                        for entry in runs[variant][seed]["test_sets"].values()
                    ],
                    limit=STUDY_GATE_UTTERANCES,
                )
                gates[variant] = gate_histograms(slm, audio, tasks)
            del slm
        if per_seed:
            weights[variant] = {
                task: np.mean([w[task] for w in per_seed], axis=0).tolist()
                for task in per_seed[0]
            }
            weights[variant]["l1"] = float(np.mean(l1s)) if l1s else None
            weights[variant]["l1_per_seed"] = l1s
    pictures = []
    if weights:
        plot_layer_weights(
            {
                v: {t: np.array(w[t]) for t in TASKS if t in w}
                for v, w in weights.items()
            },
            os.path.join(output_folder, LAYER_WEIGHTS_PNG),
        )
        pictures.append(LAYER_WEIGHTS_PNG)
    if gates:
        plot_gate_distributions(gates, os.path.join(output_folder, GATES_PNG))
        pictures.append(GATES_PNG)
    if curves:
        plot_validation_curves(curves, os.path.join(output_folder, CURVES_PNG))
        pictures.append(CURVES_PNG)
    return weights, pictures


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m harmonifuse_sb.plot",
        description="Layer weights and gate distributions of an exported "
        "HarmoniFuse model, as PNG files.",
    )
    parser.add_argument("model", help="inference folder of a trained model")
    parser.add_argument("audio", nargs="*", help="audio files for the gates")
    parser.add_argument(
        "--manifest",
        action="append",
        default=[],
        help="JSON manifest whose audio to use for the gates (repeatable)",
    )
    parser.add_argument(
        "--data-root", default="", help="replaces {data_root} in manifests"
    )
    parser.add_argument(
        "--max-utterances",
        type=int,
        default=None,
        help="use at most this many files of each manifest",
    )
    parser.add_argument("--output-dir", default="plots")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--savedir", default=None)
    return parser.parse_args(argv)


def main(argv=None):
    """Writes the pictures of one model; returns the exit status."""
    args = parse_args(argv)
    slm = load_model(args.model, args.savedir, args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    name = os.path.basename(os.path.normpath(args.model))
    weights = layer_weights(slm.model)
    for task, values in weights.items():
        print(f"layer weights {task}: " + " ".join(f"{v:.3f}" for v in values))
    print(
        f"L1 distance between the ASR and SER layer weights: "
        f"{l1_distance(weights):.4f}"
    )
    path = os.path.join(args.output_dir, LAYER_WEIGHTS_PNG)
    plot_layer_weights({name: weights}, path)
    print(f"wrote {path}")
    audio = list(args.audio) + manifest_audio(
        args.manifest, args.data_root, args.max_utterances
    )
    if audio:
        hists = gate_histograms(slm, audio)
        for task, hist in hists.items():
            print(
                f"gate {task}: mean {hist['mean']:.3f} over "
                f"{hist['values']} values"
            )
        path = os.path.join(args.output_dir, GATES_PNG)
        plot_gate_distributions({name: hists}, path)
        print(f"wrote {path}")
    else:
        print("no audio given (files or --manifest): no gate picture")
    return 0


if __name__ == "__main__":
    sys.exit(main())
