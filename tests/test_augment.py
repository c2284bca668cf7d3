"""Augmentation's contract: views are a pure function of (seed, step); the op list and
magnitudes are FixMatch's; each batched tensor op is within a stated tolerance of its PIL
counterpart (the ``augment_on: workers`` path) on random and real (digits) images; Cutout paints
kekmodel's square; plus shapes, sampler distribution and each op's semantics on hand-made
images."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from interlude.config import load_config
from interlude.data import augment as A
from interlude.data.augment import batched, pil, plan, tensor_ops
from interlude.data.sampler import STREAM_AUGMENT, step_generator
from interlude.train import build_trainer

FILL = 127 / 255
OP = {name: i for i, name in enumerate(A.OP_NAMES)}
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise_uint8(n: int = 8, c: int = 3, size: int = 32, lo: int = 0, hi: int = 256,
                seed: int = 0) -> np.ndarray:
    """Random uint8 images, NHWC."""
    return np.random.RandomState(seed).randint(lo, hi, (n, size, size, c)).astype(np.uint8)


def nchw(images: np.ndarray) -> torch.Tensor:
    return A.to_float(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def apply_op(name: str, x: torch.Tensor, v: int = 5, sign: int = 1) -> torch.Tensor:
    n = x.shape[0]
    full = lambda value: torch.full((n,), value, dtype=torch.long)  # noqa: E731
    return batched.apply_ops(x.clone(), full(OP[name]), full(v), full(sign), FILL)


def pil_op(name: str, images: np.ndarray, v: int = 5, sign: int = 1) -> torch.Tensor:
    out = [np.asarray(pil.PIL_OPS[name](pil.to_pil(im), v, sign, 127)).reshape(im.shape)
           for im in images]
    return nchw(np.stack(out))


def test_to_float_and_normalize():
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    x = A.to_float(u8)
    assert x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    y = A.normalize(x, (0.0, 0.1, 0.5), (1.0, 0.5, 0.25))
    assert torch.allclose(y.flatten(), torch.tensor([0.0, 0.2, 2.0]))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["weak", "strong"])
def test_shape_dtype_range_and_input_untouched(channels, kind):
    x = nchw(noise_uint8(16, channels))
    before = x.clone()
    g = gen()
    out = A.weak_augment(x, g, hflip=True) if kind == "weak" else A.strong_augment(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)
    assert not torch.equal(out, x)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        A.strong_augment(torch.rand(2, 2, 8, 8), gen())
    with pytest.raises(ValueError):
        A.weak_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen(), hflip=True)


@pytest.mark.parametrize("kind", ["weak", "strong"])
def test_deterministic_given_seed(kind):
    x = nchw(noise_uint8(32))
    run = (lambda g: A.weak_augment(x, g, True)) if kind == "weak" else (
        lambda g: A.strong_augment(x, g))
    assert torch.equal(run(gen(1)), run(gen(1)))
    assert not torch.equal(run(gen(1)), run(gen(2)))


@pytest.mark.parametrize("hflip", [True, False])
def test_weak_is_exactly_a_flipped_shifted_crop(hflip):
    images = noise_uint8(24, size=16)
    pad = max(1, int(0.125 * 16))
    out = A.weak_augment(nchw(images), gen(3), hflip=hflip)
    found = []
    for image, result in zip(images, out, strict=True):
        result = (result.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        matches = [
            (flip, top, left)
            for flip in (False, True)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if np.array_equal(result, np.pad(image[:, ::-1] if flip else image,
                                             ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
                              [top : top + 16, left : left + 16])
        ]
        assert len(matches) == 1  # noise images: exactly one crop matches
        found.append(matches[0])
    flips = {flip for flip, _, _ in found}
    assert flips == ({False, True} if hflip else {False})
    assert len({(top, left) for _, top, left in found}) > 5


def test_plan_distribution_matches_per_image_sampler():
    n = 50_000
    ops, mags, apply = A.sample_strong_plan(n, gen(0), n_ops=2, prob=0.3)
    assert ops.shape == mags.shape == apply.shape == (n, 2)
    assert ops.dtype == mags.dtype == torch.long and apply.dtype == torch.bool
    rng = random.Random(0)
    ref = np.array([step for _ in range(n) for step in A.sample_plan_per_image(rng, 2, 0.3)])
    batched = np.stack([ops.flatten(), mags.flatten(), apply.flatten()], 1)
    for column, values in ((0, range(14)), (1, range(1, 10)), (2, (0, 1))):
        assert set(np.unique(batched[:, column])) == set(values)
        assert set(np.unique(ref[:, column])) == set(values)
        freq_b = np.array([(batched[:, column] == v).mean() for v in values])
        freq_r = np.array([(ref[:, column] == v).mean() for v in values])
        assert np.abs(freq_b - freq_r).max() < 0.004, (column, freq_b, freq_r)
    assert abs(batched[:, 2].mean() - 0.3) < 0.004
    assert abs((ops[:, 0] == ops[:, 1]).float().mean().item() - 1 / 14) < 0.004  # replacement


def test_signs_random_only_for_geometric_ops(monkeypatch):
    """Geometric ops get a sign of +-1 evenly, other ops none. The batched path draws a sign
    for every (image, round), and only the geometric ops read it; the reference draws one only
    for geometric ops (recorded through its op table)."""
    draws = plan.StepDraws(0, 4000, gen(0), None, False, None, 2, 1.0)
    assert abs((draws.signs < 0.5).float().mean().item() - 0.5) < 0.03
    x = nchw(noise_uint8(6))
    for name in A.OP_NAMES:
        differs = not torch.equal(apply_op(name, x, 5, 1), apply_op(name, x, 5, -1))
        assert differs == (name in GEOMETRIC), name

    pairs = []

    def record_reference(name):
        return lambda img, v, sign, fill: pairs.append((OP[name], sign)) or img

    monkeypatch.setattr(pil, "PIL_OPS", {name: record_reference(name) for name in A.OP_NAMES})
    rng = random.Random(0)
    for _ in range(4000):
        A.strong_augment_per_image(np.zeros((4, 4), np.uint8), rng, prob=1.0)
    pairs = np.array(pairs)
    geometric = np.isin(pairs[:, 0], [OP[name] for name in GEOMETRIC])
    assert abs((pairs[geometric, 1] == -1).mean() - 0.5) < 0.03
    assert (pairs[~geometric, 1] == 1).all()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", A.OP_NAMES)
def test_op_matches_pil_reference(name, channels):
    images = noise_uint8(6, channels, lo=40, hi=200, seed=channels)
    x = nchw(images)
    for v, sign in ((1, 1), (5, -1), (9, 1), (9, -1)):
        diff = (apply_op(name, x, v, sign) - pil_op(name, images, v, sign)).abs().max().item()
        # PIL rounds blends to uint8 and its AutoContrast lut truncates; the rest is exact at
        # these magnitudes (geometric ops can differ by a 1-pixel shift at others, e.g. v=4: see
        # test_geometric_ops_within_one_pixel_of_pil)
        tolerance = 1.5 / 255 if name in ("Brightness", "Color", "Contrast", "Sharpness",
                                          "AutoContrast") else 1e-6
        assert diff <= tolerance, (name, v, sign, diff * 255)


def coordinate_image(size: int = 32) -> np.ndarray:
    """RGB image whose pixel (y, x) holds (40 + 4y, 40 + 4x, 0): never the fill level 127."""
    ys, xs = np.mgrid[:size, :size]
    return np.stack([40 + 4 * ys, 40 + 4 * xs, np.zeros_like(ys)], -1).astype(np.uint8)


def test_geometric_ops_within_one_pixel_of_pil():
    """At exact ties PIL (which steps coordinates incrementally) and the batched map may read
    neighbouring source pixels; everywhere else, and at every magnitude, they agree."""
    image = coordinate_image()
    worst = 0.0
    for name in GEOMETRIC:
        for v in range(1, 10):
            for sign in (1, -1):
                ours = (apply_op(name, nchw(image[None]), v, sign)[0] * 255).round().long()
                ref = (pil_op(name, image[None], v, sign)[0] * 255).round().long()
                differ = (ours != ref).any(0)
                worst = max(worst, differ.float().mean().item())
                fill_ours, fill_ref = ours[0] == 127, ref[0] == 127
                both = differ & ~fill_ours & ~fill_ref
                assert ((ours[:2] - ref[:2]).abs()[:, both] <= 4).all(), (name, v, sign)
                # a fill/content disagreement only where a 1-pixel shift crosses the border
                edge = differ & (fill_ours ^ fill_ref)
                for y, x in edge.nonzero().tolist():
                    pixel = ours if fill_ref[y, x] else ref
                    gy, gx = (pixel[0, y, x].item() - 40) // 4, (pixel[1, y, x].item() - 40) // 4
                    assert min(gy, gx) == 0 or max(gy, gx) == 31, (name, v, sign, y, x)
    assert worst < 0.05


def test_identity_brightness_color():
    x = nchw(noise_uint8(4))
    assert torch.equal(apply_op("Identity", x), x)
    factor = 9 * 0.9 / 10 + 0.05
    assert torch.allclose(apply_op("Brightness", x, v=9), x * factor, atol=1e-6)
    grey = nchw(noise_uint8(4, 1))
    assert torch.equal(apply_op("Color", grey), grey)  # Color on 1-channel is the identity
    spread = lambda t: (t - t.mean(1, keepdim=True)).abs().mean().item()  # noqa: E731
    assert spread(apply_op("Color", x, v=1)) < 0.2 * spread(x)


def test_solarize_inverts_at_and_above_threshold():
    levels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 255
    out = (apply_op("Solarize", levels, v=5) * 255).round().flatten()  # threshold 256 - 128
    expected = torch.where(torch.arange(256) >= 128, 255 - torch.arange(256), torch.arange(256))
    assert torch.equal(out.long(), expected)


def test_posterize_quantizes():
    levels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 255
    out = (apply_op("Posterize", levels, v=1) * 255).round().long().flatten()  # 4 bits kept
    assert torch.equal(out, torch.arange(256) // 16 * 16)


def test_equalize_flattens_histogram_and_autocontrast_stretches():
    rs = np.random.RandomState(0)
    x = nchw((rs.rand(4, 32, 32, 3) ** 2 * 120 + 60).astype(np.uint8))  # narrow, bunched low

    def unevenness(t: torch.Tensor) -> float:  # std of the 8-bin histogram's fractions
        return (torch.histc(t, 8, 0, 1) / t.numel()).std().item()

    assert unevenness(apply_op("Equalize", x)) < 0.05 < 0.1 < unevenness(x)
    stretched = apply_op("AutoContrast", x)
    assert torch.equal(stretched.amin((2, 3)), torch.zeros(4, 3))
    assert torch.equal(stretched.amax((2, 3)), torch.ones(4, 3))


def test_contrast_and_sharpness_keep_flat_images():
    flat = torch.full((2, 3, 8, 8), 100 / 255)
    assert torch.allclose(apply_op("Contrast", flat, v=1), flat, atol=1e-6)
    assert torch.allclose(apply_op("Sharpness", flat, v=1), flat, atol=1e-6)
    x = nchw(noise_uint8(2))
    sharp = apply_op("Sharpness", x, v=1)
    assert torch.equal(sharp[..., 0, :], x[..., 0, :])  # PIL's SMOOTH leaves the border
    assert apply_op("Contrast", x, v=1).std() < 0.2 * x.std()


@pytest.mark.parametrize("sign", [1, -1])
def test_translate_shifts_content_and_fills_grey(sign):
    x = nchw(noise_uint8(2))
    shift = int(9 * 0.3 / 10 * 32)  # v=9 -> 8 pixels
    out_x, out_y = apply_op("TranslateX", x, 9, sign), apply_op("TranslateY", x, 9, sign)
    if sign > 0:  # PIL's (1, 0, t, 0, 1, 0) reads x + t: content moves left / up
        assert torch.equal(out_x[..., : 32 - shift], x[..., shift:])
        assert torch.equal(out_y[..., : 32 - shift, :], x[..., shift:, :])
        assert torch.all(out_x[..., 32 - shift :] == FILL)
    else:
        assert torch.equal(out_x[..., shift:], x[..., : 32 - shift])
        assert torch.equal(out_y[..., shift:, :], x[..., : 32 - shift, :])
        assert torch.all(out_y[..., :shift, :] == FILL)


def test_rotate_keeps_centre_and_fills_corners():
    x = nchw(noise_uint8(2))
    out = apply_op("Rotate", x, v=9, sign=-1)  # 27 degrees
    assert torch.equal(out[..., 15:17, 15:17], x[..., 15:17, 15:17])
    assert torch.all(out[..., 0, 0] == FILL) and torch.all(out[..., -1, -1] == FILL)


def assert_one_grey_square_each(images: torch.Tensor) -> None:
    """Each image holds exactly one solid grey 17x17 square (kekmodel's inclusive PIL rectangle
    with v=16), clipped only at the far border."""
    sides, corners = set(), set()
    for image in images:
        mask = (image == FILL).all(0)
        assert torch.equal(mask, (image == FILL).any(0))  # all channels filled together
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        (y0, y1), (x0, x1) = (rows.min().item(), rows.max().item() + 1), (
            cols.min().item(), cols.max().item() + 1)
        assert mask.sum() == (y1 - y0) * (x1 - x0)  # a solid rectangle, nothing else
        assert y1 - y0 == 17 or (y1 == 32 and y0 >= 16)  # only clipped at the far border
        assert x1 - x0 == 17 or (x1 == 32 and x0 >= 16)
        sides.add((y1 - y0, x1 - x0))
        corners.add((y0, x0))
    assert (17, 17) in sides and len(sides) > 1 and len(corners) > 10
    assert any(y0 == 0 for y0, _ in corners) and any(x0 == 0 for _, x0 in corners)


def cutout_batched(size: int, centre_yx: tuple[float, float], fraction: float = 0.5):
    x = torch.zeros(1, 1, size, size)
    return tensor_ops.cutout(x, torch.tensor([centre_yx]), fraction, FILL)[0, 0] == FILL


def cutout_reference(size: int, centre_yx: tuple[float, float], fraction: float = 0.5):
    """The per-image path, with its two uniform draws (x first, as kekmodel) forced."""
    draws = iter([centre_yx[1] * size, centre_yx[0] * size])

    class FixedRng(random.Random):
        def uniform(self, a, b):
            return next(draws)

    out = A.strong_augment_per_image(np.zeros((size, size), np.uint8), FixedRng(0), prob=0.0,
                                     cutout_fraction=fraction)
    return torch.from_numpy(np.asarray(out) == 127)


def pil_cutout_abs(size: int, centre_yx: tuple[float, float], v: int) -> torch.Tensor:
    """kekmodel's CutoutAbs written out: corner int(max(0, c - v/2)), inclusive rectangle."""
    from PIL import ImageDraw

    img = Image.new("L", (size, size), 0)
    x0 = int(max(0, centre_yx[1] * size - v / 2.0))
    y0 = int(max(0, centre_yx[0] * size - v / 2.0))
    ImageDraw.Draw(img).rectangle((x0, y0, int(min(size, x0 + v)), int(min(size, y0 + v))), 127)
    return torch.from_numpy(np.asarray(img) == 127)


