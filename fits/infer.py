"""Fast, robust inference on a pyhf model: a compiled likelihood and the results built on it.

pyhf builds the model (and stays the reference for its value); jax compiles the negative
log-likelihood, its gradient, the expected Fisher information and the exact Hessian, in float64.
Minimisation is Fisher scoring (Newton steps with the expected information, which is positive
definite) with a projected backtracking line search inside the parameter bounds; if it does not
converge, exact-Hessian Newton and then scipy's L-BFGS-B take over. Every fit checks its own
convergence (estimated distance to minimum, EDM) and raises :class:`~knunu.errors.FitError`
rather than return an unconverged result. A minimum on the kink of a template clipped at zero,
where the gradient jumps, is recognised by Clarke stationarity (``Likelihood._kink_edm``).

Asymptotic formulae follow Cowan, Cranmer, Gross, Vitells, EPJC 71 (2011) 1554, as in pyhf.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import jax
import numpy as np
import pyhf
import scipy.linalg
import scipy.optimize
from scipy.stats import norm

from knunu.errors import FitError, LimitAboveBoundError
from knunu.fits import dense

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402  (after enabling float64)

log = logging.getLogger(__name__)

#: Convergence: estimated distance to minimum, 0.5 g^T F^-1 g, in units of NLL.
EDM_TOLERANCE = 1e-10
#: Accepted when no strategy reaches :data:`EDM_TOLERANCE`: an EDM of 1e-6 puts the minimum
#: within sqrt(2e-6) = 0.0014 standard deviations (Minuit's default goal is 2e-4); toys at
#: the POI's lower bound end at 1e-9 (3 of 40 at mu = 0 in the default run's injection).
EDM_ACCEPT = 1e-6
#: Newton steps along the likelihood's edge before its EDM is judged (:meth:`Likelihood.fit`).
EDGE_STEPS = 300


class _Kinks(NamedTuple):
    """The clipped terms at a point (:meth:`Likelihood._kinks`), on the free parameters."""

    idx: np.ndarray  # the free parameters
    y: np.ndarray  # each sample's yield per bin, unclipped (E, B)
    jac: np.ndarray  # their gradients on the free parameters (E, B, F)
    spread: np.ndarray  # sqrt(j^T F^-1 j): a yield's standard deviation from the fit (E, B)
    slope: np.ndarray  # d NLL / d lambda per bin: 1 - n / lambda (B,)
    fisher: np.ndarray  # expected information on the free parameters (F, F)
    chol: np.ndarray  # its Cholesky factor
    grad: np.ndarray  # the NLL's gradient, all parameters


@dataclass(frozen=True)
class FitResult:
    """One maximum-likelihood fit.

    Attributes:
        x: best-fit parameters (all, fixed ones included), in the model's order.
        nll: negative log-likelihood at ``x``.
        edm: estimated distance to the minimum at ``x``.
        iterations: minimiser iterations.
        method: the strategy that converged.
        fixed: indices that were held fixed.
    """

    x: np.ndarray
    nll: float
    edm: float
    iterations: int
    method: str
    fixed: tuple[int, ...] = ()


@dataclass(frozen=True)
class Uncertainties:
    """Hesse uncertainties at a fit's minimum."""

    error: np.ndarray
    covariance: np.ndarray

    @property
    def correlation(self) -> np.ndarray:
        """The correlation matrix (0 for a parameter without variance, 1 on the diagonal)."""
        d = np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))
        norm = np.outer(d, d)
        corr = np.divide(self.covariance, norm, out=np.zeros_like(norm), where=norm > 0)
        np.fill_diagonal(corr, 1.0)
        return corr


@dataclass(frozen=True)
class ManyFits:
    """Fits of many datasets (:meth:`Likelihood.fit_many`).

    Attributes:
        x: best-fit parameters per dataset, shape (n, npars); NaN rows for ``failed``.
        nll: negative log-likelihood per dataset.
        edm: estimated distance to the minimum per dataset.
        batched: True where the batch converged, False where the fit ran on its own.
        failed: datasets no strategy could fit.
    """

    x: np.ndarray
    nll: np.ndarray
    edm: np.ndarray
    batched: np.ndarray
    failed: tuple[int, ...] = ()


#: The likelihood engines (:class:`Likelihood`).
ENGINES = ("dense", "pyhf")
#: The dense arrays a :meth:`Likelihood.variant` may change: the templates and their MC errors.
VARIANT_FIELDS = ("nominal", "histo_up", "histo_dn", "constraint_sigma")
#: Datasets per call of the batched kernels (one compiled shape; the last chunk is padded).
BATCH = 64


def _chunks(rows: np.ndarray) -> list[np.ndarray]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


def _padded(kernel: Any) -> Any:
    """Call ``kernel`` on arrays padded to :data:`BATCH` rows (one compilation), unpadded."""

    def call(*arrays: np.ndarray) -> tuple[np.ndarray, ...] | np.ndarray:
        m = len(arrays[0])
        pad = [np.concatenate([a, np.repeat(a[:1], BATCH - m, axis=0)]) for a in arrays]
        out = kernel(*(jnp.asarray(a) for a in pad))
        if isinstance(out, tuple):
            return tuple(np.asarray(o)[:m] for o in out)
        return np.asarray(out)[:m]

    return call


