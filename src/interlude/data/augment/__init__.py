"""Weak/strong augmentation: batched on tensors (training, any device) and per image with PIL
(``train.augment_on: workers``). RandAugmentMC follows kekmodel/FixMatch-pytorch (op pool,
magnitude mapping, op sampling).

- :mod:`.plan`: the host side: op list, magnitude tables, a step's random draws, and the layout of
  each RandAugment round (which rows each op family reads, with which parameters);
- :mod:`.tensor_ops`: the batched tensor ops and their constant tables;
- :mod:`.batched`: :func:`weak_augment`, :func:`strong_augment` and :func:`augment_views` (every
  view of a training step in one go);
- :mod:`.pil`: the per-image PIL path.

The contract (``tests/test_augment.py``): the views are a pure function of the generators'
states, which the trainer seeds per (seed, step, rank), so a step's views never change and a
resumed run is bit-identical; and each tensor op is within a stated tolerance of its PIL
counterpart.
"""

from .batched import augment_views, strong_augment, weak_augment
from .pil import sample_plan_per_image, strong_augment_per_image, weak_augment_per_image
from .plan import OP_NAMES, PARAMETER_MAX, sample_strong_plan, to_device
from .tensor_ops import normalize, to_float

__all__ = [
    "OP_NAMES", "PARAMETER_MAX", "augment_views", "normalize", "sample_plan_per_image",
    "sample_strong_plan", "strong_augment", "strong_augment_per_image", "to_device", "to_float",
    "weak_augment", "weak_augment_per_image",
]
