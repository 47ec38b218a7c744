"""The benchmarks' reference implementation of the official CRATE formulation computes what srrlab's
``crate`` computes (the premise of every "vs official" figure)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from official_crate import from_srrlab  # noqa: E402
from vs_official import _ref_keys, check_same_outputs  # noqa: E402

import srrlab  # noqa: E402


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_official_reference_matches_crate_in_fp64(dropout):
    torch.manual_seed(0)
    ours = srrlab.create_model("crate-digits", depth=2, dim=32, heads=4, dropout=dropout).double().eval()
    ref = from_srrlab(ours).double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    a, b = ours(x), ref(x)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    F.cross_entropy(a, y).backward()
    F.cross_entropy(b, y).backward()
    params = ref.state_dict(keep_vars=True)
    for (name, p), key in zip(ours.named_parameters(), _ref_keys(ours)):
        torch.testing.assert_close(p.grad, params[key].grad, rtol=1e-10, atol=1e-12, msg=name)


def test_reference_refuses_other_variants_and_benchmark_check_passes():
    with pytest.raises(ValueError, match="official formulation is the 'crate' variant"):
        from_srrlab(srrlab.create_model("crate-t-digits"))
    checks = check_same_outputs("digits", batch=4)
    assert checks["logits_rel_fp64"] < 1e-12 and checks["grads_rel_fp32"] < 1e-4
