"""What to label next: ranking unlabeled images by how much labeling each would help.

Used by ``interlude suggest`` and :meth:`InterLUDEClassifier.suggest` (one implementation). The
strategies are pure functions of the model's class probabilities and penultimate-layer
embeddings, so they are tested on hand-made cases:

- ``margin``: 1 - (p_top1 - p_top2); an image the model hesitates between two classes on first;
- ``entropy``: entropy of the class probabilities over log(K), in [0, 1];
- ``coreset``: k-center greedy (farthest-first traversal) on the embeddings, starting from the
  labeled images when they are known: covers the pool, ignores confidence;
- ``hybrid``: the ``candidates * n`` most uncertain images by margin, then k-center greedy among
  them, so 50 suggestions are not 50 near-copies of one confusing image.

Inference goes by batches of rows (a pool in the on-disk image cache is read a batch at a time;
image files are decoded a batch at a time), and only the logits and embeddings are kept.
Every ranking is deterministic: eval mode, fixed order, ties broken by the lower index.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import entropy
from sklearn.metrics import pairwise_distances
from torch import nn

from interlude.data.base import SSLData
from interlude.data.rows import ImageRows, as_rows
from interlude.errors import DataError
from interlude.files import write_csv

log = logging.getLogger("interlude")

STRATEGIES = ("margin", "entropy", "coreset", "hybrid")
HYBRID_CANDIDATES = 10
"""hybrid: k-center greedy runs among the ``10 * n`` most uncertain images."""
CONTACT_SHEET_COLUMNS = 10


# ----------------------------------------------------------------------------- strategies
def margin_scores(probabilities: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)`` per row: 1 = a tie between two classes, 0 = certain."""
    top2 = -np.partition(-np.asarray(probabilities, dtype=np.float64), 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy_scores(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of each row over ``log(K)``: 1 = uniform, 0 = one-hot."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return entropy(probabilities, axis=1) / math.log(probabilities.shape[1])


@dataclass
class KCenter:
    """A k-center greedy selection: ``indices`` in pick order, ``distances[i]`` the distance of
    pick ``i`` to its nearest centre when it was picked, and ``radius`` the largest distance of
    any point to its nearest centre afterwards (no two picks are closer than it)."""

    indices: np.ndarray
    distances: np.ndarray
    radius: float


def k_center_greedy(embeddings: np.ndarray, n: int,
                    already_selected: Sequence[int] | np.ndarray | None = None) -> KCenter:
    """Pick ``n`` rows of ``embeddings`` by farthest-first traversal (Sener & Savarese's core set).

    Each pick is the row farthest from every centre so far (``already_selected`` and the earlier
    picks), so the picks are at least ``radius`` apart. With no centre to start from, the first
    pick is the row farthest from the mean embedding (deterministic, unlike a random start).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.dtype.kind != "f":
        embeddings = embeddings.astype(np.float64)
    total = len(embeddings)
    selected = np.asarray([] if already_selected is None else already_selected, dtype=np.int64)
    available = total - len(np.unique(selected))
    n = min(int(n), available)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if len(selected):
        nearest = pairwise_distances(embeddings, embeddings[selected]).min(axis=1)
    else:
        nearest = np.full(total, np.inf)
    nearest[selected] = -np.inf  # never picked again
    picks: list[int] = []
    distances: list[float] = []
    for _ in range(n):
        if np.isinf(nearest).all():  # no centre yet: start farthest from the mean
            pick = int(pairwise_distances(embeddings, embeddings.mean(0, keepdims=True)).argmax())
            distance = float(np.linalg.norm(embeddings[pick] - embeddings.mean(0)))
        else:
            pick = int(nearest.argmax())
            distance = float(nearest[pick])
        picks.append(pick)
        distances.append(distance)
        nearest = np.minimum(nearest, pairwise_distances(embeddings, embeddings[pick : pick + 1])[:, 0])
        nearest[pick] = -np.inf
    rest = nearest[np.isfinite(nearest) & (nearest >= 0)]
    radius = float(rest.max()) if len(rest) else 0.0
    return KCenter(np.asarray(picks, dtype=np.int64), np.asarray(distances), radius)


@dataclass
class Ranking:
    """The ``n`` suggested rows (indices into the ranked set) best first, and their scores."""

    indices: np.ndarray
    scores: np.ndarray


def rank(strategy: str, probabilities: np.ndarray, embeddings: np.ndarray | None, n: int,
         labeled_embeddings: np.ndarray | None = None,
         candidates: int = HYBRID_CANDIDATES) -> Ranking:
    """The ``n`` rows to label next under ``strategy`` (see the module docstring).

    Scores: the uncertainty for ``margin``/``entropy``/``hybrid`` (hybrid ranks by pick order,
    the score says how uncertain the pick is); for ``coreset`` the distance of each pick to its
    nearest centre when picked. ``labeled_embeddings`` (optional) are the centres coreset and
    hybrid start from, so they do not suggest what is labeled already.
    """
    check_strategy(strategy)
    total = len(probabilities)
    n = min(int(n), total)
    if strategy in ("margin", "entropy"):
        scores = margin_scores(probabilities) if strategy == "margin" else entropy_scores(
            probabilities)
        order = np.argsort(-scores, kind="stable")[:n]
        return Ranking(order, scores[order])
    if embeddings is None:
        raise ValueError(f"strategy {strategy!r} needs embeddings")
    if strategy == "coreset":
        pool = np.arange(total)
    else:
        uncertainty = margin_scores(probabilities)
        pool = np.argsort(-uncertainty, kind="stable")[: max(n, candidates * n)]
    chosen = _k_center_from(embeddings[pool], n, labeled_embeddings)
    indices = pool[chosen.indices]
    scores = chosen.distances if strategy == "coreset" else margin_scores(probabilities[indices])
    return Ranking(indices, scores)


def _k_center_from(embeddings: np.ndarray, n: int, labeled: np.ndarray | None) -> KCenter:
    """k-center greedy over ``embeddings`` with the ``labeled`` embeddings as first centres."""
    if labeled is None or len(labeled) == 0:
        return k_center_greedy(embeddings, n)
    stacked = np.concatenate([embeddings, np.asarray(labeled, dtype=embeddings.dtype)])
    return k_center_greedy(stacked, n, np.arange(len(embeddings), len(stacked)))


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


# ----------------------------------------------------------------------------- inference
@contextmanager
def _capture_embeddings(model: nn.Module, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Collect the input of the network's classifier layer (the embedding) on every forward."""
    from interlude.nets import classifier_layer

    captured: list[torch.Tensor] = []
    if not enabled:
        yield captured
        return
    handle = classifier_layer(model).register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0].detach().flatten(1).float().cpu()))
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def probabilities_and_embeddings(
    model: nn.Module, batches: Iterable[np.ndarray], mean: Sequence[float], std: Sequence[float],
    device: torch.device | str = "cpu", total: int | None = None, progress: bool = True,
    embed: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities ``(N, K)`` and embeddings ``(N, D)`` of uint8 image batches.

    ``batches`` yields uint8 ``(B, C, H, W)`` arrays (rows read from a cache, or files decoded a
    batch at a time), so the pool never needs to fit in memory; only the probabilities and, with
    ``embed``, the float32 embeddings are kept (None without). The caller sets eval mode.
    """
    from tqdm.auto import tqdm

    from interlude.data.augment import normalize, to_float
    from interlude.inference import softmax

    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    logits: list[np.ndarray] = []
    bar = tqdm(total=total, desc="scoring", unit="img", leave=False,
               disable=None if progress else True, file=sys.stderr)
    with _capture_embeddings(model, embed) as embeddings, bar:
        for batch in batches:
            if len(batch) == 0:
                continue
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            logits.append(model(normalize(to_float(x), mean_t, std_t)).float().cpu().numpy())
            bar.update(len(batch))
        if not logits:
            return np.empty((0, 0)), None
        return softmax(np.concatenate(logits)), torch.cat(embeddings).numpy() if embed else None


def row_batches(images: np.ndarray | ImageRows, batch_size: int) -> Iterator[np.ndarray]:
    """Rows of an in-memory or disk-backed ``(N, C, H, W)`` set, ``batch_size`` at a time."""
    yield from as_rows(images).chunks(batch_size)


# ----------------------------------------------------------------------------- suggestions
@dataclass
class Suggestions:
    """What to label next, best first, and the files of the pool that could not be read."""

    strategy: str
    rows: np.ndarray
    """Positions of the suggestions in the ranked pool."""
    index: np.ndarray
    """The pool's own numbering of each suggestion (training-pool index, or position in the
    list of files)."""
    files: list[str] | None
    """The file of each suggestion (None: the pool is a dataset's arrays)."""
    predicted: list[str]
    confidence: np.ndarray
    scores: np.ndarray
    images: np.ndarray
    """uint8 ``(n, C, H, W)``: what the contact sheet shows."""
    unreadable: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.rows)


