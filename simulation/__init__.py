"""Belle II-like simulation: Pythia 8 generation, detector response, basf2-style ntuples.

Not built yet (issue 3). The ntuple contract it must honour is in DESIGN.md.
"""
