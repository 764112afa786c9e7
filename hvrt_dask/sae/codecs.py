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


def output_codec():
    """LZ4 (Blosc) without the byte shuffle, for the extraction output's arrays.

    A written chunk of the output is mostly fill (empty ranks, bins, dead features): the
    shuffle pass costs ~3x the time of the whole write on such data while saving ~10 % of its
    (small) size (measured on a 68 MB mostly-NaN window chunk: 34 vs 10 ms, 3.4 vs 3.7 MB);
    Zarr's default zstd is slower still.
    """
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
