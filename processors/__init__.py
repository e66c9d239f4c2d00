"""Coffea processors (ITA, HTA, BDTc training tables, control samples) and the ntuple schema.

``run`` runs any of them over a dataset catalogue on a Dask cluster; ``stage`` wires them into
the pipeline's train and process stages.
"""
