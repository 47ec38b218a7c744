"""The toy study of docs/theory.md §4: does the compression update actually compress?

``depth`` layers of the compression update *alone* (no ISTA, no LayerNorm) act on a Gaussian
token set ``Z⁰``. Every layer ℓ has its own basis ``U^ℓ``: a random orthonormal ``d×d`` matrix
split into ``K`` blocks of ``p = d/K`` columns (``U_k`` = columns ``k·p … (k+1)·p−1``). At each
layer we record ``R^c(Z^{ℓ-1}; U^ℓ)`` and ``R^c(Z^ℓ; U^ℓ)``: the compression term before and
after the update, measured in the *same* basis, so their difference is what the update did.

Notation (column form, as docs/theory.md §1): ``Z ∈ R^{d×N}``, ``A_k = U_kᵀZ ∈ R^{p×N}``,
``R^c(Z; U) = Σ_k ½ logdet(I_N + γ A_kᵀA_k)``, ``γ = p/(N ε²)``. With ``X_k = γ A_kᵀA_k`` the
Taylor series ``½ logdet(I + X) = ½ tr X − ¼ tr X² + …`` gives the rules below; every rule is
``Z ↦ Z + Δ(Z)`` with the update ``Δ`` of :func:`update`.

============== =====================================================================
rule           ``Z^ℓ`` (column form)
============== =====================================================================
exact          ``Z − α γ Σ_k U_k A_k (I_N + γ A_kᵀA_k)^{-1}``
               ``= Z − α γ Σ_k U_k (I_p + γ A_k A_kᵀ)^{-1} A_k``   (push-through, p×p solve)
taylor         ``Z − α Σ_k (γ U_k A_k − γ² U_k A_k A_kᵀA_k)``        (full 2nd-order expansion)
first-order    ``Z − α γ Σ_k U_k A_k``                               (½ tr X only)
second-order   ``Z + α γ² Σ_k U_k A_k (A_kᵀA_k)``                    (−¼ tr X² only)
softmax        ``Z + α γ² Σ_k U_k A_k softmax(τ A_kᵀA_k)``           (= crate-c, [HZX-8])
negative       ``Z − α γ² Σ_k U_k A_k softmax(τ A_kᵀA_k)``           (= crate-n, [HZX-9])
============== =====================================================================

``softmax`` normalises each *column* of the ``N×N`` matrix (softmax over keys): in row form,
with ``W_k = Z_rowU_k = A_kᵀ`` (``N×p``), one head is ``softmax(τ W_kW_kᵀ, dim=-1) @ W_k``, exactly
:meth:`srrlab.models.CompressionStep.heads_output`. ``τ`` defaults to ``p^{-1/2}`` as in the models.

Code works in row form (``Z`` is ``(N, d)``), ``U`` is a ``(K, d, p)`` tensor (``U[k] = U_k``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .rate import compression_rate, compression_rate_gradient, rate_gamma

__all__ = [
    "RULES",
    "RULE_FORMULAS",
    "EXPECTED",
    "draw",
    "random_orthonormal_blocks",
    "update",
    "step",
    "run",
    "study",
    "summarize",
    "format_summary",
    "plot",
]

RULES = ("exact", "taylor", "first-order", "second-order", "softmax", "negative")

#: Column-form formula of every rule (the update Z ↦ Z^ℓ), as printed in figures and docs.
RULE_FORMULAS = {
    "exact": "Z − αγ Σ_k U_k (I + γA_kA_kᵀ)⁻¹ A_k",
    "taylor": "Z − α Σ_k (γ U_kA_k − γ² U_kA_kA_kᵀA_k)",
    "first-order": "Z − αγ Σ_k U_kA_k",
    "second-order": "Z + αγ² Σ_k U_kA_k(A_kᵀA_k)",
    "softmax": "Z + αγ² Σ_k U_kA_k softmax(τA_kᵀA_k)   (crate-c)",
    "negative": "Z − αγ² Σ_k U_kA_k softmax(τA_kᵀA_k)   (crate-n)",
}

#: The direction docs/theory.md §4 expects each rule to move R^c in.
EXPECTED = {
    "exact": "decrease",
    "taylor": "increase",
    "first-order": "decrease",
    "second-order": "increase",
    "softmax": "increase",
    "negative": "decrease",
}


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}")


# --------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------
def random_orthonormal_blocks(dim: int, heads: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthonormal ``d×d`` matrix split into ``K`` column blocks, as ``(K, d, p)`` fp64.

    QR of a Gaussian matrix with the signs of ``diag(R)`` moved into ``Q`` (so ``Q`` is uniformly
    distributed); block ``k`` is columns ``k·p … (k+1)·p−1``.
    """
    g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    p = dim // heads
    return q.reshape(dim, heads, p).permute(1, 0, 2).contiguous()


