"""Tests for srrlab.data.randaugment: RandAugment ops, rand_augment and random_resized_crop.

Every op is checked against a naive per-image reference written here (Python loops over
images / pixels, numpy), the geometric ops against closed forms, and, where Pillow is
installed, the ops against Pillow's own implementations (the definitions RandAugment
was written for).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srrlab.data.randaugment import OPS, apply_op, rand_augment, random_resized_crop, sample_crop_boxes

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: one thread is faster, and keeps the file fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random images in [0, 1] with some exact 0 / 1 pixels and one constant channel."""
    x = torch.rand(n, c, size, size, generator=_gen(seed))
    x[:, :, 0, 0] = 0.0
    x[:, :, -1, -1] = 1.0
    x[0, 0] = 0.25  # a constant channel
    return x


def _grid_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images on the 8-bit grid k / 255 with skewed (non-uniform) histograms."""
    u = torch.rand(n, c, size, size, generator=_gen(seed)) ** 3
    return torch.round(u * 200 + 20) / 255.0


def _values(n: int, low: float, high: float, seed: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=_gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------
# Naive references (one image at a time, numpy, float64).


def ref_gray(img: np.ndarray) -> np.ndarray:
    if img.shape[0] == 1:
        return img[0]
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def ref_enhance(op: str, img: np.ndarray, v: float) -> np.ndarray:
    factor = 1.0 + v
    if op == "Brightness":
        degenerate = np.zeros_like(img)
    elif op == "Color":
        degenerate = np.broadcast_to(ref_gray(img), img.shape)
    elif op == "Contrast":
        degenerate = np.full_like(img, ref_gray(img).mean())
    else:  # Sharpness: [[1,1,1],[1,5,1],[1,1,1]] / 13 inside, border unchanged
        degenerate = img.copy()
        c, h, w = img.shape
        for ch in range(c):
            for i in range(1, h - 1):
                for j in range(1, w - 1):
                    degenerate[ch, i, j] = (img[ch, i - 1:i + 2, j - 1:j + 2].sum() + 4 * img[ch, i, j]) / 13.0
    return np.clip(degenerate + factor * (img - degenerate), 0.0, 1.0)


def ref_levels(img32: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img32, 0, 1).astype(np.float32) * np.float32(255)).astype(np.int64)


def ref_posterize(img32: np.ndarray, v: float) -> np.ndarray:
    bits = 8 - int(math.floor(v))
    mask = (0xFF << (8 - bits)) & 0xFF
    return (ref_levels(img32) & mask) / 255.0


def ref_solarize(img: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(img >= threshold, 1.0 - img, img)


def ref_autocontrast(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    for ch in range(img.shape[0]):
        lo, hi = img[ch].min(), img[ch].max()
        if hi > lo:
            out[ch] = (img[ch] - lo) / (hi - lo)
    return out


def ref_equalize(img32: np.ndarray) -> np.ndarray:
    """PIL ImageOps.equalize, one channel at a time, written out."""
    out = img32.astype(np.float64).copy()
    for ch in range(img32.shape[0]):
        q = ref_levels(img32[ch])
        hist = np.bincount(q.ravel(), minlength=256)
        nonzero = [count for count in hist if count]
        step = (sum(nonzero) - nonzero[-1]) // 255
        if step == 0:
            continue
        lut = []
        acc = step // 2
        for i in range(256):
            lut.append(min(acc // step, 255))
            acc += hist[i]
        out[ch] = np.array(lut)[q] / 255.0
    return out


def _per_image(ref, images: torch.Tensor, values=None) -> torch.Tensor:
    out = []
    for k in range(images.shape[0]):
        img = images[k].numpy()
        out.append(ref(img) if values is None else ref(img, float(values[k])))
    return torch.from_numpy(np.stack(out))


# ---------------------------------------------------------------------------
# apply_op: photometric ops against the naive references.


def test_ops_order_and_names():
    assert OPS == (
        "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
        "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_is_a_copy(channels):
    x = _images(4, channels, 8)
    out = apply_op(x, "Identity", torch.zeros(4))
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("op", ["Brightness", "Color", "Contrast", "Sharpness"])
@pytest.mark.parametrize("channels", [1, 3])
def test_enhance_ops_match_reference(op, channels):
    x = _images(6, channels, 10)
    v = torch.tensor([-0.9, -0.4, 0.0, 0.3, 0.9, 0.65], dtype=torch.float64)
    out = apply_op(x, op, v)
    expected = _per_image(lambda img, val: ref_enhance(op, img.astype(np.float64), val), x, v)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=0)
    # factor 1 (v = 0) is the identity; other values change non-constant images
    torch.testing.assert_close(out[2], x[2], atol=1e-6, rtol=0)
    if not (op == "Color" and channels == 1):
        assert (out[4] - x[4]).abs().max() > 0.01
    else:  # one channel: the grayscale image is the image, Color is the identity
        torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_enhance_degenerate_images_by_hand():
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2)
    torch.testing.assert_close(apply_op(x, "Brightness", torch.tensor([0.5])), (x * 1.5).clamp(0, 1))
    torch.testing.assert_close(apply_op(x, "Brightness", torch.tensor([-0.5])), x * 0.5)
    # Contrast blends with the mean 0.5: factor 0.5 halves the distance to 0.5
    torch.testing.assert_close(apply_op(x, "Contrast", torch.tensor([-0.5])),
                               torch.tensor([0.35, 0.45, 0.55, 0.65]).view(1, 1, 2, 2))
    # a 2x2 image is all border: Sharpness is the identity
    torch.testing.assert_close(apply_op(x, "Sharpness", torch.tensor([0.9])), x)
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # pure red, gray 0.299
    torch.testing.assert_close(apply_op(rgb, "Color", torch.tensor([-1.0])).flatten(),
                               torch.full((3,), 0.299))


@pytest.mark.parametrize("channels", [1, 3])
def test_posterize_matches_reference(channels):
    x = _images(7, channels, 8)
    v = torch.tensor([0.0, 1.0, 1.87, 2.5, 4.0, 7.0, 8.0])
    out = apply_op(x, "Posterize", v)
    expected = _per_image(ref_posterize, x, v)
    torch.testing.assert_close(out.double(), expected, atol=1e-7, rtol=0)
    assert torch.all(out[-1] == 0)  # 0 bits kept
    levels = torch.round(out * 255)
    torch.testing.assert_close(out * 255, levels, atol=1e-4, rtol=0)  # on the 8-bit grid
    assert torch.all(torch.remainder(levels[4], 16) == 0)  # v = 4: top 4 bits


@pytest.mark.parametrize("channels", [1, 3])
def test_solarize_matches_reference(channels):
    x = _images(5, channels, 8)
    t = torch.tensor([0.75, 1.0, 0.5, 0.2, 0.0])
    out = apply_op(x, "Solarize", t)
    expected = _per_image(lambda img, th: ref_solarize(img, np.float32(th)), x, t)
    torch.testing.assert_close(out.double(), expected.double(), atol=1e-7, rtol=0)
    assert out[1, :, -1, -1].eq(0).all()  # threshold 1: only the pixels equal to 1 flip
    torch.testing.assert_close(out[1, :, :-1], x[1, :, :-1])
    torch.testing.assert_close(out[-1], 1 - x[-1])  # threshold 0: every pixel flips


@pytest.mark.parametrize("channels", [1, 3])
def test_autocontrast_matches_reference(channels):
    x = _images(4, channels, 8) * 0.5 + 0.2  # not using [0, 1] fully
    out = apply_op(x, "AutoContrast", torch.zeros(4))
    expected = _per_image(lambda img: ref_autocontrast(img.astype(np.float64)), x)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 0], x[0, 0])  # constant channel unchanged
    assert out[1:].amin(dim=(2, 3)).abs().max() < 1e-6 and (out[1:].amax(dim=(2, 3)) - 1).abs().max() < 1e-6


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 32])
def test_equalize_matches_reference(channels, size):
    x = torch.cat([_grid_images(3, channels, size), _images(2, channels, size, seed=5)])
    x[0, 0] = 0.4  # constant channel: a single histogram bin, unchanged
    x[1, -1] = (torch.arange(size * size).view(size, size) % 2) * 0.5  # two levels
    out = apply_op(x, "Equalize", torch.zeros(5))
    expected = _per_image(ref_equalize, x)
    torch.testing.assert_close(out.double(), expected, atol=1e-7, rtol=0)
    if size == 8:  # 64 pixels < 256: step is always 0, PIL leaves the image unchanged
        assert torch.equal(out, x)
    else:
        assert not torch.equal(out[2], x[2])


# ---------------------------------------------------------------------------
# apply_op: geometric ops against closed forms.


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shift", [1, 3, -2, 7])
def test_translate_integer_pixels(channels, shift):
    x = _images(2, channels, 8)
    expected = torch.zeros_like(x)
    if shift > 0:
        expected[..., :, shift:] = x[..., :, :-shift]
    else:
        expected[..., :, :shift] = x[..., :, -shift:]
    out = apply_op(x, "TranslateX", torch.tensor([float(shift)] * 2))
    assert torch.equal(out, expected)
    out_y = apply_op(x, "TranslateY", torch.tensor([float(shift)] * 2))
    assert torch.equal(out_y, _shift_rows(x, shift))


def _shift_rows(x: torch.Tensor, shift: int) -> torch.Tensor:
    expected = torch.zeros_like(x)
    if shift > 0:
        expected[..., shift:, :] = x[..., :-shift, :]
    else:
        expected[..., :shift, :] = x[..., -shift:, :]
    return expected


def test_translate_per_image_values():
    x = _images(3, 3, 8)
    out = apply_op(x, "TranslateX", torch.tensor([0.0, 2.0, -8.0]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1, ..., 2:], x[1, ..., :-2]) and torch.all(out[1, ..., :2] == 0)
    assert torch.all(out[2] == 0)  # shifted out entirely


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 9, 32])
def test_rotate_multiples_of_90(channels, size):
    x = _images(2, channels, size)
    ccw = apply_op(x, "Rotate", torch.tensor([90.0, 90.0]))
    assert torch.equal(ccw, torch.rot90(x, 1, dims=(-2, -1)))  # positive = counter-clockwise
    cw = apply_op(x, "Rotate", torch.tensor([-90.0, -90.0]))
    assert torch.equal(cw, torch.rot90(x, -1, dims=(-2, -1)))
    half = apply_op(x, "Rotate", torch.tensor([180.0, -180.0]))
    assert torch.equal(half, torch.flip(x, dims=(-2, -1)))
    mixed = apply_op(x, "Rotate", torch.tensor([0.0, 90.0]))
    assert torch.equal(mixed[0], x[0]) and torch.equal(mixed[1], torch.rot90(x[1], 1, dims=(-2, -1)))


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "Rotate", "TranslateX", "TranslateY"])
def test_geometric_zero_is_identity(op):
    x = _images(3, 3, 16)
    assert torch.equal(apply_op(x, op, torch.zeros(3)), x)


def ref_shear_x(img: np.ndarray, v: float) -> np.ndarray:
    """Output pixel (i, j) shows input pixel (i, floor(j + 0.5 + v (i + 0.5))), or 0 outside."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            src = math.floor(j + 0.5 + v * (i + 0.5))
            if 0 <= src < w:
                out[:, i, j] = img[:, i, src]
    return out