@pytest.mark.parametrize("path", [cutout_batched, cutout_reference])
def test_cutout_area_and_border_clipping(path):
    # centre well inside: corner (16.3 - 8) -> 8, square rows/cols 8..24 inclusive = 17 x 17
    mask = path(32, (16.3 / 32, 16.3 / 32))
    assert mask.sum().item() == 289
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (
        8, 24, 8, 24)
    # near border: the corner clamps to 0 and the square keeps 17 px; far border: clipped
    near = path(32, (2.0 / 32, 5.9 / 32))
    assert near.sum().item() == 17 * 17 and near[0, 0] and near[16, 16] and not near[17, 17]
    far = path(32, (30.5 / 32, 27.2 / 32))  # corner (22, 19): rows 22..31, cols 19..31
    assert far.sum().item() == 10 * 13
    assert far[22, 19] and far[31, 31] and not far[21, 19] and not far[22, 18]
    for centre in ((0.0, 0.0), (0.4, 0.77), (0.999, 0.5), (0.3, 0.999), (0.26, 0.74)):
        assert torch.equal(path(32, centre), pil_cutout_abs(32, centre, 16)), centre
    # 96 px (STL-10), fraction 0.5: v = 48 -> 49 x 49
    assert path(96, (0.5, 0.5)).sum().item() == 49 * 49