def draw(seed: int, *, num_tokens: int = 196, dim: int = 384, heads: int = 6, depth: int = 12,
         scale: float = 1.0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``Z⁰`` (``(N, d)``, i.i.d. ``N(0, scale²)``) and ``[U^1, …, U^L]`` (each ``(K, d, p)``) for ``seed``.

    The draws depend only on ``seed`` and the sizes (never on the rule), and are made in fp64
    and then cast, so every rule (and every dtype) starts from the same ``Z⁰`` and bases.
    """
    gen = torch.Generator().manual_seed(int(seed))
    z0 = torch.randn(num_tokens, dim, generator=gen, dtype=torch.float64) * scale
    bases = [random_orthonormal_blocks(dim, heads, gen).to(dtype) for _ in range(depth)]
    return z0.to(dtype), bases


# --------------------------------------------------------------------------------------
# The update rules (row form)
# --------------------------------------------------------------------------------------
def _project(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``W_k = Z_row U_k`` (= ``A_kᵀ``) for all heads: ``(K, N, p)``."""
    return torch.einsum("nd,kdp->knp", z, u)


def _back(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Σ_k W_k U_kᵀ``: row form of ``Σ_k U_k M_k`` for ``M_k = W_kᵀ`` (``(K, N, p)`` → ``(N, d)``)."""
    return torch.einsum("knp,kdp->nd", w, u)


def _exact_gradient(z: torch.Tensor, u: torch.Tensor, gamma: float) -> torch.Tensor:
    """Row form of ``∇R^c = γ Σ_k U_k (I_p + γA_kA_kᵀ)^{-1} A_k`` (push-through), by the same
    function as the ``crate-g`` model variant; all-nan when the Cholesky fails (non-finite ``Z``)."""
    wq = u.transpose(1, 2).reshape(-1, u.shape[1])  # Uᵀ stacked, (K·p, d)
    try:
        return compression_rate_gradient(z[None], wq, u.shape[0], gamma)[0]
    except RuntimeError:  # torch.linalg.LinAlgError: I + γAAᵀ not numerically positive definite
        return torch.full_like(z, float("nan"))


def update(rule: str, z: torch.Tensor, u: torch.Tensor, *, alpha: float = 1.0, gamma: float = 1.0,
           temperature: float | None = None) -> torch.Tensor:
    """The update ``Δ = Z^ℓ − Z^{ℓ-1}`` of one layer of ``rule``, in row form.

    ``z`` is ``(N, d)``, ``u`` is ``(K, d, p)``. Column-form formulas (``A_k = U_kᵀZ``):

    * ``exact``:        ``Δ = −α γ Σ_k U_k (I_p + γ A_kA_kᵀ)^{-1} A_k``  (= ``−α∇R^c``, push-through)
    * ``taylor``:       ``Δ = −α Σ_k (γ U_kA_k − γ² U_kA_kA_kᵀA_k)``
    * ``first-order``:  ``Δ = −α γ Σ_k U_kA_k``
    * ``second-order``: ``Δ = +α γ² Σ_k U_kA_k(A_kᵀA_k)``
    * ``softmax``:      ``Δ = +α γ² Σ_k U_kA_k softmax(τ A_kᵀA_k)`` (column-wise softmax; crate-c)
    * ``negative``:     ``Δ = −(softmax's Δ)`` (crate-n), bit for bit

    ``temperature`` is τ (default ``p^{-1/2}``); only the softmax rules use it. Non-finite
    intermediate values propagate (inf/nan); nothing raises on them.
    """
    _check_rule(rule)
    w = _project(z, u)  # (K, N, p)
    p = w.shape[-1]
    if rule == "exact":
        return -alpha * _exact_gradient(z, u, gamma)
    if rule == "first-order":
        return -alpha * gamma * _back(w, u)
    if rule in ("taylor", "second-order"):
        # Row form of A_k A_kᵀA_k is W_k (W_kᵀW_k): a p×p Gram, cheaper than the N×N one.
        cubic = _back(w @ (w.transpose(-1, -2) @ w), u)
        if rule == "second-order":
            return alpha * gamma**2 * cubic
        return -alpha * (gamma * _back(w, u) - gamma**2 * cubic)
    tau = p**-0.5 if temperature is None else temperature
    attn = torch.softmax(tau * (w @ w.transpose(-1, -2)), dim=-1)  # (K, N, N), rows sum to 1
    delta = alpha * gamma**2 * _back(attn @ w, u)
    return delta if rule == "softmax" else -delta


def step(rule: str, z: torch.Tensor, u: torch.Tensor, **kwargs) -> torch.Tensor:
    """One layer of ``rule``: ``Z^ℓ = Z^{ℓ-1} + Δ`` (see :func:`update` for the formulas)."""
    return z + update(rule, z, u, **kwargs)


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------
def _check_sizes(num_tokens: int, dim: int, heads: int, depth: int) -> None:
    for name, value in (("num_tokens", num_tokens), ("dim", dim), ("heads", heads), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if dim % heads:
        raise ValueError(
            f"dim={dim} is not divisible by heads={heads}; the toy study splits a d×d orthonormal "
            f"matrix into K equal blocks, so choose dim a multiple of heads"
        )


def _rate(z: torch.Tensor, u: torch.Tensor, eps: float) -> float:
    if not bool(torch.isfinite(z).all()):
        return float("nan")
    return float(compression_rate(z, u, eps))


def run(rule: str, seed: int = 0, *, num_tokens: int = 196, dim: int = 384, heads: int = 6, depth: int = 12,
        alpha: float = 1.0, scale: float = 1.0, eps: float | None = None, temperature: float | None = None,
        dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> pd.DataFrame:
    """Run ``depth`` layers of ``rule`` from the ``seed`` draw; one row per layer.

    Columns: ``rule``, ``seed``, ``layer`` (1…L), ``rc_before`` = ``R^c(Z^{ℓ-1}; U^ℓ)``,
    ``rc_after`` = ``R^c(Z^ℓ; U^ℓ)``, ``finite`` (both finite), and the setting ``eps``,
    ``gamma``, ``alpha``, ``scale``, ``temperature``. ``eps=None`` is the CRATE convention
    ``γ = 1`` (``ε = sqrt(p/N)``); ``temperature=None`` is ``p^{-1/2}``.

    Defaults are the literal paper setting (N = 196, d = 384, K = 6, L = 12, α = 1, unit-variance
    ``Z⁰``). Overflow (taylor and second-order overflow fp64 within about five layers there) is
    reported as inf/nan, never raised; once ``Z`` is non-finite the remaining layers are nan.
    ``device``: where the layers and rates are computed; the draws are made on the CPU (seeded, fp64,
    :func:`draw`) and moved there, so every device starts from the same ``Z⁰`` and bases.
    """
    from .rate import default_eps

    _check_rule(rule)
    _check_sizes(num_tokens, dim, heads, depth)
    for name, value in (("alpha", alpha), ("scale", scale)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    p = dim // heads
    eps = default_eps(num_tokens, p) if eps is None else float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be positive (or None for γ = 1), got {eps!r}")
    gamma = rate_gamma(p, num_tokens, eps)
    tau = p**-0.5 if temperature is None else float(temperature)

    z, bases = draw(seed, num_tokens=num_tokens, dim=dim, heads=heads, depth=depth, scale=scale, dtype=dtype)
    z, bases = z.to(device), [u.to(device) for u in bases]
    rows = []
    with warnings.catch_warnings(), np.errstate(all="ignore"), torch.no_grad():
        warnings.simplefilter("ignore")
        for layer, u in enumerate(bases, start=1):
            if bool(torch.isfinite(z).all()):
                before = _rate(z, u, eps)
                z = step(rule, z, u, alpha=alpha, gamma=gamma, temperature=tau)
                after = _rate(z, u, eps)
            else:
                before = after = float("nan")
            rows.append((rule, int(seed), layer, before, after))
    df = pd.DataFrame(rows, columns=["rule", "seed", "layer", "rc_before", "rc_after"])
    df["finite"] = np.isfinite(df["rc_before"].to_numpy()) & np.isfinite(df["rc_after"].to_numpy())
    df["eps"], df["gamma"], df["alpha"], df["scale"], df["temperature"] = eps, gamma, float(alpha), float(scale), tau
    return df


def study(rules: Iterable[str] = RULES, seeds: Iterable[int] = (0, 1, 2), **sizes) -> pd.DataFrame:
    """:func:`run` for every rule and seed, concatenated into one tidy frame (``sizes`` go to ``run``)."""
    rules, seeds = list(rules), [int(s) for s in seeds]
    for rule in rules:
        _check_rule(rule)
    if not rules or not seeds:
        raise ValueError("study needs at least one rule and one seed")
    frames = [run(rule, seed, **sizes) for rule in rules for seed in seeds]
    return pd.concat(frames, ignore_index=True)


def summarize(df: pd.DataFrame, rtol: float = 1e-12) -> pd.DataFrame:
    """Per rule: how many (seed, layer) rows decreased / increased / left unchanged ``R^c``, how
    many are non-finite, and the first non-finite layer (over seeds; 0 if none).

    A change counts when ``|after − before| > rtol·(1 + |before|)``.
    """
    out = []
    for rule, g in df.groupby("rule", sort=False):
        fin = g[g["finite"]]
        diff = fin["rc_after"] - fin["rc_before"]
        tol = rtol * (1.0 + fin["rc_before"].abs())
        nonfinite = g[~g["finite"]]
        out.append({
            "rule": rule,
            "rows": len(g),
            "decreased": int((diff < -tol).sum()),
            "increased": int((diff > tol).sum()),
            "unchanged": int((diff.abs() <= tol).sum()),
            "nonfinite": len(nonfinite),
            "first_nonfinite_layer": int(nonfinite["layer"].min()) if len(nonfinite) else 0,
            "expected": EXPECTED.get(rule, "?"),
        })
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def _figure(**kwargs):
    # The object-oriented API with an Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _per_layer(g: pd.DataFrame, col: str) -> pd.DataFrame:
    """Mean, min and max over seeds of the finite values of ``col``, per layer."""
    vals = g[["layer", col]].copy()
    vals.loc[~np.isfinite(vals[col]), col] = np.nan
    return vals.groupby("layer")[col].agg(["mean", "min", "max", "count"]).reindex(sorted(g["layer"].unique()))


def _yscale(ax, values: np.ndarray) -> None:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return
    pos = v[v > 0]
    if pos.size and (v <= 0).any() and v.max() > 30 * max(pos.min(), 1e-300):
        ax.set_yscale("symlog", linthresh=max(1.0, float(np.percentile(pos, 5))))
    elif pos.size == v.size and v.max() / v.min() > 30:
        ax.set_yscale("log")


def _before_after(ax, g: pd.DataFrame, *, mark_overflow: bool = True) -> None:
    layers = np.array(sorted(g["layer"].unique()))
    stats = {}
    for col, colour, label in (("rc_before", "tab:blue", r"before: $R^c(Z^{\ell-1};U^\ell)$"),
                               ("rc_after", "tab:red", r"after: $R^c(Z^{\ell};U^\ell)$")):
        s = _per_layer(g, col)
        stats[col] = s
        ax.plot(layers, s["mean"].to_numpy(), "o-", color=colour, ms=3.5, lw=1.2, label=label)
        if g["seed"].nunique() > 1:
            ax.fill_between(layers, s["min"].to_numpy(), s["max"].to_numpy(), color=colour, alpha=0.2, lw=0)
    _yscale(ax, np.concatenate([g["rc_before"].to_numpy(), g["rc_after"].to_numpy()]))
    if mark_overflow:
        bad = sorted(g.loc[~g["finite"], "layer"].unique())
        if bad:
            ax.axvspan(bad[0] - 0.5, layers.max() + 0.5, color="0.85", zorder=0)
            ax.annotate(f"overflow (non-finite)\nfrom layer {bad[0]}", xy=(bad[0] - 0.4, 0.5),
                        xycoords=("data", "axes fraction"), fontsize=8, color="0.25", va="center")
    ax.set_xlabel(r"layer $\ell$")
    ax.set_xlim(layers.min() - 0.5, layers.max() + 0.5)
    ax.set_xticks(layers)


def plot(df: pd.DataFrame, out_dir) -> list[Path]:
    """Write the study's figures as PNGs into ``out_dir``; returns their paths.

    * ``figure1a.png``: ``R^c`` before and after each layer for ``softmax`` (crate-c), mean over
      seeds with the seed range as a band (written only if ``softmax`` is in ``df``),
    * ``figure5.png``: one panel per rule, before/after per layer, non-finite layers shaded and
      annotated "overflow",
    * ``figure1b.png``: ``log λ`` against its first- and second-order Taylor approximations at 1.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    setting = _setting_text(df)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if (df["rule"] == "softmax").any():
            fig = _figure(figsize=(6.4, 4.2), layout="constrained")
            ax = fig.add_subplot()
            g = df[df["rule"] == "softmax"]
            _before_after(ax, g)
            ax.set_ylabel(r"$R^c$")
            ax.set_title(f"softmax (crate-c) compression step alone, {g['seed'].nunique()} seed(s)\n{setting}",
                         fontsize=9)
            ax.legend(fontsize=8)
            paths.append(out_dir / "figure1a.png")
            fig.savefig(paths[-1], dpi=130)

        rules = [r for r in RULES if (df["rule"] == r).any()] + sorted(set(df["rule"]) - set(RULES))
        ncols = min(3, len(rules))
        nrows = math.ceil(len(rules) / ncols)
        fig = _figure(figsize=(4.3 * ncols, 3.4 * nrows + 0.4), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, rule in zip(axes, rules):
            _before_after(ax, df[df["rule"] == rule])
            ax.set_title(f"{rule} (expected: {EXPECTED.get(rule, '?')})\n{RULE_FORMULAS.get(rule, '')}", fontsize=8)
            ax.set_ylabel(r"$R^c$")
        for ax in axes[len(rules):]:
            ax.set_visible(False)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"compression rate before/after each layer, per update rule — {setting}", fontsize=9)
        paths.append(out_dir / "figure5.png")
        fig.savefig(paths[-1], dpi=110)

        fig = _figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.add_subplot()
        lam = np.linspace(0.02, 4.0, 400)
        x = lam - 1
        ax.plot(lam, np.log(lam), color="k", lw=2, label=r"$\log\lambda$")
        ax.plot(lam, x, "--", color="tab:blue", label=r"1st order: $\lambda-1$")
        ax.plot(lam, x - x**2 / 2, "-", color="tab:red", label=r"2nd order: $(\lambda-1)-(\lambda-1)^2/2$")
        ax.plot(lam, -(x**2) / 2, ":", color="tab:red", label=r"2nd-order term alone: $-(\lambda-1)^2/2$")
        ax.axvline(1.0, color="0.6", lw=0.8)
        ax.axvline(2.0, color="tab:red", lw=0.6, ls=":")
        ax.annotate("2nd-order expansion peaks at λ = 2,\nthen decreases without bound", xy=(2.9, 2.9 - 1 - 1.9**2 / 2),
                    xytext=(1.6, -3.2), fontsize=8, color="tab:red", arrowprops={"arrowstyle": "->", "color": "tab:red"})
        ax.set_ylim(-4.5, 2.5)
        ax.set_xlim(0, 4.0)
        ax.set_xlabel(r"eigenvalue $\lambda$ of $I+\gamma A_k^\top A_k$ ($\lambda \geq 1$ for $R^c$)")
        ax.set_ylabel("value")
        ax.set_title("log λ and its Taylor approximations around λ = 1\n"
                     "descending the 2nd-order term alone raises λ, hence raises log λ", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
        paths.append(out_dir / "figure1b.png")
        fig.savefig(paths[-1], dpi=130)
    return paths


def _setting_text(df: pd.DataFrame) -> str:
    parts = []
    for col, fmt in (("alpha", "α={:g}"), ("scale", "scale={:g}"), ("gamma", "γ={:.3g}"), ("eps", "ε={:.3g}")):
        if col in df and df[col].nunique() == 1:
            parts.append(fmt.format(df[col].iloc[0]))
    return ", ".join(parts)


def format_summary(summary: pd.DataFrame) -> str:
    """The per-rule table as fixed-width text."""
    cols = ["rule", "expected", "decreased", "increased", "unchanged", "nonfinite", "first_nonfinite_layer"]
    heads = ["rule", "expected", "decreased", "increased", "unchanged", "non-finite", "first non-finite layer"]
    table = [[str(r[c]) if not (c == "first_nonfinite_layer" and r[c] == 0) else "-" for c in cols]
             for _, r in summary.iterrows()]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    for row in table:
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)

