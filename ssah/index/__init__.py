"""Hamming-space search over binary codes: ``HammingIndex`` with pluggable engines.

Example::

    from ssah.index import HammingIndex
    index = HammingIndex(64, engine="mih")
    index.add(codes, metadata={"label": labels})        # (n, 64) codes in {-1, +1}
    distances, ids = index.search(queries, k=10)       # sorted by (distance, id)
    index.save("idx/")
    index = HammingIndex.load("idx/")

Engines: ``flat`` (FAISS exhaustive, default), ``ivf`` (FAISS inverted lists, approximate),
``mih`` (exact multi-index hashing over distinct codes), ``milvus`` (pymilvus; needs
``pip install ssah[milvus]``).
"""
from .hamming import ENGINES, HammingIndex, engine_class, register_engine
from .packing import pack_codes, to_bits, unpack_codes

__all__ = ["HammingIndex", "ENGINES", "engine_class", "register_engine", "pack_codes",
           "unpack_codes", "to_bits"]
