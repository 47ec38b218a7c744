"""The ``cuda`` tests: every path of srrlab run on a GPU and compared with the CPU.

``pytest -m cuda`` on a machine with CUDA (``benchmarks/device_check.py`` runs them first). Without
CUDA every test here is skipped, with the reason "needs CUDA: torch.cuda.is_available() is False",
so ``make test`` stays green on a CPU machine.

``SRRLAB_TEST_DEVICE`` names the device under test (default ``cuda``; ``cuda:1`` etc. work too).
``SRRLAB_TEST_DEVICE=cpu pytest -m cuda tests/test_cuda.py`` runs every test with the CPU standing in
for the GPU: each line is executed and every comparison is then CPU against CPU (most of them
exact). That is how these tests were checked before any GPU was lent; on a GPU they compare for the
first time. Where CUDA takes another code path than the CPU it is named in the test (the tied
attention runs ``F.scaled_dot_product_attention`` on CUDA, the custom ``_TiedAttention`` on the CPU).

Tolerances, device against CPU (stated once here, in the constants below and in docs/performance.md,
"On a GPU: the prepared device check"). fp32 on CUDA and on the CPU differ by reassociation
(other GEMM kernels, other reduction orders), so:

* forward values of the same weights (logits, features, layer outputs, rates of fp32 layers):
  ``rtol 1e-4``, ``atol 1e-5`` × the largest magnitude; gradients ``rtol 1e-3``, ``atol 1e-5`` × the
  largest magnitude; the same in fp64: ``rtol 1e-9``;
* quantities computed in fp64 from the same fp32 weights (norms, spectra, path-norm, the toy study):
  ``rtol 1e-9``, ``atol 1e-12``;
* trained models after a few Adam steps (losses, weights, layer-wise SRR records): ``rtol 1e-3``,
  ``atol 1e-4``; accuracies within 2 images of the split; counts of non-zero entries ``rtol 5e-3``;
* amp (bf16 autocast, CUDA only) against fp32: logits within 0.05 × their largest magnitude; after
  training, cross-entropies within 5% and accuracies within 0.05;
* integer things exactly: epochs, steps, statuses, learning rates (Python arithmetic), the data
  order, the layers the regulariser drew, the number of layer-wise records, image counts;
* measures that search or ascend (PAC-Bayes and sharpness bisections, the worst-case adaptive
  sharpness) may legitimately part where a decision is within round-off of its threshold: their
  inputs are compared instead (the accuracy drop at every scale both searches evaluated, within 3
  images of the subset; the loss at a fixed perturbation, ``rtol 1e-4``), and their values only
  where the searches took the same steps. Measures with a fixed amount of work and common random
  numbers (Hutchinson's trace, the average-case sharpness, the mixup and augmentation margins):
  ``rtol 1e-3``; the power iteration ``rtol 1e-2`` (its stopping rule is a relative change of 1e-3).

Resuming on CUDA is compared with the uninterrupted CUDA run to ``rtol 1e-5`` (CUDA kernels need not
be bit-reproducible; on the CPU it is exact).
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from srrlab.io import load_weights
from srrlab.models import VARIANTS, create_model
from srrlab.runs import RunFolder
from srrlab.train import TrainConfig, resume, train

from conftest import train_interrupted

DEVICE = torch.device(os.environ.get("SRRLAB_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
CPU = torch.device("cpu")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                       reason="needs CUDA: torch.cuda.is_available() is False"),
]

# -- the tolerances (module docstring) ----------------------------------------------------------
FORWARD = dict(rtol=1e-4, atol=1e-5)  # atol: a fraction of the largest magnitude (_close)
GRADIENT = dict(rtol=1e-3, atol=1e-5)
FP64 = dict(rtol=1e-9, atol=1e-12)
TRAINED = dict(rtol=1e-3, atol=1e-4)
COUNTS_RTOL = 5e-3
ACC_IMAGES = 2
AMP_LOGITS = 0.05
AMP_TRAINED_RTOL, AMP_ACC = 0.05, 0.05
RESUME_RTOL = 0.0 if not ON_CUDA else 1e-5
SEARCH_IMAGES = 3


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, msg: str = "") -> None:
    """``actual`` (any device) against ``expected``: ``atol`` is relative to ``expected``'s largest magnitude."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, msg
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(scale, 1e-30), msg=msg or None)