def suggest(model: nn.Module, class_names: Sequence[str], mean: Sequence[float],
            std: Sequence[float], pool: Pool, n: int, strategy: str,
            labeled: np.ndarray | None = None, batch_size: int = 256,
            device: torch.device | str = "cpu", progress: bool = True) -> Suggestions:
    """Rank ``pool`` with ``model`` and return the ``n`` best suggestions (the shared core of
    the CLI and the estimator). ``labeled`` are uint8 images already labeled (coreset/hybrid
    start from them)."""
    check_strategy(strategy)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise DataError(f"n must be a positive integer (how many images to suggest), got {n!r}")
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    diverse = strategy in ("coreset", "hybrid")
    probabilities, embeddings = probabilities_and_embeddings(
        model, pool.batches(batch_size), mean, std, device, len(pool), progress, diverse)
    if len(probabilities) == 0:
        raise DataError(f"none of the {len(pool)} image(s) could be read; check the paths "
                        "and formats")
    labeled_embeddings = None
    if labeled is not None and len(labeled) and diverse:
        _, labeled_embeddings = probabilities_and_embeddings(
            model, row_batches(labeled, batch_size), mean, std, device, len(labeled), False)
    ranking = rank(strategy, probabilities, embeddings, n, labeled_embeddings)
    readable = pool.readable_rows()
    rows = readable[ranking.indices]
    top = probabilities[ranking.indices].argmax(axis=1)
    return Suggestions(
        strategy=strategy, rows=rows, index=pool.index[rows],
        files=[pool.files[r] for r in rows] if pool.files is not None else None,
        predicted=[str(class_names[k]) for k in top],
        confidence=probabilities[ranking.indices, top], scores=ranking.scores,
        images=pool.images_at(rows), unreadable=pool.unreadable,
    )


