"""Batch interleaving: one training stream from an ASR and an SER corpus.

HarmoniFuse trains on two separate corpora: no utterance needs both a
transcript and an emotion label. Each optimiser step sees one batch of one
task, drawn by a fixed schedule (strict alternation, or a ratio such as 3:1).

The interleaver is a *batch sampler* over
``torch.utils.data.ConcatDataset([asr_dataset, ser_dataset])``: it yields
lists of global indices (SER indices are offset by ``len(asr_dataset)``), and
its order depends only on ``(epoch, seeds of the inner samplers)``. Inside a
SpeechBrain ``SaveableDataLoader`` this makes mid-epoch recovery free: the
loader checkpoints how many batches it yielded and, on recovery, SpeechBrain
fast-forwards the batch sampler's iterator by that many index lists (no audio
is loaded) before the first batch comes out.

Wiring in a recipe::

    loader, sampler = make_interleaved_loader(
        asr_data, ser_data, asr_batch_sampler, ser_batch_sampler
    )
    brain.train_sampler = sampler  # Brain calls sampler.set_epoch(epoch)
    brain.checkpointer.add_recoverable("train_loader", loader)
    brain.fit(epoch_counter, loader, valid_set=...)

Every item of both datasets must carry a key ``"task"`` with value
``"asr"`` or ``"ser"``; :func:`multitask_collate` splits batches on it.
Add it to each dataset's pipeline and output keys, e.g.
``asr_data.add_dynamic_item(lambda _: "asr", takes="id", provides="task")``.

Example
-------
>>> import torch
>>> from speechbrain.dataio.dataset import DynamicItemDataset
>>> from speechbrain.dataio.sampler import ReproducibleRandomSampler
>>> asr_data = DynamicItemDataset(
...     {f"a{i}": {"wrd": "HELLO", "task": "asr"} for i in range(6)},
...     output_keys=["id", "wrd", "task"],
... )
>>> ser_data = DynamicItemDataset(
...     {f"s{i}": {"emo": "sad", "task": "ser"} for i in range(4)},
...     output_keys=["id", "emo", "task"],
... )
>>> def batches(data, seed):
...     sampler = ReproducibleRandomSampler(data, seed=seed)
...     return torch.utils.data.BatchSampler(sampler, 2, drop_last=False)
>>> loader, sampler = make_interleaved_loader(
...     asr_data, ser_data, batches(asr_data, 1), batches(ser_data, 2)
... )
>>> sampler.set_epoch(1)
>>> sampler.task_schedule()
['asr', 'ser', 'asr', 'ser', 'asr']
>>> [(batch.task, len(batch)) for batch in loader]
[('asr', 2), ('ser', 2), ('asr', 2), ('ser', 2), ('asr', 2)]

Authors
 * HarmoniFuse-SB contributors 2025
"""

import itertools

import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataloader import SaveableDataLoader
from torch.utils.data import ConcatDataset, RandomSampler, Sampler

ASR = "asr"
SER = "ser"
MIXED = "mixed"
TASKS = (ASR, SER)
SCHEDULES = ("interleaved", "mixed")
TASK_KEY = "task"

# The task that is not the epoch task restarts when exhausted; its c-th pass
# in epoch e reshuffles with inner epoch ``e * CYCLE_EPOCH_STRIDE + c``, so
# passes never repeat a shuffle unless one epoch needs more passes than this.
CYCLE_EPOCH_STRIDE = 1000


