"""CIFAR-10, CIFAR-100, STL-10 and SVHN, read from their official on-disk formats.

We read the files ourselves rather than through torchvision so the standard benchmarks need no
extra dependency, the exact layout conversions (CIFAR row-major planes, STL-10 column-major
images, SVHN's ``(H, W, C, N)`` arrays and its label 10 for digit 0) are tested here, and STL-10's
100k unlabeled images can stay memory-mapped. torchvision is used only to *download* the files
(``data.download=true``), into ``data.data_dir``.

``data.data_dir`` may point at the parent folder (``data/``) or at the extracted folder itself
(``data/cifar-10-batches-py``).

Normalisation constants are the ones of USB/TorchSSL (which InterLUDE builds on), so results are
comparable with the published tables.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import ImageSet, RawDataset
from interlude.data.cache import (
    CacheSpec,
    RowWriter,
    build_in_memory,
    cache_root,
    file_signature,
    fingerprint,
    open_cached,
)
from interlude.data.matfile import MatFormatError, open_uint8
from interlude.data.registry import register_dataset
from interlude.data.rows import concat_rows
from interlude.data.transforms import resize_images
from interlude.errors import DataError


def _per_255(*values: float) -> tuple[float, ...]:
    return tuple(round(v / 255.0, 6) for v in values)


CIFAR10_MEAN, CIFAR10_STD = _per_255(125.3, 123.0, 113.9), _per_255(63.0, 62.1, 66.7)
CIFAR100_MEAN, CIFAR100_STD = _per_255(129.3, 124.1, 112.4), _per_255(68.2, 65.4, 70.4)
STL10_MEAN, STL10_STD = _per_255(112.4, 109.1, 98.6), _per_255(68.4, 66.6, 68.5)
SVHN_MEAN, SVHN_STD = (0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744)

STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]
STL10_SIZE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIZE * STL10_SIZE
_CONVERT_ROWS = 256  # images per chunk when converting a large split into the cache

FOLDERS = {  # where each official archive extracts to (SVHN ships bare .mat files)
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "stl10": "stl10_binary",
    "svhn": "svhn",
}
MANUAL = {
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
               "into {data_dir}",
    "cifar100": "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract "
                "it into {data_dir}",
    "stl10": "download http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and extract it "
             "into {data_dir}",
    "svhn": "download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and test_32x32.mat "
            "(and extra_32x32.mat for data.svhn_extra=true) into {data_dir}",
}


# --------------------------------------------------------------------------- locating files
def _locate(cfg: DataConfig, dataset: str, files: list[str]) -> Path:
    """Folder holding all of ``files``: ``data_dir/<official folder>`` or ``data_dir`` itself.

    With ``data.download=true`` missing files are fetched first; otherwise the error names what
    is missing, where we looked, and both ways to fix it.
    """
    data_dir = Path(cfg.data_dir).expanduser()
    found = _find(data_dir, dataset, files)
    if found is not None:
        return found
    if cfg.download:
        # only SVHN's options have svhn_extra
        _download(dataset, _download_root(data_dir, dataset),
                  extra=bool(getattr(cfg, "svhn_extra", False)))
        found = _find(data_dir, dataset, files)
        if found is not None:
            return found
    raise DataError(_missing_message(cfg, dataset, files))


def _candidates(data_dir: Path, dataset: str) -> list[Path]:
    """Where to look, the place a download would write to first."""
    nested = data_dir / FOLDERS[dataset]
    return [data_dir, nested] if dataset == "svhn" else [nested, data_dir]


def _find(data_dir: Path, dataset: str, files: list[str]) -> Path | None:
    for candidate in _candidates(data_dir, dataset):
        if all((candidate / name).is_file() for name in files):
            return candidate
    return None


def _missing_message(cfg: DataConfig, dataset: str, files: list[str]) -> str:
    data_dir = Path(cfg.data_dir).expanduser()
    candidates = _candidates(data_dir, dataset)
    # report against the candidate holding the most files: that is where the user put them
    best = max(candidates, key=lambda c: sum((c / n).is_file() for n in files))
    missing = [n for n in files if not (best / n).is_file()]
    needs = "" if missing == files else f"; {dataset} needs {', '.join(files)}"
    other = next(c for c in candidates if c != best)
    tried = " data.download=true did not produce them." if cfg.download else ""
    manual = MANUAL[dataset].format(data_dir=data_dir)
    return (
        f"{dataset}: missing file(s) {', '.join(missing)} in {best.resolve()} (also searched "
        f"{other.resolve()}{needs}).{tried} Fix: {manual} (or set data.data_dir to the folder "
        "holding these files), or set data.download=true to fetch them with torchvision "
        "(pip install 'interlude[vision]')"
    )


def _download_root(data_dir: Path, dataset: str) -> Path:
    """torchvision extracts archives into ``root/<folder>``: step up if data_dir already names
    that folder. SVHN's .mat files are written straight into ``root``."""
    if dataset != "svhn" and data_dir.name == FOLDERS[dataset]:
        return data_dir.parent
    return data_dir


