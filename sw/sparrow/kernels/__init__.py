"""Kernel builders: Python functions that emit tiled, synchronised Sparrow programs.

Typical use::

    from sparrow.kernels import ProgramBuilder, Requant, gemm
    b = ProgramBuilder(cfg)
    a = b.tensor((M, K), name="a")                  # input the host writes
    y = gemm(b, a, w_int8, requant=Requant.from_scale(scale, bias=bias, relu=True))
    program = b.finish()                            # semaphores inserted, HALT appended
    b.write_segments(machine); a.write(machine, A); machine.run(program); y.read(machine)

Kernels emit plain instructions; :class:`ProgramBuilder` derives every semaphore wait/signal
from the instructions' scratchpad/DRAM footprints (see :mod:`.builder`).
"""

from .builder import ProgramBuilder, Ring, Tensor, footprint
from .conv import conv2d
from .gemm import gemm, pack_requant_params
from .layout import from_lines, lines_per_pixel, pad_channels, to_lines
from .quant import Requant, add_multipliers, avgpool_multiplier, quantize_multiplier
from .vector import add, avgpool, mask, maxpool, pack_mask_bits, requant_relu

__all__ = ["ProgramBuilder", "Ring", "Tensor", "footprint", "gemm", "pack_requant_params", "conv2d",
           "requant_relu", "maxpool", "avgpool", "add", "mask", "pack_mask_bits", "Requant",
           "quantize_multiplier", "add_multipliers", "avgpool_multiplier", "lines_per_pixel",
           "pad_channels", "to_lines", "from_lines"]
