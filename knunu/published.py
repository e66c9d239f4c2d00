"""The published Belle II numbers knunu compares with, in one place.

Belle II, "Evidence for B+ -> K+ nu nubar decays", Phys. Rev. D 109, 112006 (2024),
arXiv:2311.14647, with its likelihood (``knunu/data/belle2_knunu_2023_combined.json``, HEPData);
the numbers knunu uses are collected in ``../shared/notes/physics.md``. A leaf module:
it imports nothing of knunu, so every layer may read it.
"""

from __future__ import annotations

#: Fit results of the published likelihood (its README: pyhf + Minuit at default tolerance).
FIT = {
    "combined": {"mu": 4.61, "minos": (-1.34, 1.34), "z_bkg": 3.46, "z_sm": 2.72},
    "ita": {"mu": 5.42, "minos": (-1.47, 1.48), "z_bkg": 3.54, "z_sm": 2.93},
    "hta": {"mu": 2.18, "minos": (-1.97, 2.36), "z_bkg": 1.11, "z_sm": 0.58},
}

#: The paper's headline at 362 fb^-1, as the report quotes it.
HEADLINE = (
    "combined mu = 4.6 +- 1.0 (stat) +- 0.9 (syst), B = (2.3 +- 0.7) x 10^-5, 3.5 sigma, "
    "2.7 sigma above SM; ITA 5.4 +- 1.5, HTA 2.2 +- 2.1"
)

#: Expected sigma(mu) at mu = 4.6 and 362 fb^-1.
EXPECTED_SIGMA = {"combined": 1.34, "ita": 1.47, "hta": 2.1}

#: ITA signal efficiency in the signal region in bins of q2gen [GeV^2/c^4].
ITA_EFFICIENCY_Q2 = {
    (0.0, 2.0): 0.16,
    (4.0, 6.0): 0.13,
    (8.0, 10.0): 0.07,
    (12.0, 14.0): 0.026,
    (14.0, 16.0): 0.012,
}

#: ITA signal efficiency in the signal region (eta > 0.92).
ITA_SR_EFFICIENCY = 0.08
#: HTA signal efficiency in the signal region (eta(BDTh) > 0.4) and its purity there.
HTA_SR_EFFICIENCY = 0.004
HTA_SR_PURITY = 0.04
#: Share of the ITA signal-region events that the HTA also selects (removed from the ITA).
OVERLAP_FRACTION = 0.02
#: J/psi K+ embedding: data/MC of the signal-efficiency proxy, and its error.
EMBEDDING_RATIO = (1.00, 0.03)
#: B(B+ -> pi+ K0) measured with the ITA machinery (the pion-ID closure), and its error.
PI_K0_BF = (2.5e-5, 0.5e-5)
#: Goodness of fit of the published fits (saturated model, p-values).
GOF_P_VALUE = {"ita": 0.47, "hta": 0.61}

#: ITA signal region (eta > 0.92, on resonance), pre-fit: each background's share [L], the
#: signal at mu = 1 and the background in events at 362 fb^-1, S/B overall and for eta > 0.98.
ITA_SR_COMPOSITION = {
    "charged": 0.43,
    "mixed": 0.25,
    "ccbar": 0.175,
    "ssbar": 0.083,
    "uubar": 0.043,
    "ddbar": 0.013,
    "taupair": 0.009,
}
ITA_SR_SIGNAL = 160.0
ITA_SR_BACKGROUND = 16_700.0
ITA_SR_S_OVER_B = {"eta > 0.92": 0.0095, "eta > 0.98": 0.042}
#: The B Bbar of the ITA signal region by what it holds [P]: B -> D(*)(-> K X) l nu, B ->
#: D(*) K+, and "decays with K_L" (a narrower class than knunu's "a K_L in the event").
ITA_SR_BBBAR_CLASSES = {"D(*) l nu": 0.47, "D(*) K+": 0.38, "a K_L in the event": 0.17}
