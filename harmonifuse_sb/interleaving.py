"""Batch interleaving: one training stream from the corpora of N tasks.

HarmoniFuse trains on separate corpora, one per task (ASR, SER, ...): no
utterance needs both a transcript and an emotion label. Each optimiser step
sees one batch of one task, drawn by a fixed schedule (strict alternation,
or a ratio per task such as 3:1).

The interleaver is a *batch sampler* over ``torch.utils.data.ConcatDataset``
of the tasks' datasets: it yields lists of global indices (a task's indices
are offset by the sizes of the datasets before it), and its order depends
only on ``(epoch, seeds of the inner samplers)``. Inside a SpeechBrain
``SaveableDataLoader`` this makes mid-epoch recovery free: the loader
checkpoints how many batches it yielded and, on recovery, SpeechBrain
fast-forwards the batch sampler's iterator by that many index lists (no audio
is loaded) before the first batch comes out.

Wiring in a recipe::

    loader, sampler = make_interleaved_loader(
        {"asr": asr_data, "ser": ser_data},
        {"asr": asr_batch_sampler, "ser": ser_batch_sampler},
        ratio={"asr": 2, "ser": 1},
    )
    brain.train_sampler = sampler  # Brain calls sampler.set_epoch(epoch)
    brain.checkpointer.add_recoverable("train_loader", loader)
    brain.fit(epoch_counter, loader, valid_set=...)

Every item of a task's dataset must carry a key ``"task"`` whose value is
the task's name; :func:`multitask_collate` splits batches on it. Add it to
each dataset's pipeline and output keys, e.g.
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
...     {"asr": asr_data, "ser": ser_data},
...     {"asr": batches(asr_data, 1), "ser": batches(ser_data, 2)},
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
TASKS = (ASR, SER)  # the task names of a two-task (ASR + SER) model
SCHEDULES = ("interleaved", "mixed")
TASK_KEY = "task"

# The tasks that are not the epoch task restart when exhausted; a task's
# c-th pass in epoch e reshuffles with inner epoch
# ``e * CYCLE_EPOCH_STRIDE + c``, so passes never repeat a shuffle unless
# one epoch needs more passes than this.
CYCLE_EPOCH_STRIDE = 1000


class MultiTaskBatch:
    """One training batch of the multi-task stream.

    Arguments
    ---------
    task : str
        A task name (one part), or ``"mixed"`` (two or more parts).
    parts : dict, optional
        Task name -> ``speechbrain.dataio.batch.PaddedBatch``.
    **named : PaddedBatch
        More parts by task name (``asr=...``); None values are skipped.

    A task's part is also an attribute (``batch.asr``), None when the batch
    has no such part.

    Example
    -------
    >>> asr = PaddedBatch([{"id": "a0", "sig": torch.ones(3)}])
    >>> batch = MultiTaskBatch("asr", asr=asr)
    >>> batch.task, len(batch), batch.ser
    ('asr', 1, None)
    >>> batch.to("cpu").asr.sig.data.shape
    torch.Size([1, 3])
    """

    def __init__(self, task, parts=None, **named):
        parts = dict(parts or {})
        parts.update({k: v for k, v in named.items() if v is not None})
        if task == MIXED:
            if len(parts) < 2:
                raise ValueError(
                    "MultiTaskBatch: a 'mixed' batch needs two or more "
                    f"task parts (e.g. needs asr set and ser set); got "
                    f"{sorted(parts) or 'none'}."
                )
        elif list(parts) != [task]:
            raise ValueError(
                f"MultiTaskBatch: a {task!r} batch needs exactly the part "
                f"{task!r} (e.g. MultiTaskBatch({task!r}, {task}=...)); got "
                f"{sorted(parts) or 'none'}."
            )
        self.task = task
        self.parts = parts

    def __getattr__(self, name):
        # Only reached for names that are not attributes: task parts.
        if name.startswith("_") or "parts" not in self.__dict__:
            raise AttributeError(name)
        return self.parts.get(name)

    def _map(self, fn):
        """Returns a new MultiTaskBatch with ``fn`` applied to each part."""
        return MultiTaskBatch(
            self.task, {task: fn(part) for task, part in self.parts.items()}
        )

    def to(self, *args, **kwargs):
        """Moves every part (``PaddedBatch.to``, which works in place).

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
        """Pins every part (called by a DataLoader with ``pin_memory=True``).

        Returns
        -------
        MultiTaskBatch
            A new batch holding the pinned parts.
        """
        return self._map(lambda part: part.pin_memory())

    def __len__(self):
        return sum(len(part) for part in self.parts.values())

    def __repr__(self):
        sizes = ", ".join(f"{t}={len(p)}" for t, p in self.parts.items())
        return f"MultiTaskBatch(task={self.task!r}, {sizes})"