class MultiTaskBatch:
    """One training batch of the multi-task stream.

    Arguments
    ---------
    task : str
        ``"asr"``, ``"ser"`` or ``"mixed"`` (both parts are set).
    asr : speechbrain.dataio.batch.PaddedBatch, optional
        The ASR examples, or None.
    ser : speechbrain.dataio.batch.PaddedBatch, optional
        The SER examples, or None.

    Example
    -------
    >>> asr = PaddedBatch([{"id": "a0", "sig": torch.ones(3)}])
    >>> batch = MultiTaskBatch("asr", asr=asr)
    >>> batch.task, len(batch), batch.ser
    ('asr', 1, None)
    >>> batch.to("cpu").asr.sig.data.shape
    torch.Size([1, 3])
    """

    def __init__(self, task, asr=None, ser=None):
        expected = {ASR: (True, False), SER: (False, True), MIXED: (True, True)}
        if task not in expected:
            raise ValueError(
                f"MultiTaskBatch: task must be one of {sorted(expected)}, "
                f"got {task!r}."
            )
        if expected[task] != (asr is not None, ser is not None):
            raise ValueError(
                f"MultiTaskBatch: task {task!r} needs asr set: "
                f"{expected[task][0]}, ser set: {expected[task][1]}; got "
                f"asr={'set' if asr is not None else None}, "
                f"ser={'set' if ser is not None else None}."
            )
        self.task = task
        self.asr = asr
        self.ser = ser

    def _map(self, fn):
        """Returns a new MultiTaskBatch with ``fn`` applied to each part."""
        return MultiTaskBatch(
            self.task,
            asr=None if self.asr is None else fn(self.asr),
            ser=None if self.ser is None else fn(self.ser),
        )

    def to(self, *args, **kwargs):
        """Moves both parts (``PaddedBatch.to``, which works in place).

        Arguments
        ---------
        *args : tuple
            Passed to ``torch.Tensor.to`` (e.g. a device).
        **kwargs : dict
            Passed to ``torch.Tensor.to``.

        Returns
        -------
        MultiTaskBatch
            A new batch holding the moved parts.
        """
        return self._map(lambda part: part.to(*args, **kwargs))

    def pin_memory(self):
        """Pins both parts (called by a DataLoader with ``pin_memory=True``).

        Returns
        -------
        MultiTaskBatch
            A new batch holding the pinned parts.
        """
        return self._map(lambda part: part.pin_memory())

    def __len__(self):
        return sum(len(part) for part in (self.asr, self.ser) if part)

    def __repr__(self):
        sizes = {
            name: None if part is None else len(part)
            for name, part in ((ASR, self.asr), (SER, self.ser))
        }
        return (
            f"MultiTaskBatch(task={self.task!r}, asr={sizes[ASR]}, "
            f"ser={sizes[SER]})"
        )


def multitask_collate(examples):
    """Collates dataset items into a :class:`MultiTaskBatch`.

    Items are the dicts of SpeechBrain ``DynamicItemDataset`` s; each must
    hold ``"task"`` (``"asr"`` or ``"ser"``). Items are grouped by task, each
    group is collated with ``PaddedBatch`` (without the ``"task"`` key), and
    the batch task is that of the items, or ``"mixed"`` if both occur.

    Arguments
    ---------
    examples : list of dict
        The items of one batch.

    Returns
    -------
    MultiTaskBatch
        The collated batch.

    Example
    -------
    >>> batch = multitask_collate(
    ...     [
    ...         {"id": "a0", "wrd": "HI", "task": "asr"},
    ...         {"id": "s0", "emo": "sad", "task": "ser"},
    ...     ]
    ... )
    >>> batch.task, batch.asr.id, batch.ser.emo
    ('mixed', ['a0'], ['sad'])
    """
    if len(examples) == 0:
        raise ValueError("multitask_collate: got an empty batch.")
    groups = {task: [] for task in TASKS}
    for example in examples:
        if TASK_KEY not in example:
            raise KeyError(
                f"multitask_collate: item {example.get('id', example)!r} "
                f"has no {TASK_KEY!r} key. Add it to the dataset pipeline "
                f"and its output keys (see harmonifuse_sb.interleaving)."
            )
        task = example[TASK_KEY]
        if task not in groups:
            raise ValueError(
                f"multitask_collate: item {example.get('id', '?')!r} has "
                f"task {task!r}; expected one of {list(TASKS)}."
            )
        groups[task].append(
            {key: value for key, value in example.items() if key != TASK_KEY}
        )
    parts = {t: PaddedBatch(g) if g else None for t, g in groups.items()}
    present = [task for task in TASKS if parts[task] is not None]
    task = present[0] if len(present) == 1 else MIXED
    return MultiTaskBatch(task, asr=parts[ASR], ser=parts[SER])


