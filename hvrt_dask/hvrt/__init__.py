"""HVRT on Dask: partition tree, partition-aligned chunks, expand() and reduce()."""