class Pool:
    """The images to rank: a run's unlabeled pool (array or image cache), arrays, or files.

    ``index`` is the pool's own numbering of each row (for a run, the index in the dataset's
    training pool that ``split.json`` uses); ``files`` names each row's file when rows are
    files. Files are decoded a batch at a time while ranking; those that cannot be read are
    left out and listed in ``unreadable``.
    """

    def __init__(self, images: Any = None, index: np.ndarray | None = None,
                 files: list[str] | None = None,
                 read: Callable[[list[str]], tuple[np.ndarray, list[str | None]]] | None = None,
                 rows: np.ndarray | None = None):
        if (images is None) == (read is None):
            raise ValueError("a pool holds images or files read by `read`, not both")
        self._images = None if images is None else as_rows(images)
        self._rows = rows
        """The rows of ``images`` in the pool (None: all); ``index``/``files`` are per pool row."""
        self._read = read
        self.files = files
        size = (len(rows) if rows is not None else len(images)) if images is not None else len(
            files or [])
        self.index = np.arange(size) if index is None else np.asarray(index, dtype=np.int64)
        self._readable = np.ones(size, dtype=bool)
        self.unreadable: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.index)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self._images is not None:
            if self._rows is None:
                yield from row_batches(self._images, batch_size)
            else:
                for start in range(0, len(self._rows), batch_size):
                    yield self._images.read(self._rows[start : start + batch_size])
            return
        assert self.files is not None and self._read is not None
        self.unreadable.clear()
        for start in range(0, len(self.files), batch_size):
            chunk = self.files[start : start + batch_size]
            images, errors = self._read(chunk)
            for offset, (path, error) in enumerate(zip(chunk, errors, strict=True)):
                self._readable[start + offset] = error is None
                if error is not None:
                    self.unreadable.append((path, error))
            yield images

    def readable_rows(self) -> np.ndarray:
        return np.flatnonzero(self._readable)

    def images_at(self, rows: np.ndarray) -> np.ndarray:
        if self._images is not None:
            stored = rows if self._rows is None else self._rows[rows]
            return self._images.read(stored)
        assert self.files is not None and self._read is not None
        images, errors = self._read([self.files[r] for r in rows])
        if len(images) != len(rows):
            changed = next(e for e in errors if e is not None)
            raise DataError(f"a suggested file could not be read again ({changed}); the files "
                            "changed while ranking: run suggest again")
        return images


