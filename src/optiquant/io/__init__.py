"""Bit packing and the quantized file format."""

from optiquant.io.bitpack import (
    MAX_BITS,
    bits_needed,
    grouped_nbytes,
    pack_bits,
    pack_groups,
    packed_nbytes,
    unpack_bits,
    unpack_groups,
)
from optiquant.io.errors import FormatError, ModelMismatchError
from optiquant.io.format import (
    load_quantized,
    read_quantized,
    save_quantized,
    state_from_bytes,
    state_to_bytes,
)

__all__ = [
    "MAX_BITS",
    "FormatError",
    "ModelMismatchError",
    "bits_needed",
    "grouped_nbytes",
    "load_quantized",
    "pack_bits",
    "pack_groups",
    "packed_nbytes",
    "read_quantized",
    "save_quantized",
    "state_from_bytes",
    "state_to_bytes",
    "unpack_bits",
    "unpack_groups",
]
