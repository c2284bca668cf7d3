"""Count the aten operators a training step dispatches: launch overhead, measured without a GPU.

On a GPU every dispatched operator costs host time (a few microseconds through the dispatcher,
plus a kernel launch for most), whatever the batch size; at small images a step can be bound by
that rather than by arithmetic. The count is a property of the code, not of the machine, so it is
measured here on the CPU with ``torch.profiler`` and is deterministic for a given step, which lets
a test pin it (a timing could not be pinned). Every ``aten::`` event is counted, nested ones too
(``aten::to`` and the ``aten::_to_copy`` / ``aten::copy_`` it calls are three): every trip
through the dispatcher, the stricter of the usual ways to count, and the one the issue's
figures (about 1,300-1,500 per strong augmentation call before the rewrite) were taken with.

``benchmarks/speed.py --sections ops`` reports these counts; ``tests/test_opcount.py`` pins them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

AUGMENT_RANGE = "interlude::augment_views"
"""``torch.profiler.record_function`` label of the augmentation inside the input pipeline."""


@dataclass
class OpCount:
    """Dispatched ``aten::`` operators of one call, with the result of the call."""

    total: int
    by_name: Counter
    within: Counter = field(default_factory=Counter)
    """Operators dispatched inside each ``record_function`` range (e.g. :data:`AUGMENT_RANGE`)."""
    result: Any = None

    def top(self, k: int = 8) -> str:
        return ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in
                         self.by_name.most_common(k))


def count_aten_ops(fn: Callable[[], Any]) -> OpCount:
    """Run ``fn()`` once under the profiler and count the ``aten::`` operators it dispatched."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    names: Counter = Counter()
    within: Counter = Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        names[event.name] += 1
        parent = event.cpu_parent
        while parent is not None:
            if not parent.name.startswith("aten::"):
                within[parent.name] += 1
            parent = parent.cpu_parent
    return OpCount(sum(names.values()), names, within, result)


@dataclass
class StepOps:
    """Operators of one training step, split where the step's work splits."""

    input: OpCount
    """``BatchBuilder.build``: sampling, weak + strong augmentation of every view, normalise."""
    model: OpCount
    """The rest of ``Trainer.train_step``: layout, forward, loss, backward, optimizer, EMA."""

    @property
    def augmentation(self) -> int:
        """The augmentation alone (all views of the step), inside the input pipeline."""
        return self.input.within[AUGMENT_RANGE]


def step_op_counts(trainer, step: int = 1) -> StepOps:
    """Count one training step of ``trainer`` (a :class:`~interlude.train.loop.Trainer`).

    One step runs first, so one-time work (optimizer state, constant tables) is not counted;
    then the input pipeline and the model step of ``step`` are counted apart, the model step on
    the batch the pipeline just built. The trainer trains two steps doing so.
    """
    trainer.train_step(step)
    built = count_aten_ops(lambda: trainer.batches.build(step))
    batches = trainer.batches
    original = batches.build
    batches.build = lambda _step: built.result  # type: ignore[method-assign]
    try:
        model = count_aten_ops(lambda: trainer.train_step(step))
    finally:
        batches.build = original  # type: ignore[method-assign]
    return StepOps(built, model)


def floor_step_fn(model: torch.nn.Module, x: torch.Tensor,
                  optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A bare forward + cross-entropy + backward + optimizer step of ``model`` on ``x``.

    The floor a training step is compared with: the same network, batch and optimizer, nothing
    else (no augmentation, layout, fusion, unlabeled losses, EMA or schedule).
    """
    targets = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