@dataclass
class Likelihood:
    """The compiled negative log-likelihood of a pyhf model.

    Build the model with pyhf's jax backend (:func:`from_workspace` does it).

    Args:
        model: A ``pyhf.pdf.Model`` built under the jax backend.
        data: Observed main data followed by auxiliary data, as ``workspace.data(model)``.
        engine: ``dense`` (default): the model's dense arrays (:mod:`knunu.fits.dense`) where
            they reproduce it, pyhf's graph otherwise; ``pyhf``: pyhf's graph always (the
            reference the benchmarks compare with).
    """

    model: Any
    data: np.ndarray
    engine: str = "dense"
    _fn: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        model = self.model
        cfg = model.config
        self.data = np.asarray(self.data, dtype=float)
        self.npars = cfg.npars
        self.poi = cfg.poi_index
        self.bounds = np.asarray(cfg.suggested_bounds(), dtype=float)
        self.init = np.asarray(cfg.suggested_init(), dtype=float)
        self.suggested_fixed = tuple(i for i, f in enumerate(cfg.suggested_fixed()) if f)
        self.labels = tuple(_labels(cfg))
        self.nmain = cfg.nmaindata
        self.prior_width = _prior_widths(cfg)

        def expected_main(x: jnp.ndarray) -> jnp.ndarray:
            return model.expected_actualdata(x)

        def nll(x: jnp.ndarray, data: jnp.ndarray) -> jnp.ndarray:
            # a negative expected yield has no likelihood (see knunu.fits.dense._log_terms)
            ok = jnp.all(expected_main(x) >= 0.0)
            return jnp.where(ok, -model.logpdf(x, data)[0], jnp.inf)

        def constraint_nll(x: jnp.ndarray, aux: jnp.ndarray) -> jnp.ndarray:
            return -jnp.sum(model.constraint_logpdf(aux, x))

        grad_c = jax.grad(constraint_nll)

        def fisher(x: jnp.ndarray, data: jnp.ndarray) -> jnp.ndarray:
            # Expected information of the Poisson part plus the constraint curvature. HistFactory
            # constraints are one parameter each, so a Hessian-vector product with ones is the
            # diagonal of their Hessian.
            lam = expected_main(x)
            jac = jax.jacrev(expected_main)(x)  # 8x faster than jacfwd here (few bins)
            main = jac.T @ (jac / dense.information_weight(lam, jac)[:, None])
            aux = data[self.nmain :]
            diag = jax.jvp(lambda y: grad_c(y, aux), (x,), (jnp.ones_like(x),))[1]
            return main + jnp.diag(diag)

        self._fn = {
            "nll": jax.jit(_jax_backend(nll)),
            "vg": jax.jit(_jax_backend(jax.value_and_grad(nll))),
            "fisher": jax.jit(_jax_backend(fisher)),
            "hessian": jax.jit(_jax_backend(jax.jacfwd(jax.grad(nll)))),
            "expected": jax.jit(_jax_backend(lambda x: model.expected_data(x))),
        }
        if self.engine not in ENGINES:
            raise FitError(f"Likelihood: engine {self.engine!r} is not one of {ENGINES}")
        self.dense = None
        if self.engine == "dense":
            try:
                self.dense = dense.compile_model(model)
            except FitError as exc:  # a model the dense arrays do not reproduce: pyhf's graph
                log.debug("pyhf graph kept: %s", exc)
        if (dm := self.dense) is not None:
            self._fn.update(
                nll=jax.jit(lambda x, d: -dense.logpdf(dm, x, d)),
                vg=jax.jit(lambda x, d: dense.nll_and_grad(dm, x, d)),
                fisher=jax.jit(lambda x, d: dense.nll_grad_fisher(dm, x, d)[2]),
                hessian=jax.jit(jax.jacfwd(lambda x, d: dense.nll_and_grad(dm, x, d)[1])),
            )

    # ------------------------------------------------------------------ building
    @classmethod
    def from_workspace(
        cls, workspace: pyhf.Workspace, engine: str = "dense", **model_kwargs: Any
    ) -> Likelihood:
        """Compile the likelihood of a workspace's model (:func:`build_model`) and observed data."""
        pyhf.set_backend("jax")
        model = build_model(workspace, **model_kwargs)
        return cls(model, np.asarray(workspace.data(model), dtype=float), engine)

    def with_data(self, data: np.ndarray) -> Likelihood:
        """The same model with other data (compiled functions are shared)."""
        other = object.__new__(Likelihood)
        other.__dict__.update(self.__dict__)
        other.data = np.asarray(data, dtype=float)
        return other

    def variant(self, model: Any) -> Likelihood:
        """The likelihood of ``model`` (differing only in templates), compiled once for both.

        For a scan over a family of models, e.g. a new particle's mass.
        The dense kernels are compiled once, taking the templates (:data:`VARIANT_FIELDS`)
        as arguments; the variant shares them and this likelihood's data.

        Raises:
            FitError: no dense model, or ``model`` differs in more than its templates.
        """
        if self.dense is None:
            raise FitError("variant: the model has no dense form")
        other_dm = dense.compile_model(model)
        for name in dense.DenseModel._fields:
            a, b = getattr(self.dense, name), getattr(other_dm, name)
            same = np.shape(a) == np.shape(b) and (
                name in VARIANT_FIELDS or np.array_equal(np.asarray(a), np.asarray(b))
            )
            if not same:
                raise FitError(f"variant: the models differ in {name}, not only in templates")
        mine, theirs = self.model.config, model.config
        for what, get in (
            ("parameters", lambda c: tuple(c.par_order)),
            ("fixed parameters (a template's empty bins)", lambda c: tuple(c.suggested_fixed())),
            ("bounds", lambda c: np.asarray(c.suggested_bounds(), dtype=float).tolist()),
            ("initial values", lambda c: np.asarray(c.suggested_init(), dtype=float).tolist()),
            ("POI", lambda c: c.poi_index),
            ("auxiliary data", lambda c: np.asarray(c.auxdata, dtype=float).tolist()),
        ):
            if get(mine) != get(theirs):
                raise FitError(f"variant: the models differ in their {what}")
        kernels = self._variant_kernels()
        args = tuple(jnp.asarray(getattr(other_dm, f)) for f in VARIANT_FIELDS)
        other = object.__new__(Likelihood)
        other.__dict__.update(self.__dict__)
        other.model, other.dense = model, other_dm
        other.prior_width = _prior_widths(model.config)
        other._fn = {"variant": kernels}
        for key in ("nll", "vg", "fisher", "hessian", "expected", "batch_step", "batch_nll"):
            other._fn[key] = partial(kernels[key], args)
        return other

    def _variant_kernels(self) -> dict[str, Any]:
        if "variant" not in self._fn:
            base, bounds = self.dense, jnp.asarray(self.bounds)

            def dm_of(args: tuple[jnp.ndarray, ...]) -> dense.DenseModel:
                return base._replace(**dict(zip(VARIANT_FIELDS, args, strict=True)))

            def grad(a: tuple, x: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
                return dense.nll_and_grad(dm_of(a), x, d)[1]

            def expected(a: tuple, x: jnp.ndarray) -> jnp.ndarray:
                main = dense.expected_main(dm_of(a), x)
                return jnp.concatenate([main, x[base.constraint_par]])

            self._fn["variant"] = {
                "nll": jax.jit(lambda a, x, d: -dense.logpdf(dm_of(a), x, d)),
                "vg": jax.jit(lambda a, x, d: dense.nll_and_grad(dm_of(a), x, d)),
                "fisher": jax.jit(lambda a, x, d: dense.nll_grad_fisher(dm_of(a), x, d)[2]),
                "hessian": jax.jit(jax.jacfwd(grad, argnums=1)),
                "expected": jax.jit(expected),
                "batch_step": jax.jit(
                    jax.vmap(
                        lambda a, x, d, f: dense.newton_step(dm_of(a), x, d, f, bounds),
                        in_axes=(None, 0, 0, 0),
                    )
                ),
                "batch_nll": jax.jit(
                    jax.vmap(lambda a, x, d: -dense.logpdf(dm_of(a), x, d), in_axes=(None, 0, 0))
                ),
            }
        return self._fn["variant"]

    # ------------------------------------------------------------------ evaluation
    def nll(self, x: np.ndarray) -> float:
        """Negative log-likelihood at ``x``."""
        return float(self._fn["nll"](jnp.asarray(x), self.data))

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """NLL and its gradient at ``x``."""
        v, g = self._fn["vg"](jnp.asarray(x), self.data)
        return float(v), np.asarray(g)

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """Exact Hessian of the NLL at ``x``."""
        return np.asarray(self._fn["hessian"](jnp.asarray(x), self.data))

    def expected_data(self, x: np.ndarray) -> np.ndarray:
        """Expected main + auxiliary data at ``x``."""
        return np.asarray(self._fn["expected"](jnp.asarray(x)))

    # ------------------------------------------------------------------ minimisation
    def fit(
        self,
        fixed: Mapping[int, float] | None = None,
        init: np.ndarray | None = None,
        *,
        maxiter: int = 200,
        curvature: np.ndarray | None = None,
    ) -> FitResult:
        """Minimise the NLL, holding ``fixed`` parameters (index -> value) and pyhf's fixed ones.

        Args:
            fixed: Parameters to hold, by index.
            init: Starting point (default: pyhf's suggested init).
            maxiter: Iterations per strategy.
            curvature: A fixed curvature matrix (e.g. the Fisher information at a nearby best
                fit). When given, a chord strategy (Newton steps with this matrix, one gradient
                per step) runs first: cheap for many fits near one minimum (impacts, toys).

        Raises:
            FitError: no strategy converged.
        """
        start = self.init if init is None else np.asarray(init, dtype=float)
        x, free, (fixed,) = self._start_points(start[None, :], [dict(fixed or {})])
        x0 = x[0]
        free = free[0]
        result = best = None
        tried: list[FitResult] = []
        methods = (
            ("chord", "fisher", "newton", "lbfgsb")
            if curvature is not None
            else ("fisher", "newton", "lbfgsb")
        )
        for method in methods:
            try:
                result = self._minimise(method, x0, free, maxiter, curvature)
            except (np.linalg.LinAlgError, FloatingPointError) as exc:
                log.debug("fit strategy %s failed: %s", method, exc)
                continue
            if not np.isfinite(result.nll):
                log.debug("fit strategy %s stopped where the NLL is not finite", method)
                continue
            if result.edm < EDM_TOLERANCE:
                return replace(result, fixed=tuple(sorted(fixed)))
            log.debug("fit strategy %s stopped at EDM %.2g", method, result.edm)
            tried.append(result)
            if best is None or result.edm < best.edm:
                best = result
            x0 = result.x
        if best is not None and best.edm < EDM_ACCEPT:
            log.debug("fit accepted at EDM %.2g (strategy %s)", best.edm, best.method)
            return replace(best, fixed=tuple(sorted(fixed)))
        on_kink = self._on_a_kink(tried, free)
        if on_kink is None:
            on_kink = self._on_an_edge(tried, free)
        if on_kink is not None:
            return replace(on_kink, fixed=tuple(sorted(fixed)))
        raise _no_convergence(result)

    def _on_an_edge(self, stops: list[FitResult], free: np.ndarray) -> FitResult | None:
        """The lowest stop that is (or moves along the domain's edge to) a minimum on it.

        In a model that does not clip samples at zero, a bin without events whose expectation
        the fit drives to zero ends the likelihood's domain (below zero it has none): the
        minimum can sit there, where the NLL's gradient does not vanish and every smooth
        strategy stops on a failed line search. There the minimum solves min NLL subject to
        lambda_b(x) >= 0 for those bins: steps along the edges ([[F, A^T], [A, 0]] [dx, nu] =
        -[g, lambda], F the expected information without them, A their gradients; an edge
        whose multiplier pulls off it is let go; bins without events that a step takes below
        zero join), then the EDM of the gradient less the least non-negative mix of the edges'
        gradients (KKT), as :meth:`_kink_edm` judges kinks. Found on the measurement's
        goodness-of-fit toys (stop 54: thin continuum templates' MC components driving an
        off-resonance bin without events to zero; 37 of 200 toy fits failed).
        """
        if self.dense is None or self.dense.clip:  # clipped models have kinks instead
            return None
        for stop in sorted(stops, key=lambda r: r.nll):
            x = stop.x.copy()
            for _ in range(EDGE_STEPS):
                v, idx, dx, edge = self._edge_step(x, free)
                moved = self._along_edge(x, idx, dx, edge, v) if len(idx) else None
                if moved is None:
                    break
                x = moved
                if float(np.abs(dx).max()) < 1e-10:
                    break
            edge = self._edges(self._expected_and_jacobian(x)[0])
            if not edge.any():
                continue
            edm = self._edge_edm(x, free, edge)
            if edm < EDM_ACCEPT:
                log.debug("fit accepted on the likelihood's edge at EDM %.2g", edm)
                return replace(
                    stop, x=x, nll=self.nll(x), edm=edm, method=f"{stop.method}, on an edge"
                )
        return None

    def _edges(self, lam: np.ndarray) -> np.ndarray:
        """The bins without events whose expectation ``lam`` is zero (the domain's edge)."""
        return (self.data[: self.nmain] == 0) & (lam <= 1e-9 * max(1.0, float(np.abs(lam).max())))

    def _edge_step(
        self, x: np.ndarray, free: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """One step along the edges that hold the minimum at ``x``.

        Returns:
            The NLL at ``x``, the parameters that move, their step and the edges (an edge whose
            multiplier would pull the fit off it is let go).
        """
        v, g = self.value_and_grad(x)
        lam, jac = self._expected_and_jacobian(x)
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        idx = np.flatnonzero(free & ~((x <= lo) & (g > 0) | (x >= hi) & (g < 0)))
        metric = self._edge_metric(lam, jac, idx)
        edge = self._edges(lam)
        while edge.any():
            a = jac[edge][:, idx]
            kkt = np.block([[metric, a.T], [a, np.zeros((len(a), len(a)))]])
            sol = np.linalg.lstsq(kkt, -np.concatenate([g[idx], lam[edge]]), rcond=None)[0]
            nu = sol[len(idx) :]
            if np.all(nu <= 1e-12 * max(1.0, float(np.abs(nu).max()))):
                return v, idx, sol[: len(idx)], edge
            edge[np.flatnonzero(edge)[int(np.argmax(nu))]] = False
        return v, idx, -np.linalg.solve(metric, g[idx]), edge

    def _along_edge(
        self, x: np.ndarray, idx: np.ndarray, dx: np.ndarray, edge: np.ndarray, v: float
    ) -> np.ndarray | None:
        """``x`` moved by (a fraction of) ``dx`` and back onto the edges where they curve.

        The NLL there is no higher than ``v``; None: no such move.
        """
        lo, hi = self.bounds[idx, 0], self.bounds[idx, 1]
        for alpha in 0.5 ** np.arange(12):
            moved = x.copy()
            moved[idx] = np.clip(x[idx] + alpha * dx, lo, hi)
            for _ in range(3):  # Gauss-Newton back to lambda_b = 0 on the edge's bins and on
                # those without events that the move took below zero (the next step's edges)
                lam, jac = self._expected_and_jacobian(moved)
                rows = edge | (self.data[: self.nmain] == 0) & (lam < 0.0)
                if not rows.any() or lam[rows].min() >= 0.0:
                    break
                a = jac[rows][:, idx]
                back = a.T @ np.linalg.lstsq(a @ a.T, -lam[rows], rcond=None)[0]
                moved[idx] = np.clip(moved[idx] + back * (1 + 1e-9), lo, hi)
            if self.nll(moved) <= v + 1e-9:
                return moved
        return None

    def _edge_metric(self, lam: np.ndarray, jac: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The expected information on ``idx``, plus the constraints'.

        Without the bins that expect (almost) nothing: their 1 / lambda would weigh an edge's
        own gradient infinitely.
        """
        info = lam > 1e-6
        fisher = jac[info][:, idx].T @ (jac[info][:, idx] / lam[info, None])
        sigma = np.full(self.npars, np.inf)
        sigma[self.dense.constraint_par] = self.dense.constraint_sigma
        fisher[np.diag_indices_from(fisher)] += 1.0 / sigma[idx] ** 2
        return fisher

    def _expected_and_jacobian(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The main data's expectation at ``x`` and its Jacobian (bins x parameters; dense)."""
        if "edge" not in self._fn:
            self._fn["edge"] = jax.jit(partial(dense.expected_and_jacobian, self.dense))
        lam, jac = self._fn["edge"](jnp.asarray(x))
        return np.asarray(lam), np.asarray(jac)

    def _edge_edm(self, x: np.ndarray, free: np.ndarray, edge: np.ndarray) -> float:
        """EDM of ``x`` as a minimum on the edges ``edge`` (bins expecting zero, no events)."""
        g = self.value_and_grad(x)[1]
        idx = np.flatnonzero(free)
        lam, jac = self._expected_and_jacobian(x)
        try:
            chol = np.linalg.cholesky(self._edge_metric(lam, jac, idx))
        except np.linalg.LinAlgError:
            return math.inf
        # g = sum of mu x (an edge's gradient), mu >= 0: the edges' terms are minus theirs
        terms = -jac[edge][:, idx]
        return _mixed_edm(
            chol, g[idx], terms, np.full(len(terms), np.inf), x[idx], self.bounds[idx]
        )

    def _on_a_kink(self, stops: list[FitResult], free: np.ndarray) -> FitResult | None:
        """The lowest stop that is (or moves along kinks to) a minimum on a kink; else None."""
        for stop in sorted(stops, key=lambda r: r.nll):
            for moved in (False, True):  # as it stopped, else moved along the kinks near it
                x = self._onto_kinks(stop.x, free) if moved else stop.x
                nll = self.nll(x)
                edm = self._kink_edm(x, free) if nll <= stop.nll + 1e-9 else math.inf
                if edm < EDM_ACCEPT:
                    log.debug("fit accepted on a clipped template's kink at EDM %.2g", edm)
                    return replace(stop, x=x, nll=nll, edm=edm, method=f"{stop.method}, on a kink")
        return None

    def _kinks(self, x: np.ndarray, free: np.ndarray, grad: np.ndarray) -> _Kinks | None:
        """The clipped terms at ``x`` and the metric to judge them (None: no clipped model).

        ``grad``: the NLL's gradient at ``x``.
        """
        dm = self.dense
        idx = np.flatnonzero(free)
        if dm is None or not dm.clip or not len(idx):
            return None
        if "kinks" not in self._fn:
            yields = partial(dense.sample_yields, dm)
            self._fn["kinks"] = jax.jit(lambda y: (yields(y), jax.jacfwd(yields)(y)))
        xj = jnp.asarray(x)
        y, jac = (np.asarray(a) for a in self._fn["kinks"](xj))  # (E, B), (E, B, P)
        jac = jac[..., idx]
        # The expected information, without the bins that expect (almost) nothing: a term at
        # its kink alone in a bin would weigh its gradient with 1 / lambda -> infinity.
        counted = y >= 0  # as the clipped model counts them (knunu.fits.dense._kept)
        lam = np.sum(np.where(counted, y, 0.0), axis=0)
        jac_c = np.sum(np.where(counted[..., None], jac, 0.0), axis=0)  # (B, F)
        info = lam > 1e-6
        fisher = jac_c[info].T @ (jac_c[info] / lam[info, None])
        sigma = np.full(self.npars, np.inf)
        sigma[dm.constraint_par] = dm.constraint_sigma
        fisher[np.diag_indices_from(fisher)] += 1.0 / sigma[idx] ** 2
        try:
            chol = np.linalg.cholesky(fisher)
        except np.linalg.LinAlgError:
            return None
        whitened = scipy.linalg.solve_triangular(chol, jac.reshape(-1, len(idx)).T, lower=True)
        spread = np.linalg.norm(whitened, axis=0).reshape(y.shape)
        n = self.data[: self.nmain]
        ratio = np.divide(n, lam, out=np.zeros_like(lam), where=n > 0)
        return _Kinks(idx, y, jac, spread, 1.0 - ratio, fisher, chol, grad)

    def _kink_edm(self, x: np.ndarray, free: np.ndarray) -> float:
        """The EDM of ``x`` as a minimum on kinks of templates clipped at zero (inf: none there).

        Where a sample's yield in a bin crosses zero, the clipped NLL has a kink: the sample
        counts on one side and not on the other, and the gradient jumps. A minimum can sit on
        it (a variation that would empty a template in a bin without events), where neither
        side's gradient vanishes, so the EDM test fails though no direction descends.

        ``x`` is a minimum there when some mix of the one-sided gradients vanishes (Clarke
        stationarity): each kink's term counted with a weight in [0, 1], a non-negative
        multiplier for each parameter on a bound. The EDM is that mix's 0.5 g^T F^-1 g, least
        over the weights (a bounded linear least-squares problem). Only kinks within
        sqrt(2 EDM_ACCEPT) standard deviations of ``x`` take part (the distance of a term's
        zero, |y| / sqrt(j^T F^-1 j), with j its gradient).
        """
        k = self._kinks(x, free, self.value_and_grad(x)[1])
        if k is None:
            return math.inf
        near = (k.spread > 0) & (np.abs(k.y) <= math.sqrt(2 * EDM_ACCEPT) * k.spread)
        if not near.any():
            return math.inf
        e, b = np.nonzero(near)
        terms = k.slope[b][:, None] * k.jac[e, b]  # each kink's term of the NLL gradient
        g0 = k.grad[k.idx] - terms[k.y[e, b] >= 0].sum(axis=0)  # the gradient without them
        return _mixed_edm(k.chol, g0, terms, np.ones(len(e)), x[k.idx], self.bounds[k.idx])

    def _onto_kinks(self, x: np.ndarray, free: np.ndarray, reach: float = 0.1) -> np.ndarray:
        """Newton steps along the kinks within ``reach`` standard deviations of ``x``.

        A smooth strategy that stops near a kink (or where kinks cross) zig-zags across it; on
        the kink the minimum solves min NLL subject to y_k(x) = 0, whose KKT system
        [[F, A^T], [A, 0]] [dx, nu] = -[g, y] (A: the kinks' gradients) these steps solve. A
        kink whose multiplier puts its term's weight outside [0, 1] (the minimum is off it) is
        dropped. Parameters on a bound stay there. :meth:`_kink_edm` judges the result.
        """
        x = x.copy()
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        dropped: set[tuple[int, int]] = set()
        for _ in range(20):
            g = self.value_and_grad(x)[1]
            held = ~free | (x <= lo) & (g > 0) | (x >= hi) & (g < 0)
            k = self._kinks(x, free & ~held, g)
            if k is None:
                break
            near = (k.spread > 0) & (np.abs(k.y) <= reach * k.spread)
            for e, b in dropped:
                near[e, b] = False
            if not near.any():
                break
            e, b = np.nonzero(near)
            a = k.jac[e, b]
            m = len(k.idx)
            hess = self.hessian(x)[np.ix_(k.idx, k.idx)]
            kkt = np.block([[hess, a.T], [a, np.zeros((len(e), len(e)))]])
            rhs = -np.concatenate([k.grad[k.idx], k.y[e, b]])
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            dx, nu = sol[:m], sol[m:]
            # nu = (weight - counted now) x slope: the weight must lie in [0, 1]
            counted = (k.y[e, b] >= 0).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                weight = counted + nu / k.slope[b]
            outside = ~np.isfinite(weight) | (weight < -1e-6) | (weight > 1 + 1e-6)
            if outside.any():
                worst = int(np.argmax(np.where(outside, np.abs(weight - 0.5), -np.inf)))
                dropped.add((int(e[worst]), int(b[worst])))
                continue
            x[k.idx] = np.clip(x[k.idx] + dx, lo[k.idx], hi[k.idx])
            if np.sqrt(dx @ k.fisher @ dx) < 1e-9:
                break
        return x

    def _edm(self, g: np.ndarray, matrix: np.ndarray, free: np.ndarray, x: np.ndarray) -> float:
        gf = _kkt_gradient(g, x, self.bounds, free)
        active = free & (gf != 0)
        if not active.any():
            return 0.0
        sub = matrix[np.ix_(active, active)]
        return float(0.5 * gf[active] @ np.linalg.solve(sub, gf[active]))

    def _minimise(
        self,
        method: str,
        x0: np.ndarray,
        free: np.ndarray,
        maxiter: int,
        fixed_matrix: np.ndarray | None = None,
    ) -> FitResult:
        if method == "lbfgsb":
            return self._lbfgsb(x0, free, maxiter)
        if method == "chord":
            maxiter = min(maxiter, 60)

            def curvature(_x: Any, _data: Any) -> np.ndarray:
                return fixed_matrix

        else:
            curvature = self._fn["fisher"] if method == "fisher" else self._fn["hessian"]
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        x = x0.copy()
        v, g = self.value_and_grad(x)
        edm = math.inf
        for it in range(1, maxiter + 1):
            matrix = np.asarray(curvature(jnp.asarray(x), self.data))
            gf = _kkt_gradient(g, x, self.bounds, free)
            active = free & (gf != 0)
            if not active.any():
                return FitResult(x, v, 0.0, it, method)
            sub = matrix[np.ix_(active, active)]
            step_a = np.linalg.solve(sub, gf[active])
            edm = float(0.5 * gf[active] @ step_a)
            if not np.isfinite(edm) or edm < 0:
                if it == 1:
                    raise np.linalg.LinAlgError("curvature not positive definite")
                # the steps so far stand: the next strategy starts where they got to
                log.debug("fit strategy %s: curvature not positive definite at step %d", method, it)
                return FitResult(x, v, math.inf, it, method)
            if edm < EDM_TOLERANCE:
                return FitResult(x, v, edm, it, method)
            step = np.zeros_like(x)
            step[active] = step_a
            alpha = 1.0
            while True:
                xn = np.clip(x - alpha * step, lo, hi)
                vn, gn = self.value_and_grad(xn)
                if np.isfinite(vn) and vn <= v + 1e-4 * alpha * min(-edm, 0.0) + 1e-12:
                    break
                alpha *= 0.5
                if alpha < 1e-6:
                    return FitResult(x, v, edm, it, method)
            x, v, g = xn, vn, gn
        return FitResult(x, v, edm, maxiter, method)

    def _lbfgsb(self, x0: np.ndarray, free: np.ndarray, maxiter: int) -> FitResult:
        """L-BFGS-B (scipy) on the free parameters: the last strategy of :meth:`fit`."""
        idx = np.flatnonzero(free)

        def fg(y: np.ndarray) -> tuple[float, np.ndarray]:
            x = x0.copy()
            x[idx] = y
            v, g = self.value_and_grad(x)
            return v, g[idx]

        res = scipy.optimize.minimize(
            fg,
            x0[idx],
            jac=True,
            method="L-BFGS-B",
            bounds=self.bounds[idx],
            options={"maxiter": 50 * maxiter, "ftol": 1e-15, "gtol": 1e-10},
        )
        x = x0.copy()
        x[idx] = res.x
        v, g = self.value_and_grad(x)
        edm = self._edm(g, self.hessian(x), free, x)
        return FitResult(x, v, edm, int(res.nit), "lbfgsb")

    def _start_points(
        self, start: np.ndarray, fixes: list[dict[int, float]]
    ) -> tuple[np.ndarray, np.ndarray, list[dict[int, float]]]:
        """Starting points (n, npars), free masks and fixes (pyhf's fixed ones added).

        Fixed parameters sit at their values; free ones are clipped into their bounds.
        """
        n = len(fixes)
        x = np.array(np.broadcast_to(start, (n, self.npars)), dtype=float)
        free = np.ones((n, self.npars), dtype=bool)
        for k, fix in enumerate(fixes):
            for i in self.suggested_fixed:
                fix.setdefault(i, float(self.init[i]))
            for i, value in fix.items():
                x[k, i] = value
                free[k, i] = False
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        return np.where(free, np.clip(x, lo, hi), x), free, fixes

    def fit_many(
        self,
        data: np.ndarray,
        init: np.ndarray | None = None,
        fixed: Mapping[int, float] | list[Mapping[int, float]] | None = None,
        *,
        maxiter: int = 200,
    ) -> ManyFits:
        """Fit many datasets (pseudo-experiments) at once; the same fits as :meth:`fit`.

        Fisher scoring with the projected backtracking line search of :meth:`fit`, run on
        chunks of :data:`BATCH` datasets through vmapped, compiled kernels (the dense model's
        Woodbury step), each dataset with its own convergence mask. A dataset that does not
        reach :data:`EDM_TOLERANCE` in the batch (or whose step is not a descent) is fitted
        again on its own with every strategy of :meth:`fit`; one that still fails is listed in
        ``failed`` (its row is NaN), never dropped silently. Without a dense model (a model
        pyhf's graph must evaluate) every dataset goes through :meth:`fit`.

        Args:
            data: Main + auxiliary data per dataset, shape (n, ndata).
            init: Starting point(s): (npars,) or (n, npars); default pyhf's suggested init.
            fixed: Parameters to hold (index -> value), for all datasets or one per dataset.
            maxiter: Batched iterations before the rest go one by one.
        """
        data = np.atleast_2d(np.asarray(data, dtype=float))
        n = len(data)
        fixes = (
            [dict(f) for f in fixed]
            if isinstance(fixed, list)
            else [dict(fixed or {}) for _ in range(n)]
        )
        if len(fixes) != n:
            raise ValueError(f"fit_many: {len(fixes)} fixed mappings for {n} datasets")
        start = self.init if init is None else np.asarray(init, dtype=float)
        x, free, fixes = self._start_points(start, fixes)
        nll = np.full(n, np.nan)
        edm = np.full(n, np.nan)
        done = np.zeros(n, dtype=bool)
        if self.dense is not None:
            done = self._batched_scoring(x, data, free, (nll, edm), maxiter)
        failed = []
        for k in np.flatnonzero(~done):
            try:
                res = self.with_data(data[k]).fit(fixes[k], x[k])
            except FitError as exc:
                log.debug("fit_many: dataset %d failed: %s", k, exc)
                failed.append(int(k))
                x[k], nll[k], edm[k] = np.nan, np.nan, np.nan
                continue
            x[k], nll[k], edm[k] = res.x, res.nll, res.edm
        return ManyFits(x, nll, edm, done, tuple(failed))

    def _batched_scoring(
        self,
        x: np.ndarray,
        data: np.ndarray,
        free: np.ndarray,
        out: tuple[np.ndarray, np.ndarray],
        maxiter: int,
    ) -> np.ndarray:
        """Fisher scoring of every dataset in batches; ``x`` and ``out`` (NLL, EDM) updated.

        Returns:
            Which datasets converged (the rest stopped: not a descent, or ``maxiter``).
        """
        nll, edm = out
        n = len(data)
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        done = np.zeros(n, dtype=bool)
        stuck = np.zeros(n, dtype=bool)
        kernels = self._batch_kernels()
        for _ in range(maxiter):
            todo = np.flatnonzero(~done & ~stuck)
            if not len(todo):
                break
            for rows in _chunks(todo):
                v, step, e = kernels["step"](x[rows], data[rows], free[rows])
                ok = np.isfinite(v) & np.isfinite(e) & (e >= 0)
                nll[rows], edm[rows] = v, e
                conv = ok & (e < EDM_TOLERANCE)
                done[rows[conv]] = True
                stuck[rows[~ok]] = True
                moving = ok & ~conv
                alpha = np.ones(len(rows))
                while moving.any():
                    trial = np.clip(x[rows] - alpha[:, None] * step, lo, hi)
                    vt = kernels["nll"](trial, data[rows])
                    accept = moving & np.isfinite(vt)
                    accept &= vt <= v + 1e-4 * alpha * np.minimum(-e, 0.0) + 1e-12
                    x[rows[accept]] = trial[accept]
                    nll[rows[accept]] = vt[accept]
                    moving &= ~accept
                    alpha[moving] *= 0.5
                    small = moving & (alpha < 1e-6)
                    stuck[rows[small]] = True
                    moving &= ~small
        return done

    def _batch_kernels(self) -> dict[str, Any]:
        """Compiled, vmapped kernels of the dense model (built once per model)."""
        if "batch_step" not in self._fn:
            dm, bounds = self.dense, jnp.asarray(self.bounds)
            step = jax.vmap(lambda x, d, f: dense.newton_step(dm, x, d, f, bounds))
            self._fn["batch_step"] = jax.jit(step)
            self._fn["batch_nll"] = jax.jit(jax.vmap(lambda x, d: -dense.logpdf(dm, x, d)))
        return {"step": _padded(self._fn["batch_step"]), "nll": _padded(self._fn["batch_nll"])}

    def fisher(self, x: np.ndarray) -> np.ndarray:
        """Expected Fisher information (plus constraint curvature) at ``x``."""
        return np.asarray(self._fn["fisher"](jnp.asarray(x), self.data))

    def uncertainties(self, result: FitResult) -> Uncertainties:
        """Hesse uncertainties: the inverse exact Hessian over the free parameters.

        A free parameter without any curvature (a POI at its bound with no events where its
        sample lives) has no Hesse error: it gets NaN, and the rest is inverted without it.
        """
        free = np.ones(self.npars, dtype=bool)
        free[list(result.fixed)] = False
        full = self.hessian(result.x)
        flat = free & (np.diag(full) <= 0)
        free &= ~flat
        try:
            cov_free = np.linalg.inv(full[np.ix_(free, free)])
        except np.linalg.LinAlgError as exc:
            raise FitError("Hessian is singular at the minimum") from exc
        cov = np.zeros((self.npars, self.npars))
        cov[np.ix_(free, free)] = cov_free
        cov[flat, flat] = np.nan
        return Uncertainties(np.sqrt(np.clip(np.diag(cov), 0.0, None)), cov)

    # ------------------------------------------------------------------ profile likelihood
    def profile(
        self,
        index: int,
        value: float,
        init: np.ndarray | None = None,
        curvature: np.ndarray | None = None,
    ) -> FitResult:
        """Fit with parameter ``index`` held at ``value`` (``curvature`` as in :meth:`fit`).

        A fit that does not converge from ``init`` is tried again from the model's suggested
        initial point: from a best fit far away (mu = 30 where the background template lacks
        22,000 events, the default run's measurement), the fit at mu = 0 ran into NaN regions
        and stopped at EDM 3e7, while it converges from the model's init.
        """
        try:
            return self.fit({index: value}, init, curvature=curvature)
        except FitError as exc:
            if init is None:
                raise
            log.debug(
                "profile at %s = %g from init failed (%s); from the model's init", index, value, exc
            )
            return self.fit({index: value})

    def minos(
        self, best: FitResult, index: int | None = None, sigma: float | None = None
    ) -> tuple[float, float]:
        """MINOS interval of one parameter: where the profiled NLL rises by 0.5.

        Returns:
            (lower, upper) offsets from the best-fit value (lower <= 0 <= upper); a side that
            reaches the parameter bound before the NLL rises by 0.5 returns the bound's offset.
        """
        index = self.poi if index is None else index
        center = float(best.x[index])
        if sigma is None:
            sigma = float(self.uncertainties(best).error[index])
        lo_b, hi_b = self.bounds[index]
        if not (np.isfinite(sigma) and sigma > 0):  # no curvature: step through the range
            sigma = 0.1 * float(hi_b - lo_b)
        target = best.nll + 0.5
        out = []
        for direction in (-1.0, 1.0):
            start = best.x
            bound = lo_b if direction < 0 else hi_b

            def rise(value: float, _start: list[np.ndarray] = [start]) -> float:  # noqa: B006
                res = self.profile(index, value, _start[0])
                _start[0] = res.x
                return res.nll - target

            edge = center
            step = sigma
            while True:
                trial = center + direction * step
                if (trial - bound) * direction >= 0:
                    trial = bound
                if rise(trial) > 0:
                    break
                if trial == bound:
                    edge = None
                    break
                edge, step = trial, 2 * step
            if edge is None:
                out.append(bound - center)
                continue
            a, b = sorted((edge, trial))
            root = scipy.optimize.brentq(rise, a, b, xtol=1e-5)
            out.append(root - center)
        return out[0], out[1]

    # ------------------------------------------------------------------ toys
    def sample(self, x: np.ndarray, n: int, seed: int) -> np.ndarray:
        """Pseudo-experiments from the model at ``x``, shape ``(n, ndata)``.

        Main data are Poisson; auxiliary data come from the constraint terms (Gaussian with the
        prior width around the parameter, Poisson for shapesys-type constraints).

        Raises:
            FitError: the model expects a negative or non-finite yield in a bin at ``x``.
        """
        rng = np.random.default_rng(seed)
        expected = np.asarray(self.expected_data(x), dtype=float)
        lam = expected[: self.nmain]
        bad = ~np.isfinite(lam) | (lam < -1e-9 * max(1.0, float(np.nanmax(np.abs(lam)))))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FitError(
                f"no pseudo-experiments from this point: the model expects {lam[i]:.3g} events "
                f"in bin {i} ({int(bad.sum())} bin(s) negative or not finite)"
            )
        main = rng.poisson(np.clip(lam, 0.0, None), size=(n, self.nmain)).astype(float)
        aux = np.empty((n, len(expected) - self.nmain))
        cfg = self.model.config
        col = 0
        for name in cfg.auxdata_order:
            pset = cfg.param_set(name)
            width = pset.n_parameters
            mean = expected[self.nmain + col : self.nmain + col + width]
            if pset.pdf_type == "poisson":
                aux[:, col : col + width] = rng.poisson(mean, size=(n, width))
            else:
                sigma = np.asarray(pset.width(), dtype=float)
                aux[:, col : col + width] = rng.normal(mean, sigma, size=(n, width))
            col += width
        return np.hstack([main, aux])


#: How knunu builds a workspace's model: each sample's expected yield per bin is clipped at
#: zero (with non-negative normfactors the same as ROOT's HistFactory, whose interpolated
#: templates, PiecewiseInterpolation, are positive definite). A template pushed below zero by a
#: shape variation (alpha beyond where a sparsely filled bin's template crosses zero) would
#: otherwise make a bin's expectation negative: no likelihood there, a wall that fits stalled
#: against (160 of 500 goodness-of-fit toys of a default run's workspace) or stopped on as if
#: converged. With the clip, such a sample adds nothing to that bin and the fit goes on.
MODEL_OPTIONS: dict[str, Any] = {"clip_sample_data": 0.0}


class _PyhfClipNotice(logging.Filter):
    """Drops pyhf's warning that a model clips its samples: knunu's models do by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Clipping expected data per-bin for each sample")


logging.getLogger("pyhf.pdf").addFilter(_PyhfClipNotice())


def build_model(workspace: pyhf.Workspace, **kwargs: Any) -> Any:
    """A workspace's ``pyhf.pdf.Model`` with :data:`MODEL_OPTIONS`; ``kwargs`` override them.

    pyhf clips a sample after its normfactors multiply it, so a normfactor allowed below zero
    (a signal strength that may subtract) would be clipped away: such a model is not clipped.
    """
    bounds = {
        p["name"]: p["bounds"][0]
        for p in workspace.get_measurement(kwargs.get("measurement_name"))["config"]["parameters"]
        if "bounds" in p
    }
    factors = {
        m["name"]
        for channel in workspace["channels"]
        for sample in channel["samples"]
        for m in sample["modifiers"]
        if m["type"] == "normfactor"
    }
    default = pyhf.modifiers.normfactor.required_parset([], None)["bounds"][0]
    subtracts = any(bounds.get(name, default)[0] < 0 for name in factors)
    return workspace.model(**{**({} if subtracts else MODEL_OPTIONS), **kwargs})


def _jax_backend(func: Any) -> Any:
    """Trace ``func`` under pyhf's jax backend, then restore the previous global backend.

    pyhf evaluates a model with whatever backend is global when it is called.
    """

    def traced(*args: Any) -> Any:
        tensorlib, optimizer = pyhf.get_backend()
        pyhf.set_backend("jax", optimizer)
        try:
            return func(*args)
        finally:
            pyhf.set_backend(tensorlib, optimizer)

    return traced


def _no_convergence(result: FitResult | None) -> FitError:
    """The error of a fit that no strategy brought to a minimum, saying where it stopped."""
    if result is not None and not np.isfinite(result.nll):
        return FitError(
            "fit did not converge (the NLL is not finite where every strategy stopped: "
            "a bin's expected yield is negative, or zero with events in it)"
        )
    edm = result.edm if result is not None else float("nan")
    if edm == math.inf:
        return FitError(
            "fit did not converge (the curvature is not positive definite where every "
            "strategy stopped: no minimum inside the bounds)"
        )
    return FitError(f"fit did not converge (EDM {edm:.3g} after every strategy)")


def _mixed_edm(
    chol: np.ndarray,
    g: np.ndarray,
    terms: np.ndarray,
    upper: np.ndarray,
    x: np.ndarray,
    bounds: np.ndarray,
) -> float:
    """0.5 |L^-1 (g + sum_k w_k t_k + bound multipliers)|^2, least over the weights.

    ``L`` (``chol``) is the metric's Cholesky factor; each term ``t_k`` (a row of ``terms``)
    is weighted in [0, ``upper_k``]; a parameter on its lower (upper) bound adds -e_i (+e_i)
    with a non-negative multiplier. The EDM of a minimum on kinks or edges (KKT).
    """
    eye = np.eye(len(x))
    pinned = [-eye[x <= bounds[:, 0]], eye[x >= bounds[:, 1]]]
    columns = np.vstack([terms, *pinned]).T
    upper = np.concatenate([upper, np.full(columns.shape[1] - len(terms), np.inf)])
    a = scipy.linalg.solve_triangular(chol, columns, lower=True)
    target = -scipy.linalg.solve_triangular(chol, g, lower=True)
    mix = scipy.optimize.lsq_linear(a, target, bounds=(0.0, upper))
    return 0.5 * float(np.sum((a @ mix.x - target) ** 2))


def _kkt_gradient(g: np.ndarray, x: np.ndarray, bounds: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Gradient on the free parameters, zeroed where a bound is active.

    A component is zeroed when the parameter sits on a bound and the gradient pushes it
    outward: the constrained minimum is there.
    """
    gf = np.where(free, g, 0.0)
    at_lo = (x <= bounds[:, 0]) & (gf > 0)
    at_hi = (x >= bounds[:, 1]) & (gf < 0)
    return np.where(at_lo | at_hi, 0.0, gf)


def _labels(cfg: Any) -> list[str]:
    out: list[str] = []
    for name in cfg.par_order:
        n = cfg.param_set(name).n_parameters
        out += [name] if n == 1 else [f"{name}[{i}]" for i in range(n)]
    return out


def _prior_widths(cfg: Any) -> np.ndarray:
    """Prior width of each parameter (nan for unconstrained ones)."""
    widths = np.full(cfg.npars, np.nan)
    for name in cfg.par_order:
        pset = cfg.param_set(name)
        if getattr(pset, "constrained", False):
            widths[cfg.par_slice(name)] = np.asarray(pset.width(), dtype=float)
    return widths


# ---------------------------------------------------------------------- test statistics
def q_mu(lh: Likelihood, mu: float, best: FitResult, init: np.ndarray | None = None) -> float:
    """Profile-likelihood ratio 2 (NLL(mu) - NLL(mu_hat)), clipped at 0."""
    cond = lh.profile(lh.poi, mu, best.x if init is None else init)
    return max(0.0, 2.0 * (cond.nll - best.nll))


def significance(lh: Likelihood, best: FitResult, mu0: float = 0.0) -> float:
    """Asymptotic significance of the best fit against ``mu = mu0``.

    Signed: negative if mu_hat < mu0. Against 0 this is sqrt(q0) (discovery); against 1 it is
    the tension with the SM.
    """
    q = q_mu(lh, mu0, best)
    sign = 1.0 if best.x[lh.poi] >= mu0 else -1.0
    return sign * math.sqrt(q)


def asimov_data(lh: Likelihood, mu: float) -> np.ndarray:
    """Asimov data at ``mu``: nuisances from the conditional fit to the observed data, as pyhf."""
    cond = lh.profile(lh.poi, mu)
    return lh.expected_data(cond.x)


def cls(lh: Likelihood, mu: float, best: FitResult, asimov: Likelihood, best_a: FitResult) -> float:
    """Asymptotic CLs of ``mu`` with the q~mu test statistic (POI bounded below by 0)."""
    qmu = 0.0 if best.x[lh.poi] > mu else q_mu(lh, mu, best)
    qmu_a = q_mu(asimov, mu, best_a)
    sq, sqa = math.sqrt(qmu), math.sqrt(max(qmu_a, 1e-12))
    teststat = sq - sqa if qmu <= qmu_a else (qmu - qmu_a) / (2.0 * sqa)
    clsb = norm.sf(teststat + sqa)
    clb = norm.sf(teststat)
    return float(clsb / clb)


def upper_limit(lh: Likelihood, best: FitResult, level: float = 0.9) -> float:
    """Observed asymptotic CLs upper limit on the POI at confidence ``level``.

    Raises:
        LimitAboveBoundError: the limit lies above the POI's upper bound.
    """
    asimov = lh.with_data(asimov_data(lh, 0.0))
    best_a = asimov.fit()
    alpha = 1.0 - level
    lo = max(float(best.x[lh.poi]), lh.bounds[lh.poi][0] + 1e-6)
    hi_bound = lh.bounds[lh.poi][1]

    def f(mu: float) -> float:
        return cls(lh, mu, best, asimov, best_a) - alpha

    hi = lo + 1.0
    while f(hi) > 0:
        if hi >= hi_bound:
            raise LimitAboveBoundError(f"CLs upper limit above the POI bound {hi_bound}")
        lo, hi = hi, min(hi + 2.0 * (hi - lo + 1.0), hi_bound)
    return float(scipy.optimize.brentq(f, lo, hi, xtol=1e-4))


# ---------------------------------------------------------------------- impacts
@dataclass(frozen=True)
class Impact:
    """Post-fit impact of one nuisance parameter on the POI.

    ``up``/``down`` are the POI shifts when the parameter is held at its best-fit value plus /
    minus its post-fit uncertainty and everything else is refitted.
    """

    name: str
    bestfit: float
    error: float
    up: float
    down: float

    @property
    def size(self) -> float:
        """The larger absolute shift."""
        return max(abs(self.up), abs(self.down))


class Ranking(NamedTuple):
    """The impacts of :func:`impacts`, largest first, and the parameters left out."""

    impacts: tuple[Impact, ...]
    failed: tuple[str, ...] = ()  # parameters whose refit no strategy could do


def impacts(lh: Likelihood, best: FitResult, unc: Uncertainties) -> Ranking:
    """Post-fit impacts of every free nuisance parameter, ranked by size (real refits).

    The 2 x (npars - 1) refits run as one batch (:meth:`Likelihood.fit_many`, Fisher scoring
    from the best fit); a refit the batch and the one-by-one strategies cannot do from the best
    fit starts again from the model's init (:meth:`Likelihood.profile`). A parameter whose
    refit still fails (up or down) is left out of the ranking and named in ``failed``.
    """
    mu_hat = float(best.x[lh.poi])
    todo = [i for i in range(lh.npars) if i != lh.poi and i not in best.fixed]
    fixes = [
        {i: float(np.clip(best.x[i] + sign * unc.error[i], *lh.bounds[i]))}
        for i in todo
        for sign in (1.0, -1.0)
    ]
    # start each refit at the linear response of the others to the held one: x + cov[:, i] /
    # cov[i, i] x shift, the conditional minimum to first order
    cov = unc.covariance
    starts = np.empty((len(fixes), lh.npars))
    for k, fix in enumerate(fixes):
        ((i, value),) = fix.items()
        slope = cov[:, i] / cov[i, i] if cov[i, i] > 0 else np.zeros(lh.npars)
        starts[k] = np.clip(best.x + np.nan_to_num(slope) * (value - best.x[i]), *lh.bounds.T)
    fits = lh.fit_many(np.tile(lh.data, (len(fixes), 1)), init=starts, fixed=fixes)
    poi = fits.x[:, lh.poi].copy()
    for k in fits.failed:
        ((i, value),) = fixes[k].items()
        try:
            poi[k] = lh.profile(i, value).x[lh.poi]
        except FitError as exc:  # one parameter's refit: said and left out, not the whole model
            log.warning("impact of %s held at %.4g left out: %s", lh.labels[i], value, exc)
            poi[k] = np.nan
    done = [np.isfinite(poi[2 * j]) and np.isfinite(poi[2 * j + 1]) for j in range(len(todo))]
    out = [
        Impact(lh.labels[i], float(best.x[i]), float(unc.error[i]),
               float(poi[2 * j]) - mu_hat, float(poi[2 * j + 1]) - mu_hat)
        for j, i in enumerate(todo)
        if done[j]
    ]  # fmt: skip
    return Ranking(
        tuple(sorted(out, key=lambda imp: imp.size, reverse=True)),
        tuple(lh.labels[i] for j, i in enumerate(todo) if not done[j]),
    )


# ---------------------------------------------------------------------- goodness of fit
@dataclass(frozen=True)
class GoodnessOfFit:
    """Saturated-model goodness of fit from pseudo-experiments.

    The test statistic is the Poisson deviance of the main data at the best fit,
    2 sum(lambda - n + n log(n / lambda)): twice the NLL difference to the saturated model.
    """

    deviance: float
    p_value: float
    n_toys: int
    toy_deviances: np.ndarray  # of the converged toys
    failed: tuple[int, ...] = ()  # toys whose fit did not converge (left out of p)


#: The largest fraction of goodness-of-fit toys allowed to fail before the test is an error.
MAX_FAILED_TOY_FRACTION = 0.05


def deviance(lh: Likelihood, x: np.ndarray, data: np.ndarray) -> float:
    """Poisson deviance of the main data at ``x`` (0 for a perfect description)."""
    lam = lh.expected_data(x)[: lh.nmain]
    n = np.asarray(data[: lh.nmain], dtype=float)
    seen = n > 0  # bins without events add no log term (their expectation may be 0)
    log_term = np.where(seen, n * np.log(np.where(seen, n, 1.0) / np.where(seen, lam, 1.0)), 0.0)
    return float(2.0 * np.sum(lam - n + log_term))


def goodness_of_fit(lh: Likelihood, best: FitResult, n_toys: int, seed: int) -> GoodnessOfFit:
    """p-value of the saturated-model test from ``n_toys`` pseudo-experiments.

    Toys are drawn from the best-fit model (main and auxiliary data) and each is refitted. A
    toy whose fit fails every strategy is left out of the p-value and listed in ``failed``
    (the report prints how many); more than :data:`MAX_FAILED_TOY_FRACTION` of them is an error.

    Raises:
        FitError: too many toy fits fail (nothing is dropped silently).
    """
    observed = deviance(lh, best.x, lh.data)
    toys = lh.sample(best.x, n_toys, seed)
    # Toys sit far from the observed minimum (every auxiliary datum moves): Fisher scoring
    # from the best fit, all toys at once (fit_many refits the few the batch leaves one by one)
    fits = lh.fit_many(toys, init=best.x)
    failed = fits.failed
    for k in failed:
        log.warning("goodness-of-fit toy %d (seed %d) left out: no fit strategy converged", k, seed)
    values = [deviance(lh, fits.x[k], toys[k]) for k in range(n_toys) if k not in failed]
    if n_toys and len(failed) > MAX_FAILED_TOY_FRACTION * n_toys:
        raise FitError(
            f"goodness of fit: {len(failed)} of {n_toys} toy fits failed (seed {seed}; "
            f"at most {MAX_FAILED_TOY_FRACTION:.0%} may)"
        )
    dev = np.asarray(values)
    p_value = float(np.mean(dev >= observed)) if len(dev) else float("nan")
    return GoodnessOfFit(observed, p_value, n_toys, dev, tuple(failed))
