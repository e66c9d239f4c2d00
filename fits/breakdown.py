"""What an expected sigma(mu) is made of: its Hesse error with each group of parameters fixed.

The expected information of a likelihood at a point (:meth:`Likelihood.fisher`; at an Asimov
point it is the Hessian of the NLL) is inverted over the free parameters, once with all of
them, once with each group's parameters held fixed, once with every nuisance parameter fixed
(the statistical error, curvature in mu alone). A group's share is
``sqrt(sigma^2 - sigma_fixed^2)``: the part of sigma(mu) that goes away when the group is
known exactly. Shares of correlated groups do not add in quadrature to the total; each is
what knowing that group alone would buy.

The groups are a table (:data:`GROUPS`): a parameter belongs to the first group whose
pattern it matches, the rest to ``other``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

import numpy as np

from knunu.errors import FitError

log = logging.getLogger(__name__)

#: (group, pattern searched in the parameter's label), first match wins. MC statistics of the
#: continuum (ITA quark pairs and tau pairs, the HTA's uds and ccbar) apart from the rest.
GROUPS: tuple[tuple[str, str], ...] = (
    (
        "MC statistics, continuum",
        r"^staterror_.*_(uubar|ddbar|ssbar|ccbar|taupair|uds)\["
        r"|mcstat_.*_(uubar|ddbar|ssbar|ccbar|taupair)_\d+$",
    ),
    ("MC statistics, B Bbar and signal", r"^staterror_|mcstat_"),
    ("factorised template shapes", r"factorisation"),
    ("background normalisations", r"mu_bkg_|norm_|offres_norm|n_bb|luminosity"),
    ("B and D decays, signal form factors", r"corr_|k_ks_kl_pwave"),
    ("continuum reweighting", r"continuum_reweighting|continuum_classifier"),
    (
        "detector and reconstruction",
        r"kaon_id|tracking|photon_energy|hadronic_energy|kl_efficiency|extra_energy"
        r"|signal_efficiency",
    ),
)
OTHER = "other"


class Share(NamedTuple):
    """One group's part of sigma(mu)."""

    group: str
    parameters: int  # free parameters in the group
    sigma_fixed: float  # sigma(mu) with the group's parameters fixed
    share: float  # sqrt(sigma^2 - sigma_fixed^2)


class Breakdown(NamedTuple):
    """sigma(mu) at a point, its statistical part and each group's share (largest first)."""

    sigma: float
    stat: float  # every nuisance parameter fixed
    shares: tuple[Share, ...]


def group_of(label: str) -> str:
    """The group of a parameter label.

    >>> group_of("staterror_ita_off_sr_ssbar[6]"), group_of("staterror_hta_sr_bbbar[0]")
    ('MC statistics, continuum', 'MC statistics, B Bbar and signal')
    >>> group_of("ita_mu_bkg_ccbar"), group_of("corr_br_c1"), group_of("something_new")
    ('background normalisations', 'B and D decays, signal form factors', 'other')
    """
    for group, pattern in GROUPS:
        if re.search(pattern, label):
            return group
    return OTHER


def breakdown(lh: Any, x: np.ndarray, fixed: tuple[int, ...] = ()) -> Breakdown:
    """sigma(mu) of ``lh`` at ``x`` and each group's share of it.

    Args:
        lh: A :class:`~knunu.fits.infer.Likelihood` (its data set: Asimov data for an expected
            breakdown).
        x: The point, e.g. the best fit to those data.
        fixed: Parameters held fixed besides the model's own fixed ones.

    Raises:
        FitError: mu is fixed or without curvature, or the information matrix is singular
            over the free parameters.
    """
    info = np.asarray(lh.fisher(np.asarray(x, dtype=float)))
    free = np.ones(lh.npars, dtype=bool)
    free[list(lh.suggested_fixed) + list(fixed)] = False
    free &= np.diag(info) > 0  # no curvature: nothing to learn about, nothing to fix
    poi = lh.poi
    if not free[poi]:
        raise FitError("breakdown: mu is fixed or has no curvature at this point")
    groups = np.array([group_of(label) for label in lh.labels])

    def sigma(mask: np.ndarray) -> float:
        keep = np.flatnonzero(mask)
        try:
            cov = np.linalg.inv(info[np.ix_(keep, keep)])
        except np.linalg.LinAlgError as exc:
            raise FitError("breakdown: the information matrix is singular") from exc
        k = int(np.searchsorted(keep, poi))
        return float(np.sqrt(cov[k, k]))

    total = sigma(free)
    only_poi = np.zeros(lh.npars, dtype=bool)
    only_poi[poi] = True
    shares = []
    for group in [g for g, _ in GROUPS] + [OTHER]:
        members = free & (groups == group)
        members[poi] = False
        if not members.any():
            continue
        fixed_sigma = sigma(free & ~members)
        share = float(np.sqrt(max(total**2 - fixed_sigma**2, 0.0)))
        shares.append(Share(group, int(members.sum()), fixed_sigma, share))
    shares.sort(key=lambda s: -s.share)
    return Breakdown(total, sigma(only_poi), tuple(shares))
