"""Tests for the ASR/SER batch interleaver, collation and loader recovery."""

import itertools

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import (
    DynamicBatchSampler,
    ReproducibleRandomSampler,
)
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter
from torch.utils.data import BatchSampler, RandomSampler

from harmonifuse_sb.interleaving import (
    CYCLE_EPOCH_STRIDE,
    InterleavedBatchSampler,
    MultiTaskBatch,
    make_eval_loader,
    make_interleaved_loader,
    multitask_collate,
)

ASR_SIZE = 10
SER_SIZE = 6
BATCH = 2
ASR_SEED = 11
SER_SEED = 22
A, S = "asr", "ser"


def batch_sampler(size, seed, batch_size=BATCH):
    """A reproducible shuffled batch sampler over ``range(size)``."""
    sampler = ReproducibleRandomSampler(range(size), seed=seed)
    return BatchSampler(sampler, batch_size, drop_last=False)


def interleaver(asr_size=ASR_SIZE, ser_size=SER_SIZE, **kwargs):
    return InterleavedBatchSampler(
        {
            A: batch_sampler(asr_size, ASR_SEED),
            S: batch_sampler(ser_size, SER_SEED),
        },
        {A: asr_size, S: ser_size},
        **kwargs,
    )


def asr_indices(sampler, batches):
    return [i for b in batches for i in b if i < sampler.sizes[A]]


def ser_indices(sampler, batches):
    return [i for b in batches for i in b if i >= sampler.sizes[A]]


# --- schedules ---------------------------------------------------------------


def test_strict_alternation():
    sampler = interleaver()  # 5 ASR batches, 3 SER batches
    sampler.set_epoch(1)
    batches = list(sampler)
    expected = [A, S, A, S, A, S, A, S, A]
    assert [sampler.task_of(b) for b in batches] == expected
    assert sampler.task_schedule() == expected
    assert len(sampler) == len(batches) == len(expected)


def test_ratio_three_to_one():
    sampler = interleaver(asr_size=16, ratio=(3, 1))  # 8 ASR batches
    batches = list(sampler)
    expected = [A, A, A, S, A, A, A, S, A, A]
    assert [sampler.task_of(b) for b in batches] == expected
    assert len(sampler) == len(expected)


def test_ratio_from_yaml_list_and_ser_epoch():
    sampler = interleaver(ratio=[1, 2], epoch_task="ser")  # 3 SER batches
    expected = [A, S, S, A, S]
    assert sampler.task_schedule() == expected
    assert len(list(sampler)) == len(sampler) == len(expected)


