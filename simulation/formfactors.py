"""B -> K form factors with their covariance (vendored, ``knunu/data``).

EOS's BSZ2015 parametrisation with the posterior mode and covariance of the fit of FLAG:2021A
and HPQCD:2022A that arXiv:2507.12393 used. The simulation's signal spectrum is HPQCD 2022's
BCL f+ (:mod:`knunu.simulation.signal`); its form-factor systematic moves f+ along the
eigen-directions of this fit's f+ covariance (:func:`f_plus_eigen_shifts`), the
reinterpretation moves f+, f0 and fT along those of the whole covariance.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import numpy as np

#: Form-factor file (knunu/data).
FORM_FACTOR_FILE = "bsz2015_formfactors_2507.12393.json"
#: Indices of f+'s parameters (alpha^f+_0, _1, _2) in the file's order.
F_PLUS = (0, 1, 2)


class FormFactors(NamedTuple):
    """BSZ2015 B -> K form-factor parameters: names, mean and covariance."""

    names: tuple[str, ...]
    mean: np.ndarray
    cov: np.ndarray

    def eigen_shifts(self) -> np.ndarray:
        """One-sigma shifts along the covariance's eigenvectors, shape (n, n): row e is e's.

        >>> ff = form_factors()
        >>> shifts = ff.eigen_shifts()
        >>> bool(np.allclose(shifts.T @ shifts, ff.cov))
        True
        """
        return eigen_shifts(self.cov)


@lru_cache(maxsize=1)
def form_factors() -> FormFactors:
    """The vendored form factors (mode and covariance of arXiv:2507.12393's fit)."""
    path = resources.files("knunu").joinpath("data", FORM_FACTOR_FILE)
    doc = json.loads(path.read_text())
    return FormFactors(tuple(doc["names"]), np.asarray(doc["mean"]), np.asarray(doc["cov"]))


def bsz2015(q2: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f+, f0, fT at ``q2`` (EOS BSZ2015; parameters in the order of :func:`form_factors`).

    >>> fp, f0, ft = bsz2015(np.array([0.0]), form_factors().mean)
    >>> round(float(fp[0]), 4) == round(float(f0[0]), 4)
    True
    """
    m_b, m_k, m1, m0 = 5.279, 0.492, 5.415, 5.630
    tp, tm = (m_b + m_k) ** 2, (m_b - m_k) ** 2
    t0 = tp * (1 - math.sqrt(1 - tm / tp))

    def z(x: np.ndarray) -> np.ndarray:
        return (np.sqrt(tp - x) - math.sqrt(tp - t0)) / (np.sqrt(tp - x) + math.sqrt(tp - t0))

    dz = z(np.asarray(q2, dtype=float)) - z(np.zeros(1))
    p = params
    fp = (p[0] + p[1] * dz + p[2] * dz**2) / (1 - q2 / m1**2)
    f0 = (p[0] + p[3] * dz + p[4] * dz**2) / (1 - q2 / m0**2)
    ft = (p[5] + p[6] * dz + p[7] * dz**2) / (1 - q2 / m1**2)
    return fp, f0, ft


def symmetric_eigen(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors (columns) of a small symmetric matrix, bit-reproducible.

    Cyclic Jacobi rotations in plain floating point (Golub and Van Loan, Matrix Computations,
    8.5), no BLAS or LAPACK: ``np.linalg.eigh`` differs in the last bits with the kernel
    OpenBLAS picks for the CPU (``OPENBLAS_CORETYPE``), so a form-factor weight computed on a
    batch node whose environment lacks the variable (HTCondor starts jobs with a clean one)
    differed by 2e-16 from the local run's, and histograms were no longer bit-identical.

    >>> vals, vecs = symmetric_eigen(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> [round(float(v), 12) for v in vals]
    [1.0, 3.0]
    """
    a = [[float(v) for v in row] for row in np.asarray(matrix)]
    n = len(a)
    v = [[float(i == j) for j in range(n)] for i in range(n)]
    for _sweep in range(100):
        if all(a[p][q] == 0.0 for p in range(n) for q in range(p + 1, n)):
            break
        for p in range(n):
            for q in range(p + 1, n):
                if a[p][q] == 0.0:
                    continue
                theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q])
                t = math.copysign(1.0, theta) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(n):  # A <- A J (columns p, q), V <- V J
                    akp, akq = a[k][p], a[k][q]
                    a[k][p], a[k][q] = c * akp - s * akq, s * akp + c * akq
                    vkp, vkq = v[k][p], v[k][q]
                    v[k][p], v[k][q] = c * vkp - s * vkq, s * vkp + c * vkq
                for k in range(n):  # A <- J^T A (rows p, q)
                    apk, aqk = a[p][k], a[q][k]
                    a[p][k], a[q][k] = c * apk - s * aqk, s * apk + c * aqk
                a[p][q] = a[q][p] = 0.0
    order = sorted(range(n), key=lambda i: a[i][i])
    vals = np.array([a[i][i] for i in order])
    vecs = np.array([[v[k][i] for i in order] for k in range(n)])
    return vals, vecs


def eigen_shifts(cov: np.ndarray) -> np.ndarray:
    """One-sigma shifts along a covariance's eigenvectors, smallest eigenvalue first (rows).

    Each shift's largest component is positive (a fixed sign); :func:`symmetric_eigen`, not
    LAPACK, so the same on every machine.

    >>> eigen_shifts(np.diag([4.0, 1.0])).tolist()
    [[0.0, 1.0], [2.0, 0.0]]
    """
    vals, vecs = symmetric_eigen(cov)
    shifts = (vecs * np.sqrt(np.clip(vals, 0.0, None))).T
    sign = np.sign(shifts[np.arange(len(shifts)), np.argmax(np.abs(shifts), axis=1)])
    return shifts * np.where(sign == 0, 1.0, sign)[:, None]


@lru_cache(maxsize=1)
def f_plus_eigen_shifts() -> np.ndarray:
    """One-sigma shifts of the parameters along the eigenvectors of f+'s covariance.

    Shape (3, n parameters): row e moves alpha^f+_0..2 along the e-th eigenvector of their
    3 x 3 covariance (the marginal of the fit's), largest eigenvalue first, the rest of the
    parameters unchanged. Each vector's largest component is positive (a fixed sign).

    >>> shifts = f_plus_eigen_shifts()
    >>> cov = form_factors().cov[np.ix_(F_PLUS, F_PLUS)]
    >>> bool(np.allclose(shifts[:, F_PLUS].T @ shifts[:, F_PLUS], cov))
    True
    """
    ff = form_factors()
    out = np.zeros((len(F_PLUS), len(ff.mean)))
    out[:, list(F_PLUS)] = eigen_shifts(ff.cov[np.ix_(F_PLUS, F_PLUS)])[::-1]
    out.setflags(write=False)
    return out