def file_pool(paths: Sequence[str | Path], image_shape: Sequence[int],
              interpolation: str = "bilinear") -> Pool:
    """Image files (folders searched recursively) as a :class:`Pool`, decoded as predictions
    decode them; unreadable files are skipped and reported."""
    from interlude.inputs import image_files, read_images_skipping

    files = [str(p) for p in image_files(paths)]
    channels, height, width = (int(v) for v in image_shape)

    def read(chunk: list[str]) -> tuple[np.ndarray, list[str | None]]:
        return read_images_skipping([Path(p) for p in chunk], channels, height, width,
                                    interpolation)

    return Pool(files=files, read=read)


# ----------------------------------------------------------------------------- outputs
SUGGESTION_COLUMNS = ("rank", "file", "index", "predicted", "confidence", "score", "label")


def write_suggestions_csv(path: Path, suggestions: Suggestions) -> None:
    """``rank,file,index,predicted,confidence,score,label``; ``label`` is left empty for the
    person labeling: the file, filled in, is accepted back as ``data.labels_file``."""
    rows = []
    for i in range(len(suggestions)):
        rows.append([
            i + 1, _absolute(suggestions.files[i]) if suggestions.files is not None else "",
            int(suggestions.index[i]), suggestions.predicted[i],
            f"{suggestions.confidence[i]:.6f}", f"{suggestions.scores[i]:.6f}", "",
        ])
    write_csv(path, SUGGESTION_COLUMNS, rows)


def _absolute(file: str) -> str:
    """A file as an absolute path: the CSV is read back relative to its own folder."""
    return str(Path(file).resolve()) if file else ""


