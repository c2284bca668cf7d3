"""Command line: ``interlude train|eval|config|sweep|report|predict|suggest|export``.

Errors caused by the user (bad config, missing data, corrupt checkpoint, a busy run directory,
a full disk) are printed as a single ``error: ...`` line; anything else is a bug and keeps its
traceback. ``key=value`` overrides may stand anywhere among the options.

Exit status: 0 done (or stopped by ``--stop-after``); 2 user error; 3 training diverged (NaN/inf;
the last good checkpoint is kept); 128 + signal number when interrupted by a signal after a
checkpoint was saved: 130 for SIGINT (Ctrl-C), 143 for SIGTERM, 129 for SIGHUP (the terminal or
SSH session was closed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from interlude.errors import InterludeError, TrainingDiverged

log = logging.getLogger("interlude")

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``train [CONFIG] [key=value ...]``: the config file is optional; a key given twice is
    warned about (see :func:`interlude.config.warn_repeated_overrides`)."""
    from interlude.config import warn_repeated_overrides

    if items and "=" not in items[0]:
        return items[0], warn_repeated_overrides(items[1:])
    return None, warn_repeated_overrides(items)


def cmd_train(args: argparse.Namespace) -> int:
    from interlude.config import load_config
    from interlude.train import run

    config_path, overrides = _split_config_and_overrides(args.items)
    cfg = load_config(config_path, overrides)
    result = run(cfg, resume=args.resume, stop_after=args.stop_after, overwrite=args.overwrite)
    status = 128 + result.stop_signal if result.stop_signal is not None else 0
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return status
    if result.finished:
        print(_format_summary(result.summary, result.run_dir))
    else:
        print(f"stopped at step {result.summary['steps']} ({result.stop_reason}); continue with: "
              f"interlude train {' '.join(args.items)} --resume")
    return status


