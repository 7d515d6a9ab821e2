"""Parallelism: logical axis names (and, later, meshes and rules)."""

from mfjax.parallel import axes

__all__ = ["axes"]
