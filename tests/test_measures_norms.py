"""Norm, spectral, margin and path-norm measures (srrlab.measures.norms) against direct computations."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import srrlab
from srrlab.measures import MEASURES, MeasureContext, MeasureSettings, compute_measures
from srrlab.models import CompressionStep
from srrlab.measures.norms import path_norm_log

NORM_MEASURES = ["param-norm", "fro-dist", "dist-spec-init", "log-prod-of-spec", "log-sum-of-spec",
                 "log-prod-of-fro", "log-sum-of-fro", "fro-over-spec"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add wake-up latency on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(variant="crate-c", seed=0, **options):
    torch.manual_seed(seed)
    kw = dict(depth=2, dim=16, heads=2) | options
    init = srrlab.create_model(f"{variant}-digits", **kw)
    model = copy.deepcopy(init)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, init


def _direct_matrices(model) -> list[np.ndarray]:
    """The matrices written out by hand: patch projection, per layer U (once), the learned output
    projection where there is one, D, and the classifier."""
    mats = [model.patch_proj.weight]
    for layer in model.layers:
        mats.append(layer.attn.qkv.weight)
        if hasattr(layer.attn, "to_out"):
            mats.append(layer.attn.to_out.weight)
        mats.append(layer.ista.weight)
    mats.append(model.head.weight)
    return [m.detach().double().numpy() for m in mats]


def _spec(w: np.ndarray) -> float:
    return float(np.linalg.svd(w, compute_uv=False)[0])


def _expected(model, init) -> dict[str, float]:
    ws, w0s = _direct_matrices(model), _direct_matrices(init)
    d = len(ws)
    spec2 = np.array([_spec(w) ** 2 for w in ws])
    fro2 = np.array([np.sum(w ** 2) for w in ws])
    return {
        "param-norm": fro2.sum(),
        "fro-dist": sum(np.sum((w - w0) ** 2) for w, w0 in zip(ws, w0s)),
        "dist-spec-init": sum(_spec(w - w0) ** 2 for w, w0 in zip(ws, w0s)),
        "log-prod-of-spec": math.log(np.prod(spec2)),
        "log-sum-of-spec": math.log(d * np.prod(spec2) ** (1 / d)),
        "log-prod-of-fro": math.log(np.prod(fro2)),
        "log-sum-of-fro": math.log(d * np.prod(fro2) ** (1 / d)),
        "fro-over-spec": (fro2 / spec2).sum(),
    }


def test_registered_with_references_and_requirements():
    for name in NORM_MEASURES + ["spec-init", "spec-orig", "path-norm", "inverse-margin"]:
        info = MEASURES[name]
        assert "Jiang et al. 2020" in info.reference and "eq. (" in info.reference, name
    needs = {n: (MEASURES[n].needs_data, MEASURES[n].needs_init) for n in MEASURES}
    assert needs["fro-dist"] == needs["dist-spec-init"] == (False, True)
    assert needs["param-norm"] == needs["log-prod-of-spec"] == needs["path-norm"] == (False, False)
    assert needs["spec-init"] == (True, True) and needs["spec-orig"] == needs["inverse-margin"] == (True, False)


@pytest.mark.parametrize("variant", ["crate-c", "crate", "crate-fix"])
def test_norm_measures_against_direct_svd(variant):
    model, init = _pair(variant)
    values = compute_measures(model, init=init, measures=NORM_MEASURES)
    expected = _expected(model, init)
    for name in NORM_MEASURES:
        assert values[name] == pytest.approx(expected[name], rel=1e-10), name
    # The tied U is one matrix; crate's learned output projection is another; crate-fix's buffer none.
    n = len(MeasureContext(model).matrices)
    assert n == 2 + 2 * 2 + (2 if variant == "crate" else 0)
    # LayerNorm and biases are not among the matrices: changing them changes nothing.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for module in changed.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.mul_(3.0)
                module.bias.add_(1.0)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.mul_(-2.0)
    again = compute_measures(changed, init=init, measures=NORM_MEASURES)
    assert again == pytest.approx(values, rel=1e-12)


def test_spec_bounds_against_direct_computation():
    model, init = _pair("crate")
    ctx = MeasureContext(model, init=init)
    ctx.__dict__["margin"] = gamma = 0.37  # the cached γ; its own tests are below
    ws, w0s = _direct_matrices(model), _direct_matrices(init)
    spec2 = np.array([_spec(w) ** 2 for w in ws])
    dist2 = np.array([np.sum((w - w0) ** 2) for w, w0 in zip(ws, w0s)])
    fro2 = np.array([np.sum(w ** 2) for w in ws])
    assert MEASURES["spec-init"](ctx) == pytest.approx(
        math.log(np.prod(spec2) / gamma ** 2 * np.sum(dist2 / spec2)), rel=1e-10)
    assert MEASURES["spec-orig"](ctx) == pytest.approx(
        math.log(np.prod(spec2) / gamma ** 2 * np.sum(fro2 / spec2)), rel=1e-10)
    assert MEASURES["inverse-margin"](ctx) == pytest.approx(1 / gamma ** 2, rel=1e-12)


def test_log_domain_stays_finite_for_deep_models_with_huge_weights():
    torch.manual_seed(1)
    model = srrlab.create_model("crate-c-digits", depth=12, dim=16, heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e6)
    ctx = MeasureContext(model, init=srrlab.create_model("crate-c-digits", depth=12, dim=16, heads=2))
    ctx.__dict__["margin"] = 1.0
    spec2 = (ctx.spectral_norms ** 2).tolist()
    assert math.prod(spec2) == math.inf  # the naive product overflows …
    for name in ["log-prod-of-spec", "log-sum-of-spec", "log-prod-of-fro", "log-sum-of-fro", "spec-init",
                 "spec-orig"]:
        value = MEASURES[name](ctx)
        assert math.isfinite(value) and value > 30, name  # … the logs do not
    assert MEASURES["log-prod-of-spec"](ctx) == pytest.approx(sum(math.log(s) for s in spec2), rel=1e-12)
    # path-norm: its log is finite here; the value itself is inf only beyond the float range …
    assert math.isfinite(path_norm_log(model)) and MEASURES["path-norm"](ctx) == math.inf
    # … and at weights × 1e3 (about 1e285) it is still an exact finite number.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-3)
    value = MEASURES["path-norm"](MeasureContext(model))
    assert math.isfinite(value) and math.log(value) == pytest.approx(path_norm_log(model), rel=1e-12)


# -- margin ---------------------------------------------------------------------------------------
class _FixedLogits(nn.Module):
    """Returns the row of a fixed logit table selected by the 'image' (its index)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("table", logits)
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.table[x[:, 0].long()]


