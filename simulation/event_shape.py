"""Event-shape variables from particle momenta, vectorised over events.

Inputs are padded momentum arrays ``(n_events, max_particles, 3)`` with zero rows for padding
(zero vectors contribute nothing to any of these sums). Use :func:`pad` to build them.
"""

from __future__ import annotations

import numpy as np


def pad(offsets: np.ndarray, p3: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Padded ``(n_events, max, 3)`` momenta from a columnar table.

    Rows outside ``mask`` become zero vectors.
    """
    counts = np.diff(offsets)
    n, width = len(counts), int(counts.max(initial=0))
    out = np.zeros((n, max(width, 1), 3))
    slot = np.arange(len(p3)) - np.repeat(offsets[:-1], counts)
    rows = np.repeat(np.arange(n), counts)
    values = p3 if mask is None else np.where(mask[:, None], p3, 0.0)
    out[rows, slot] = values
    return out


def thrust(
    p: np.ndarray, n_seeds: int | None = None, n_iter: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Thrust and thrust axis, T = max_n sum |p.n| / sum |p|.

    Iterates n <- sum sign(p.n) p from the direction of every particle (or of the
    ``n_seeds`` hardest). This finds a local maximum: on Pythia BBbar events about 1 % of
    events end up to 0.02 below the exact (brute-force) thrust; continuum two-jet events are
    found exactly. An exact O(n^3) search is left for when the BDTs show it matters.

    Returns:
        (thrust ``(n_events,)``, axis ``(n_events, 3)``).
    """
    mag = np.linalg.norm(p, axis=-1)
    total = np.where(mag.sum(axis=1) > 0, mag.sum(axis=1), 1.0)
    order = np.argsort(-mag, axis=1)[:, : (n_seeds or p.shape[1])]
    best_t = np.zeros(len(p))
    best_axis = np.zeros((len(p), 3))
    best_axis[:, 2] = 1.0
    for k in range(order.shape[1]):
        axis = np.take_along_axis(p, order[:, k, None, None], axis=1)[:, 0, :]
        for _ in range(n_iter):
            sign = np.sign(np.einsum("eij,ej->ei", p, axis))
            sign[sign == 0] = 1.0
            axis = np.einsum("ei,eij->ej", sign, p)
        norm = np.linalg.norm(axis, axis=-1)
        axis = axis / np.where(norm > 0, norm, 1.0)[:, None]
        t = np.abs(np.einsum("eij,ej->ei", p, axis)).sum(axis=1) / total
        better = t > best_t
        best_t = np.where(better, t, best_t)
        best_axis = np.where(better[:, None], axis, best_axis)
    return best_t, best_axis


def fox_wolfram(p: np.ndarray, orders: tuple[int, ...] = (0, 1, 2, 3, 4)) -> np.ndarray:
    """Fox-Wolfram moments H_l = sum_ij |p_i||p_j| P_l(cos theta_ij), shape ``(n, len(orders))``.

    R2 = H_2 / H_0 is the usual continuum discriminator (near 1 for two-jet events).
    """
    mag = np.linalg.norm(p, axis=-1)
    unit = p / np.where(mag > 0, mag, 1.0)[..., None]
    cos = np.clip(np.einsum("eik,ejk->eij", unit, unit), -1.0, 1.0)
    weight = mag[:, :, None] * mag[:, None, :]
    out = np.empty((len(p), len(orders)))
    for j, order in enumerate(orders):
        legendre = np.polynomial.legendre.legval(cos, [0] * order + [1])
        out[:, j] = np.sum(weight * legendre, axis=(1, 2))
    return out


def sphericity(p: np.ndarray) -> np.ndarray:
    """Sphericity S = 3/2 (lambda_2 + lambda_3) of the momentum tensor.

    0 for two back-to-back jets, 1 for isotropic events.
    """
    tensor = np.einsum("eia,eib->eab", p, p)
    norm = np.einsum("eia,eia->e", p, p)
    tensor = tensor / np.where(norm > 0, norm, 1.0)[:, None, None]
    eig = np.linalg.eigvalsh(tensor)  # ascending
    return 1.5 * (eig[:, 0] + eig[:, 1])


def cleo_cones(p: np.ndarray, axis: np.ndarray, n_cones: int = 9) -> np.ndarray:
    """CLEO cones: momentum flow in 10-degree cones around ``axis``.

    Forward and backward are folded together; shape ``(n_events, n_cones)``.
    """
    mag = np.linalg.norm(p, axis=-1)
    cos = np.abs(np.einsum("eij,ej->ei", p, axis)) / np.where(mag > 0, mag, 1.0)
    angle = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    cone = np.minimum((angle // 10).astype(int), n_cones - 1)
    out = np.zeros((len(p), n_cones))
    rows = np.broadcast_to(np.arange(len(p))[:, None], cone.shape)
    np.add.at(out, (rows, cone), mag)
    return out
