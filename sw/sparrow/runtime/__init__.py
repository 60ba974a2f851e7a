"""Runtime/driver: one Device API over the golden model and the simulated RTL.

See :mod:`sparrow.runtime.device` for the API and the backends' semantics.
"""

from .device import BACKENDS, Device, RunInfo

__all__ = ["Device", "RunInfo", "BACKENDS"]