def _format_summary(summary: dict, run_dir: Path) -> str:
    primary = summary.get("primary_model", "ema")
    lines = [f"run: {run_dir}"]
    for title, record in (("last", summary.get("last")), ("selected (best val)",
                                                           summary.get("best"))):
        if not record:
            continue
        parts = [
            f"{key.split('/')[-1]}={record[key]:.4f}"
            for key in (f"test/{primary}/top1", f"test/{primary}/balanced_acc",
                        f"test/{primary}/macro_f1")
            if key in record
        ]
        if parts:
            lines.append(f"{title} @ step {record.get('step')}: test {primary} " + " ".join(parts))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from interlude.inference import evaluate_run

    results = evaluate_run(Path(args.run_dir), args.checkpoint, args.split, args.model)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for key, value in results.items():
            if key.endswith("confusion"):
                print(f"{key}:")
                for row in value:
                    print("  " + " ".join(f"{v:5d}" for v in row))
            else:
                print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from interlude.config import config_reference_markdown, key_lines, load_config

    if args.action == "keys":
        print(config_reference_markdown() if args.markdown else "\n".join(key_lines()))
        return 0
    config_path, overrides = _split_config_and_overrides(args.items)
    print(load_config(config_path, overrides).to_yaml(), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from interlude.config import warn_repeated_overrides
    from interlude.experiments.sweep import run_sweep_cli

    warn_repeated_overrides(args.overrides)  # typed twice: warned, as for `interlude train`
    print(run_sweep_cli(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from interlude.experiments.report import build_report, format_signatures
    from interlude.experiments.signatures import Thresholds

    try:
        thresholds = Thresholds().with_values(dict(args.threshold or []))
    except KeyError as exc:
        raise InterludeError(f"--threshold {exc.args[0]}: unknown threshold; use one of "
                             f"{', '.join(Thresholds.names())}") from None
    report = build_report([Path(d) for d in args.run_dirs], Path(args.out), thresholds)
    for line in format_signatures(report.signatures):
        print(line)
    print(report.path)
    return 0


def _threshold(text: str) -> tuple[str, float]:
    """``--threshold NAME=VALUE``: one failure-signature threshold."""
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name or number != number:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER (e.g. seed_sd=2), got {text!r}")
    return name, number


def cmd_predict(args: argparse.Namespace) -> int:
    from interlude.inference import predict_cli

    return predict_cli(args)


def cmd_suggest(args: argparse.Namespace) -> int:
    from interlude.suggest import suggest_cli

    return suggest_cli(args)


def cmd_export(args: argparse.Namespace) -> int:
    from interlude.export import export_run

    print(export_run(Path(args.run_dir), args.format, args.out, args.checkpoint))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"error: {message} (see: {self.prog} --help)\n")


def _positive_step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="interlude",
        description="Semi-supervised image classification with InterLUDE and its baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model: interlude train CONFIG [key=value ...]")
    train.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                       help="a YAML config file (optional) followed by overrides")
    start = train.add_mutually_exclusive_group()  # continue it, or start over: not both
    start.add_argument("--resume", action="store_true",
                       help="continue the run from its checkpoints/last.pt")
    start.add_argument("--overwrite", action="store_true",
                       help="start over even if the run dir holds a run")
    train.add_argument("--stop-after", type=_positive_step, default=None, metavar="STEP",
                       help="stop (with a checkpoint) at this step; continue later with --resume")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run's checkpoint")
    ev.add_argument("run_dir")
    ev.add_argument("--checkpoint", choices=["last", "best"], default="last")
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.add_argument("--model", choices=["ema", "raw"], default="ema")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=cmd_eval)

    cfg = sub.add_parser("config", help="show the resolved config, or list every key")
    cfg.add_argument("action", choices=["show", "keys"])
    cfg.add_argument("items", nargs="*", metavar="CONFIG|key=value")
    cfg.add_argument("--markdown", action="store_true", help="keys: print a Markdown table")
    cfg.set_defaults(func=cmd_config)

    sweep = sub.add_parser("sweep", help="run a grid of configs x seeds")
    sweep.add_argument("config", help="a run config, or a sweep file (configs/sweeps/*.yaml)")
    sweep.add_argument("overrides", nargs="*", metavar="key=value")
    sweep.add_argument("--grid", nargs="+", default=[], metavar="key=v1,v2",
                       help="values to sweep per key (cartesian product)")
    sweep.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2")
    sweep.add_argument("--processes", type=int, default=1,
                       help="run this many trainings at once as separate processes")
    sweep.add_argument("--out", default="runs/sweeps", help="root folder of the sweep's runs")
    sweep.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="local: train here; slurm: submit the runs as a Slurm job array")
    shown = sweep.add_mutually_exclusive_group()
    shown.add_argument("--status", action="store_true",
                       help="table of the sweep's runs: Slurm job, state, step, last metric, log")
    shown.add_argument("--cancel", action="store_true",
                       help="scancel the sweep's queued and running tasks (they checkpoint first)")
    slurm = sweep.add_argument_group("Slurm (--launcher slurm; override the sweep file's slurm:)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--time", default=None, metavar="LIMIT",
                       help="time limit per task: minutes, H:MM:SS or D-HH:MM:SS; a run longer "
                            "than that is checkpointed and requeued")
    slurm.add_argument("--gpus-per-run", type=int, default=None, metavar="N",
                       help="GPUs per run (more than one: DDP via torchrun on one node)")
    slurm.add_argument("--cpus-per-run", type=int, default=None, metavar="N")
    slurm.add_argument("--mem-per-run", type=float, default=None, metavar="GB")
    slurm.add_argument("--max-running", type=int, default=None, metavar="N",
                       help="at most N runs of the array at once")
    slurm.add_argument("--sbatch-arg", action="append", default=None, metavar="--FLAG[=VALUE]",
                       help="extra sbatch flag (repeatable), e.g. --sbatch-arg=--constraint=a100")
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="Markdown table and plots from run dirs")
    report.add_argument("run_dirs", nargs="+")
    report.add_argument("--out", default="report")
    report.add_argument("--threshold", type=_threshold, action="append", metavar="NAME=VALUE",
                        help="change a failure-signature threshold (repeatable): seed_sd, "
                        "acc_drop (points), unsup_rise, mask_rise, mask_floor, dc_share, pl_tv")
    report.set_defaults(func=cmd_report)

    predict = sub.add_parser("predict", help="classify image files (and folders) with a trained run")
    predict.add_argument("run_dir")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                         help="image files, or folders searched recursively for images")
    predict.add_argument("--out", default=None,
                         help="CSV file, or a folder to write predictions.csv in (default: stdout)")
    predict.add_argument("--checkpoint", choices=["last", "best"], default="last")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.set_defaults(func=cmd_predict)

    suggest = sub.add_parser("suggest", help="rank unlabeled images by how much labeling each "
                             "would help: a CSV and a contact sheet")
    suggest.add_argument("run_dir")
    suggest.add_argument("images", nargs="*", metavar="IMAGE_OR_FOLDER",
                         help="rank these files/folders instead of the run's unlabeled pool")
    suggest.add_argument("--n", type=int, default=50, help="how many images to suggest")
    suggest.add_argument("--strategy", choices=["margin", "entropy", "coreset", "hybrid"],
                         default="hybrid", help="hybrid: uncertain (margin), then diverse")
    suggest.add_argument("--out", default=None,
                         help="folder for suggestions.csv and contact_sheet.png "
                         "(default RUN_DIR/suggestions)")
    suggest.add_argument("--checkpoint", choices=["last", "best"], default="last")
    suggest.add_argument("--batch-size", type=int, default=256)
    suggest.set_defaults(func=cmd_suggest)

    export = sub.add_parser("export", help="export the EMA model with its preprocessing")
    export.add_argument("run_dir")
    export.add_argument("--format", choices=["safetensors", "onnx", "torchscript"],
                        default="safetensors")
    export.add_argument("--out", default=None, help="output folder (default RUN_DIR/export)")
    export.add_argument("--checkpoint", choices=["last", "best"], default="last")
    export.set_defaults(func=cmd_export)
    return parser


# subcommand -> the attribute that collects its `key=value` overrides
_OVERRIDES_INTO = {"train": "items", "config": "items", "sweep": "overrides"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides stand after options too
    (``interlude train cfg.yaml --overwrite train.steps=5``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    target = _OVERRIDES_INTO.get(args.command)
    stray = [item for item in extra if target is None or item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        setattr(args, target, [*getattr(args, target), *extra])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except TrainingDiverged as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DIVERGED
    except InterludeError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print(f"error: {OUT_OF_MEMORY}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as exc:  # torch reports a failed allocation as a RuntimeError
        if not _is_out_of_memory(exc):
            raise
        print(f"error: {OUT_OF_MEMORY} ({_one_line(exc)[:200]})", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `interlude eval RUN | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141
    except OSError as exc:  # disk full, permissions, a folder where a file was expected
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


OUT_OF_MEMORY = ("out of memory: the run asks for more than this machine has; lower "
                 "train.batch_size, train.mu, train.eval_batch_size, data.resolution or model.width")


def _is_out_of_memory(exc: RuntimeError) -> bool:
    """A failed allocation (CPU or CUDA; ``torch.OutOfMemoryError`` is a RuntimeError)."""
    import torch  # loaded already when torch raised; the CLI's start does not pay for it

    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text or (
        "out of memory" in text)


MAX_ERROR_CHARS = 3000
"""An error line longer than this is cut: quoted input is bounded where it is quoted
(:func:`interlude.errors.shown`), this is the backstop for the terminal."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
