"""Lower-precision passes: static and dynamic int8, weight-only int8/int4, fp16/bf16, and the
integer regions that keep int8 tensors integer between layers. Importing it registers them."""

from kiln.passes.quantization import half_precision, integer_regions, quantize  # noqa: F401
from kiln.passes.quantization.quantize import Quantize, quantization_passes

__all__ = ["Quantize", "quantization_passes"]