def _margin_context(margins, settings=None):
    """Three classes, all labels 0: logits (m, 0, −1) have margin m."""
    m = torch.as_tensor(margins, dtype=torch.float64)
    logits = torch.stack([m, torch.zeros_like(m), -torch.ones_like(m)], dim=1)
    data = (torch.arange(len(m), dtype=torch.float32)[:, None], torch.zeros(len(m), dtype=torch.long))
    return MeasureContext(_FixedLogits(logits), data=data, settings=settings)


def test_inverse_margin_hand_computation():
    margins = [3.0, 0.5, 2.0, 1.5, 4.0, 0.25, 2.5, 1.0, 5.0, 6.0,
               7.0, 8.0, 0.75, 9.0, 2.25, 3.5, 4.5, 1.25, 5.5, 6.5]  # n = 20: the 2nd smallest is 0.5
    ctx = _margin_context(margins)
    assert ctx.margins.tolist() == pytest.approx(margins)
    assert ctx.margin == 0.5
    assert MEASURES["inverse-margin"](ctx) == pytest.approx(4.0)
    # the data order does not matter
    assert MEASURES["inverse-margin"](_margin_context(margins[::-1])) == pytest.approx(4.0)
    # other percentiles: nearest rank, k = ⌈q n / 100⌉
    assert _margin_context(margins, MeasureSettings(margin_percentile=50)).margin == 3.0  # k = 10
    assert _margin_context(margins, MeasureSettings(margin_percentile=12)).margin == 0.75  # k = 3


def test_percentile_edge_cases():
    ten = [float(i) for i in range(1, 11)]
    assert _margin_context(ten).margin == 1.0  # exactly 10 samples: accepted, γ = the smallest
    with pytest.raises(ValueError, match="at least 10 training samples.*got 9"):
        MEASURES["inverse-margin"](_margin_context(ten[:9]))
    with pytest.raises(ValueError, match="at least 10 training samples"):
        compute_measures(_FixedLogits(torch.zeros(9, 3)), data=(torch.arange(9.0)[:, None],
                                                                torch.zeros(9, dtype=torch.long)),
                         measures="inverse-margin")
    # 1 of 10 misclassified: the 10th percentile is that sample's negative margin → nan, with a warning
    ctx = _margin_context([-0.5] + ten[1:])
    with pytest.warns(UserWarning, match=r"misclassifies \(or ties\) 1 of the 10 training samples"):
        assert math.isnan(MEASURES["inverse-margin"](ctx))
    assert math.isnan(MEASURES["spec-orig"](ctx)) and math.isnan(ctx.margin)
    # 1 of 20 misclassified: still below the 10% the percentile allows
    ctx = _margin_context([-0.5] + [float(i) for i in range(1, 20)])
    assert ctx.margin == 1.0 and MEASURES["inverse-margin"](ctx) == 1.0
    # a zero margin (a tie) is not positive either
    with pytest.warns(UserWarning, match="margin-based measures are nan"):
        assert math.isnan(MEASURES["inverse-margin"](_margin_context([0.0] + ten[1:])))


