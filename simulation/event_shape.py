"""Event-shape variables from particle momenta, vectorised over events.

Inputs are padded momentum arrays ``(n_events, max_particles, 3)`` with zero rows for padding
(zero vectors contribute nothing to any of these sums). Use :func:`pad` to build them.
"""

from __future__ import annotations

import numba
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
    Compiled with numba (a loop per event over its real particles only).

    Returns:
        (thrust ``(n_events,)``, axis ``(n_events, 3)``).
    """
    p = np.ascontiguousarray(p, dtype=np.float64)
    seeds = p.shape[1] if n_seeds is None else min(n_seeds, p.shape[1])
    return _thrust_kernel(p, seeds, n_iter)


@numba.njit(cache=True, nogil=True)
def _thrust_kernel(p: np.ndarray, n_seeds: int, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    n_events, width = p.shape[0], p.shape[1]
    best_t = np.zeros(n_events)
    best_axis = np.zeros((n_events, 3))
    mag = np.empty(width)
    for e in range(n_events):
        best_axis[e, 2] = 1.0
        total = 0.0
        for i in range(width):
            mag[i] = np.sqrt(p[e, i, 0] ** 2 + p[e, i, 1] ** 2 + p[e, i, 2] ** 2)
            total += mag[i]
        if total == 0.0:
            continue
        order = np.argsort(-mag)
        for k in range(n_seeds):
            s = order[k]
            if mag[s] == 0.0:
                break
            a0, a1, a2 = p[e, s, 0], p[e, s, 1], p[e, s, 2]
            for _ in range(n_iter):
                b0 = b1 = b2 = 0.0
                for i in range(width):
                    d = p[e, i, 0] * a0 + p[e, i, 1] * a1 + p[e, i, 2] * a2
                    sign = -1.0 if d < 0 else 1.0
                    b0 += sign * p[e, i, 0]
                    b1 += sign * p[e, i, 1]
                    b2 += sign * p[e, i, 2]
                a0, a1, a2 = b0, b1, b2
            norm = np.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
            if norm == 0.0:
                continue
            a0, a1, a2 = a0 / norm, a1 / norm, a2 / norm
            t = 0.0
            for i in range(width):
                t += abs(p[e, i, 0] * a0 + p[e, i, 1] * a1 + p[e, i, 2] * a2)
            t /= total
            if t > best_t[e]:
                best_t[e] = t
                best_axis[e, 0], best_axis[e, 1], best_axis[e, 2] = a0, a1, a2
    return best_t, best_axis


def fox_wolfram(p: np.ndarray, orders: tuple[int, ...] = (0, 1, 2, 3, 4)) -> np.ndarray:
    """Fox-Wolfram moments H_l = sum_ij |p_i||p_j| P_l(cos theta_ij), shape ``(n, len(orders))``.

    R2 = H_2 / H_0 is the usual continuum discriminator (near 1 for two-jet events).
    Compiled with numba; orders up to 4.
    """
    if max(orders) > 4:
        raise ValueError("Fox-Wolfram moments are implemented up to order 4")
    full = _fox_wolfram_kernel(np.ascontiguousarray(p, dtype=np.float64))
    return full[:, list(orders)]


@numba.njit(cache=True, nogil=True)
def _fox_wolfram_kernel(p: np.ndarray) -> np.ndarray:
    n_events, width = p.shape[0], p.shape[1]
    out = np.zeros((n_events, 5))
    mag = np.empty(width)
    for e in range(n_events):
        for i in range(width):
            mag[i] = np.sqrt(p[e, i, 0] ** 2 + p[e, i, 1] ** 2 + p[e, i, 2] ** 2)
        for i in range(width):
            if mag[i] == 0.0:
                continue
            for j in range(width):
                if mag[j] == 0.0:
                    continue
                w = mag[i] * mag[j]
                c = (
                    p[e, i, 0] * p[e, j, 0] + p[e, i, 1] * p[e, j, 1] + p[e, i, 2] * p[e, j, 2]
                ) / w
                c = min(1.0, max(-1.0, c))
                c2 = c * c
                out[e, 0] += w
                out[e, 1] += w * c
                out[e, 2] += w * 0.5 * (3.0 * c2 - 1.0)
                out[e, 3] += w * 0.5 * (5.0 * c2 * c - 3.0 * c)
                out[e, 4] += w * 0.125 * (35.0 * c2 * c2 - 30.0 * c2 + 3.0)
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
