"""The golden model: bit-exact NumPy execution of Sparrow programs (the specification).

``Machine(cfg)`` holds the device state; ``Machine.run(program, mode=...)`` returns a
:class:`RunResult`. Arithmetic is in :mod:`sparrow.golden.numerics`, the cycle model in
:mod:`sparrow.golden.perf`, the concurrent (queues/semaphores) model and race checker in
:mod:`sparrow.golden.concurrent`.
"""

from .machine import Machine, RaceError, RunResult

__all__ = ["Machine", "RunResult", "RaceError"]
