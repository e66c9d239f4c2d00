"""Fits: HistFactory workspaces, the ITA+HTA combination, and fast, robust inference.

``knunu.fits.workspace`` loads and validates pyhf workspaces and selects the ITA, HTA or
combined model; ``knunu.fits.infer`` is the compiled (jax) likelihood and the inference on it;
``knunu.fits.report`` runs the standard set of results and writes JSON and Markdown.
"""
