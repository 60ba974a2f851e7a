"""Sparrow: a sparsity-aware int8 neural-network accelerator and its software stack."""

__version__ = "0.1.0"
