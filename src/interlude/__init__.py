"""interlude: semi-supervised image classification with InterLUDE (ICML 2024) and its baselines.

Quick start from Python::

    from interlude.config import load_config
    from interlude.train import run
    result = run(load_config("configs/digits.yaml"))  # result.run_dir, result.summary
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["InterLUDEClassifier", "__version__", "load"]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import interlude` (and the CLI's --help) fast.
    if name == "InterLUDEClassifier":
        from interlude.estimator import InterLUDEClassifier

        return InterLUDEClassifier
    if name == "load":
        from interlude.export import load

        return load
    raise AttributeError(f"module 'interlude' has no attribute {name!r}")