def _same_values(a: dict, b: dict, *, rtol: float, atol: float, slack: dict[str, float], where: str = "") -> None:
    """Two records (metrics lines, summaries, layer-wise rows): ints and strings equal, accuracies within
    ``slack[key]`` (ACC_IMAGES images of what they count), other floats within ``rtol``/``atol``."""
    assert set(a) == set(b), where
    for key, va in a.items():
        vb = b[key]
        at = f"{where}[{key}]"
        if key in ("epoch_time_s", "wall_time_s", "device"):
            continue
        if isinstance(va, dict):
            _same_values(va, vb, rtol=rtol, atol=atol, slack=slack, where=at)
        elif isinstance(va, (bool, int, str)) or va is None:
            assert va == vb, at
        elif key == "lr":
            assert va == pytest.approx(vb, rel=1e-12), at  # Python arithmetic, the same on every device
        elif key in slack:
            assert abs(va - vb) <= slack[key] + 1e-12, (at, va, vb)
        else:
            assert va == pytest.approx(vb, rel=rtol, abs=atol, nan_ok=True), (at, va, vb)


def _slack(splits) -> dict[str, float]:
    """ACC_IMAGES images of the split each accuracy of a metrics line or summary counts."""
    train, test = ACC_IMAGES / len(splits.train), ACC_IMAGES / len(splits.test)
    return {"train_acc": train, "test_acc": test, "best_test_acc": test, "gap_err": train + test}


def _compare_runs(dev, cpu, splits, *, rtol=TRAINED["rtol"], atol=TRAINED["atol"], weights=True,
                  devices=(str(DEVICE), "cpu")) -> None:
    """Two RunResults of one config (by default the first on DEVICE, the second on the CPU)."""
    assert (dev.status, dev.epochs, len(dev.metrics)) == (cpu.status, cpu.epochs, len(cpu.metrics))
    slack = _slack(splits)
    for i, (a, b) in enumerate(zip(dev.metrics, cpu.metrics)):
        _same_values(a, b, rtol=rtol, atol=atol, slack=slack, where=f"epoch {i}")
    _same_values(dev.summary, cpu.summary, rtol=rtol, atol=atol, slack=slack, where="summary")
    assert (dev.summary["device"], cpu.summary["device"]) == devices
    names = lambda d: sorted(str(p.relative_to(d)) for p in Path(d).rglob("*"))  # noqa: E731
    assert names(dev.run_dir) == names(cpu.run_dir)
    if weights:
        wd, wc = (load_weights(r.run_dir / "weights_final.safetensors") for r in (dev, cpu))
        assert wd.keys() == wc.keys()
        for k in wc:
            _close(wd[k], wc[k], msg=k, **TRAINED)
    assert next(dev.model.parameters()).device.type == DEVICE.type


def _cfg(**kw) -> TrainConfig:
    """A small digits run: 6 steps per epoch (the last batch smaller), 2 epochs."""
    base = dict(model="crate-t-digits", model_options={"depth": 2, "dim": 32, "heads": 4}, epochs=2,
                batch_size=240, target_ce=None, lr=3e-3, eval_batch_size=500)
    base.update(kw)
    return TrainConfig(**base)


def _pair(tmp_path, splits, **kw):
    dev = train(_cfg(device=str(DEVICE), **kw), tmp_path / "dev", quiet=True, splits=splits)
    cpu = train(_cfg(device="cpu", **{k: v for k, v in kw.items() if k != "amp"}), tmp_path / "cpu", quiet=True,
                splits=splits)
    return dev, cpu