def trained_tasks(schedule="interleaved", ratio=(1, 1)):
    """The tasks that a schedule trains, in the order of ``TASKS``.

    Arguments
    ---------
    schedule : str
        ``"interleaved"`` or ``"mixed"``.
    ratio : tuple of int
        ``(n_asr, n_ser)`` batches per pattern; a 0 leaves that task out of
        the interleaved schedule. The mixed schedule trains both tasks in
        every batch and needs no 0 in ``ratio``.

    Returns
    -------
    tuple of str
        The tasks trained.

    Example
    -------
    >>> trained_tasks("interleaved", [2, 1])
    ('asr', 'ser')
    >>> trained_tasks("interleaved", [0, 1])
    ('ser',)
    >>> trained_tasks("mixed", [0, 1])
    Traceback (most recent call last):
    ...
    ValueError: The mixed schedule trains both tasks in every batch; ratio [0, 1] leaves one out. Use schedule: interleaved for a single-task run.
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f"InterleavedBatchSampler: schedule must be one of "
            f"{list(SCHEDULES)}, got {schedule!r}."
        )
    ratio = list(ratio)
    if (
        len(ratio) != len(TASKS)
        or not all(isinstance(n, int) and n >= 0 for n in ratio)
        or sum(ratio) == 0
    ):
        raise ValueError(
            "InterleavedBatchSampler: ratio must be two integers >= 0, not "
            f"both 0 (n_asr, n_ser), got {ratio!r}."
        )
    tasks = tuple(task for task, n in zip(TASKS, ratio) if n > 0)
    if schedule == MIXED and len(tasks) < len(TASKS):
        raise ValueError(
            "The mixed schedule trains both tasks in every batch; ratio "
            f"{ratio} leaves one out. Use schedule: interleaved for a "
            "single-task run."
        )
    return tasks


def _set_inner_epoch(batch_sampler, epoch):
    """Calls ``set_epoch`` on a batch sampler, or else on its ``.sampler``."""
    for obj in (batch_sampler, getattr(batch_sampler, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def _check_reproducible(batch_sampler, task):
    """Rejects inner samplers whose shuffle cannot be replayed."""
    for obj in (batch_sampler, getattr(batch_sampler, "sampler", None)):
        if isinstance(obj, RandomSampler) and not hasattr(obj, "set_epoch"):
            raise ValueError(
                f"InterleavedBatchSampler: the {task} batch sampler draws "
                "from a torch RandomSampler, whose order cannot be replayed "
                "after checkpoint recovery. Use speechbrain.dataio.sampler."
                "ReproducibleRandomSampler (or DynamicBatchSampler) instead."
            )


def _default_world():
    """Returns (rank, world_size) from torch.distributed, or (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class InterleavedBatchSampler(Sampler):
    """Merges an ASR and an SER batch sampler into one scheduled stream.

    Yields lists of indices into ``ConcatDataset([asr_data, ser_data])``;
    SER indices are offset by ``asr_size``. The stream depends only on the
    epoch and the inner samplers' seeds, so a ``SaveableDataLoader`` around
    it recovers mid-epoch exactly (SpeechBrain fast-forwards this sampler).

    **What an epoch is.** One epoch is one full pass over the batches of
    ``epoch_task``: each of its batches appears exactly once, and the epoch
    ends right after the last of them. The other task's batches *cycle*:
    they are drawn in order from its sampler, and when that sampler is
    exhausted it restarts with a new deterministic shuffle (its c-th pass in
    epoch e uses inner epoch ``e * CYCLE_EPOCH_STRIDE + c``); every epoch
    starts the other task from a fresh pass. The default epoch task is
    ``"asr"``: the ASR corpus is usually the larger one, so an epoch keeps
    the meaning it has in SpeechBrain ASR recipes (learning-rate schedules
    and epoch counts carry over) while the smaller SER corpus repeats.

    **Schedules.** ``"interleaved"`` repeats the pattern
    ``["asr"] * ratio[0] + ["ser"] * ratio[1]``: (1, 1) gives
    A S A S ..., (3, 1) gives A A A S A A A S ... A ratio of 0 leaves a
    task out (single-task baselines of an ablation): (1, 0) trains ASR
    only, (0, 1) SER only; ``epoch_task`` must then be the task that is
    trained, and the other task's batch sampler may be None. ``"mixed"``
    (ablation) puts one ASR batch and one SER batch into every batch (ASR
    indices first); ``ratio`` is ignored and the length is the number of
    epoch-task batches.

    **Epoch hook.** ``set_epoch(epoch)`` selects the epoch; the inner samplers
    get ``set_epoch`` (on the batch sampler if it has one, else on its
    ``.sampler``) when the epoch's plan is built, at the first ``len`` or
    ``iter``. ``Brain`` calls ``set_epoch`` only if
    ``brain.train_sampler`` is this sampler: set it, or every epoch repeats
    the order of ``epoch``. Inner samplers must be deterministic given
    ``set_epoch`` (``ReproducibleRandomSampler`` in a ``BatchSampler``, or
    ``DynamicBatchSampler``); a torch ``RandomSampler`` is rejected.

    **DDP.** Each task's batches of a pass are truncated to a multiple of
    ``world_size`` and rank r takes batches r, r + W, r + 2W, ... So every
    rank has the same length and draws the same task at the same step, on
    different data. Give every rank the same inner samplers and seeds, and
    do not wrap anything in ``DistributedSamplerWrapper``.

    Arguments
    ---------
    asr_batch_sampler : iterable of list of int
        Yields batches of indices into the ASR dataset.
    ser_batch_sampler : iterable of list of int
        Yields batches of indices into the SER dataset.
    asr_size : int
        ``len(asr_dataset)``: the offset of SER indices.
    schedule : str
        ``"interleaved"`` or ``"mixed"``.
    ratio : tuple of int
        ``(n_asr, n_ser)`` consecutive batches per pattern, both >= 0 and
        not both 0.
    epoch_task : str
        ``"asr"`` or ``"ser"``: the task whose full pass is one epoch.
    rank : int, optional
        This process's rank; default from torch.distributed, else 0.
    world_size : int, optional
        Number of processes; default from torch.distributed, else 1.
    epoch : int
        The initial epoch.

    Example
    -------
    >>> from torch.utils.data import BatchSampler, SequentialSampler
    >>> asr = BatchSampler(SequentialSampler(range(6)), 2, drop_last=False)
    >>> ser = BatchSampler(SequentialSampler(range(3)), 2, drop_last=False)
    >>> sampler = InterleavedBatchSampler(asr, ser, asr_size=6, ratio=(2, 1))
    >>> list(sampler)
    [[0, 1], [2, 3], [6, 7], [4, 5]]
    >>> sampler.task_schedule()
    ['asr', 'asr', 'ser', 'asr']
    >>> sampler.task_of([6, 7])
    'ser'
    """

    def __init__(
        self,
        asr_batch_sampler,
        ser_batch_sampler,
        asr_size,
        schedule="interleaved",
        ratio=(1, 1),
        epoch_task=ASR,
        rank=None,
        world_size=None,
        epoch=0,
    ):
        if epoch_task not in TASKS:
            raise ValueError(
                f"InterleavedBatchSampler: epoch_task must be one of "
                f"{list(TASKS)}, got {epoch_task!r}."
            )
        ratio = tuple(ratio)
        tasks = trained_tasks(schedule, ratio)
        if epoch_task not in tasks:
            raise ValueError(
                f"InterleavedBatchSampler: ratio {list(ratio)} trains no "
                f"{epoch_task} batch, so {epoch_task} cannot define the "
                f"epoch: set epoch_task to {tasks[0]!r}."
            )
        for task in TASKS:
            sampler = ser_batch_sampler if task == SER else asr_batch_sampler
            if task in tasks and sampler is None:
                raise ValueError(
                    f"InterleavedBatchSampler: the {task} batch sampler is "
                    f"None but the {schedule} schedule with ratio "
                    f"{list(ratio)} trains {task}."
                )
        if (rank is None) != (world_size is None):
            raise ValueError(
                "InterleavedBatchSampler: give both rank and world_size, or "
                f"neither (got rank={rank}, world_size={world_size})."
            )
        if rank is None:
            rank, world_size = _default_world()
        if not 0 <= rank < world_size:
            raise ValueError(
                f"InterleavedBatchSampler: need 0 <= rank < world_size, got "
                f"rank={rank}, world_size={world_size}."
            )
        _check_reproducible(asr_batch_sampler, ASR)
        _check_reproducible(ser_batch_sampler, SER)
        self.samplers = {ASR: asr_batch_sampler, SER: ser_batch_sampler}
        self.asr_size = int(asr_size)
        self.schedule = schedule
        self.ratio = ratio
        self.epoch_task = epoch_task
        self.tasks = tasks
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self._cache = None  # (epoch, plan); plan = list of (task, indices)

    def set_epoch(self, epoch):
        """Selects the epoch whose plan ``iter`` and ``len`` use.

        Arguments
        ---------
        epoch : int
            The epoch number (SpeechBrain counts from 1).
        """
        self.epoch = epoch

    def task_of(self, batch_indices):
        """Returns the task of a batch of global indices.

        Arguments
        ---------
        batch_indices : list of int
            A batch yielded by this sampler.

        Returns
        -------
        str
            ``"asr"``, ``"ser"`` or ``"mixed"``.
        """
        is_ser = {int(index) >= self.asr_size for index in batch_indices}
        if len(is_ser) != 1:
            return MIXED
        return SER if is_ser.pop() else ASR

    def task_schedule(self, epoch=None):
        """Returns the task of each batch of an epoch, in order.

        Arguments
        ---------
        epoch : int, optional
            The epoch; default the current one.

        Returns
        -------
        list of str
            ``"asr"``, ``"ser"`` or ``"mixed"`` per batch.
        """
        return [task for task, _ in self._plan(epoch)]

    def __iter__(self):
        for _, indices in self._plan():
            yield list(indices)

    def __len__(self):
        return len(self._plan())

    def _plan(self, epoch=None):
        """Returns the epoch's list of (task, indices), cached per epoch."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        plan = self._build_plan(epoch)
        if epoch == self.epoch:
            self._cache = (epoch, plan)
        return plan

    def _build_plan(self, epoch):
        """Lays out all batches of one epoch (index lists only)."""
        main = self.epoch_task
        other = SER if main == ASR else ASR
        main_batches = self._pass(main, epoch)
        other_batches = self._cycle(other, epoch)
        if self.schedule == MIXED:
            plan = []
            for batch in main_batches:
                parts = {main: batch, other: next(other_batches)}
                plan.append((MIXED, parts[ASR] + parts[SER]))
            return plan
        pattern = [ASR] * self.ratio[0] + [SER] * self.ratio[1]
        plan, drawn = [], 0
        for slot in itertools.cycle(pattern):
            if slot == other:
                plan.append((other, next(other_batches)))
                continue
            plan.append((main, main_batches[drawn]))
            drawn += 1
            if drawn == len(main_batches):
                return plan

    def _cycle(self, task, epoch):
        """Yields a task's batches forever, one reshuffled pass after another."""
        for cycle in itertools.count():
            yield from self._pass(task, epoch * CYCLE_EPOCH_STRIDE + cycle)

    def _pass(self, task, inner_epoch):
        """One pass of a task's sampler: global indices, this rank's shard."""
        sampler = self.samplers[task]
        _set_inner_epoch(sampler, inner_epoch)
        offset = self.asr_size if task == SER else 0
        batches = [[int(i) + offset for i in batch] for batch in sampler]
        if task == ASR and any(max(b) >= self.asr_size for b in batches if b):
            raise ValueError(
                "InterleavedBatchSampler: the ASR batch sampler yields "
                f"indices >= asr_size={self.asr_size}. Pass "
                "asr_size=len(asr_dataset) and the samplers in the order "
                "(asr, ser)."
            )
        usable = len(batches) - len(batches) % self.world_size
        if usable == 0:
            raise ValueError(
                f"InterleavedBatchSampler: the {task} batch sampler yields "
                f"{len(batches)} batches, fewer than world_size="
                f"{self.world_size}; use smaller batches or fewer processes."
            )
        return batches[self.rank : usable : self.world_size]


def make_interleaved_loader(
    asr_dataset,
    ser_dataset,
    asr_batch_sampler,
    ser_batch_sampler,
    num_workers=0,
    loader_kwargs=None,
    **interleaver_kwargs,
):
    """Builds the checkpointable multi-task training loader.

    Register the loader with the checkpointer and set
    ``brain.train_sampler`` to the sampler (see the module docstring).

    Arguments
    ---------
    asr_dataset : torch.utils.data.Dataset
        ASR items (dicts with ``"task": "asr"``); None if the schedule
        trains SER only (``ratio`` (0, n)).
    ser_dataset : torch.utils.data.Dataset
        SER items (dicts with ``"task": "ser"``); None if the schedule
        trains ASR only (``ratio`` (n, 0)).
    asr_batch_sampler : iterable of list of int
        Batches of indices into ``asr_dataset`` (None with it).
    ser_batch_sampler : iterable of list of int
        Batches of indices into ``ser_dataset`` (None with it).
    num_workers : int
        DataLoader worker processes.
    loader_kwargs : dict, optional
        More ``DataLoader`` arguments (e.g. ``pin_memory``).
    **interleaver_kwargs : dict
        Passed to :class:`InterleavedBatchSampler` (schedule, ratio, ...).

    Returns
    -------
    loader : speechbrain.dataio.dataloader.SaveableDataLoader
        Yields :class:`MultiTaskBatch` es.
    sampler : InterleavedBatchSampler
        The loader's batch sampler.
    """
    # A task left out contributes no items: SER indices start at 0.
    asr_dataset = [] if asr_dataset is None else asr_dataset
    ser_dataset = [] if ser_dataset is None else ser_dataset
    sampler = InterleavedBatchSampler(
        asr_batch_sampler,
        ser_batch_sampler,
        asr_size=len(asr_dataset),
        **interleaver_kwargs,
    )
    loader = SaveableDataLoader(
        ConcatDataset([asr_dataset, ser_dataset]),
        batch_sampler=sampler,
        collate_fn=multitask_collate,
        num_workers=num_workers,
        **(loader_kwargs or {}),
    )
    return loader, sampler


def make_eval_loader(
    datasets, batch_size=1, num_workers=0, rank=None, world_size=None
):
    """Builds a validation/test loader: one task per batch, sets in order.

    Each dataset (one task's items, e.g. sorted by duration) is cut into
    batches of ``batch_size``; all batches of the first dataset come first.
    A plain ``DataLoader`` with a fixed list of batches, as ``Brain.fit``
    and ``Brain.evaluate`` need.

    Under DDP the batches are sharded: this rank takes batches rank, rank +
    W, rank + 2W, ... of that list (:func:`shard_batches`), so each utterance
    is evaluated once, by one rank, in the same batch as in a single
    process; :func:`merge_shards` puts the gathered per-batch results back
    in the single-process order. SpeechBrain 1.1.2 does not shard
    evaluation at all (``Brain.make_dataloader`` leaves the DDP sampler of
    VALID/TEST commented out, as its metrics are not DDP-aware), and its
    ``DistributedSampler`` path would pad the last shard with duplicates,
    which would change WER and UA.

    Arguments
    ---------
    datasets : list of torch.utils.data.Dataset
        Items of one task each (dicts with a ``"task"`` key).
    batch_size : int
        Examples per batch.
    num_workers : int
        DataLoader worker processes.
    rank : int, optional
        This process's rank; default from torch.distributed, else 0.
    world_size : int, optional
        Number of processes; default from torch.distributed, else 1.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields :class:`MultiTaskBatch` es.

    Example
    -------
    >>> items = [{"id": f"s{i}", "emo": "sad", "task": "ser"} for i in range(3)]
    >>> [(batch.task, len(batch)) for batch in make_eval_loader([items], 2)]
    [('ser', 2), ('ser', 1)]
    >>> shard = make_eval_loader([items], 1, rank=1, world_size=2)
    >>> [batch.ser.id for batch in shard]
    [['s1']]
    """
    if (rank is None) != (world_size is None):
        raise ValueError(
            "make_eval_loader: give both rank and world_size, or neither "
            f"(got rank={rank}, world_size={world_size})."
        )
    if rank is None:
        rank, world_size = _default_world()
    batches, offset = [], 0
    for data in datasets:
        batches += [
            list(range(offset + i, offset + min(i + batch_size, len(data))))
            for i in range(0, len(data), batch_size)
        ]
        offset += len(data)
    return torch.utils.data.DataLoader(
        ConcatDataset(datasets),
        batch_sampler=shard_batches(batches, rank, world_size),
        collate_fn=multitask_collate,
        num_workers=num_workers,
    )


def shard_batches(batches, rank, world_size):
    """Takes one rank's share of evaluation batches: every W-th one.

    Nothing is padded or repeated: the shards of all ranks together hold
    each batch exactly once (a rank may get one batch fewer, or none).

    Arguments
    ---------
    batches : list
        All batches, in the single-process order.
    rank : int
        This process's rank, in [0, world_size).
    world_size : int
        Number of processes.

    Returns
    -------
    list
        Batches rank, rank + W, rank + 2W, ...

    Example
    -------
    >>> shard_batches(["b0", "b1", "b2", "b3", "b4"], 1, 2)
    ['b1', 'b3']
    """
    if not 0 <= rank < world_size:
        raise ValueError(
            f"shard_batches: need 0 <= rank < world_size, got rank={rank}, "
            f"world_size={world_size}."
        )
    return batches[rank::world_size]


def merge_shards(shards):
    """Inverse of :func:`shard_batches`: the per-rank lists, interleaved.

    Arguments
    ---------
    shards : list of list
        Per rank (in rank order), its per-batch results in the order of its
        shard.

    Returns
    -------
    list
        The results in the single-process batch order.

    Example
    -------
    >>> merge_shards([["b0", "b2", "b4"], ["b1", "b3"]])
    ['b0', 'b1', 'b2', 'b3', 'b4']
    """
    world_size = len(shards)
    total = sum(len(shard) for shard in shards)
    merged = []
    for index in range(total):
        rank, position = index % world_size, index // world_size
        if position >= len(shards[rank]):
            raise ValueError(
                f"merge_shards: rank {rank} has {len(shards[rank])} results; "
                f"batch {index} of {total} needs more. The shards do not "
                "come from shard_batches over one batch list."
            )
        merged.append(shards[rank][position])
    return merged
