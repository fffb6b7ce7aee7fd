"""Model quantizers (DiffQ, uniform QAT, LSQ), their stored form and size accounting.

>>> import torch
>>> import optiquant.quant as oq
>>> model = torch.nn.Linear(128, 128)
>>> quantizer = oq.DiffQuantizer(model, group_size=8, min_size=0)
>>> quantizer.true_model_size() < 128 * 128 * 4 / 2**20
True
"""

from optiquant.quant import codecs as codecs  # registers the built-in codecs
from optiquant.quant import ptq as ptq  # registers the distributional codec
from optiquant.quant.base import BaseQuantizer, attached_quantizer
from optiquant.quant.config import (
    DiffQConfig,
    LSQConfig,
    QuantizerConfig,
    UniformConfig,
    config_from_dict,
    register_config,
)
from optiquant.quant.diffq import DiffQuantizer, pseudo_quantization_noise
from optiquant.quant.distributional import DISTS, METHODS, dequantize, quantize
from optiquant.quant.encoded import (
    Codec,
    EncodedTensor,
    get_codec,
    register_codec,
    registered_schemes,
)
from optiquant.quant.export import export
from optiquant.quant.lsq import LSQ, lsq_fake_quantize
from optiquant.quant.packed import is_packed, pack_model, packed_nbytes_in_memory
from optiquant.quant.ptq import (
    DistConfig,
    DistributionalQuantizer,
    allocate_bits,
    compress_state_dict,
    encode_distributional,
)
from optiquant.quant.state import float_state, restore_quantized_state
from optiquant.quant.uniform import UniformQuantizer, fake_quantize_uniform

__all__ = [
    "DISTS",
    "LSQ",
    "METHODS",
    "BaseQuantizer",
    "Codec",
    "DiffQConfig",
    "DiffQuantizer",
    "DistConfig",
    "DistributionalQuantizer",
    "EncodedTensor",
    "LSQConfig",
    "QuantizerConfig",
    "UniformConfig",
    "UniformQuantizer",
    "allocate_bits",
    "attached_quantizer",
    "compress_state_dict",
    "config_from_dict",
    "dequantize",
    "encode_distributional",
    "export",
    "fake_quantize_uniform",
    "float_state",
    "get_codec",
    "is_packed",
    "lsq_fake_quantize",
    "pack_model",
    "packed_nbytes_in_memory",
    "pseudo_quantization_noise",
    "quantize",
    "register_codec",
    "register_config",
    "registered_schemes",
    "restore_quantized_state",
]
