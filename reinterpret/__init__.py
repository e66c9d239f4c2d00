"""Reinterpretation: new-physics signal models in the published likelihood and in the run's own.

``knunu.reinterpret.maps`` holds the joint number densities (signal yield by fit bin and
generated q2); ``spectra`` the signal models' q2 spectra; ``model`` writes an alternative
signal into a workspace as plain HistFactory samples; ``scan`` fits, profiles and limits.
"""
