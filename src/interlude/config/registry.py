"""Registries of the components a config chooses between: algorithms, datasets, backbones.

Each component registers once, with a decorator in its own module, together with its options
class (a subclass of the section's generic class in :mod:`interlude.config.options`)::

    class FixMatchOptions(PseudoLabelOptions):
        threshold: float = Field(0.95, gt=0, le=1)
        \"\"\"Confidence threshold tau.\"\"\"

    @register_algorithm("fixmatch", FixMatchOptions)
    class FixMatch(Algorithm): ...

The packages import every component module (``interlude/algorithms/__init__.py``,
``interlude/data/__init__.py``, ``interlude/nets/__init__.py``), so a component cannot be left
out; config validation, ``interlude config keys``, the README table and the tests all read the
registries (:func:`load_components` imports the packages on first use).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from interlude.config.options import AlgorithmOptions, DataConfig, ModelConfig, Options

T = TypeVar("T")


@dataclass(frozen=True)
class Component:
    """One registered component: its name, options class and what it builds."""

    name: str
    options: type[Options]
    target: Any
    """The algorithm class, the dataset loader function or the backbone builder."""
    archs: tuple[str, ...] = ()
    """Backbones: the ``model.arch`` values the family builds."""
    prefix: str | None = None
    """Backbones: a ``model.arch`` prefix naming any model of the family (``timm/``)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts the component owns that other code asks for (a dataset's ``default_arch``)."""

    def selects(self, value: str) -> bool:
        """Whether the section's selector value (a name or an arch) picks this component."""
        if self.archs or self.prefix:
            return value in self.archs or (self.prefix is not None and value.startswith(self.prefix)
                                           and len(value) > len(self.prefix))
        return value == self.name

    @property
    def example(self) -> str:
        """A selector value that picks this component (for docs and tests)."""
        if self.archs:
            return self.archs[0]
        if self.prefix:
            return f"{self.prefix}{self.info.get('example', 'resnet18')}"
        return self.name


class Registry:
    """The components of one config section, chosen by the value of its ``selector`` key."""

    def __init__(self, section: str, selector: str, base: type[Options], what: str) -> None:
        self.section, self.selector, self.base, self.what = section, selector, base, what
        self._components: dict[str, Component] = {}

    def add(self, component: Component) -> None:
        if not issubclass(component.options, self.base):
            raise TypeError(f"{self.what} {component.name!r}: its options class must extend "
                            f"{self.base.__name__}")
        old = self._components.get(component.name)
        if old is not None and _qualname(old.target) != _qualname(component.target):
            raise ValueError(f"{self.what} {component.name!r} is registered twice "
                             f"({_qualname(old.target)} and {_qualname(component.target)})")
        self._components[component.name] = component
        global _generation
        _generation += 1

    def __iter__(self) -> Iterator[Component]:
        load_components()
        return iter(list(self._components.values()))

    def names(self) -> list[str]:
        return [c.name for c in self]

    def get(self, name: str) -> Component:
        load_components()
        return self._components[name]

    def __contains__(self, name: object) -> bool:
        load_components()
        return name in self._components

    def selecting(self, value: str) -> Component | None:
        """The component the selector value picks (None: no registered one)."""
        return next((c for c in self if c.selects(value)), None)

    def selector_values(self) -> list[str]:
        """Valid selector values for messages and docs (``timm/<name>`` for a prefix)."""
        values: list[str] = []
        for c in self:
            values += list(c.archs) if (c.archs or c.prefix) else [c.name]
            if c.prefix:
                values.append(f"{c.prefix}<name>")
        return values


ALGORITHMS = Registry("algorithm", "name", AlgorithmOptions, "algorithm")
DATASETS = Registry("data", "name", DataConfig, "dataset")
BACKBONES = Registry("model", "arch", ModelConfig, "backbone family")
REGISTRIES: dict[str, Registry] = {r.section: r for r in (DATASETS, BACKBONES, ALGORITHMS)}


def register_algorithm(name: str, options: type[AlgorithmOptions]) -> Callable[[type[T]], type[T]]:
    """Class decorator: the :class:`~interlude.algorithms.Algorithm` subclass ``algorithm.name``
    selects; its constructor takes ``(options, context)``."""

    def wrap(cls: type[T]) -> type[T]:
        ALGORITHMS.add(Component(name, options, cls))
        cls.name = name  # type: ignore[attr-defined]
        cls.options_class = options  # type: ignore[attr-defined]
        return cls

    return wrap


def register_dataset(name: str, options: type[DataConfig] = DataConfig, *,
                     default_arch: str | None = None) -> Callable[[T], T]:
    """Function decorator: the loader ``(options) -> RawDataset`` ``data.name`` selects.
    ``default_arch``: the network ``model.arch=auto`` picks for this dataset."""

    def wrap(fn: T) -> T:
        DATASETS.add(Component(name, options, fn, info={"default_arch": default_arch}))
        return fn

    return wrap


def register_backbone(name: str, options: type[ModelConfig] = ModelConfig, *,
                      archs: tuple[str, ...] = (), prefix: str | None = None,
                      example: str | None = None) -> Callable[[T], T]:
    """Function decorator: the builder ``(arch, options, num_classes, in_channels, resolution)
    -> nn.Module`` of a backbone family, selected by ``model.arch`` in ``archs`` or starting
    with ``prefix``."""
    if not archs and not prefix:
        raise ValueError(f"backbone family {name!r} needs archs or a prefix")

    def wrap(fn: T) -> T:
        info = {"example": example} if example else {}
        BACKBONES.add(Component(name, options, fn, archs=tuple(archs), prefix=prefix, info=info))
        return fn

    return wrap


_PACKAGES = ("interlude.algorithms", "interlude.data", "interlude.nets")
_loaded = False
_generation = 0


def generation() -> int:
    """Changes whenever a component registers: what is derived from the registries (the key
    listing) is cached per generation, so a component registered late is still seen."""
    load_components()
    return _generation


def load_components() -> None:
    """Import the packages whose modules register the components (once, on first use: the config
    module itself stays importable by the components)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for package in _PACKAGES:
            importlib.import_module(package)


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (its ``__path__``), so that each component module
    registers itself: adding an algorithm, a dataset format or a backbone family is adding a
    module, with no list of modules to extend."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
