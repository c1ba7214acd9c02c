"""DDP pieces tested without a recipe run: per-rank random state in
checkpoints, and the sharding of evaluation batches.

The random-state test runs 2 CPU processes (gloo) with
``torch.multiprocessing``, each saving and restoring through a SpeechBrain
``Checkpointer`` as ``train.py`` does.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from speechbrain.utils.checkpoints import Checkpointer

from harmonifuse_sb.interleaving import (
    make_eval_loader,
    merge_shards,
    shard_batches,
)
from harmonifuse_sb.reproducibility import RandomState

WORLD_SIZE = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_and_resume(rank, port, folder):
    """One rank: own seed, checkpoint, draw, draw more, recover, draw."""
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
    )
    os.environ["RANK"] = str(rank)  # SpeechBrain's if_main_process reads it
    try:
        torch.manual_seed(100 + rank)  # ranks draw different masks
        checkpointer = Checkpointer(
            os.path.join(folder, "save"),
            recoverables={"random_state": RandomState()},
        )
        checkpointer.save_checkpoint()
        # A resumed run starts after the save is complete on every rank.
        torch.distributed.barrier()
        after_save = torch.rand(4).tolist()
        torch.rand(100)  # training goes on
        checkpointer.recover_if_possible()
        after_recover = torch.rand(4).tolist()
        path = os.path.join(folder, f"rank{rank}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"saved": after_save, "resumed": after_recover}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_each_rank_resumes_its_own_random_state(tmp_path):
    mp.spawn(
        save_and_resume,
        args=(free_port(), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    draws = []
    for rank in range(WORLD_SIZE):
        with open(tmp_path / f"rank{rank}.json", encoding="utf-8") as f:
            draws.append(json.load(f))
    for draw in draws:
        assert draw["resumed"] == draw["saved"]
    assert draws[0]["saved"] != draws[1]["saved"]  # not rank 0's everywhere
    # One file, one entry per rank.
    (ckpt,) = list((tmp_path / "save").glob("CKPT+*"))
    saved = torch.load(ckpt / "random_state.ckpt", weights_only=False)
    assert sorted(saved["ranks"]) == [0, 1]


def test_random_state_reads_the_single_process_format(tmp_path):
    """A checkpoint written before the per-rank format still loads."""
    path = tmp_path / "random_state.ckpt"
    torch.manual_seed(3)
    torch.save(
        {
            "python": __import__("random").getstate(),
            "numpy": __import__("numpy").random.get_state(),
            "torch": torch.get_rng_state(),
        },
        path,
    )
    expected = torch.rand(2)
    RandomState()._recover(path)
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
def test_eval_shards_cover_every_batch_once(world_size):
    batches = [[i] for i in range(7)]
    shards = [shard_batches(batches, r, world_size) for r in range(world_size)]
    flat = sorted(b[0] for shard in shards for b in shard)
    assert flat == list(range(7))  # no batch lost, none repeated
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert merge_shards(shards) == batches


def test_merge_shards_rejects_foreign_shards():
    with pytest.raises(ValueError, match="rank 0 has 1 results"):
        merge_shards([["b0"], ["b1", "b3"]])


def test_eval_loader_shards_items_by_batch():
    items = [{"id": f"u{i}", "emo": "sad", "task": "ser"} for i in range(7)]
    ids = [
        [batch.ser.id for batch in make_eval_loader([items], 2, 0, r, 2)]
        for r in range(2)
    ]
    assert ids == [
        [["u0", "u1"], ["u4", "u5"]],
        [["u2", "u3"], ["u6"]],
    ]
    with pytest.raises(ValueError, match="both rank and world_size"):
        make_eval_loader([items], 2, rank=1)
