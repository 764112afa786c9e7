"""Exact SAE feature extraction: stream activation-store chunks through (GPU) workers.

Entry point: :func:`extract_features`. See ``docs/extraction.md`` for the input contract,
the output layout and the exactness guarantees.

Flow (:mod:`.api`)
------------------
1. **Plan**: validate everything (store, SAE, parameters, output path) before writing
   anything; the work is (sample chunk × feature block) (:mod:`.params`).
2. **First pass** (:mod:`.first_pass`): per chunk one read task, for ``topk`` SAEs a task
   computing every token's threshold over all feature blocks, then one task per feature
   block that encodes only its block's weights and checkpoints a partial (per-feature top-k
   + statistics of ``d_block`` features) to ``<out>/partials/`` (:mod:`.checkpoint`).
3. **Merge**: one fixed-shape tree reduction per feature block (:mod:`.tree`), nodes submitted
   as soon as their children exist (:mod:`.executor`).
4. **Windows** (:mod:`.windows`): per block, tasks re-encode only the samples holding top
   examples, and only their features, to gather context windows.
5. **Write** (:mod:`.finish`): per block a worker writes the block's region of the output
   (aligned to its Zarr chunks); the client writes the attributes and the completion marker
   last. The client never holds more than one block's examples.
"""

from hvrt_dask.sae.extract.api import PARAMETERS, ExtractionResult, check_parameters, extract_features
from hvrt_dask.sae.extract.first_pass import NonFiniteActivationError
from hvrt_dask.sae.output import NonFiniteStatisticError
from hvrt_dask.sae.store import ChunkReadError

__all__ = ["extract_features", "check_parameters", "PARAMETERS", "ExtractionResult", "NonFiniteActivationError", "NonFiniteStatisticError",
           "ChunkReadError"]
