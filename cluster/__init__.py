"""Dask clients for knunu: local (LocalCluster), SLURM and HTCondor (dask-jobqueue).

Backends are a registry (:data:`BACKENDS`); settings come from dask config under
``knunu.cluster.<backend>`` (packaged defaults, user YAML, environment) and keyword overrides.
"""

from knunu.cluster.backends import BACKENDS, Backend, cluster_check, cluster_settings, get_client

__all__ = ["BACKENDS", "Backend", "cluster_check", "cluster_settings", "get_client"]
