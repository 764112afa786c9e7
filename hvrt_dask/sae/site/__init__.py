"""Static feature browser of an extraction output (docs/site.md).

``build_site(features_zarr, out_dir)`` writes the site; ``serve(out_dir)`` serves it on
127.0.0.1; the CLI verb is ``hvrt-dask site FEATURES.zarr OUT_DIR [--serve]``.
"""

from hvrt_dask.sae.site.build import KIND, SiteResult, build_site
from hvrt_dask.sae.site.serve import serve, start_server

__all__ = ["KIND", "SiteResult", "build_site", "serve", "start_server"]
