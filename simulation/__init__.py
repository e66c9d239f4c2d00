"""Belle II-like simulation: Pythia 8 generation, detector response, basf2-style ntuples.

The ntuple layout it writes (the contract with the processors) is in DESIGN.md and ``ntuple``.
"""