@pytest.mark.parametrize("v", [0.3, -0.3, 0.17, -0.05])
def test_shear_closed_form(v):
    x = _images(2, 3, 16)
    out_x = apply_op(x, "ShearX", torch.tensor([v, v]))
    expected = _per_image(lambda img: ref_shear_x(img, v), x)
    assert torch.equal(out_x, expected)
    # ShearY is ShearX of the transposed image, transposed back
    out_y = apply_op(x, "ShearY", torch.tensor([v, v]))
    expected_y = _per_image(lambda img: ref_shear_x(img.transpose(0, 2, 1), v).transpose(0, 2, 1), x)
    assert torch.equal(out_y, expected_y)


def test_geometric_keeps_pixel_values_and_fills_black():
    x = _images(4, 3, 16) * 0.5 + 0.5  # no zero pixels
    for op, v in [("Rotate", 30.0), ("ShearX", 0.3), ("TranslateY", -7.25)]:
        out = apply_op(x, op, torch.full((4,), v))
        assert (out == 0).any(), op  # some fill
        inside = out[out != 0]
        assert torch.isin(inside, x).all(), op  # nearest: only original values


# ---------------------------------------------------------------------------
# apply_op against Pillow (the reference implementation of these ops).


def _to_pil(img: torch.Tensor):
    from PIL import Image

    levels = torch.round(img * 255).to(torch.uint8)
    if img.shape[0] == 1:
        return Image.fromarray(levels[0].numpy(), "L")
    return Image.fromarray(levels.permute(1, 2, 0).numpy(), "RGB")