def test_cutout_is_one_grey_square_per_image():
    assert_one_grey_square_each(A.strong_augment(torch.zeros(64, 3, 32, 32), gen(5), prob=0.0))
    rng = random.Random(5)
    zeros = np.zeros((32, 32, 3), dtype=np.uint8)
    reference = [A.strong_augment_per_image(zeros, rng, prob=0.0) for _ in range(64)]
    assert_one_grey_square_each(nchw(np.stack(reference)))


# Expected Cutout side at 32 px, v=16, centre c uniform in [0, 32): corner int(max(0, c - 8));
# 17 px for c < 24, then 32 - corner for corners 16..23 (16 down to 9): (24 * 17 + 100) / 32.
CUTOUT_MEAN_SIDE = (24 * 17 + sum(range(9, 17))) / 32
CUTOUT_MEAN_AREA = CUTOUT_MEAN_SIDE**2 / 32**2  # rows and columns independent: ~0.246


def test_cutout_mean_area_both_paths():
    n = 3000
    batched = A.strong_augment(torch.zeros(n, 1, 32, 32), gen(11), prob=0.0)
    rng = random.Random(11)
    zeros = np.zeros((32, 32), dtype=np.uint8)
    reference = np.stack([A.strong_augment_per_image(zeros, rng, prob=0.0) for _ in range(n)])
    for area in ((batched == FILL).float().mean().item(), (reference == 127).mean()):
        assert abs(area - CUTOUT_MEAN_AREA) < 0.006