def _download(dataset: str, root: Path, extra: bool = False) -> None:
    """Fetch the official files with torchvision; we read them with our own readers afterwards
    (``extra``: SVHN's extra split too)."""
    try:
        datasets = importlib.import_module("torchvision.datasets")
    except ImportError:
        raise DataError(
            f"data.download=true needs torchvision to download {dataset}: "
            "pip install 'interlude[vision]' (or download the files yourself, see the error "
            "without data.download)"
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    calls: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "cifar10": [("CIFAR10", {"train": True})],
        "cifar100": [("CIFAR100", {"train": True})],
        "stl10": [("STL10", {"split": "test"})],
        "svhn": [("SVHN", {"split": "train"}), ("SVHN", {"split": "test"})]
        + ([("SVHN", {"split": "extra"})] if extra else []),
    }
    for cls_name, kwargs in calls[dataset]:
        try:
            getattr(datasets, cls_name)(root=str(root), download=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DataError(
                f"downloading {dataset} into {root} failed: {exc}. Instead, "
                + MANUAL[dataset].format(data_dir=root)
            ) from None


# --------------------------------------------------------------------------- CIFAR
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers.

    The CIFAR files are pickles; a file from an untrusted mirror could otherwise run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # written by numpy 1.x (the official files)
            module = "numpy._core.multiarray" if _has_module("numpy._core") else module
        return super().find_class(module, name)


def _has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _unpickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR batch file as a dict with ``str`` keys."""
    try:
        with path.open("rb") as f:
            tree = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "corrupt"
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt: delete it and extract the official archive again"
        ) from None
    if not isinstance(tree, dict):
        raise DataError(f"{path} should hold a dict, found {type(tree).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in tree.items()}


def _field(tree: dict[str, Any], key: str, path: Path) -> Any:
    if key not in tree:
        raise DataError(f"{path} has no '{key}' entry (found {', '.join(sorted(tree))})")
    return tree[key]


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> ImageSet:
    """Rows of 3072 bytes: the 1024 red, then green, then blue values, each plane row-major."""
    tree = _unpickle(path)
    data = np.asarray(_field(tree, "data", path))
    labels = np.asarray(_field(tree, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: 'data' must be a uint8 (N, 3072) array, got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {len(data)} images but labels {labels.dtype} {labels.shape}")
    _check_range(labels, 0, num_classes - 1, path)
    return ImageSet(data.reshape(-1, 3, 32, 32), labels.astype(np.int64))


def _check_range(labels: np.ndarray, low: int, high: int, path: Path) -> None:
    if labels.size and (labels.min() < low or labels.max() > high):
        raise DataError(
            f"{path}: labels must be in {low}..{high}, found {labels.min()}..{labels.max()}"
        )


def _names(path: Path, key: str, expected: int) -> list[str]:
    stored = _field(_unpickle(path), key, path)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in stored]
    if len(names) != expected:
        raise DataError(f"{path}: '{key}' lists {len(names)} classes, expected {expected}")
    return names


def _stack(sets: list[ImageSet]) -> ImageSet:
    return ImageSet(
        concat_rows([s.images for s in sets]), np.concatenate([s.labels for s in sets])
    )


@register_dataset("cifar10", default_arch="wrn28_2")
def load_cifar10(cfg: DataConfig) -> RawDataset:
    """CIFAR-10 python version: 50k train (5 batches) and 10k test images, 32x32 RGB."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    root = _locate(cfg, "cifar10", [*train_files, "test_batch", "batches.meta"])
    return RawDataset(
        name="cifar10",
        train=_stack([_cifar_batch(root / f, "labels", 10) for f in train_files]),
        test=_cifar_batch(root / "test_batch", "labels", 10),
        class_names=_names(root / "batches.meta", "label_names", 10),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        hflip=True,
    )


@register_dataset("cifar100", default_arch="wrn28_8")
def load_cifar100(cfg: DataConfig) -> RawDataset:
    """CIFAR-100 python version with its 100 fine labels."""
    root = _locate(cfg, "cifar100", ["train", "test", "meta"])
    return RawDataset(
        name="cifar100",
        train=_cifar_batch(root / "train", "fine_labels", 100),
        test=_cifar_batch(root / "test", "fine_labels", 100),
        class_names=_names(root / "meta", "fine_label_names", 100),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        hflip=True,
    )


# --------------------------------------------------------------------------- STL-10
def _stl_count(path: Path) -> int:
    size = path.stat().st_size
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise DataError(
            f"{path} has {size} bytes, not a whole number of 3x96x96 images "
            f"({STL10_IMAGE_BYTES} bytes each): the file is truncated or corrupt"
        )
    return size // STL10_IMAGE_BYTES


def _stl_images(path: Path, in_memory: bool = True) -> np.ndarray:
    """(N, 3, 96, 96) uint8. Each image is stored channel by channel, each channel column-major,
    so after reshaping to (3, 96, 96) the last two axes are (W, H) and must be swapped."""
    count = _stl_count(path)
    shape = (count, 3, STL10_SIZE, STL10_SIZE)
    if in_memory:
        stored = np.fromfile(path, dtype=np.uint8).reshape(shape)
        return np.ascontiguousarray(stored.transpose(0, 1, 3, 2))
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape).transpose(0, 1, 3, 2)