def _from_pil(im) -> torch.Tensor:
    a = torch.from_numpy(np.array(im).astype(np.float32) / 255.0)
    return a[None] if a.dim() == 2 else a.permute(2, 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_pillow_equalize_posterize_solarize(channels):
    pytest.importorskip("PIL")
    from PIL import ImageOps

    x = _grid_images(3, channels, 32)
    eq = apply_op(x, "Equalize", torch.zeros(3))
    post = apply_op(x, "Posterize", torch.full((3,), 3.0))
    sol = apply_op(x, "Solarize", torch.full((3,), 100 / 255))
    for k in range(3):
        im = _to_pil(x[k])
        torch.testing.assert_close(eq[k], _from_pil(ImageOps.equalize(im)), atol=1e-7, rtol=0)
        torch.testing.assert_close(post[k], _from_pil(ImageOps.posterize(im, 5)), atol=1e-7, rtol=0)
        torch.testing.assert_close(sol[k], _from_pil(ImageOps.solarize(im, 100)), atol=1e-7, rtol=0)


@pytest.mark.parametrize("op", ["Brightness", "Color", "Contrast", "Sharpness"])
def test_pillow_enhance(op):
    pytest.importorskip("PIL")
    from PIL import ImageEnhance

    x = _grid_images(2, 3, 12)
    for v in (-0.7, 0.6):
        out = apply_op(x, op, torch.full((2,), v))
        for k in range(2):
            expected = _from_pil(getattr(ImageEnhance, op)(_to_pil(x[k])).enhance(1 + v))
            # Pillow rounds to 8 bits (and its grayscale / contrast mean are integer approximations)
            torch.testing.assert_close(out[k], expected, atol=3.5 / 255, rtol=0)


@pytest.mark.parametrize("op,v", [("ShearX", 0.3), ("ShearY", -0.2), ("TranslateX", 5.0), ("TranslateY", -3.0)])
def test_pillow_affine(op, v):
    pytest.importorskip("PIL")
    from PIL import Image

    coeffs = {
        "ShearX": (1, v, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, v, 1, 0),
        "TranslateX": (1, 0, -v, 0, 1, 0),
        "TranslateY": (1, 0, 0, 0, 1, -v),
    }[op]
    x = _images(1, 1, 16)
    out = apply_op(x, op, torch.tensor([v]))
    im = Image.fromarray(x[0, 0].numpy(), "F")
    expected = np.array(im.transform(im.size, Image.AFFINE, coeffs, Image.NEAREST, fillcolor=0))
    assert torch.equal(out[0, 0], torch.from_numpy(expected))


def test_pillow_rotate():
    pytest.importorskip("PIL")
    from PIL import Image

    x = _images(1, 1, 32)
    for angle in (23.0, -30.0, 90.0):
        out = apply_op(x, "Rotate", torch.tensor([angle]))[0, 0]
        im = Image.fromarray(x[0, 0].numpy(), "F")
        expected = torch.from_numpy(np.array(im.rotate(angle, resample=Image.NEAREST, fillcolor=0)))
        # nearest sampling may round a coordinate that lies within float error of a pixel edge differently
        assert (out != expected).float().mean() < 0.01, angle


# ---------------------------------------------------------------------------
# rand_augment.


def _level(op: str, magnitude: int, bins: int, size: int) -> float:
    """Magnitude value of the RandAugment-for-CIFAR table, written from the definition."""
    maxima = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331 * size, "TranslateY": 150 / 331 * size,
              "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
    if op in maxima:
        return float(np.linspace(0.0, maxima[op], bins)[magnitude])
    if op == "Posterize":
        return float(int(np.linspace(0.0, 4.0, bins)[magnitude]))
    if op == "Solarize":
        return float(np.linspace(1.0, 0.0, bins)[magnitude])
    return 0.0


def replay_rand_augment(images01, seed, num_ops, magnitude, bins):
    """rand_augment written as a loop over images, replaying the documented draw order."""
    g = _gen(seed)
    n, _, size, _ = images01.shape
    out = images01.clone()
    drawn = set()
    for _ in range(num_ops):
        ops = torch.randint(0, 14, (n,), generator=g)
        signs = torch.randint(0, 2, (n,), generator=g) * 2 - 1
        for k in range(n):
            op = OPS[int(ops[k])]
            drawn.add(op)
            value = _level(op, magnitude, bins, size)
            if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                      "Brightness", "Color", "Contrast", "Sharpness"):
                value *= int(signs[k])
            out[k:k + 1] = apply_op(out[k:k + 1], op, torch.tensor([value]))
    return out, drawn


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
@pytest.mark.parametrize("num_ops,magnitude,bins", [(2, 14, 31), (1, 30, 31), (3, 5, 11), (2, 9, 31)])
def test_rand_augment_matches_per_image_replay(channels, size, num_ops, magnitude, bins):
    x = _images(120, channels, size)
    out = rand_augment(x, generator=_gen(3), num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=bins)
    expected, drawn = replay_rand_augment(x, 3, num_ops, magnitude, bins)
    assert drawn == set(OPS)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_rand_augment_deterministic_per_seed(channels):
    x = _images(32, channels, 16)
    a = rand_augment(x, generator=_gen(7))
    b = rand_augment(x, generator=_gen(7))
    c = rand_augment(x, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the generator advances: a second call with the same generator differs
    g = _gen(7)
    first = rand_augment(x, generator=g)
    assert not torch.equal(first, rand_augment(x, generator=g))


def test_rand_augment_magnitude_zero_only_non_parametric_ops_change():
    x = _grid_images(64, 3, 16) * 0.9 + 0.05  # off the 8-bit grid, inside (0, 1)
    x[:4, :, 0, 0] = 1.0  # solarize at threshold 1 flips these
    candidates = [
        x.double(),
        _per_image(lambda img: ref_posterize(img, 0.0), x),
        _per_image(lambda img: ref_solarize(img.astype(np.float64), 1.0), x),
        _per_image(lambda img: ref_autocontrast(img.astype(np.float64)), x),
        _per_image(ref_equalize, x),
    ]
    out = rand_augment(x, generator=_gen(0), num_ops=1, magnitude=0).double()
    unchanged = 0
    for k in range(x.shape[0]):
        matches = [torch.allclose(out[k], cand[k], atol=1e-6, rtol=0) for cand in candidates]
        assert any(matches), k
        unchanged += matches[0]
    assert 30 <= unchanged < 64  # 10 of the 14 ops are the identity at magnitude 0


def test_rand_augment_changes_images_at_high_magnitude():
    x = _images(64, 3, 16)
    out = rand_augment(x, generator=_gen(0), num_ops=2, magnitude=20)
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-3
    assert changed.float().mean() > 0.7


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_rand_augment_with_mean_std_stays_in_stored_space(channels, size):
    mean = CIFAR_MEAN[:channels] if channels == 3 else (0.3,)
    std = CIFAR_STD[:channels] if channels == 3 else (0.4,)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    pixels = _images(40, channels, size)
    stored = (pixels - m) / s
    before = stored.clone()
    out = rand_augment(stored, generator=_gen(1), num_ops=2, magnitude=14, mean=mean, std=list(std))
    assert torch.equal(stored, before)  # input not modified
    assert out.shape == stored.shape and out.dtype == stored.dtype
    back = out * s + m
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    # the same as augmenting the pixel images directly and standardising the result
    direct = rand_augment((stored * s + m).clamp(0, 1), generator=_gen(1), num_ops=2, magnitude=14)
    torch.testing.assert_close(out, (direct - m) / s, atol=1e-5, rtol=0)
    assert not torch.allclose(out, stored, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rand_augment_preserves_input_shape_dtype(dtype):
    x = _images(16, 3, 16).to(dtype)
    before = x.clone()
    out = rand_augment(x, generator=_gen(0))
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == dtype
    assert out.data_ptr() != x.data_ptr()
    assert out.min() >= 0 and out.max() <= 1
    zero = rand_augment(x, generator=_gen(0), num_ops=0)
    assert torch.equal(zero, x) and zero.data_ptr() != x.data_ptr()
    empty = rand_augment(x[:0], generator=_gen(0))
    assert empty.shape == (0, 3, 16, 16)


# ---------------------------------------------------------------------------
# random_resized_crop.


def ref_crop_resize(img: np.ndarray, box) -> np.ndarray:
    """Bilinear resize of the box to the image size (align_corners=False), coordinates clamped to the image."""
    top, left, bh, bw = (int(b) for b in box)
    c, h, w = img.shape
    ys = np.clip(top + (np.arange(h) + 0.5) * bh / h - 0.5, 0, h - 1)
    xs = np.clip(left + (np.arange(w) + 0.5) * bw / w - 0.5, 0, w - 1)
    out = np.zeros_like(img, dtype=np.float64)
    for i, y in enumerate(ys):
        y0 = int(math.floor(y))
        y1 = min(y0 + 1, h - 1)
        wy = y - y0
        for j, x in enumerate(xs):
            x0 = int(math.floor(x))
            x1 = min(x0 + 1, w - 1)
            wx = x - x0
            out[:, i, j] = ((1 - wy) * ((1 - wx) * img[:, y0, x0] + wx * img[:, y0, x1])
                            + wy * ((1 - wx) * img[:, y1, x0] + wx * img[:, y1, x1]))
    return out


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_random_resized_crop_full_box_is_identity(channels, size):
    x = torch.randn(5, channels, size, size, generator=_gen(0))  # stored (normalised) values
    out = random_resized_crop(x, generator=_gen(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 16)])
def test_random_resized_crop_matches_reference(channels, size):
    x = torch.randn(6, channels, size, size, generator=_gen(0))
    before = x.clone()
    out = random_resized_crop(x, generator=_gen(5))
    assert torch.equal(x, before)
    boxes = sample_crop_boxes(6, size, size, generator=_gen(5))
    expected = torch.from_numpy(np.stack([ref_crop_resize(x[k].numpy(), boxes[k]) for k in range(6)]))
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_random_resized_crop_deterministic_and_constant():
    x = torch.randn(8, 3, 16, 16, generator=_gen(0))
    assert torch.equal(random_resized_crop(x, generator=_gen(2)), random_resized_crop(x, generator=_gen(2)))
    assert not torch.equal(random_resized_crop(x, generator=_gen(2)), random_resized_crop(x, generator=_gen(3)))
    const = torch.full((8, 3, 16, 16), -1.25, dtype=torch.float64)
    out = random_resized_crop(const, generator=_gen(4))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, const, atol=1e-12, rtol=0)