@pytest.mark.parametrize(
    "ratio, epoch_task, size, task",
    [((1, 0), A, ASR_SIZE, A), ((0, 1), S, SER_SIZE, S)],
)
def test_single_task_ratio(ratio, epoch_task, size, task):
    # The left-out task's sampler is None: it is never drawn from.
    samplers = {
        A: batch_sampler(ASR_SIZE, ASR_SEED),
        S: batch_sampler(SER_SIZE, SER_SEED),
    }
    samplers[S if task == A else A] = None
    sampler = InterleavedBatchSampler(
        samplers,
        {A: ASR_SIZE if task == A else 0, S: SER_SIZE if task == S else 0},
        ratio=ratio,
        epoch_task=epoch_task,
    )
    sampler.set_epoch(2)
    assert sampler.tasks == (task,)
    assert sampler.task_schedule() == [task] * (size // BATCH)
    assert sorted(i for b in sampler for i in b) == list(range(size))


def test_single_task_loader():
    ser = DynamicItemDataset(
        {f"ser{i}": {"task": S} for i in range(SER_SIZE)},
        output_keys=["id", "task"],
    )
    loader, sampler = make_interleaved_loader(
        {A: None, S: ser},
        {A: None, S: batch_sampler(SER_SIZE, SER_SEED)},
        ratio=(0, 1),
        epoch_task=S,
    )
    batches = [ids(batch) for batch in loader]
    assert [task for task, _ in batches] == [S] * (SER_SIZE // BATCH)
    assert sorted(i for _, b in batches for i in b) == sorted(ser.data_ids)


def test_missing_sampler_of_a_trained_task():
    with pytest.raises(ValueError, match="ser batch sampler is None"):
        InterleavedBatchSampler({A: batch_sampler(4, 0), S: None}, {A: 4, S: 0})


def test_epoch_task_batches_once_and_other_task_cycles():
    # 20 ASR batches, 3 SER batches: SER needs 19 batches, so 7 passes.
    sampler = interleaver(asr_size=40)
    sampler.set_epoch(3)
    batches = list(sampler)
    assert sorted(asr_indices(sampler, batches)) == list(range(40))
    ser_batches = [b for b in batches if sampler.task_of(b) == S]
    assert len(ser_batches) == 19
    passes = [ser_batches[i : i + 3] for i in range(0, 18, 3)]
    for one_pass in passes:  # each complete pass covers the SER set once
        flat = sorted(i for b in one_pass for i in b)
        assert flat == list(range(40, 40 + SER_SIZE))
    # ... and the passes are reshuffled, not repeated
    assert len({str(p) for p in passes}) > 1
    # the SER sampler got the documented inner epochs
    assert sampler.samplers[S].sampler.epoch == 3 * CYCLE_EPOCH_STRIDE + 6


def test_epochs_shuffle_differently_and_reproduce():
    sampler = interleaver()
    sampler.set_epoch(1)
    first = list(sampler)
    assert list(sampler) == first  # iterating again: same epoch, same order
    sampler.set_epoch(2)
    second = list(sampler)
    assert second != first
    assert sorted(asr_indices(sampler, second)) == list(range(ASR_SIZE))
    again = interleaver(epoch=1)
    assert list(again) == first
    assert again.task_schedule(epoch=2) == sampler.task_schedule()


def test_mixed_schedule():
    sampler = interleaver(schedule="mixed", ratio=(3, 1))  # ratio ignored
    batches = list(sampler)
    assert len(batches) == len(sampler) == ASR_SIZE // BATCH
    assert sampler.task_schedule() == ["mixed"] * len(batches)
    for batch in batches:
        assert sampler.task_of(batch) == "mixed"
        assert len(asr_indices(sampler, [batch])) == BATCH
        assert len(ser_indices(sampler, [batch])) == BATCH
        assert batch[0] < ASR_SIZE  # ASR part first
    assert sorted(asr_indices(sampler, batches)) == list(range(ASR_SIZE))


def test_dynamic_batch_sampler_is_reproducible():
    lengths = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]

    def dynamic():
        return DynamicBatchSampler(
            range(len(lengths)),
            max_batch_length=10,
            num_buckets=2,
            lengths_list=lengths,
            seed=ASR_SEED,
        )

    def make():
        return InterleavedBatchSampler(
            {A: dynamic(), S: batch_sampler(SER_SIZE, SER_SEED)},
            {A: len(lengths), S: SER_SIZE},
        )

    sampler = make()
    sampler.set_epoch(1)
    first = list(sampler)
    assert len(sampler) == len(first)
    assert sorted(asr_indices(sampler, first)) == list(range(len(lengths)))
    assert list(sampler) == first  # the inner sampler's own state is reset
    fresh = make()
    fresh.set_epoch(1)
    assert list(fresh) == first


# --- DDP -----------------------------------------------------------------------


@pytest.mark.parametrize("asr_size", [ASR_SIZE, 2 * ASR_SIZE])
def test_ddp_sharding(asr_size):
    world = 2
    ranks = [interleaver(asr_size, rank=r, world_size=world) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    runs = [list(sampler) for sampler in ranks]
    assert ranks[0].task_schedule() == ranks[1].task_schedule()
    assert len(ranks[0]) == len(ranks[1]) == len(runs[0]) == len(runs[1])
    for b0, b1 in zip(*runs):  # same task, different data, at every step
        assert ranks[0].task_of(b0) == ranks[1].task_of(b1)
        assert not set(b0) & set(b1)
    seen = [set(asr_indices(ranks[0], run)) for run in runs]
    assert not seen[0] & seen[1]
    # the shards are the single-process batches, truncated to a multiple of W
    single = interleaver(asr_size)
    single.set_epoch(4)
    asr_batches = [b for b in single if single.task_of(b) == A]
    kept = len(asr_batches) - len(asr_batches) % world
    assert seen[0] | seen[1] == {i for b in asr_batches[:kept] for i in b}


def test_ddp_too_few_batches():
    sampler = interleaver(ser_size=BATCH, rank=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than world_size=2"):
        len(sampler)


# --- argument errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "random"}, "schedule"),
        ({"ratio": (0, 0)}, "ratio"),
        ({"ratio": (0, 1)}, "set epoch_task to 'ser'"),
        ({"ratio": (1, 0), "schedule": "mixed"}, "leaves one out"),
        ({"ratio": (-1, 1)}, "ratio"),
        ({"ratio": (1, 1, 1)}, "ratio"),
        ({"epoch_task": "both"}, "epoch_task"),
        ({"rank": 0}, "rank and world_size"),
        ({"rank": 2, "world_size": 2}, "rank < world_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        interleaver(**kwargs)


def test_unreplayable_sampler_rejected():
    torch_random = BatchSampler(RandomSampler(range(4)), BATCH, False)
    with pytest.raises(ValueError, match="ReproducibleRandomSampler"):
        InterleavedBatchSampler(
            {A: torch_random, S: batch_sampler(4, 0)}, {A: 4, S: 4}
        )


def test_swapped_sizes_detected():
    sampler = interleaver(asr_size=ASR_SIZE)
    sampler.sizes[A] = SER_SIZE  # as if len(ser_dataset) had been passed
    with pytest.raises(ValueError, match=r"indices >= sizes\['asr'\]=6"):
        list(sampler)


# --- collation -----------------------------------------------------------------


def test_collate_single_and_mixed():
    asr = {"id": "a0", "sig": torch.ones(3), "task": "asr"}
    ser = {"id": "s0", "sig": torch.ones(2), "task": "ser"}
    single = multitask_collate([asr, dict(asr, id="a1")])
    assert (single.task, single.ser, len(single)) == ("asr", None, 2)
    assert single.asr.id == ["a0", "a1"]
    assert not hasattr(single.asr, "task")  # the routing key is dropped
    mixed = multitask_collate([ser, asr])
    assert (mixed.task, mixed.asr.id, mixed.ser.id) == ("mixed", ["a0"], ["s0"])


def test_collate_errors():
    with pytest.raises(KeyError, match="'a0' has no 'task' key"):
        multitask_collate([{"id": "a0"}])
    with pytest.raises(ValueError, match="'mixed'"):
        multitask_collate([{"id": "a0", "task": "mixed"}])
    with pytest.raises(ValueError, match="empty"):
        multitask_collate([])
    with pytest.raises(ValueError, match="two or more task parts"):
        MultiTaskBatch("mixed", asr=PaddedBatch([{"id": "a0"}]))


def test_multitask_batch_to_moves_tensors():
    batch = multitask_collate(
        [
            {"id": "a0", "sig": torch.ones(3), "task": "asr"},
            {"id": "s0", "sig": torch.ones(2), "task": "ser"},
        ]
    )
    moved = batch.to("cpu", dtype=torch.float64)
    assert isinstance(moved, MultiTaskBatch) and moved.task == "mixed"
    assert moved.asr.sig.data.dtype == torch.float64
    assert moved.ser.sig.data.dtype == torch.float64
    assert moved.asr.sig.data.shape == (1, 3)
    if torch.cuda.is_available():
        on_gpu = batch.pin_memory().to("cuda")
        assert on_gpu.asr.sig.data.is_cuda and on_gpu.ser.sig.data.is_cuda


# --- loaders and checkpoint recovery -------------------------------------------


def datasets():
    """Two tiny corpora whose pipelines add the "task" key, as recipes do."""
    asr = DynamicItemDataset(
        {f"asr{i}": {"wrd": f"WORD {i}"} for i in range(ASR_SIZE)}
    )
    ser = DynamicItemDataset(
        {f"ser{i}": {"emo": "sad"} for i in range(SER_SIZE)}
    )
    for data, task in ((asr, "asr"), (ser, "ser")):
        data.add_dynamic_item(
            lambda _, task=task: task, takes="id", provides="task"
        )
    asr.set_output_keys(["id", "wrd", "task"])
    ser.set_output_keys(["id", "emo", "task"])
    return asr, ser


def training_loader(num_workers=0):
    asr, ser = datasets()
    return make_interleaved_loader(
        {A: asr, S: ser},
        {
            A: batch_sampler(ASR_SIZE, ASR_SEED),
            S: batch_sampler(SER_SIZE, SER_SEED),
        },
        num_workers=num_workers,
        ratio=(2, 1),
    )


def ids(batch):
    parts = (batch.asr, batch.ser)
    return batch.task, [i for part in parts if part for i in part.id]


def test_loader_yields_multitask_batches():
    loader, sampler = training_loader()
    assert isinstance(loader, SaveableDataLoader)
    sampler.set_epoch(1)
    batches = [ids(batch) for batch in loader]
    assert [task for task, _ in batches] == sampler.task_schedule()
    assert len(loader) == len(batches)
    asr_ids = sorted(i for task, b in batches if task == A for i in b)
    assert asr_ids == sorted(f"asr{i}" for i in range(ASR_SIZE))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_checkpoint_recovery_mid_epoch(tmp_path, num_workers):
    stop_after = 3
    reference_loader, reference = training_loader()
    expected = {}
    for epoch in (1, 2):
        reference.set_epoch(epoch)
        expected[epoch] = [ids(batch) for batch in reference_loader]

    loader, sampler = training_loader(num_workers)
    checkpointer = Checkpointer(tmp_path, {"train_loader": loader})
    sampler.set_epoch(1)
    for step, batch in enumerate(loader, start=1):
        assert ids(batch) == expected[1][step - 1]
        if step == stop_after:
            checkpointer.save_checkpoint(end_of_epoch=False)
            break

    loader, sampler = training_loader(num_workers)  # a fresh process
    Checkpointer(tmp_path, {"train_loader": loader}).recover_if_possible()
    sampler.set_epoch(1)
    assert [ids(batch) for batch in loader] == expected[1][stop_after:]
    sampler.set_epoch(2)  # the next epoch starts from its beginning
    assert [ids(batch) for batch in loader] == expected[2]


class RecordingBrain(sb.Brain):
    """Records the (task, ids) of each training batch; may crash."""

    def fit_batch(self, batch):
        crash = self.hparams.crash_at
        if crash is not None and (self.hparams.epoch(), self.step) == crash:
            raise KeyboardInterrupt("simulated crash")
        self.hparams.seen.append(ids(batch))
        return torch.tensor(0.0)


def fit(tmp_path, crash_at=None):
    """Runs Brain.fit with an intra-epoch checkpoint after every step."""
    loader, sampler = training_loader()
    counter = EpochCounter(limit=2)
    checkpointer = Checkpointer(
        tmp_path, {"counter": counter, "train_loader": loader}
    )
    seen = []
    brain = RecordingBrain(
        hparams={
            "crash_at": crash_at,
            "seen": seen,
            "epoch": lambda: counter.current,
        },
        run_opts={"ckpt_interval_steps": 1, "noprogressbar": True},
        checkpointer=checkpointer,
    )
    brain.train_sampler = sampler
    try:
        brain.fit(counter, loader)
    except KeyboardInterrupt:
        pass
    return seen


def test_brain_fit_resumes_the_same_stream(tmp_path):
    uninterrupted = fit(tmp_path / "full")
    crash_step = 4
    before = fit(tmp_path / "crash", crash_at=(2, crash_step))
    after = fit(tmp_path / "crash")
    assert before + after == uninterrupted
    epoch_length = len(uninterrupted) // 2
    assert len(before) == epoch_length + crash_step - 1
    tasks = [task for task, _ in uninterrupted]
    pattern = itertools.cycle([A, A, S])
    assert tasks[:epoch_length] == list(itertools.islice(pattern, epoch_length))


def test_task_loader():
    _, ser = datasets()
    batches = list(make_eval_loader([ser], batch_size=4))
    assert [(b.task, len(b)) for b in batches] == [("ser", 4), ("ser", 2)]


# --- the two-task order of the code the published figures were made with -----


def seeded(size, batch_size):
    """Batches of a seed-1986 shuffle, as train.py's samplers draw them."""
    sampler = ReproducibleRandomSampler(range(size), seed=1986)
    return BatchSampler(sampler, batch_size, drop_last=False)


def two_task(**kwargs):
    return InterleavedBatchSampler(
        {A: seeded(14, 4), S: seeded(7, 2)}, {A: 14, S: 7}, **kwargs
    )


def test_two_task_order_is_that_of_the_two_task_interleaver():
    """The index lists below were printed by the two-task interleaver
    (commit 7369269, ``InterleavedBatchSampler(asr, ser, asr_size=14,
    ...)``) before it became N-way; the N-way one must draw the same
    batches in the same order, so the quick-start's figures stay.
    """
    sampler = two_task(ratio=(2, 1))
    sampler.set_epoch(1)
    assert list(sampler) == [
        [2, 0, 5, 1], [6, 7, 8, 9], [20, 15], [4, 11, 13, 10], [3, 12]
    ]  # fmt: skip
    sampler.set_epoch(2)
    assert list(sampler) == [
        [13, 4, 7, 11], [6, 3, 10, 9], [17, 14], [1, 2, 0, 8], [12, 5]
    ]  # fmt: skip
    mixed = two_task(schedule="mixed")
    mixed.set_epoch(1)
    assert list(mixed) == [
        [2, 0, 5, 1, 20, 15],
        [6, 7, 8, 9, 19, 17],
        [4, 11, 13, 10, 14, 16],
        [3, 12, 18],
    ]
    rank1 = two_task(ratio=(2, 1), rank=1, world_size=2)
    rank1.set_epoch(3)
    assert list(rank1) == [[11, 7, 13, 3], [4, 6]]


def test_three_tasks_ratio_and_offsets():
    sampler = InterleavedBatchSampler(
        {A: seeded(8, 2), S: seeded(4, 2), "accent": seeded(3, 1)},
        {A: 8, S: 4, "accent": 3},
        ratio={A: 2, S: 1, "accent": 1},
    )
    sampler.set_epoch(1)
    batches = list(sampler)
    assert sampler.task_schedule() == [A, A, S, "accent", A, A]
    assert [sampler.task_of(b) for b in batches] == sampler.task_schedule()
    # accent indices come after the 8 ASR and 4 SER items
    accent = [i for b in batches if sampler.task_of(b) == "accent" for i in b]
    assert len(accent) == 1 and 12 <= accent[0] < 15
    assert sorted(asr_indices(sampler, batches)) == list(range(8))
    with pytest.raises(ValueError, match=r"one integer >= 0 per task"):
        InterleavedBatchSampler(
            {A: seeded(8, 2), S: seeded(4, 2)}, {A: 8, S: 4}, ratio=[1, 1, 1]
        )
