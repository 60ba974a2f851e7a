"""Sparrow: a sparsity-aware int8 neural-network accelerator and its software stack."""

__version__ = "0.1.0"


def compile(model, calibration=None, preset="default", **kwargs):  # noqa: A001
    """Compile an ONNX model (see :func:`sparrow.compiler.compile`); imported lazily."""
    from .compiler import compile as _compile
    return _compile(model, calibration=calibration, preset=preset, **kwargs)