@pytest.mark.parametrize("height,width,scale,ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (20, 28, (0.5, 3.0), (0.2, 5.0)),
    (8, 8, (0.01, 1.0), (0.1, 10.0)),
])
def test_crop_boxes_within_image(height, width, scale, ratio):
    boxes = sample_crop_boxes(3000, height, width, generator=_gen(0), scale=scale, ratio=ratio)
    assert boxes.dtype == torch.int64 and boxes.shape == (3000, 4)
    top, left, bh, bw = boxes.unbind(1)
    assert (bh >= 1).all() and (bh <= height).all() and (bw >= 1).all() and (bw <= width).all()
    assert (top >= 0).all() and (top + bh <= height).all()
    assert (left >= 0).all() and (left + bw <= width).all()
    assert len(set(map(tuple, boxes.tolist()))) > 100  # random


def ref_crop_boxes(n, height, width, seed, scale, ratio):
    """The Inception crop sampler, one image and one attempt at a time, replaying the documented draws."""
    u = torch.rand((n, 10, 4), generator=_gen(seed), dtype=torch.float64).tolist()
    boxes = []
    for k in range(n):
        for area_u, ratio_u, top_u, left_u in u[k]:
            area = height * width * (scale[0] + (scale[1] - scale[0]) * area_u)
            aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * ratio_u)
            bw, bh = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < bw <= width and 0 < bh <= height:
                boxes.append([math.floor(top_u * (height - bh + 1)), math.floor(left_u * (width - bw + 1)), bh, bw])
                break
        else:
            boxes.append(None)
    return boxes