def write_contact_sheet(path: Path, suggestions: Suggestions,
                        columns: int = CONTACT_SHEET_COLUMNS) -> bool:
    """A PNG grid of the suggestions, each titled with its rank, predicted class and confidence
    (people choose what to label by looking). False when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    from interlude.artifact import write_atomic

    count = len(suggestions)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(1.6 * columns, 1.8 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= count:
            continue
        image = suggestions.images[i]
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        ax.set_title(f"#{i + 1} {suggestions.predicted[i][:14]}\n"
                     f"p={suggestions.confidence[i]:.2f}", fontsize=7)
    figure.suptitle(f"label next ({suggestions.strategy})", fontsize=9)
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    return True


# ----------------------------------------------------------------------------- interlude suggest
def run_pool(data: SSLData) -> Pool:
    """A run's unlabeled pool (in RAM or in the image cache, read by rows), numbered as its
    ``split.json`` numbers the training pool; rows from an unlabeled folder carry their file
    and follow on after the training pool (``train_pool_size + j``)."""
    split = data.split
    if "unlabeled" in split:  # data.unlabeled_from: the pool is another dataset's
        raise DataError(
            f"this run's unlabeled images come from another dataset "
            f"({split.get('sources', {}).get('unlabeled', 'data.unlabeled_from')}), whose rows "
            "data.labels_file cannot name; suggest from a run trained without data.unlabeled_from"
        )
    size = int(split.get("train_pool_size", 0))
    taken = np.zeros(size, dtype=bool)
    taken[list(split.get("labeled", []))] = True
    taken[list(split.get("val", []))] = True
    from interlude.data.splits import inlier_rows

    from_pool = inlier_rows(np.flatnonzero(~taken), split.get("inlier_unlabeled_limit"),
                             int(split.get("data_seed", 0)))
    extra = len(data.unlabeled) - len(from_pool)
    index = np.concatenate([from_pool, size + np.arange(extra)])
    files = None
    if data.extra_unlabeled_files is not None and len(data.extra_unlabeled_files) == extra:
        files = [""] * len(from_pool) + list(data.extra_unlabeled_files)
    if files is None or not split.get("labels_file"):
        return Pool(images=data.unlabeled.images, index=index, files=files)
    # files labeled through data.labels_file stay in the training pool's unlabeled part (as
    # labeled images do in FixMatch); they are not suggested again
    from interlude.data.labels_file import read_labels_file

    labeled = {os.path.abspath(p) for p in read_labels_file(split["labels_file"],
                                                            data.class_names).files}
    rows = np.array([i for i, f in enumerate(files) if not f or os.path.abspath(f) not in labeled],
                    dtype=np.int64)
    return Pool(images=data.unlabeled.images, index=index[rows],
                files=[files[i] for i in rows], rows=rows)


def suggest_run(run_dir: str | Path, n: int = 50, strategy: str = "hybrid",
                images: Sequence[str | Path] | None = None, checkpoint: str = "last",
                batch_size: int = 256, progress: bool = True) -> Suggestions:
    """Suggestions from a run's checkpoint: over its unlabeled pool (rebuilt from its config and
    ``split.json``), or over ``images`` (files and folders) when given."""
    from interlude.artifact import Checkpoint
    from interlude.inference import rebuild_run_data
    from interlude.rundir import RunDir

    check_strategy(strategy)
    run = RunDir(Path(run_dir))
    state = Checkpoint.load(run.checkpoint(checkpoint))
    model = state.build_model(source=str(run.path))
    meta = state.meta
    labeled = None
    if images:
        pool = file_pool(images, meta.image_shape, meta.interpolation)
    else:
        data = rebuild_run_data(run, state, "pass the images to rank: interlude suggest RUN_DIR "
                                            "IMAGES_OR_FOLDERS..., or clf.suggest(X) in Python")
        pool, labeled = run_pool(data), data.labeled.images
    return suggest(model, meta.class_names, meta.mean, meta.std, pool, n, strategy, labeled,
                   batch_size, progress=progress)


def suggest_cli(args: Any) -> int:
    """``interlude suggest RUN_DIR [IMAGES...] [--n 50] [--strategy hybrid] [--out DIR]``."""
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be positive, got {args.batch_size}")
    if args.n < 1:
        raise DataError(f"--n must be positive (how many images to suggest), got {args.n}")
    suggestions = suggest_run(args.run_dir, args.n, args.strategy, args.images or None,
                              args.checkpoint, args.batch_size)
    out = Path(args.out) if args.out is not None else Path(args.run_dir) / "suggestions"
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder for suggestions.csv and "
                        "contact_sheet.png")
    csv_path = out / "suggestions.csv"
    write_suggestions_csv(csv_path, suggestions)
    sheet = out / "contact_sheet.png"
    if not write_contact_sheet(sheet, suggestions):
        log.warning("no contact sheet: it needs matplotlib (pip install 'interlude[plots]')")
    if suggestions.unreadable:
        write_csv(out / "unreadable.csv", ("file", "error"), suggestions.unreadable)
        log.warning("warning: %d file(s) could not be read and were skipped; %s says why",
                    len(suggestions.unreadable), out / "unreadable.csv")
    log.info("%d suggestions (%s) in %s; fill in the label column and train with "
             "data.labels_file=%s", len(suggestions), suggestions.strategy, out, csv_path)
    print(csv_path)
    return 0
