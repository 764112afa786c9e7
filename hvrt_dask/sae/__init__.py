"""Exact SAE feature extraction on Dask (and the capture / training stages that feed it)."""