def multitask_collate(examples):
    """Collates dataset items into a :class:`MultiTaskBatch`.

    Items are the dicts of SpeechBrain ``DynamicItemDataset`` s; each must
    hold ``"task"`` (a task name). Items are grouped by task (in the order
    their tasks first occur), each group is collated with ``PaddedBatch``
    (without the ``"task"`` key), and the batch task is that of the items,
    or ``"mixed"`` if several occur.

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
    groups = {}
    for example in examples:
        if TASK_KEY not in example:
            raise KeyError(
                f"multitask_collate: item {example.get('id', example)!r} "
                f"has no {TASK_KEY!r} key. Add it to the dataset pipeline "
                f"and its output keys (see harmonifuse_sb.interleaving)."
            )
        task = example[TASK_KEY]
        if not isinstance(task, str) or task == MIXED:
            raise ValueError(
                f"multitask_collate: item {example.get('id', '?')!r} has "
                f"task {task!r}; expected a task name (not {MIXED!r})."
            )
        groups.setdefault(task, []).append(
            {key: value for key, value in example.items() if key != TASK_KEY}
        )
    parts = {task: PaddedBatch(group) for task, group in groups.items()}
    task = next(iter(parts)) if len(parts) == 1 else MIXED
    return MultiTaskBatch(task, parts)


def task_ratios(tasks, ratio):
    """Batches per pattern of each task, as a dict in the order of ``tasks``.

    Arguments
    ---------
    tasks : list of str
        The task names, in order.
    ratio : dict or list of int
        Task -> batches per pattern, or one integer per task in order (the
        YAML's ``interleaving: ratio: [2, 1]``).

    Returns
    -------
    dict
        Task -> int.

    Example
    -------
    >>> task_ratios(["asr", "ser"], [2, 1])
    {'asr': 2, 'ser': 1}
    >>> task_ratios(["asr", "ser"], [2])
    Traceback (most recent call last):
    ...
    ValueError: InterleavedBatchSampler: ratio must give one integer >= 0 per task (['asr', 'ser']), not all 0; got [2].
    """
    tasks = list(tasks)
    if isinstance(ratio, dict):
        values = [ratio.get(task) for task in tasks]
        extra = sorted(set(ratio) - set(tasks))
    else:
        values, extra = list(ratio), []
    if (
        extra
        or len(values) != len(tasks)
        or not all(isinstance(n, int) and n >= 0 for n in values)
        or sum(values) == 0
    ):
        raise ValueError(
            "InterleavedBatchSampler: ratio must give one integer >= 0 per "
            f"task ({tasks}), not all 0; got {ratio!r}."
        )
    return dict(zip(tasks, values))


def trained_tasks(schedule="interleaved", ratio=(1, 1), tasks=TASKS):
    """The tasks that a schedule trains, in the order of ``tasks``.

    Arguments
    ---------
    schedule : str
        ``"interleaved"`` or ``"mixed"``.
    ratio : dict or list of int
        Batches per pattern of each task (see :func:`task_ratios`); a 0
        leaves that task out of the interleaved schedule. The mixed
        schedule trains every task in every batch and needs no 0.
    tasks : list of str
        The task names (default ``("asr", "ser")``).

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
    >>> trained_tasks("interleaved", {"asr": 2, "ser": 1, "accent": 1},
    ...               tasks=["asr", "ser", "accent"])
    ('asr', 'ser', 'accent')
    >>> trained_tasks("mixed", [0, 1])
    Traceback (most recent call last):
    ...
    ValueError: The mixed schedule trains every task in every batch; ratio [0, 1] leaves one out. Use schedule: interleaved for a single-task run.
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f"InterleavedBatchSampler: schedule must be one of "
            f"{list(SCHEDULES)}, got {schedule!r}."
        )
    ratios = task_ratios(tasks, ratio)
    trained = tuple(task for task, n in ratios.items() if n > 0)
    if schedule == MIXED and len(trained) < len(ratios):
        raise ValueError(
            "The mixed schedule trains every task in every batch; ratio "
            f"{ratio} leaves one out. Use schedule: interleaved for a "
            "single-task run."
        )
    return trained


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
    """Merges the batch samplers of N tasks into one scheduled stream.

    Yields lists of indices into ``ConcatDataset`` of the tasks' datasets,
    in the order of ``batch_samplers``: a task's indices are offset by the
    sizes of the datasets before it. The stream depends only on the epoch
    and the inner samplers' seeds, so a ``SaveableDataLoader`` around it
    recovers mid-epoch exactly (SpeechBrain fast-forwards this sampler).

    **What an epoch is.** One epoch is one full pass over the batches of
    ``epoch_task``: each of its batches appears exactly once, and the epoch
    ends right after the last of them. The other tasks' batches *cycle*:
    they are drawn in order from their samplers, and when one is exhausted
    it restarts with a new deterministic shuffle (its c-th pass in epoch e
    uses inner epoch ``e * CYCLE_EPOCH_STRIDE + c``); every epoch starts
    each of them from a fresh pass. The default epoch task is the first:
    in the YAMLs the ASR corpus, usually the larger one, so an epoch keeps
    the meaning it has in SpeechBrain ASR recipes (learning-rate schedules
    and epoch counts carry over) while the smaller corpora repeat.

    **Schedules.** ``"interleaved"`` repeats the pattern ``[t1] * ratio[t1]
    + [t2] * ratio[t2] + ...`` in task order: ASR, SER with (1, 1) gives
    A S A S ..., (3, 1) gives A A A S A A A S ... A ratio of 0 leaves a
    task out (single-task baselines of an ablation): (1, 0) trains ASR
    only; ``epoch_task`` must then be a task that is trained, and a left
    out task's batch sampler may be None. ``"mixed"`` (ablation) puts one
    batch of every task into every batch (in task order); ``ratio`` only
    says which tasks train and the length is the number of epoch-task
    batches.

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
    batch_samplers : dict
        Task name -> an iterable of lists of indices into that task's
        dataset (None for a task that ``ratio`` leaves out).
    sizes : dict
        Task name -> ``len`` of its dataset (0 for a task left out), in
        the order of the ``ConcatDataset``.
    schedule : str
        ``"interleaved"`` or ``"mixed"``.
    ratio : dict or list of int, optional
        Consecutive batches of each task per pattern (see
        :func:`task_ratios`), >= 0 and not all 0; default 1 each.
    epoch_task : str, optional
        The task whose full pass is one epoch; default the first.
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
    >>> sampler = InterleavedBatchSampler(
    ...     {"asr": asr, "ser": ser}, {"asr": 6, "ser": 3}, ratio=(2, 1))
    >>> list(sampler)
    [[0, 1], [2, 3], [6, 7], [4, 5]]
    >>> sampler.task_schedule()
    ['asr', 'asr', 'ser', 'asr']
    >>> sampler.task_of([6, 7])
    'ser'
    """

    def __init__(
        self,
        batch_samplers,
        sizes,
        schedule="interleaved",
        ratio=None,
        epoch_task=None,
        rank=None,
        world_size=None,
        epoch=0,
    ):
        names = list(sizes)
        if list(batch_samplers) != names or not names:
            raise ValueError(
                "InterleavedBatchSampler: batch_samplers and sizes must name "
                f"the same tasks in the same order; got {list(batch_samplers)}"
                f" and {names}."
            )
        if ratio is None:
            ratio = [1] * len(names)
        epoch_task = names[0] if epoch_task is None else epoch_task
        if epoch_task not in names:
            raise ValueError(
                f"InterleavedBatchSampler: epoch_task must be one of "
                f"{names}, got {epoch_task!r}."
            )
        tasks = trained_tasks(schedule, ratio, names)
        if epoch_task not in tasks:
            raise ValueError(
                f"InterleavedBatchSampler: ratio {list(ratio)} trains no "
                f"{epoch_task} batch, so {epoch_task} cannot define the "
                f"epoch: set epoch_task to {tasks[0]!r}."
            )
        for task in tasks:
            if batch_samplers[task] is None:
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
        for task, sampler in batch_samplers.items():
            _check_reproducible(sampler, task)
        self.samplers = dict(batch_samplers)
        self.sizes = {task: int(size) for task, size in sizes.items()}
        self.offsets = dict(
            zip(names, itertools.accumulate([0] + list(self.sizes.values())))
        )
        self.schedule = schedule
        self.ratio = task_ratios(names, ratio)
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
            A task name, or ``"mixed"``.
        """
        found = set()
        for index in batch_indices:
            for task in reversed(list(self.offsets)):
                if self.sizes[task] and int(index) >= self.offsets[task]:
                    found.add(task)
                    break
        return found.pop() if len(found) == 1 else MIXED

    def task_schedule(self, epoch=None):
        """Returns the task of each batch of an epoch, in order.

        Arguments
        ---------
        epoch : int, optional
            The epoch; default the current one.

        Returns
        -------
        list of str
            A task name or ``"mixed"`` per batch.
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
        """Lays out all batches of one epoch (index lists only).

        The epoch task's pass is drawn first and each other task's cycle
        lazily, in pattern order: with two tasks this is the order of the
        two-task interleaver that the quick-start's figures were made with.
        """
        main = self.epoch_task
        main_batches = self._pass(main, epoch)
        cycles = {
            task: self._cycle(task, epoch)
            for task in self.tasks
            if task != main
        }
        if self.schedule == MIXED:
            plan = []
            for batch in main_batches:
                parts = {main: batch}
                parts.update({t: next(c) for t, c in cycles.items()})
                indices = [i for t in self.tasks for i in parts[t]]
                plan.append((MIXED, indices))
            return plan
        pattern = [t for t, n in self.ratio.items() for _ in range(n)]
        plan, drawn = [], 0
        for slot in itertools.cycle(pattern):
            if slot != main:
                plan.append((slot, next(cycles[slot])))
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
        offset, size = self.offsets[task], self.sizes[task]
        batches = [[int(i) + offset for i in batch] for batch in sampler]
        if any(max(b) >= offset + size for b in batches if b):
            raise ValueError(
                f"InterleavedBatchSampler: the {task} batch sampler yields "
                f"indices >= sizes[{task!r}]={size}. Pass each task's "
                "len(dataset) in sizes, in the order of batch_samplers."
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
    datasets,
    batch_samplers,
    num_workers=0,
    loader_kwargs=None,
    **interleaver_kwargs,
):
    """Builds the checkpointable multi-task training loader.

    Register the loader with the checkpointer and set
    ``brain.train_sampler`` to the sampler (see the module docstring).

    Arguments
    ---------
    datasets : dict
        Task name -> its items (dicts with ``"task"`` set to that name);
        None for a task that the schedule leaves out (ratio 0).
    batch_samplers : dict
        Task name -> batches of indices into its dataset (None with it).
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
    # A task left out contributes no items: the next task's indices start
    # where it would have.
    datasets = {t: [] if d is None else d for t, d in datasets.items()}
    sampler = InterleavedBatchSampler(
        {task: batch_samplers.get(task) for task in datasets},
        {task: len(data) for task, data in datasets.items()},
        **interleaver_kwargs,
    )
    loader = SaveableDataLoader(
        ConcatDataset(list(datasets.values())),
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
