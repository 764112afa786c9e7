"""The Zarr codec for the large float/int arrays of the SAE engine (activations, windows)."""

from __future__ import annotations


def fast_codec():
    """Byte-shuffled LZ4 (Blosc).

    Activations are near-incompressible floats: Zarr's default zstd saves ~7 % on them but
    decodes at ~300 MB/s, so reading the store, not the encoder, becomes the cost. Shuffled
    LZ4 keeps about the same ratio and decodes ~2.6x faster (figures in
    ``benchmarks/results/extract.md``); on the extraction output's window arrays it writes
    ~2.5x faster than zstd at the same size.
    """
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
