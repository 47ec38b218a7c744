"""Representation-based measures (srrlab.measures.representation, Natekar & Sharma 2020) against direct computations."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

import srrlab
from srrlab.measures import MEASURES, MeasureSettings, compute_measures
from srrlab.measures import representation as rep  # registers db-index, mixup-margin, augment-margin
from srrlab.measures.representation import davies_bouldin, label_mixup, margin_summary, random_translate

NAMES = ["db-index", "mixup-margin", "augment-margin"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add wake-up latency on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blobs(seed=0, sizes=(30, 20, 25), dim=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(len(sizes), dim))
    x = np.concatenate([c + rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    y = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    return x, y


def _db_direct(x: np.ndarray, y: np.ndarray) -> float:
    """The Davies-Bouldin index written out with loops."""
    classes = sorted(set(y.tolist()))
    cent, scat = {}, {}
    for c in classes:
        pts = x[y == c]
        cent[c] = pts.mean(axis=0)
        scat[c] = np.mean([np.linalg.norm(p - cent[c]) for p in pts])
    total = 0.0
    for i in classes:
        total += max((scat[i] + scat[j]) / np.linalg.norm(cent[i] - cent[j]) for j in classes if j != i)
    return total / len(classes)


# -- Davies-Bouldin -------------------------------------------------------------------------
def test_davies_bouldin_matches_direct_formula_and_sklearn():
    from sklearn.metrics import davies_bouldin_score

    x, y = _blobs()
    value = davies_bouldin(torch.from_numpy(x), torch.from_numpy(y))
    assert value == pytest.approx(_db_direct(x, y), rel=1e-12)
    assert value == pytest.approx(davies_bouldin_score(x, y), rel=1e-12)
    # well separated blobs give a smaller index than overlapping ones
    x_close = x.copy()
    for c in range(3):
        x_close[y == c] -= 0.9 * (x[y == c].mean(axis=0) - x.mean(axis=0))
    assert davies_bouldin(torch.from_numpy(x_close), torch.from_numpy(y)) > value


def test_davies_bouldin_invariances():
    x, y = _blobs(seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    value = davies_bouldin(xt, yt)
    assert davies_bouldin(7.5 * xt, yt) == pytest.approx(value, rel=1e-12)
    relabelled = torch.tensor([7, 3, 5])[yt]
    assert davies_bouldin(xt, relabelled) == pytest.approx(value, rel=1e-12)
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))
    assert davies_bouldin(xt[perm], yt[perm]) == pytest.approx(value, rel=1e-12)


def test_davies_bouldin_single_sample_class_and_refusals():
    from sklearn.metrics import davies_bouldin_score

    x, y = _blobs(seed=2, sizes=(10, 1, 12))  # class 1 has one sample: kept, scatter 0
    assert davies_bouldin(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(davies_bouldin_score(x, y),
                                                                                     rel=1e-12)
    assert davies_bouldin(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(_db_direct(x, y), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 classes"):
        davies_bouldin(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="one label per"):
        davies_bouldin(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    # coincident centroids: indistinguishable classes, maximally complex
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert davies_bouldin(pts, torch.tensor([0, 0, 1, 1])) == float("inf")


# -- margin summary ---------------------------------------------------------------------------
def test_margin_summary_hand_computed():
    m = np.array([-10.0, 1, 2, 3, 4, 5, 6, 7, 8, 30])
    # linear-interpolation quartiles of 10 points: positions 2.25, 4.5, 6.75
    q1, med, q3 = 2.25, 4.5, 6.75
    iqr = 4.5  # fences at -4.5 and 13.5: -10 and 30 are outliers
    lower, upper = 1.0, 8.0  # the most extreme points inside the fences
    assert q1 - 1.5 * iqr == -4.5 and q3 + 1.5 * iqr == 13.5
    expected = (lower + q1 + med + q3 + upper) / 5  # = 4.5
    assert margin_summary(m) == pytest.approx(expected, abs=1e-12)
    assert margin_summary(torch.from_numpy(m)) == pytest.approx(4.5, abs=1e-12)
    # no outliers: the fences are the extremes
    assert margin_summary([1.0, 2.0, 3.0]) == pytest.approx((1 + 1.5 + 2 + 2.5 + 3) / 5)
    assert margin_summary([2.0]) == 2.0


def test_margin_summary_against_percentiles():
    rng = np.random.default_rng(0)
    m = np.concatenate([rng.normal(size=500), [40.0, -35.0, 25.0]])
    q1, med, q3 = np.percentile(m, [25, 50, 75])
    inside = m[(m >= q1 - 1.5 * (q3 - q1)) & (m <= q3 + 1.5 * (q3 - q1))]
    assert margin_summary(m) == pytest.approx(np.mean([inside.min(), q1, med, q3, inside.max()]), rel=1e-12)
    assert margin_summary(3.0 * m) == pytest.approx(3.0 * margin_summary(m), rel=1e-12)
    with pytest.warns(UserWarning, match="not finite"):
        assert np.isnan(margin_summary(np.r_[m, np.nan]))
    with pytest.raises(ValueError):
        margin_summary([])


# -- label-wise mixup -------------------------------------------------------------------------
def test_label_mixup_mixes_pairs_of_the_same_label():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(13, 1, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 0, 3, 1, 0, 2, 1, 0, 1])  # class 3 has a single image
    alpha = 0.3
    mixed, mixed_labels = label_mixup(images, labels, alpha, gen)
    counts = torch.bincount(labels)
    assert len(mixed) == int(counts[counts >= 2].sum()) == 12
    assert 3 not in mixed_labels.tolist()
    used = []
    for img, lab in zip(mixed, mixed_labels):
        members = (labels == lab).nonzero().squeeze(1).tolist()
        hits = [(a, b) for a, b in itertools.permutations(members, 2)
                if torch.allclose(img, alpha * images[a] + (1 - alpha) * images[b], atol=1e-12)]
        assert len(hits) == 1, "every mixed image is α x_a + (1−α) x_b of two distinct images of its label"
        used.append(hits[0])
    firsts, seconds = zip(*used)
    assert sorted(firsts) == sorted(seconds) == sorted(i for i in range(13) if labels[i] != 3)  # each image twice
    again, _ = label_mixup(images, labels, alpha, torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed)
    other, _ = label_mixup(images, labels, alpha, torch.Generator().manual_seed(1))
    assert not torch.equal(other, mixed)


# -- translations -----------------------------------------------------------------------------
def test_random_translate_zero_shift_is_identity():
    images = torch.randn(6, 2, 5, 5)
    out = random_translate(images, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_random_translate_moves_a_pixel_by_the_drawn_shift():
    n, side, s = 300, 7, 2
    images = torch.zeros(n, 1, side, side)
    images[:, 0, 3, 3] = 1.0  # one-hot pixel at the centre
    out = random_translate(images, s, torch.Generator().manual_seed(5))
    # the documented draw: window offsets o in [0, 2s], content moved by s - o (rows, columns)
    offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=torch.Generator().manual_seed(5))
    shifts = s - offsets
    for k in range(n):
        dy, dx = shifts[k].tolist()
        expected = torch.zeros(1, side, side)
        expected[0, 3 + dy, 3 + dx] = 1.0
        assert torch.equal(out[k], expected)
    assert {tuple(t) for t in shifts.tolist()} == set(itertools.product(range(-s, s + 1), repeat=2))
    # a pixel moved out of the frame leaves zeros (zero padding)
    corner = torch.zeros(200, 1, 4, 4)
    corner[:, 0, 0, 0] = 1.0
    moved = random_translate(corner, 1, torch.Generator().manual_seed(0))
    sums = moved.sum(dim=(1, 2, 3))
    assert set(sums.tolist()) == {0.0, 1.0} and (moved >= 0).all()


def test_max_shift_rounds_half_up():
    assert rep.max_shift_of(torch.zeros(1, 1, 8, 8), 0.125) == 1
    assert rep.max_shift_of(torch.zeros(1, 1, 28, 28), 0.125) == 4
    assert rep.max_shift_of(torch.zeros(1, 1, 32, 32), 0.125) == 4
    assert rep.max_shift_of(torch.zeros(1, 1, 8, 8), 0.0) == 0


# -- the measures on a tiny CRATE -------------------------------------------------------------
def _tiny():
    torch.manual_seed(0)
    model = srrlab.create_model("crate-t-digits", depth=1, dim=16, heads=2)
    x = torch.randn(40, 1, 8, 8)
    y = torch.arange(4).repeat_interleave(10)
    return model, x, y


SETTINGS = MeasureSettings(max_images=None)


def test_registry_metadata():
    for name in NAMES:
        info = MEASURES[name]
        assert info.needs_data and not info.needs_init and not info.network_free
        assert "Natekar & Sharma 2020" in info.reference and info.description


def test_measures_on_tiny_crate_finite_deterministic_and_model_unchanged():
    model, x, y = _tiny()
    state = copy.deepcopy(model.state_dict())
    values = compute_measures(model, data=(x, y), measures=NAMES, settings=SETTINGS)
    assert all(np.isfinite(v) for v in values.values()), values
    again = compute_measures(model, data=(x, y), measures=NAMES, settings=SETTINGS)
    assert again == values
    other_seed = compute_measures(model, data=(x, y), measures=["mixup-margin", "augment-margin"],
                                  settings=MeasureSettings(max_images=None, seed=1))
    assert other_seed["mixup-margin"] != values["mixup-margin"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not model.training


def test_measures_equal_their_definitions():
    model, x, y = _tiny()
    values = compute_measures(model, data=(x, y), measures=NAMES, settings=SETTINGS)
    with torch.no_grad():
        assert values["db-index"] == pytest.approx(davies_bouldin(model.features(x).double(), y), rel=1e-9)
        mixed, labels = label_mixup(x, y, 0.5, torch.Generator().manual_seed(0))
        margins = rep.output_margins(model(mixed), labels)
        assert values["mixup-margin"] == pytest.approx(-margin_summary(margins), rel=1e-9)
        moved = random_translate(x, 1, torch.Generator().manual_seed(0))  # round(0.125 * 8) = 1
        assert values["augment-margin"] == pytest.approx(-margin_summary(rep.output_margins(model(moved), y)),
                                                         rel=1e-9)
    # margins by hand: the true logit minus the largest other one
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    assert rep.output_margins(logits, torch.tensor([0, 2])).tolist() == [1.0, -2.0]


def test_margins_scale_with_the_head_and_db_does_not():
    model, x, y = _tiny()
    base = compute_measures(model, data=(x, y), measures=NAMES, settings=SETTINGS)
    c = 3.0
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.head.weight.mul_(c)
        scaled.head.bias.mul_(c)
    values = compute_measures(scaled, data=(x, y), measures=NAMES, settings=SETTINGS)
    assert values["mixup-margin"] == pytest.approx(c * base["mixup-margin"], rel=1e-5)
    assert values["augment-margin"] == pytest.approx(c * base["augment-margin"], rel=1e-5)
    assert values["db-index"] == pytest.approx(base["db-index"], rel=1e-12)


def test_protocol_network_and_batching():
    model, x, y = _tiny()
    small = compute_measures(model, data=(x, y), measures=NAMES,
                             settings=MeasureSettings(max_images=None, batch_size=7))
    full = compute_measures(model, data=(x, y), measures=NAMES, settings=SETTINGS)
    for name in NAMES:
        assert small[name] == pytest.approx(full[name], rel=1e-5, abs=1e-6)
    proto = compute_measures(model, data=(x, y), measures=NAMES,
                             settings=MeasureSettings(max_images=None, network="protocol"))
    assert all(np.isfinite(v) for v in proto.values())
    with pytest.raises(ValueError, match="at least 2 training images"):
        compute_measures(model, data=(x[:4], torch.arange(4)), measures=["mixup-margin"], settings=SETTINGS)