def _stl_labels(path: Path, count: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.shape != (count,):
        raise DataError(f"{path}: {labels.size} labels for {count} images")
    _check_range(labels, 1, 10, path)
    return labels - 1  # stored as 1..10


def _stl_split(root: Path, split: str) -> ImageSet:
    images = _stl_images(root / f"{split}_X.bin")
    return ImageSet(images, _stl_labels(root / f"{split}_y.bin", len(images)))


def _stl_class_names(root: Path) -> list[str]:
    path = root / "class_names.txt"
    if not path.is_file():
        return list(STL10_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != 10:
        raise DataError(f"{path} lists {len(names)} classes, expected 10")
    return names


def _stl_unlabeled(path: Path, cfg: DataConfig) -> Any:
    """The 100k unlabeled images, on disk: converted once into the image cache (row-major, at
    ``data.resolution``), or with ``data.cache=false`` memory-mapped from the official file."""
    cache = cache_root(cfg.cache, cfg.cache_dir)
    if cache is None:
        return _stl_images(path, in_memory=False)
    count = _stl_count(path)
    size = cfg.resolution or STL10_SIZE
    filter_ = cfg.interpolation or "bilinear"  # as resize_raw resizes the other splits
    source = str(path.resolve())
    spec = CacheSpec("stl10-unlabeled", ("stl10-unlabeled", source, str(size), filter_),
                     fingerprint(["stl10 unlabeled 1", source, file_signature(path), str(size),
                                  filter_]),
                     (3, size, size), count)

    def build(writer: RowWriter) -> dict:
        with path.open("rb") as handle:  # read by chunks: a memory map would count in RSS
            for start in range(0, count, _CONVERT_ROWS):
                rows = min(_CONVERT_ROWS, count - start)
                stored = np.frombuffer(handle.read(rows * STL10_IMAGE_BYTES), dtype=np.uint8)
                if stored.size != rows * STL10_IMAGE_BYTES:
                    raise DataError(f"{path} shrank while it was read; extract it again")
                images = stored.reshape(rows, 3, STL10_SIZE, STL10_SIZE).transpose(0, 1, 3, 2)
                writer.write(resize_images(images, size, interpolation=filter_))
                writer.progress(rows)
        return {"source": source}

    def check(info: Any, rows: int) -> None:
        if info.get("source") != source or rows != count:
            raise ValueError("not a conversion of this file")

    return open_cached(cache, spec, build, check).images


class STL10Options(DataConfig):
    """Options of STL-10."""

    use_unlabeled_extra: bool = True
    """Include the 100k `unlabeled` split in the unlabeled pool."""


@register_dataset("stl10", STL10Options, default_arch="wrn37_2")
def load_stl10(cfg: STL10Options) -> RawDataset:
    """STL-10 binary version: 5k labeled train, 8k test and (optionally) 100k unlabeled, 96x96.

    The unlabeled split (2.8 GB) stays on disk (the image cache, or a memory map), never read
    into RAM as a whole.
    """
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    if cfg.use_unlabeled_extra:
        files.append("unlabeled_X.bin")
    root = _locate(cfg, "stl10", files)
    extra = None
    if cfg.use_unlabeled_extra:
        unlabeled = _stl_unlabeled(root / "unlabeled_X.bin", cfg)
        extra = ImageSet(unlabeled, np.full(len(unlabeled), -1, dtype=np.int64))
    return RawDataset(
        name="stl10",
        train=_stl_split(root, "train"),
        test=_stl_split(root, "test"),
        class_names=_stl_class_names(root),
        mean=STL10_MEAN,
        std=STL10_STD,
        hflip=True,
        extra_unlabeled=extra,
    )


# --------------------------------------------------------------------------- SVHN
def _loadmat() -> Callable[..., dict[str, Any]]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            "dataset 'svhn' reads .mat files with scipy: pip install scipy "
            "(or pip install 'interlude[svhn]')"
        ) from None
    return loadmat


def _svhn_split(path: Path) -> ImageSet:
    """``X`` is (32, 32, 3, N) (H, W, C, N); ``y`` is (N, 1) with 10 standing for digit 0."""
    try:
        mat = _loadmat()(str(path), variable_names=["X", "y"])
    except DataError:
        raise
    except Exception as exc:  # scipy raises many types (MatReadError, ValueError, OSError...)
        raise DataError(
            f"{path} is not a readable SVHN .mat file ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt: download it again"
        ) from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} must hold variables 'X' and 'y' (official SVHN format 2)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    _check_range(y, 1, 10, path)
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return ImageSet(images, y.astype(np.int64) % 10)