def _linear_classifier(images, labels):
    """A logistic-regression classifier (nn.Linear on the flattened image) fit by L-BFGS: it fits the
    training digits, so its 10th-percentile margin is positive."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), 10))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return model


def test_data_dependent_measures_ignore_the_data_order(digits):
    images, labels = digits.train.images, digits.train.labels
    model = _linear_classifier(images, labels)
    init = copy.deepcopy(model)
    with torch.no_grad():
        init[1].weight.add_(0.1 * torch.randn_like(init[1].weight))
    names = ["inverse-margin", "spec-init", "spec-orig"] + NORM_MEASURES
    settings = MeasureSettings(max_images=None)
    a = compute_measures(model, init=init, data=(images, labels), measures=names, settings=settings)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))
    b = compute_measures(model, init=init, data=(images[perm], labels[perm]), measures=names, settings=settings)
    assert all(math.isfinite(v) for v in a.values())
    assert b == pytest.approx(a, rel=1e-6)
    # and γ is the nearest-rank 10th percentile of the margins, computed here directly
    logits = model(images).detach().double()
    true = logits[torch.arange(len(labels)), labels]
    other = logits.clone()
    other[torch.arange(len(labels)), labels] = -math.inf
    margins = np.sort((true - other.max(1).values).numpy())
    gamma = margins[math.ceil(0.1 * len(margins)) - 1]
    assert gamma > 0 and a["inverse-margin"] == pytest.approx(1 / gamma ** 2, rel=1e-6)


# -- path-norm ----------------------------------------------------------------------------------
def _constant_model(variant="crate-c", pool="cls", **values):
    """depth 1, d = 3, one head with p = d, 4×4 one-channel images in 2×2 patches (N = 5 tokens), 2
    classes; every parameter tensor set to one constant (LayerNorms to arbitrary values)."""
    model = srrlab.create_model(f"{variant}-digits", depth=1, dim=3, heads=1, image_size=4, patch_size=2,
                                num_classes=2, pool=pool)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(-7.0)
                module.bias.fill_(5.0)
        model.patch_proj.weight.fill_(values["a"])
        model.patch_proj.bias.fill_(values["b"])
        model.cls_token.fill_(values["c"])
        model.pos_embedding.fill_(values["p"])
        layer = model.layers[0]
        layer.attn.qkv.weight.fill_(values["u"])
        if variant == "crate":
            layer.attn.to_out.weight.fill_(values["o"])
            layer.attn.to_out.bias.fill_(values["ob"])
        layer.ista.weight.fill_(values["delta"])
        model.head.weight.fill_(values["h"])
        model.head.bias.fill_(values["hb"])
    return model


# dyadic values: exact in the models' float32 parameters
VALUES = dict(a=-0.5, b=0.25, c=1.5, p=-0.125, u=0.75, o=-1.25, ob=0.375, delta=-0.625, h=0.875, hb=-0.125)


def _closed_form(variant, pool, *, a, b, c, p, u, o, ob, delta, h, hb):
    """The all-ones path sum by hand. pd = 4 pixels per patch, d = K·p = 3, N = 5 tokens, C = 2,
    β = λ = 0.1; attention uniform over the N tokens; signs of fixed coefficients dropped."""
    pd, d, n, classes, beta, lam = 4, 3, 5, 2, 0.1, 0.1
    patch = pd * a**2 + b**2 + p**2  # each feature of a patch token: pd paths through W_p, a bias, the position
    cls = c**2 + p**2
    mean = (cls + (n - 1) * patch) / n  # uniform attention: every token sees the token mean
    values = d * u**2 * mean  # each of the K·p value features: d paths through U
    if variant == "crate":
        update = d * o**2 * values + ob**2  # learned output: d paths through W_o, plus its bias
    else:
        update = d * u**2 * values  # output operator U (crate-c, crate-n: sign dropped)

    def ista(y):  # Y + β (Y + Y D²ᵀ) D² + βλ, every feature equal
        return y + beta * d * delta**2 * (y + d * delta**2 * y) + beta * lam

    z_cls, z_patch = ista(cls + update), ista(patch + update)
    pooled = z_cls if pool == "cls" else (z_cls + (n - 1) * z_patch) / n
    return classes * (d * h**2 * pooled + hb**2)


@pytest.mark.parametrize("variant,pool", [("crate-c", "cls"), ("crate-n", "cls"), ("crate", "cls"),
                                          ("crate-c", "mean")])
def test_path_norm_closed_form(variant, pool):
    model = _constant_model(variant, pool, **VALUES)
    expected = _closed_form(variant, pool, **VALUES)
    assert MEASURES["path-norm"](MeasureContext(model)) == pytest.approx(expected, rel=1e-12)
    assert math.exp(path_norm_log(model)) == pytest.approx(expected, rel=1e-12)


def _literal_path_norm(model) -> float:
    """Jiang's recipe done literally on the model's own forward: square every parameter, all-ones
    image, LayerNorm off (forward_layers(layernorm=False)), softmax attention made uniform."""
    squared = copy.deepcopy(model).double()
    with torch.no_grad():
        for param in squared.parameters():
            param.pow_(2)
    for module in squared.modules():
        if isinstance(module, CompressionStep):
            module.scale = 0.0  # softmax of all-equal scores: uniform attention
    cfg = model.config
    ones = torch.ones(1, cfg.channels, cfg.image_size, cfg.image_size, dtype=torch.float64)
    with torch.no_grad():
        return squared.forward_layers(ones, layernorm=False).logits.sum().item()


@pytest.mark.parametrize("variant,pool", [("crate-c", "cls"), ("crate", "mean"), ("crate-t", "cls"),
                                          ("crate-identity", "cls")])
def test_path_norm_is_jiangs_recipe_where_no_fixed_coefficient_is_negative(variant, pool):
    """With D = 0 and λ = 0 the ISTA step has no negative fixed coefficient, so the convention must
    agree with the literal recipe on random weights (depth 2, several heads, LayerNorms random)."""
    model, _ = _pair(variant, pool=pool, lambd=0.0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_()
                module.bias.normal_()
        for layer in model.layers:
            layer.ista.weight.zero_()
    value = MEASURES["path-norm"](MeasureContext(model))
    assert value == pytest.approx(_literal_path_norm(model), rel=1e-10)


def test_path_norm_properties():
    model, _ = _pair("crate-c")
    base = path_norm_log(model)
    # signs of weights do not matter (every weight enters squared) …
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.layers[0].ista.weight.neg_()
        flipped.head.weight[0].neg_()
        flipped.pos_embedding.neg_()
    assert path_norm_log(flipped) == pytest.approx(base, rel=1e-12)
    # … nor crate-n's sign: crate-n with crate-c's weights has the same path-norm
    negative = srrlab.create_model("crate-n-digits", depth=2, dim=16, heads=2)
    negative.load_state_dict(model.state_dict())
    assert path_norm_log(negative) == pytest.approx(base, rel=1e-12)
    # … nor the LayerNorm parameters (LayerNorm is removed)
    with torch.no_grad():
        model.layers[1].norm2.weight.mul_(10.0)
    assert path_norm_log(model) == pytest.approx(base, rel=1e-12)
    # growing any weight's magnitude grows the path-norm
    for param in (lambda m: m.layers[0].attn.qkv.weight, lambda m: m.layers[1].ista.weight,
                  lambda m: m.patch_proj.weight, lambda m: m.cls_token):
        bigger = copy.deepcopy(model)
        with torch.no_grad():
            param(bigger).mul_(1.5)
        assert path_norm_log(bigger) > base + 1e-6


def test_path_norm_variants_and_crate_g():
    for variant in ["crate", "crate-c", "crate-n", "crate-t", "crate-fix", "crate-identity"]:
        model, _ = _pair(variant)
        assert math.isfinite(MEASURES["path-norm"](MeasureContext(model))), variant
    model, _ = _pair("crate-g")
    with pytest.warns(UserWarning, match="path-norm is not defined for crate-g"):
        assert math.isnan(MEASURES["path-norm"](MeasureContext(model)))
    with pytest.raises(TypeError, match="CRATE"):
        path_norm_log(nn.Linear(2, 2))
