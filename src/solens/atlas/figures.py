"""Small pure functions behind the atlas pages: the histogram of centred norms (inline
SVG), the polysemy proxy of a description and the nearest neurons by r_n."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np


def effective_terms(coefs: Sequence[float]) -> float:
    """Participation ratio of the squared coefficients, ``(sum c^2)^2 / sum c^4``.

    1 when one term carries the whole description, m for m equal terms; the atlas calls it
    *polysemy* (how many comparable terms the neuron's rank-1 direction needs). 0 for no
    (or only zero) coefficients.
    """
    w = np.asarray(coefs, dtype=np.float64) ** 2
    den = float((w**2).sum())
    return float(w.sum() ** 2 / den) if den > 0 else 0.0


def nearest(r: np.ndarray, n_nearest: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``r`` [M, d], the ``n_nearest`` other rows of largest cosine:
    (indices [M, n], cosines [M, n]), largest first. Zero rows have cosine 0 with all."""
    r = np.asarray(r, dtype=np.float32)
    M = r.shape[0]
    n = max(0, min(n_nearest, M - 1))
    norms = np.linalg.norm(r, axis=1, keepdims=True)
    unit = np.divide(r, norms, out=np.zeros_like(r), where=norms > 0)
    idx = np.zeros((M, n), dtype=np.int64)
    cos = np.zeros((M, n), dtype=np.float32)
    if n == 0:
        return idx, cos
    for a in range(0, M, block):
        b = min(M, a + block)
        sim = unit[a:b] @ unit.T  # [b - a, M]
        sim[np.arange(b - a), np.arange(a, b)] = -np.inf
        part = np.argpartition(-sim, n - 1, axis=1)[:, :n]
        vals = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[a:b] = np.take_along_axis(part, order, axis=1)
        cos[a:b] = np.take_along_axis(vals, order, axis=1)
    return idx, cos


def histograms(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``values`` [n, N], the histogram over [0, max of the column] in
    ``bins`` equal bins (``[0, 1]`` for a column without a positive value), as
    ``np.histogram(values[:, j], bins, range=(0, hi[j]))`` counts them (the last bin
    closed): (counts [N, bins] int64, hi [N] float64)."""
    v = np.asarray(values, dtype=np.float64)
    n, N = v.shape
    hi = v.max(axis=0) if n else np.ones(N)
    hi = np.where(hi > 0, hi, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)[None, :] * hi[:, None]  # [N, bins + 1]
    keep = (v >= 0) & (v <= hi[None, :])
    idx = np.floor(v * (bins / hi)[None, :]).astype(np.int64)
    idx = np.clip(idx, 0, bins - 1)
    cols = np.broadcast_to(np.arange(N)[None, :], v.shape)
    idx -= v < edges[cols, idx]  # the corrections np.histogram applies at bin edges
    idx += (v >= edges[cols, np.minimum(idx + 1, bins)]) & (idx != bins - 1)
    flat = (cols * bins + idx)[keep]
    counts = np.bincount(flat, minlength=N * bins).reshape(N, bins)
    return counts.astype(np.int64), hi


def histogram_svg(counts: np.ndarray, hi: float, tau: float, above: int, width: int = 360,
                  height: int = 150, label: str = "") -> str:
    """Inline SVG of one histogram of centred norms (``counts`` [bins] over [0, ``hi``];
    ``above`` of the images lie above ``tau``), bar heights on a log(1 + count) scale, with
    a vertical line at ``tau``.

    The SVG carries ``role="img"``, a ``<title>`` and a ``<desc>`` (counts above and at most
    tau) for screen readers.
    """
    counts = np.asarray(counts, dtype=np.int64)
    bins = counts.shape[0]
    total = int(counts.sum())
    edges = np.linspace(0.0, hi, bins + 1)
    pad_l, pad_b, pad_t = 6, 18, 14
    pw, ph = width - 2 * pad_l, height - pad_b - pad_t
    top = math.log1p(int(counts.max()) if counts.size else 1) or 1.0
    bw = pw / bins
    title = escape(label or "Histogram of centred norms")
    desc = (f"{total} images; {above} with centred norm above tau = {tau:.4g}, "
            f"{total - above} at or below; norms from 0 to {hi:.4g}")
    parts = [
        f'<svg class="hist" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" aria-labelledby="hist-title hist-desc">',
        f'<title id="hist-title">{title}</title><desc id="hist-desc">{escape(desc)}</desc>',
    ]
    for i, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        h = ph * math.log1p(c) / top
        over = edges[i] >= tau
        parts.append(
            f'<rect class="{"bar over" if over else "bar"}" x="{pad_l + i * bw:.1f}" '
            f'y="{pad_t + ph - h:.1f}" width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}">'
            f"<title>{c} images with norm {edges[i]:.3g} to {edges[i + 1]:.3g}</title>"
            "</rect>"
        )
    x = pad_l + pw * min(max(tau / hi, 0.0), 1.0)
    parts += [
        f'<line class="axis" x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" '
        f'y2="{pad_t + ph}"/>',
        f'<line class="tau" x1="{x:.1f}" y1="{pad_t - 4}" x2="{x:.1f}" y2="{pad_t + ph}"/>',
        f'<text class="tau-label" x="{min(x + 3, width - 70):.1f}" y="{pad_t - 3}">'
        f"tau = {tau:.3g}</text>",
        f'<text x="{pad_l}" y="{height - 4}">0</text>',
        f'<text x="{pad_l + pw}" y="{height - 4}" text-anchor="end">{hi:.3g}</text>',
        "</svg>",
    ]
    return "".join(parts)


__all__ = ["effective_terms", "histogram_svg", "histograms", "nearest"]
