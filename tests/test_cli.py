"""The command line: one-line errors, config display, a tiny training run."""

from __future__ import annotations

import subprocess
import sys

from interlude.cli import main


def test_unknown_key_is_one_line_error(capsys):
    assert main(["train", "train.stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'train.stepz'")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_key_given_twice_on_the_command_line_is_named(capsys, caplog):
    # scripts append overrides to a base list, so the last value is used; a person who typed the
    # key twice by mistake is told which one won (bare and dotted spellings are the same key)
    assert main(["config", "show", "configs/digits.yaml", "lr=0.1", "train.lr=0.3"]) == 0
    assert "lr: 0.3" in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records if "given twice" in r.getMessage()] == [
        "train.lr is given twice ('lr=0.1', then 'train.lr=0.3'): using the last"]
    caplog.clear()
    assert main(["config", "show", "train.steps=7", "train.lr=0.2"]) == 0
    assert not [r for r in caplog.records if "given twice" in r.getMessage()]


def test_layered_overrides_keep_the_last_value_of_each_key():
    from interlude.config import merged_overrides

    assert merged_overrides(["train.lr=0.1", "train.steps=5", "lr=0.3", "train.seed=2"]) == [
        "lr=0.3", "train.steps=5", "train.seed=2"]


def test_bad_labels_per_class_is_one_line_error(capsys, tmp_path):
    code = main(["train", "data.labels_per_class=1000", f"train.out_dir={tmp_path}"])
    assert code == 2
    assert "lower data.labels_per_class" in capsys.readouterr().err


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "configs/digits.yaml", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "name: interlude" in out


def test_config_keys_lists_documented_keys(capsys):
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "algorithm.fusion_strength (float; default 0.1; valid: [0, 1)): Embedding fusion" in out
    assert "default per algorithm: freematch 0.001, interlude_plus 0.05" in out


def test_train_subprocess_writes_run_dir(tmp_path, tiny_overrides):
    result = subprocess.run(
        [sys.executable, "-m", "interlude", "train", "configs/digits.yaml", *tiny_overrides],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "test ema top1=" in result.stdout
    run_dir = tmp_path / "runs" / "digits-interlude-s0"
    for name in ("config.yaml", "split.json", "metrics.jsonl", "metrics.csv", "summary.json"):
        assert (run_dir / name).is_file(), name


def test_readme_config_reference_is_up_to_date():
    """The table of the shipped components, generated in a fresh process: test modules register
    components of their own (synthetic datasets) that are no part of the README."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    start, end = "<!-- CONFIG-REFERENCE:START -->", "<!-- CONFIG-REFERENCE:END -->"
    embedded = readme[readme.index(start) + len(start) : readme.index(end)].strip()
    assert embedded.splitlines()[0] == "| key | type | default | valid | meaning |"
    assert "| `algorithm.lambda_dc` |" in embedded and "(used by " in embedded
    check = subprocess.run([sys.executable, str(root / "tools" / "sync_readme.py"), "--check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, (
        f"README config table is stale: run `python tools/sync_readme.py` {check.stderr[-500:]}"
    )


def test_output_piped_into_head_is_not_an_error(monkeypatch, capfd):
    """`interlude eval RUN | head -1`: the reader closing the pipe is no `error:` line."""
    import interlude.cli as cli

    def reader_left(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_config", reader_left)
    redirected = []  # stdout is pointed at /dev/null; not pytest's own stdout here
    monkeypatch.setattr(cli.os, "dup2", lambda fd, fd2: redirected.append(fd2))
    assert main(["config", "keys"]) == 141
    assert redirected == [sys.stdout.fileno()]
    assert capfd.readouterr().err == ""
