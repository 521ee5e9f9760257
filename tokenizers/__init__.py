"""argen.tokenizers: images <-> codes.

The protocol every tokenizer follows: ``kind`` ('discrete', 'multiscale', 'continuous', 'bits',
'pixels'), ``encode(images) -> codes``, ``decode(codes) -> images`` with images as float tensors in
[-1, 1], NCHW, ``codebook_size`` (discrete kinds) and ``latent_grid(image_size) -> (h, w)``.
"""
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE
from argen.tokenizers.vq import VQConfig, VQTokenizer

__all__ = ["MultiScaleVQConfig", "MultiScaleVQVAE", "VQConfig", "VQTokenizer"]