def test_strong_statistics_match_per_image_reference():
    images = noise_uint8(600, lo=40, hi=200, seed=4)
    x = nchw(images)
    rng = random.Random(0)
    outputs = {"batched": A.strong_augment(x, gen(0)),
               "reference": nchw(np.stack([A.strong_augment_per_image(im, rng) for im in images]))}
    stats = {name: ((out == FILL).float().mean().item(), (out - x).abs().mean().item(),
                    ((out != x) & (out != FILL)).flatten(1).any(1).float().mean().item())
             for name, out in outputs.items()}
    (grey_b, mad_b, changed_b), (grey_r, mad_r, changed_r) = stats.values()
    # Cutout alone covers CUTOUT_MEAN_AREA; geometric fill and noise pixels at 127 add a little
    assert abs(grey_b - grey_r) < 0.01 and CUTOUT_MEAN_AREA < grey_b < CUTOUT_MEAN_AREA + 0.04
    assert abs(mad_b - mad_r) < 0.1 * mad_r
    assert abs(changed_b - changed_r) < 0.06  # P(some non-identity op applied) ~ 0.7


def test_strong_follows_its_plan():
    x = nchw(noise_uint8(256))
    _, _, apply = A.sample_strong_plan(256, gen(7), n_ops=2, prob=0.5)
    out = A.strong_augment(x, gen(7), prob=0.5, cutout_fraction=0.0)
    changed = (out != x).flatten(1).any(1)
    untouched = ~apply.any(1)
    assert not changed[untouched].any()  # no op applied -> image unchanged
    assert changed[~untouched].float().mean() > 0.8  # Identity (1/14) is the only no-op
    assert torch.equal(A.strong_augment(x, gen(7), prob=0.0, cutout_fraction=0.0), x)