@pytest.mark.parametrize("height,width,scale,ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (12, 20, (0.3, 1.5), (0.5, 3.0)),
])
def test_crop_boxes_match_per_image_reference(height, width, scale, ratio):
    boxes = sample_crop_boxes(500, height, width, generator=_gen(11), scale=scale, ratio=ratio)
    expected = ref_crop_boxes(500, height, width, 11, scale, ratio)
    fallbacks = 0
    for got, want in zip(boxes.tolist(), expected):
        if want is None:
            fallbacks += 1
        else:
            assert got == want
    assert fallbacks < 500


def test_crop_boxes_closed_forms():
    # area fixed at a quarter, square: 16x16 boxes, offsets uniform over 0..16
    boxes = sample_crop_boxes(2000, 32, 32, generator=_gen(0), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert (boxes[:, 2:] == 16).all()
    assert set(boxes[:, 0].tolist()) == set(range(17)) and set(boxes[:, 1].tolist()) == set(range(17))
    # area half of 40x40, ratio 2: 20 rows by 40 columns
    boxes = sample_crop_boxes(50, 40, 40, generator=_gen(0), scale=(0.5, 0.5), ratio=(2.0, 2.0))
    assert (boxes[:, 1:] == torch.tensor([0, 20, 40])).all()
    assert (boxes[:, 0] <= 20).all()
    # nothing fits: the central crop, ratio clamped
    never = {"scale": (2.0, 3.0)}
    full = sample_crop_boxes(5, 16, 16, generator=_gen(0), ratio=(0.75, 4 / 3), **never)
    assert (full == torch.tensor([0, 0, 16, 16])).all()
    wide = sample_crop_boxes(5, 16, 16, generator=_gen(0), ratio=(2.0, 3.0), **never)
    assert (wide == torch.tensor([4, 0, 8, 16])).all()
    tall = sample_crop_boxes(5, 16, 16, generator=_gen(0), ratio=(0.25, 0.5), **never)
    assert (tall == torch.tensor([0, 4, 16, 8])).all()


def test_crop_boxes_area_and_ratio_in_range():
    scale, ratio = (0.3, 0.6), (0.5, 2.0)
    boxes = sample_crop_boxes(2000, 64, 64, generator=_gen(1), scale=scale, ratio=ratio).double()
    area = boxes[:, 2] * boxes[:, 3] / 64**2
    aspect = boxes[:, 3] / boxes[:, 2]
    assert area.min() > scale[0] - 0.03 and area.max() < scale[1] + 0.03  # up to rounding of the sides
    assert aspect.min() > ratio[0] * 0.9 and aspect.max() < ratio[1] * 1.1
    assert area.std() > 0.05 and (aspect < 0.8).any() and (aspect > 1.25).any()


# ---------------------------------------------------------------------------
# Argument errors.


X = torch.zeros(2, 3, 8, 8)
G = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"images": [1.0]}, TypeError, "images must be a torch.Tensor"),
    ({"images": torch.zeros(3, 8, 8)}, ValueError, "images must have shape"),
    ({"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, TypeError, "floating-point"),
    ({"images": torch.zeros(2, 2, 8, 8)}, ValueError, "1 or 3 channels"),
    ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ({"num_ops": -1}, ValueError, "num_ops"),
    ({"num_ops": 1.0}, TypeError, "num_ops must be an int"),
    ({"magnitude": 40}, ValueError, r"rand_augment: magnitude must be an int in \[0, 30\], got 40"),
    ({"magnitude": -1}, ValueError, "magnitude"),
    ({"magnitude": True}, TypeError, "magnitude must be an int"),
    ({"magnitude": 14.0}, TypeError, "magnitude must be an int"),
    ({"num_magnitude_bins": 1, "magnitude": 0}, ValueError, "num_magnitude_bins"),
    ({"magnitude": 10, "num_magnitude_bins": 10}, ValueError, r"magnitude must be an int in \[0, 9\]"),
    ({"mean": CIFAR_MEAN}, ValueError, "mean and std"),
    ({"std": CIFAR_STD}, ValueError, "mean and std"),
    ({"mean": (0.5, 0.5), "std": CIFAR_STD}, ValueError, "mean must have one value per channel"),
    ({"mean": CIFAR_MEAN, "std": (0.2, 0.0, 0.2)}, ValueError, "std must be > 0"),
    ({"mean": "abc", "std": CIFAR_STD}, TypeError, "mean must be a sequence"),
    ({"mean": CIFAR_MEAN, "std": (0.2, None, 0.2)}, TypeError, "std must be a sequence"),
    ({"mean": CIFAR_MEAN, "std": (0.2, math.nan, 0.2)}, ValueError, "std must be finite"),
])
def test_rand_augment_argument_errors(kwargs, error, pattern):
    args = {"images": X, "generator": G, **kwargs}
    images = args.pop("images")
    with pytest.raises(error, match=pattern):
        rand_augment(images, **args)