def _svhn_unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path} is not a readable SVHN .mat file ({type(exc).__name__}: {exc}); the file is "
        "truncated or corrupt: download it again"
    )


def _svhn_count(path: Path) -> int:
    """Images in an SVHN ``.mat`` file, from the header of its ``X`` array (nothing else read)."""
    try:
        with open_uint8(path, "X") as x:
            dims = x.dims
    except (MatFormatError, OSError) as exc:
        raise _svhn_unreadable(path, exc) from None
    if len(dims) != 4 or dims[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got dimensions {dims}")
    return dims[3]


def _svhn_extra(path: Path, cfg: DataConfig) -> Any:
    """SVHN's 531k ``extra`` images (1.3 GB compressed), streamed from the ``.mat`` file into the
    image cache once (or into RAM with ``data.cache=false``), at ``data.resolution``."""
    count = _svhn_count(path)
    size = cfg.resolution or 32
    filter_ = cfg.interpolation or "bilinear"  # as resize_raw resizes the other splits
    per_image = 32 * 32 * 3

    def build(writer: RowWriter) -> dict:
        try:
            with open_uint8(path, "X") as x:
                for start in range(0, count, _CONVERT_ROWS):
                    rows = min(_CONVERT_ROWS, count - start)
                    stored = np.frombuffer(x.read(rows * per_image), dtype=np.uint8)
                    # column-major (H, W, C) per image: as (C, W, H) row-major, then swap W/H
                    images = stored.reshape(rows, 3, 32, 32).transpose(0, 1, 3, 2)
                    writer.write(resize_images(images, size, interpolation=filter_))
                    writer.progress(rows)
        except (MatFormatError, OSError) as exc:
            raise _svhn_unreadable(path, exc) from None
        return {"source": source}

    source = str(path.resolve())
    cache = cache_root(cfg.cache, cfg.cache_dir)
    if cache is None:
        return build_in_memory((3, size, size), count, "reading svhn extra", build)[0]

    def check(info: Any, rows: int) -> None:
        if info.get("source") != source or rows != count:
            raise ValueError("not a conversion of this file")

    spec = CacheSpec("svhn-extra", ("svhn-extra", source, str(size), filter_),
                     fingerprint(["svhn extra 1", source, file_signature(path), str(size),
                                  filter_]),
                     (3, size, size), count)
    return open_cached(cache, spec, build, check).images


class SVHNOptions(DataConfig):
    """Options of SVHN."""

    svhn_extra: bool = False
    """Add the 531k `extra` images (`extra_32x32.mat`) to the unlabeled pool, as FixMatch/USB
    do."""


@register_dataset("svhn", SVHNOptions, default_arch="wrn28_2")
def load_svhn(cfg: SVHNOptions) -> RawDataset:
    """SVHN format 2 (cropped digits): 73,257 train and 26,032 test images, 32x32 RGB.

    ``data.svhn_extra=true`` adds the 531,131 ``extra`` images to the unlabeled pool (their
    labels unused), as FixMatch and USB do; they stay on disk (the image cache). No horizontal
    flip: mirrored digits are other glyphs.
    """
    _loadmat()  # fail on a missing scipy before looking for (or downloading) files
    files = ["train_32x32.mat", "test_32x32.mat"]
    if cfg.svhn_extra:
        files.append("extra_32x32.mat")
    root = _locate(cfg, "svhn", files)
    extra = None
    if cfg.svhn_extra:
        images = _svhn_extra(root / "extra_32x32.mat", cfg)
        extra = ImageSet(images, np.full(len(images), -1, dtype=np.int64))
    return RawDataset(
        name="svhn",
        train=_svhn_split(root / "train_32x32.mat"),
        test=_svhn_split(root / "test_32x32.mat"),
        class_names=[str(d) for d in range(10)],
        mean=SVHN_MEAN,
        std=SVHN_STD,
        hflip=False,
        extra_unlabeled=extra,
    )
