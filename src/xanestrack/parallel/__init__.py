"""Scale-out: operando series of scans on Dask (see :mod:`.series`)."""