def test_grayscale_no_grad_and_uint8_input():
    u8 = torch.from_numpy(noise_uint8(16, 1)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        g = gen()
        out = A.strong_augment(A.weak_augment(A.to_float(u8), g, hflip=True), g)
    assert out.shape == (16, 1, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("form", ["pil_rgb", "pil_l", "hwc", "hw1"])
def test_per_image_reference_keeps_type_and_shape(form):
    array = noise_uint8(1, 1 if form in ("pil_l", "hw1") else 3)[0]
    img = Image.fromarray(array[..., 0] if form == "pil_l" else array) if "pil" in form else array
    for fn in (A.weak_augment_per_image, A.strong_augment_per_image):
        out = fn(img, random.Random(1))
        again = fn(img, random.Random(1))
        assert type(out) is type(img)
        assert np.asarray(out).shape == np.asarray(img).shape
        assert np.array_equal(np.asarray(out), np.asarray(again))


# ----------------------------------------------------------------------------- the contract


def test_op_list_and_magnitudes_are_fixmatch_randaugment():
    """kekmodel/FixMatch-pytorch ``fixmatch_augment_pool``: 14 ops, magnitudes 1..9 of 10,
    mapped with its expressions (hand-computed at v = 1 and 9)."""
    assert A.OP_NAMES == (
        "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
        "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
    assert A.PARAMETER_MAX == 10
    assert {OP[name] for name in GEOMETRIC} == plan.SIGNED
    assert (plan.ENHANCE[1], plan.ENHANCE[9]) == pytest.approx((0.14, 0.86))
    assert (plan.POSTERIZE_BITS[1], plan.POSTERIZE_BITS[9]) == (4, 7)
    assert (plan.ROTATE_DEG[1], plan.ROTATE_DEG[9]) == (3, 27)
    assert (plan.SHEAR[1], plan.SHEAR[9]) == pytest.approx((0.03, 0.27))
    assert (plan.SOLARIZE[1], plan.SOLARIZE[9]) == (231, 26)
    assert set(pil.PIL_OPS) == set(A.OP_NAMES)


STEP_VIEWS = ("lw", "uw", "ls", "us")


def step_views(store: torch.Tensor, rows_l, rows_u, seed: int, step: int, views=STEP_VIEWS,
               hflip: bool = True) -> torch.Tensor:
    """A step's views with the trainer's generators for (seed, step), rank 0."""
    generator = step_generator(seed, step, STREAM_AUGMENT * 1000, "cpu")
    planner = step_generator(seed, step, STREAM_AUGMENT * 1000 + 500, "cpu")
    return A.augment_views(store, rows_l, rows_u, views, generator, planner, hflip)


@pytest.mark.parametrize("channels", [1, 3])
def test_views_are_a_function_of_seed_and_step(channels):
    store = torch.from_numpy(noise_uint8(40, channels, 16).transpose(0, 3, 1, 2).copy())
    rows_l, rows_u = np.arange(4), 4 + np.arange(12)
    first = {step: step_views(store, rows_l, rows_u, 0, step) for step in (0, 1, 7)}
    for step in (7, 0, 1):  # any order, any number of times
        assert torch.equal(step_views(store, rows_l, rows_u, 0, step), first[step])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(step_views(store, rows_l, rows_u, 1, 0), first[0])
    weak = len(rows_l) + len(rows_u)  # lw, uw first; then ls, us with Cutout's grey squares
    grey = (first[0] == FILL).float().mean((1, 2, 3))
    assert grey[:weak].max() < 0.02 and grey[weak:].min() > 0.1


def test_views_do_not_depend_on_where_the_store_keeps_the_images():
    """Reading a step's rows out of a larger store, in any row order, gives the views of the
    step's images stored alone."""
    images = torch.from_numpy(noise_uint8(20, 3, 16).transpose(0, 3, 1, 2).copy())
    compact = step_views(images, np.arange(4), 4 + np.arange(16), 3, 5)
    store = torch.cat([images[4:], torch.zeros(3, 3, 16, 16, dtype=torch.uint8), images[:4]])
    from_store = step_views(store, 19 + np.arange(4), np.arange(16), 3, 5)
    assert torch.equal(from_store, compact)


@pytest.mark.parametrize("resident", [True, False])
def test_training_batches_are_a_function_of_seed_and_step(tmp_path, monkeypatch, resident):
    """Two trainers of one config build the same normalised views for a step, whatever steps
    they built before (device-resident image store or host gather for large sets)."""
    from interlude.train import input_pipeline

    if not resident:
        monkeypatch.setattr(input_pipeline, "DEVICE_RESIDENT_BYTES", 0)
    cfg = load_config(None, [
        "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=3",
        "algorithm.name=interlude", "train.device=cpu", f"train.out_dir={tmp_path}",
        "train.progress=false",
    ])
    builders = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        builders.append(build_trainer(cfg, tmp_path / name).batches)
    assert builders[0].store.on_device is resident
    first = {step: builders[0].build(step).x for step in (0, 1, 7)}
    for step in (7, 1, 0, 7):
        assert torch.equal(builders[1].build(step).x, first[step]), step
    assert not torch.equal(first[0], first[1])


def digits_uint8(n: int = 6, channels: int = 1, size: int = 32) -> np.ndarray:
    """Real images: scikit-learn digits (8x8, levels 0..16) upsampled (bilinear, PIL) to
    ``size`` px, NHWC; RGB images tint each channel differently."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n] * (255 / 16)
    up = np.stack([np.asarray(Image.fromarray(d.astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR)) for d in digits])
    if channels == 1:
        return up[..., None]
    return np.stack([up, 255 - up, (up * 0.5 + 60).astype(np.uint8)], -1)


# The batched op vs its PIL counterpart, max |difference| in uint8 levels at v = 1, 5, 9 (both
# signs): PIL rounds blends to uint8 and its AutoContrast lut truncates (< 1.5 levels); the
# lookup-table ops and, at these magnitudes, the geometric ops are exact (geometric ops can read
# a source pixel one over at exact ties at other magnitudes: test_geometric_ops_within_one_pixel).
PIL_TOLERANCE_LEVELS = {name: 1.5 if name in ("AutoContrast", "Brightness", "Color", "Contrast",
                                              "Sharpness") else 1e-4 for name in A.OP_NAMES}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", A.OP_NAMES)
def test_op_matches_pil_on_real_images(name, channels):
    images = digits_uint8(6, channels)
    x = nchw(images)
    for v, sign in ((1, 1), (5, -1), (9, 1), (9, -1)):
        diff = (apply_op(name, x, v, sign) - pil_op(name, images, v, sign)).abs().max().item()
        assert diff * 255 <= PIL_TOLERANCE_LEVELS[name], (name, v, sign, diff * 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_an_images_ops_do_not_depend_on_its_batch(channels):
    """Each op on one image alone equals (up to float rounding: a one-image convolution may
    round differently) the same op on it within a mixed batch."""
    x = nchw(noise_uint8(len(A.OP_NAMES) * 2, channels, 16, seed=3))
    ops = torch.arange(len(x)) % len(A.OP_NAMES)
    mags, signs = 1 + torch.arange(len(x)) % 9, torch.where(torch.arange(len(x)) % 3 == 0, -1, 1)
    together = batched.apply_ops(x.clone(), ops, mags, signs, FILL)
    for i in range(len(x)):
        alone = batched.apply_ops(x[i:i + 1].clone(), ops[i:i + 1], mags[i:i + 1],
                                  signs[i:i + 1], FILL)
        assert (alone[0] - together[i]).abs().max().item() < 1e-6, A.OP_NAMES[ops[i]]


def test_large_image_fallbacks_give_the_same_views(monkeypatch):
    """Past a size limit, weak crops add row and column tables and geometric ops compute their
    source pixels per call instead of reading whole-image tables: the same pixels."""
    store = torch.from_numpy(noise_uint8(24, 3, 24).transpose(0, 3, 1, 2).copy())
    rows_l, rows_u = np.arange(6), 6 + np.arange(18)
    tabled = [step_views(store, rows_l, rows_u, 0, step) for step in range(3)]
    monkeypatch.setattr(tensor_ops, "WEAK_MAPS_MAX_BYTES", 0)
    monkeypatch.setattr(tensor_ops, "AFFINE_MAPS_MAX_BYTES", 0)
    tensor_ops.weak_tables.cache_clear()
    tensor_ops.strong_tables.cache_clear()
    try:
        for step in range(3):
            assert torch.equal(step_views(store, rows_l, rows_u, 0, step), tabled[step])
        assert tensor_ops.weak_tables(store.device, 24, 24, 3).maps is None
        assert tensor_ops.strong_tables(store.device, torch.float32, 3, 24, 24, FILL,
                                        12).affine_maps is None
    finally:
        tensor_ops.weak_tables.cache_clear()
        tensor_ops.strong_tables.cache_clear()
