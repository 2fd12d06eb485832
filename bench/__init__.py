"""Benchmarks and the real input they, the tests and the demo share.

``bench.layers`` builds deterministic layer tarballs, and near-duplicate versions of them,
from real file trees on this machine, so that chunking, deduplication and compression are
measured on the content a layer cache actually sees rather than on random bytes.
"""
