#!/usr/bin/env python3
"""What each layer of a pre-trained encoder holds: linear probes per layer.

For the synthetic ablation setting's frozen encoder: each layer's hidden
states are mean-pooled over the valid frames of every SER utterance, and a
linear classifier (logistic regression, full-batch Adam, weight decay) is
trained on training utterances and scored on the held-out test voices, for
the arousal (from the prosody), the valence of the words (utterances with
an emotional phrase only) and the four classes. Prints one line per layer.

    python benchmarks/bench_encoder_layers.py ENCODER_FOLDER DATA_FOLDER

e.g. ``results/ablation_synthetic_pretrained/encoder`` and
``data/synthetic_ablation`` after a run of ``hparams/ablation_synthetic.yaml``.

Authors
 * HarmoniFuse-SB developers 2026
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harmonifuse_sb.dataio import load_audio  # noqa: E402
from harmonifuse_sb.lobes import ConformerSpeechEncoder  # noqa: E402
from recipes.Synthetic.synthetic_prepare import EMOTION_AROUSAL  # noqa: E402


def pooled_layers(encoder, data_folder, manifest, limit):
    """Mean-pooled hidden states (L+1, N, D) and the manifest entries."""
    with open(os.path.join(data_folder, manifest), encoding="utf-8") as f:
        entries = list(json.load(f).values())[:limit]
    if entries and "wording" not in entries[0]:
        raise ValueError(
            f"{manifest} has no 'wording': prepare the corpus with "
            "emotional_wording > 0 (hparams/ablation_synthetic.yaml)."
        )
    pooled = []
    with torch.no_grad():
        for entry in entries:
            wav = load_audio(entry["wav"].replace("{data_root}", data_folder))
            hidden, _ = encoder(wav[None], torch.ones(1))  # (L+1, 1, T, D)
            pooled.append(hidden[:, 0].mean(dim=1))  # (L+1, D)
    return torch.stack(pooled, dim=1), entries


def probe_accuracy(train_x, train_y, test_x, test_y, steps=300, seed=0):
    """Test accuracy of a linear classifier trained on standardised inputs."""
    classes = sorted(set(train_y))
    train_t = torch.tensor([classes.index(y) for y in train_y])
    test_t = torch.tensor([classes.index(y) for y in test_y])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    linear = torch.nn.Linear(train_x.shape[1], len(classes))
    optimizer = torch.optim.Adam(
        linear.parameters(), lr=0.01, weight_decay=0.01
    )
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(train_x), train_t)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_t).float().mean().item()


def main():
    """Prints the probe accuracies of every layer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("encoder_folder")
    parser.add_argument("data_folder")
    parser.add_argument("--train-utterances", type=int, default=400)
    parser.add_argument("--test-utterances", type=int, default=240)
    args = parser.parse_args()
    encoder = ConformerSpeechEncoder(source=args.encoder_folder, freeze=True)
    train_x, train = pooled_layers(
        encoder, args.data_folder, "ser_train.json", args.train_utterances
    )
    test_x, test = pooled_layers(
        encoder, args.data_folder, "ser_test.json", args.test_utterances
    )
    tasks = {
        "arousal": lambda e: EMOTION_AROUSAL[e["emo"]],
        "valence of the words": lambda e: e["wording"],
        "4 classes": lambda e: e["emo"],
    }
    print(f"{len(train)} training, {len(test)} test utterances; accuracy %")
    for layer in range(train_x.shape[0]):
        parts = []
        for name, label in tasks.items():
            keep_train = [
                i
                for i, e in enumerate(train)
                if name != "valence of the words" or e["wording"] != "none"
            ]
            keep_test = [
                i
                for i, e in enumerate(test)
                if name != "valence of the words" or e["wording"] != "none"
            ]
            accuracy = probe_accuracy(
                train_x[layer][keep_train],
                [label(train[i]) for i in keep_train],
                test_x[layer][keep_test],
                [label(test[i]) for i in keep_test],
            )
            parts.append(f"{name} {100 * accuracy:.1f}")
        print(f"layer {layer}: " + "  ".join(parts))


if __name__ == "__main__":
    main()