# -- models: every variant, forward and backward ------------------------------------------------
def _variant(variant: str, dtype=torch.float32):
    torch.manual_seed(0)
    return create_model(f"{variant}-digits", depth=2, dim=32, heads=4).to(dtype).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_forward_and_backward(variant):
    """Logits, features, every layer's output under each LayerNorm protocol and the gradients of the
    cross-entropy: fp32 to FORWARD / GRADIENT, fp64 to FP64 (on CUDA the tied attention is SDPA, on
    the CPU the custom autograd function: fp64 shows they compute one function); under bf16 autocast
    (amp; CPU autocast when the CPU stands in) finite and within AMP_LOGITS, crate-g's rate gradient
    included (computed in fp32 there)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 1, 8, 8, generator=gen)
    y = torch.arange(12) % 10
    for dtype, fwd, grad in ((torch.float32, FORWARD, GRADIENT), (torch.float64, FP64, FP64)):
        cpu = _variant(variant, dtype)
        dev = copy.deepcopy(cpu).to(DEVICE)
        xd, xc = x.to(DEVICE, dtype), x.to(dtype)
        for model, images in ((dev, xd), (cpu, xc)):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), y.to(images.device)).backward()
        _close(dev(xd), cpu(xc), msg=f"{variant} {dtype} logits", **fwd)
        _close(dev.features(xd), cpu.features(xc), msg=f"{variant} {dtype} features", **fwd)
        for (name, pd_), pc in zip(dev.named_parameters(), cpu.parameters()):
            if pc.grad is None:
                assert pd_.grad is None, name
                continue
            _close(pd_.grad, pc.grad, msg=f"{variant} {dtype} grad {name}", **grad)
        with torch.no_grad():
            for layernorm in ("pre", "all", "none"):
                od, oc = dev.forward_layers(xd, layernorm=layernorm), cpu.forward_layers(xc, layernorm=layernorm)
                _close(od.logits, oc.logits, msg=f"{variant} {layernorm} logits", **fwd)
                for ell, (sd, sc) in enumerate(zip(od.layers, oc.layers)):
                    _close(sd.z_out, sc.z_out, msg=f"{variant} {layernorm} layer {ell + 1}", **fwd)
            for ud, uc in zip(dev.subspaces(), cpu.subspaces()):
                assert torch.equal(ud.cpu(), uc)
    # amp: bf16 autocast against the fp32 logits
    cpu = _variant(variant)
    dev = copy.deepcopy(cpu).to(DEVICE).train()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        logits = dev(x.to(DEVICE))
    F.cross_entropy(logits.float(), y.to(DEVICE)).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in dev.parameters() if p.grad is not None)
    reference = cpu(x).detach()
    _close(logits.float(), reference, rtol=0.0, atol=AMP_LOGITS, msg=f"{variant} amp logits")


# -- data: augmentation draws on the CPU, images on the device -----------------------------------
def test_augmentation_on_device_images_matches_the_cpu(digits):
    """Crop + flip (an exact gather), random resized crop (bilinear: FORWARD) and RandAugment (nearest
    warps and 8-bit levels: an element may round the other way, so at most 0.1% of the elements may
    differ by more than 1e-4) on device images, all randomness from a seeded CPU generator."""
    from srrlab.data import augment, rand_augment, random_resized_crop

    x = digits.train.images[:64]
    xd = x.to(DEVICE)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = augment(xd, generator=g(), crop_padding=1)
    assert out.device.type == DEVICE.type and torch.equal(out.cpu(), augment(x, generator=g(), crop_padding=1))
    _close(random_resized_crop(xd, generator=g()), random_resized_crop(x, generator=g()), rtol=1e-5, atol=1e-5)
    kw = dict(num_ops=2, magnitude=14, mean=digits.train.mean, std=digits.train.std)
    a, b = rand_augment(xd, generator=g(), **kw).cpu(), rand_augment(x, generator=g(), **kw)
    assert a.shape == b.shape
    assert float(((a - b).abs() > 1e-4).double().mean()) <= 1e-3


# -- rates and layer-wise SRR ------------------------------------------------------------------
def test_rates_on_device():
    """coding_rate, compression_rate (both Gram sides), srr_terms and their closed-form gradients, the
    rate gradient and logdet(I + sG) on the device against the CPU (fp32: FORWARD / GRADIENT, fp64: FP64);
    the float64 fallback of a factorisation beyond fp32 precision; rates under autocast computed in fp32."""
    from srrlab.rate import (coding_rate, compression_rate, compression_rate_grad, logdet_identity_plus,
                             srr_terms)

    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0].reshape(16, 4, 4).permute(1, 0, 2)
    # N = 20 tokens: the d×d and p×p Grams; N = 3: the N×N ones (the smaller side is taken)
    cases = [(torch.randn(6, n, 16, generator=gen, dtype=torch.float64), dtype, tol)
             for n in (20, 3) for dtype, tol in ((torch.float64, (FP64, FP64)), (torch.float32, (FORWARD, GRADIENT)))]
    for z, dtype, (fwd, grad) in cases:
        for scale in (1.0, 300.0):  # 300: beyond fp32 precision, the fp32 entries take the float64 fallback
            zc = (z * scale).to(dtype).requires_grad_(True)
            zd = (z * scale).to(DEVICE, dtype).requires_grad_(True)
            uc, ud = u.to(dtype), u.to(DEVICE, dtype)
            for name, fn in (("R", lambda t, v: coding_rate(t, 0.5)), ("Rc", lambda t, v: compression_rate(t, v, 0.5)),
                             ("Rc-unit", lambda t, v: compression_rate(t, v, 0.1, unit=True)),
                             ("mu", lambda t, v: srr_terms(t, v, 0.5, 0.1)["mu"])):
                vc, vd = fn(zc, uc), fn(zd, ud)
                _close(vd, vc, msg=f"{name} {dtype} x{scale}", **fwd)
                (gc,), (gd,) = torch.autograd.grad(vc.sum(), zc), torch.autograd.grad(vd.sum(), zd)
                _close(gd, gc, msg=f"grad {name} {dtype} x{scale}", **grad)
        _close(compression_rate_grad(z.to(DEVICE, dtype), u.to(DEVICE, dtype), 0.5),
               compression_rate_grad(z.to(dtype), u.to(dtype), 0.5), **grad)
    z = cases[0][0]
    gram = z.mT @ z
    _close(logdet_identity_plus(gram.to(DEVICE), 0.3), logdet_identity_plus(gram, 0.3), **FP64)
    # under autocast (amp) the rates run in fp32, not in bf16
    zf, uf = z.float().to(DEVICE), u.float().to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        amp = srr_terms(zf, uf, 0.5, 0.1)
    plain = srr_terms(zf, uf, 0.5, 0.1)
    for key in ("R", "Rc", "mu"):
        assert amp[key].dtype == torch.float32
        _close(amp[key], plain[key], msg=f"autocast {key}", **FORWARD)


def test_layerwise_srr_on_device(digits):
    """measure_srr of one model on the device and on the CPU, every protocol, both rate conventions,
    fp32 and fp64 rates: rates and μ FORWARD, counts COUNTS_RTOL, images / ε / λ exactly."""
    from srrlab.rate import measure_srr

    torch.manual_seed(0)
    cpu = create_model("crate-c-digits", depth=2, dim=32, heads=4).eval()
    dev = copy.deepcopy(cpu).to(DEVICE)
    for layernorm in ("pre", "all", "none"):
        for dtype in (None, torch.float64):
            kw = dict(layernorm=layernorm, max_images=200, batch_size=64, both_rates=True, dtype=dtype)
            a, b = measure_srr(dev, digits, **kw), measure_srr(cpu, digits, **kw)
            assert (a.images, a.eps, a.lam, a.layernorm, a.protocol) == (b.images, b.eps, b.lam, b.layernorm, b.protocol)
            assert abs(a.train_acc - b.train_acc) <= ACC_IMAGES / a.images
            assert list(a.table.columns) == list(b.table.columns) and list(a.table["layer"]) == list(b.table["layer"])
            for col in a.table.columns.drop("layer"):
                rtol = COUNTS_RTOL if col in ("l0", "fraction") else FORWARD["rtol"]
                pd.testing.assert_series_equal(a.table[col], b.table[col], rtol=rtol, atol=1e-6, obj=f"{layernorm} {col}")
            assert a.value == pytest.approx(b.value, rel=FORWARD["rtol"], abs=1e-4)
    assert next(dev.parameters()).device.type == DEVICE.type and not dev.training


# -- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("augment", ["none", "randaugment"])
def test_training_on_device_matches_the_cpu(tmp_path, digits, augment):
    """Plain training (2 epochs of 6 Adam steps, the epoch's last batch smaller), with no augmentation and
    with RandAugment (crop, flip and the 14 operations drawn on the CPU, applied there, moved back):
    the same files, epochs, steps, learning rates; losses and weights TRAINED; accuracies ACC_IMAGES."""
    dev, cpu = _pair(tmp_path, digits, augment=augment)
    _compare_runs(dev, cpu, digits)


def test_grouped_training_on_device_matches_the_cpu(tmp_path, digits):
    """train_group (one stacked vmap program) on the device against the same group on the CPU: three
    members ending at different epochs (the stack is rebuilt as they end), TRAINED."""
    from srrlab.train.group import train_group

    def cfgs(device):
        base = dict(model="crate-t-digits", model_options={"depth": 2, "dim": 32, "heads": 4}, batch_size=240,
                    target_ce=None, schedule="cosine", device=device)
        return [TrainConfig(**base, seed=0, lr=1e-3, epochs=2),
                TrainConfig(**base, seed=1, lr=3e-3, epochs=3, weight_decay=1e-4),
                TrainConfig(**base, seed=2, lr=2e-3, epochs=1)]

    dev = train_group(cfgs(str(DEVICE)), [tmp_path / f"d{i}" for i in range(3)], splits=digits)
    cpu = train_group(cfgs("cpu"), [tmp_path / f"c{i}" for i in range(3)], splits=digits)
    for a, b in zip(dev, cpu):
        _compare_runs(a, b, digits)
    assert [r.epochs for r in dev] == [2, 3, 1]


@pytest.mark.parametrize("amp", [False, True])
def test_srr_regulariser_and_recording_on_device(tmp_path, digits, amp):
    """The SRR regulariser (a random layer per step from a CPU generator, the ℓ1 surrogate), crop-flip
    augmentation and the per-epoch layer-wise recording: the layers drawn and the records' keys exactly,
    values TRAINED (counts COUNTS_RTOL). ``amp``: bf16 autocast on CUDA against fp32 on the CPU
    (AMP_TRAINED_RTOL); the CPU refuses amp, so the CPU stand-in checks the refusal and compares fp32."""
    kw = dict(srr_reg=0.5, srr_layers="random", srr_l1=1e-4, srr_every=1, srr_images=100, augment="crop-flip")
    use_amp = amp and ON_CUDA
    if amp and not ON_CUDA:
        with pytest.raises(ValueError, match="CUDA"):
            train(_cfg(device=str(DEVICE), amp=True, **kw), tmp_path / "refused", quiet=True, splits=digits)
    dev, cpu = _pair(tmp_path, digits, amp=use_amp, **kw)
    for a, b in zip(dev.metrics[1:], cpu.metrics[1:]):
        assert list(a["srr_reg_layers"]) == list(b["srr_reg_layers"])  # the layers drawn: the same CPU stream
    if use_amp:
        for a, b in zip(dev.metrics, cpu.metrics):
            for key in ("train_ce", "test_ce", "srr", "srr_none"):
                assert a[key] == pytest.approx(b[key], rel=AMP_TRAINED_RTOL), key
            assert abs(a["train_acc"] - b["train_acc"]) <= AMP_ACC and abs(a["test_acc"] - b["test_acc"]) <= AMP_ACC
    else:
        _compare_runs(dev, cpu, digits)
    rows_d, rows_c = RunFolder(dev.run_dir).layerwise(), RunFolder(cpu.run_dir).layerwise()
    assert [(r["epoch"], r["layer"], r["protocol"], r["images"]) for r in rows_d] == \
        [(r["epoch"], r["layer"], r["protocol"], r["images"]) for r in rows_c]
    if not use_amp:
        for ra, rb in zip(rows_d, rows_c):
            for key in ("l0", "fraction"):
                assert ra[key] == pytest.approx(rb[key], rel=COUNTS_RTOL), key
            rest = {k: v for k, v in ra.items() if k not in ("l0", "fraction")}
            _same_values(rest, {k: rb[k] for k in rest}, rtol=TRAINED["rtol"], atol=TRAINED["atol"],
                         slack={"protocol_train_acc": ACC_IMAGES / ra["images"]},
                         where=f"layerwise {ra['epoch']}/{ra['layer']}")


def test_amp_training_on_device(tmp_path, digits):
    """Training under bf16 autocast (--amp, CUDA only) against fp32 on the CPU: AMP_TRAINED_RTOL on the
    cross-entropies, AMP_ACC on the accuracies; epochs and steps exactly. The CPU stand-in checks the
    refusal and then runs the comparison in fp32."""
    if not ON_CUDA:
        with pytest.raises(ValueError, match="CUDA"):
            train(_cfg(device=str(DEVICE), amp=True), tmp_path / "refused", quiet=True, splits=digits)
    dev, cpu = _pair(tmp_path, digits, amp=ON_CUDA)
    assert (dev.status, dev.epochs) == (cpu.status, cpu.epochs)
    for a, b in zip(dev.metrics, cpu.metrics):
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        for key in ("train_loss", "train_ce", "test_ce"):
            assert a[key] == pytest.approx(b[key], rel=AMP_TRAINED_RTOL), key
        assert abs(a["train_acc"] - b["train_acc"]) <= AMP_ACC and abs(a["test_acc"] - b["test_acc"]) <= AMP_ACC


def test_resume_on_device(tmp_path, digits):
    """A run on the device killed after epoch 2's steps and resumed equals the uninterrupted device run
    (RESUME_RTOL: exact on the CPU) and the CPU run (TRAINED); the restored optimizer keeps Adam's ``step``
    on the CPU (as a fresh one) and its moments on the device."""
    from srrlab.train.trainer import Trainer

    cfg = _cfg(device=str(DEVICE), epochs=3, warmup_epochs=1, augment="crop-flip")
    full = train(cfg, tmp_path / "full", quiet=True, splits=digits)
    train_interrupted(cfg, tmp_path / "cut", at_epoch=2, quiet=True, splits=digits)
    trainer = Trainer(cfg, tmp_path / "cut", quiet=True, splits=digits)
    epoch, _ = trainer._load_checkpoint()
    assert epoch == 1 and trainer.optimizer.state
    for state in trainer.optimizer.state.values():
        assert state["step"].device.type == "cpu" and float(state["step"]) == 6
        assert state["exp_avg"].device.type == DEVICE.type and state["exp_avg_sq"].device.type == DEVICE.type
    resumed = resume(tmp_path / "cut", quiet=True, splits=digits)
    _compare_runs(resumed, full, digits, rtol=RESUME_RTOL, atol=0.0 if not ON_CUDA else 1e-7, weights=False,
                  devices=(str(DEVICE), str(DEVICE)))
    wr, wf = (load_weights(d / "weights_final.safetensors") for d in (tmp_path / "cut", tmp_path / "full"))
    for k in wf:
        if ON_CUDA:
            _close(wr[k], wf[k], rtol=RESUME_RTOL, atol=1e-7, msg=k)
        else:
            assert torch.equal(wr[k], wf[k]), k
    cpu = train(TrainConfig.from_dict({**cfg.to_dict(), "device": "cpu"}), tmp_path / "cpu", quiet=True, splits=digits)
    _compare_runs(resumed, cpu, digits)


# -- measures ------------------------------------------------------------------------------------
MEASURE_SETTINGS = dict(max_images=200, batch_size=100, srr_images=100, margin_percentile=25.0, search_iterations=8, mc_samples=3,
                        ascent_steps=3, ascent_restarts=2, ascent_batch_size=64, adaptive_images=128,
                        adaptive_batch_size=64, adaptive_steps=5, adaptive_restarts=2, adaptive_samples=4,
                        hessian_images=128, hutchinson_probes=4, power_iterations=8, spectrum_min_evals=8)
#: measure -> rtol (device against CPU, the same weights); the groups of the module docstring
WEIGHTS_ONLY = ("params", "l2", "l2-dist", "param-norm", "fro-dist", "dist-spec-init", "log-prod-of-spec",
                "log-sum-of-spec", "log-prod-of-fro", "log-sum-of-fro", "fro-over-spec", "path-norm",
                "ww-alpha", "ww-alpha-hat")
FORWARD_MEASURES = ("srr", "srr-rate", "srr-sparsity", "srr-fraction", "srr-unit", "spec-init", "spec-orig",
                    "inverse-margin", "db-index")
FIXED_WORK = {"mixup-margin": 1e-3, "augment-margin": 1e-3, "hessian-trace": 1e-3, "asharp-avg-l2": 1e-3,
              "hessian-top": 1e-2}
SEARCHES = {"pacbayes-init": "pacbayes", "pacbayes-orig": "pacbayes", "pacbayes-flatness": "pacbayes",
            "pacbayes-mag-init": "pacbayes-mag", "pacbayes-mag-orig": "pacbayes-mag",
            "pacbayes-mag-flatness": "pacbayes-mag", "sharpness-init": "sharpness", "sharpness-orig": "sharpness",
            "sharpness-flatness": "sharpness", "sharpness-mag-flatness": "sharpness-mag"}
ASCENTS = ("asharp-max-linf", "asharp-max-l2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A small model trained on the CPU (~90% training accuracy: the 25th-percentile margin γ is > 0)."""
    cfg = _cfg(device="cpu", epochs=10, batch_size=64, lr=5e-3)
    return train(cfg, tmp_path_factory.mktemp("measured") / "run", quiet=True, splits=digits)


def test_every_measure_on_device(trained, digits):
    """Every registered measure of one trained model (the same weights) on the device and on the CPU, with
    the tolerances of the module docstring; the initial weights given as a CPU model for a device model."""
    import warnings

    from srrlab.measures import MEASURES, MeasureContext, MeasureSettings, compute_measures
    from srrlab.measures import adaptive, flatness, spectrum

    assert set(MEASURES) == set(WEIGHTS_ONLY) | set(FORWARD_MEASURES) | set(FIXED_WORK) | set(SEARCHES) | set(ASCENTS), \
        "a new measure: give it a tolerance here"
    settings = MeasureSettings(**MEASURE_SETTINGS)
    folder = RunFolder(trained.run_dir)
    init_cpu = folder.load_model("init")
    model_cpu, model_dev = folder.load_model("final"), folder.load_model("final", device=DEVICE)
    ctx = {d: MeasureContext(m, init=init_cpu, data=digits.train, settings=settings)
           for d, m in (("dev", model_dev), ("cpu", model_cpu))}
    assert next(ctx["dev"].init_model.parameters()).device.type == DEVICE.type
    assert (ctx["dev"].init_model is not init_cpu) == ON_CUDA  # a device copy where the devices differ
    assert next(init_cpu.parameters()).device.type == "cpu"  # the caller's init model is not moved
    values = {d: {} for d in ctx}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a search that stops short warns on both devices alike
        for name, info in MEASURES.items():
            for d in ctx:
                values[d][name] = info(ctx[d])
    n = len(ctx["cpu"].images)
    assert ctx["dev"].images.device.type == DEVICE.type and torch.equal(ctx["dev"].labels.cpu(), ctx["cpu"].labels)
    assert ctx["cpu"].margin > 0, "the fixture's model must have a positive margin"
    dev, cpu = values["dev"], values["cpu"]
    for name in WEIGHTS_ONLY:
        assert dev[name] == pytest.approx(cpu[name], rel=FP64["rtol"], abs=FP64["atol"]), name
    for name in FORWARD_MEASURES:
        assert dev[name] == pytest.approx(cpu[name], rel=FORWARD["rtol"], abs=1e-6), name
    for name, rtol in FIXED_WORK.items():
        assert dev[name] == pytest.approx(cpu[name], rel=rtol, abs=1e-6), name
    # the spectra behind ww-alpha: the inputs of the fits
    for a, b in zip(ctx["dev"].matrices, ctx["cpu"].matrices):
        ea, eb = spectrum.eigenvalues(a.weight), spectrum.eigenvalues(b.weight)
        assert ea == pytest.approx(eb, rel=FP64["rtol"], abs=FP64["atol"]), a.name
    # searches: the accuracy drop at every scale both evaluated; the values where they took the same steps
    for kind in sorted(set(SEARCHES.values())):
        sa, sb = (ctx[d].cache[("flatness", kind)] for d in ("dev", "cpu"))
        assert sa.accuracy == pytest.approx(sb.accuracy, abs=ACC_IMAGES / n)
        same = len(sa.history) == len(sb.history)
        for (scale_a, drop_a), (scale_b, drop_b) in zip(sa.history, sb.history):
            if not math.isclose(scale_a, scale_b, rel_tol=1e-9):
                same = False  # parted: the previous decision was within SEARCH_IMAGES images of a threshold
                break
            assert abs(drop_a - drop_b) <= SEARCH_IMAGES / n + 1e-12, (kind, scale_a, drop_a, drop_b)
        for name in (m for m, k in SEARCHES.items() if k == kind):
            assert math.isfinite(dev[name]) == math.isfinite(cpu[name]), name
            if same:
                assert dev[name] == pytest.approx(cpu[name], rel=1e-6), name
    # worst-case adaptive sharpness: the loss at the CPU's worst perturbation, on both devices
    x, y = ctx["cpu"].images[:64], ctx["cpu"].labels[:64]
    for norm, rho in (("linf", settings.adaptive_rho_linf), ("l2", settings.adaptive_rho_l2)):
        found = adaptive.batch_sharpness(model_cpu, x, y, norm=norm, rho=rho, steps=3, restarts=2)
        losses = {}
        for d, model in (("dev", model_dev), ("cpu", model_cpu)):
            params = {k: p.detach() + found.delta[k].to(p.device) for k, p in model.named_parameters() if p.requires_grad}
            loss_fn = adaptive._loss_fn(model.eval(), x, y, True)  # images moved to the model's device there
            with torch.no_grad():
                losses[d] = float(loss_fn(params))
        assert losses["dev"] == pytest.approx(losses["cpu"], rel=FORWARD["rtol"]), norm
        assert losses["cpu"] == pytest.approx(found.loss, rel=1e-6)
    for name in ASCENTS:
        assert math.isfinite(dev[name]) and dev[name] >= 0 and math.isfinite(cpu[name]), name
    # the entry points: compute_measures with a CPU init model, measure_run on the device
    got = compute_measures(model_dev, init=init_cpu, data=digits.train, settings=settings,
                           measures="srr,l2-dist,fro-dist,path-norm,db-index")
    for name, value in got.items():
        assert value == pytest.approx(dev[name], rel=1e-6), name
    from srrlab.measures import measure_run

    rows = {d: measure_run(trained.run_dir, "srr,l2-dist,inverse-margin", settings, splits=digits, device=d)
            for d in (str(DEVICE), "cpu")}
    for key, value in rows["cpu"].items():
        if key.startswith("measure."):
            assert rows[str(DEVICE)][key] == pytest.approx(value, rel=FORWARD["rtol"], abs=1e-6), key
    assert flatness.KINDS and values["dev"].keys() == values["cpu"].keys()


# -- the toy study ------------------------------------------------------------------------------
def test_toy_study_on_device():
    """The toy study (``srrlab toy``'s computation, srrlab.toy.study) with the layers and rates on the
    device: the same draws (made on the CPU), R^c before/after every layer FP64, the same overflowing
    layers and the same per-rule summary (counts exactly)."""
    from srrlab import toy

    sizes = dict(num_tokens=32, dim=24, heads=3, depth=6)
    dev = toy.study(toy.RULES, seeds=(0, 1), device=DEVICE, **sizes)
    cpu = toy.study(toy.RULES, seeds=(0, 1), **sizes)
    assert list(dev["finite"]) == list(cpu["finite"])
    for col in ("rc_before", "rc_after"):
        pd.testing.assert_series_equal(dev[col], cpu[col], rtol=FP64["rtol"], atol=FP64["atol"])
    pd.testing.assert_frame_equal(dev.drop(columns=["rc_before", "rc_after"]), cpu.drop(columns=["rc_before", "rc_after"]))
    pd.testing.assert_frame_equal(toy.summarize(dev), toy.summarize(cpu))


# -- torch.compile -------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("srr_reg", [0.0, 0.5])
def test_compile_on_device(tmp_path, digits, srr_reg):
    """--compile on the device (inductor; with the regulariser, forward_layers compiled and the
    re-applied layer eager) against eager on the device (rtol 1e-4, as tests/test_train.py on the CPU)
    and against eager on the CPU (TRAINED)."""
    kw = dict(model_options={"depth": 1, "dim": 16, "heads": 2}, batch_size=479, lr=1e-2, srr_reg=srr_reg)
    compiled = train(_cfg(device=str(DEVICE), compile=True, **kw), tmp_path / "c", quiet=True, splits=digits)
    eager = train(_cfg(device=str(DEVICE), **kw), tmp_path / "e", quiet=True, splits=digits)
    cpu = train(_cfg(device="cpu", **kw), tmp_path / "cpu", quiet=True, splits=digits)
    assert not [k for k in load_weights(tmp_path / "c" / "weights_final.safetensors") if "_orig_mod" in k]
    _compare_runs(compiled, eager, digits, rtol=1e-4, atol=1e-6, devices=(str(DEVICE), str(DEVICE)))
    _compare_runs(compiled, cpu, digits)


# -- a study on two workers ----------------------------------------------------------------------
STUDY = """
name = "cuda-tiny"
dataset = "digits"

[fixed]
size = "digits"
depth = 1
dim = 16
heads = 2
epochs = 2
batch_size = 128
target_ce = 0.01
device = "{device}"

[grid]
variant = ["crate-c", "crate-n"]
lr = [0.001, 0.003]

[measures]
names = ["srr", "l2-dist", "log-prod-of-spec", "path-norm"]

[measures.settings]
max_images = 200
srr_images = 100
"""


def test_two_worker_study_on_device(tmp_path):
    """run_study(workers=2) (a local Dask cluster of two spawned processes) of a spec whose runs train on
    the device (grouped there: the "auto" plan groups on CUDA) against the sequential study on the CPU:
    statuses exactly, the table's numbers TRAINED; the environment records the device."""
    from srrlab.study import StudySpec, StudyStore, load_spec, run_study
    from srrlab.study.runner import plan_tasks

    paths = {}
    for name, device in (("dev", str(DEVICE)), ("cpu", "cpu")):
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(STUDY.format(device=device))
    assert StudySpec.from_toml(paths["dev"].read_text()).fingerprint() == StudySpec.from_toml(
        paths["cpu"].read_text()).fingerprint()  # the device is an execution setting
    spec = load_spec(paths["dev"])
    points = [(str(i), p, f"runs/{i}") for i, p in enumerate(spec.points())]
    assert [len(t) for t in plan_tasks(spec, points, "auto")] == ([2, 2] if ON_CUDA else [1, 1, 1, 1])
    dev = run_study(paths["dev"], tmp_path / "dev", workers=2, progress=False)
    cpu = run_study(paths["cpu"], tmp_path / "cpu", progress=False)

    def values(table):
        cols = ["id", "status"] + [c for c in table.columns
                                   if (c.startswith("gen.") and c not in ("gen.wall_time_s", "gen.device"))
                                   or c.startswith("measure.")]
        return table[cols].sort_values("id").reset_index(drop=True)

    a, b = values(dev), values(cpu)
    assert list(a["id"]) == list(b["id"]) and list(a["status"]) == list(b["status"])
    num = [c for c in a.columns if c not in ("id", "status") and pd.api.types.is_numeric_dtype(b[c])]
    pd.testing.assert_frame_equal(a[num], b[num], rtol=TRAINED["rtol"], atol=TRAINED["atol"], check_dtype=False)
    with StudyStore(tmp_path / "dev") as store:
        env = store.environments()[-1]
    assert env["device"] == str(DEVICE) and env["workers"] == 2
