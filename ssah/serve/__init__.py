"""The image search service: ``create_app`` (FastAPI) and ``ssah serve`` (uvicorn).

Imported lazily: ``import ssah.serve`` does not import FastAPI; ``create_app`` does.
"""
from __future__ import annotations

__all__ = ["create_app", "Limits"]


def __getattr__(name):
    if name in __all__:
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'ssah.serve' has no attribute {name!r}")
