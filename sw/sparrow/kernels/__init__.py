"""Kernel builders: Python functions that emit tiled, synchronised Sparrow programs."""
