"""Coffea processors (ITA, HTA, BDTc training tables, control samples) and the ntuple schema.

Not built yet (issues 4 and 5).
"""
