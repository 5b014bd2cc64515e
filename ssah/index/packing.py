"""Packing binary codes into bytes: bit j of a code is bit (7 - j % 8) of byte j // 8."""
from __future__ import annotations

import numpy as np

from ..errors import SSAHError


def to_bits(codes) -> np.ndarray:
    """{-1, +1}, {0, 1} or bool codes (n, bits) -> uint8 0/1 array; anything else is an error."""
    a = np.asarray(codes)
    if a.ndim != 2:
        raise SSAHError(f"codes must be a 2-D (n, bits) array, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise SSAHError("codes contain NaN or infinite values")
    if a.size and a.min() < 0:
        if not np.isin(a, (-1, 1)).all():
            raise SSAHError("codes with negative values must be in {-1, +1}")
        return (a > 0).astype(np.uint8)
    if not np.isin(a, (0, 1)).all():
        raise SSAHError("codes must be in {-1, +1}, {0, 1} or bool")
    return a.astype(np.uint8)


def pack_codes(codes) -> np.ndarray:
    """Bit array (n, bits) -> uint8 bytes (n, ceil(bits / 8)), zero-padded."""
    return np.packbits(to_bits(codes), axis=1)


def unpack_codes(packed, bits: int) -> np.ndarray:
    """uint8 bytes (n, ceil(bits / 8)) -> 0/1 uint8 array (n, bits)."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != (bits + 7) // 8:
        raise SSAHError(f"packed codes of shape {packed.shape} do not hold {bits} bits "
                        f"(expected (n, {(bits + 7) // 8}))")
    return np.unpackbits(packed, axis=1, count=bits)