@pytest.mark.parametrize("images,op,value,error,pattern", [
    (X, "Blur", torch.zeros(2), ValueError, "op must be one of"),
    (X, 3, torch.zeros(2), TypeError, "op must be a str"),
    (X, "Rotate", [0.0, 0.0], TypeError, "value must be a torch.Tensor"),
    (X, "Rotate", torch.zeros(3), ValueError, r"value must have shape \(2,\)"),
    (X, "Rotate", torch.tensor([0.0, math.inf]), ValueError, "value must be finite"),
    (X, "Posterize", torch.tensor([1.0, 9.0]), ValueError, "Posterize values must be in"),
    (torch.zeros(2, 2, 8, 8), "Color", torch.zeros(2), ValueError, "1 or 3 channels"),
    (torch.zeros(2, 8, 8), "Identity", torch.zeros(2), ValueError, "images must have shape"),
    (X.long(), "Identity", torch.zeros(2), TypeError, "floating-point"),
])
def test_apply_op_argument_errors(images, op, value, error, pattern):
    with pytest.raises(error, match=f"apply_op: .*{pattern}"):
        apply_op(images, op, value)


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"images": "x"}, TypeError, "images must be a torch.Tensor"),
    ({"images": torch.zeros(8, 8)}, ValueError, "images must have shape"),
    ({"images": torch.zeros(1, 1, 8, 8, dtype=torch.int32)}, TypeError, "images must have a floating-point"),
    ({"generator": None}, TypeError, "generator"),
    ({"scale": (0.5, 0.1)}, ValueError, "scale"),
    ({"scale": (0.0, 1.0)}, ValueError, "scale"),
    ({"scale": "ab"}, TypeError, "scale"),
    ({"scale": (0.1, 0.5, 1.0)}, TypeError, "scale"),
    ({"ratio": (0.0, 1.0)}, ValueError, "ratio"),
    ({"ratio": (2.0, 1.0)}, ValueError, "ratio"),
    ({"ratio": (1.0, math.inf)}, ValueError, "ratio"),
])
def test_random_resized_crop_argument_errors(kwargs, error, pattern):
    args = {"images": X, "generator": G, **kwargs}
    images = args.pop("images")
    with pytest.raises(error, match=f"random_resized_crop: {pattern}"):
        random_resized_crop(images, **args)


@pytest.mark.parametrize("args,kwargs,error,pattern", [
    ((-1, 8, 8), {}, ValueError, "n must be"),
    ((4, 0, 8), {}, ValueError, "height must be"),
    ((4, 8, 8.0), {}, TypeError, "width must be an int"),
    ((4, 8, 8), {"generator": "g"}, TypeError, "generator"),
    ((4, 8, 8), {"ratio": (1.0, 0.5)}, ValueError, "ratio"),
])
def test_sample_crop_boxes_argument_errors(args, kwargs, error, pattern):
    kwargs = {"generator": G, **kwargs}
    with pytest.raises(error, match=f"sample_crop_boxes: {pattern}"):
        sample_crop_boxes(*args, **kwargs)
