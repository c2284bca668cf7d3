"""Registering a component is all it takes: its keys validate, list and default from its class.

The new algorithm is registered in a subprocess, so the registries of this test session (the
README table, the key listing) stay those of the shipped components.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from interlude.config import ALGORITHMS, BACKBONES, DATASETS


def test_a_new_algorithm_registers_with_its_options_alone():
    script = textwrap.dedent('''
        from pydantic import Field

        from interlude.algorithms import AlgorithmContext, PseudoLabelOptions, build_algorithm
        from interlude.algorithms.fixmatch import FixMatch
        from interlude.algorithms.base import register_algorithm
        from interlude.config import ALGORITHMS, key_lines, load_config, valid_keys
        from interlude.errors import ConfigError

        assert "algorithm.gamma" not in valid_keys()  # the listing is built before it registers

        class NewOptions(PseudoLabelOptions):
            gamma: float = Field(0.5, gt=0, lt=1)
            """Weight of something new."""

        @register_algorithm("newmatch", NewOptions)
        class NewMatch(FixMatch):
            pass

        cfg = load_config("configs/digits.yaml", ["algorithm.name=newmatch", "algorithm.gamma=0.25"])
        assert cfg.algorithm.gamma == 0.25 and cfg.algorithm.threshold == 0.95
        assert "lambda_dc" not in cfg.to_dict()["algorithm"]  # digits.yaml's InterLUDE keys
        assert load_config(None, ["algorithm.name=newmatch"]).algorithm.gamma == 0.5
        algo = build_algorithm(cfg.algorithm, AlgorithmContext(num_classes=3))
        assert algo.name == "newmatch" and algo.uses_unlabeled and algo.fusion_strength == 0.0
        try:
            load_config(None, ["algorithm.name=fixmatch", "algorithm.gamma=2"])
        except ConfigError as exc:  # another algorithm's key: checked against its class
            assert str(exc).startswith("algorithm.gamma=2.0 is out of range"), exc
        else:
            raise AssertionError("gamma=2 accepted")
        line = next(x for x in key_lines() if x.startswith("algorithm.gamma "))
        assert "valid: (0, 1)" in line and "(used by newmatch)" in line, line
        assert ALGORITHMS.names()[-1] == "newmatch"
        print("ok")
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_registries_hold_the_shipped_components():
    """Names come from the registrations; each selector value picks its component."""
    assert len(ALGORITHMS.names()) == len(set(ALGORITHMS.names())) >= 6
    for registry in (ALGORITHMS, DATASETS, BACKBONES):
        for component in registry:
            assert registry.selecting(component.example) is component
    assert BACKBONES.selecting("timm/resnet18").name == "timm"
    assert BACKBONES.selecting("timm/") is None and BACKBONES.selecting("resnet18") is None


def test_a_package_imports_every_module_it_holds(tmp_path, monkeypatch):
    """How a new component module gets registered without a list of modules to extend."""
    from interlude.config.registry import import_submodules

    package = tmp_path / "plugins_for_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("first", "second"):
        (package / f"{name}.py").write_text(f"import builtins\nbuiltins.seen_{name} = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins

    import_submodules("plugins_for_test", [str(package)])
    assert builtins.seen_first and builtins.seen_second
    del builtins.seen_first, builtins.seen_second


def test_every_algorithm_module_is_registered():
    import pkgutil

    import interlude.algorithms as package
    from interlude.config import ALGORITHMS

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base"}
    registered = {ALGORITHMS.get(n).target.__module__.rpartition(".")[2] for n in ALGORITHMS.names()}
    assert registered == modules
