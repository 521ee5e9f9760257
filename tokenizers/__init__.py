"""argen.tokenizers: images <-> codes.

The protocol every tokenizer follows (per kind: :mod:`argen.tokenizers.protocol`): ``kind``
('discrete', 'pixels', 'multiscale', 'continuous' or 'bits'), ``encode(images) -> codes``,
``decode(codes) -> images`` with images as float tensors in [-1, 1], NCHW, ``codebook_size``
(discrete kinds) and ``latent_grid(image_size) -> (h, w)``. Continuous tokenizers code images as
scaled latents (B, ``latent_channels``, h, w) and take ``encode(images, sample=False,
generator=None)`` to draw from their posterior; bit tokenizers (ELM's binary autoencoder) code them as
sub-token ids (B, h, w, token_each) and draw Bernoulli bits the same way.
"""
from argen.tokenizers.binary import BinaryAEConfig, BinaryAutoEncoder
from argen.tokenizers.diffusers_vae import DiffusersVAE
from argen.tokenizers.kl import KLVAE, KLConfig
from argen.tokenizers.loading import is_diffusers_vae_folder, load_tokenizer
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE
from argen.tokenizers.palette import PaletteConfig, PaletteTokenizer
from argen.tokenizers.vq import VQConfig, VQTokenizer

__all__ = ["BinaryAEConfig", "BinaryAutoEncoder", "DiffusersVAE", "KLConfig", "KLVAE", "MultiScaleVQConfig",
           "MultiScaleVQVAE", "PaletteConfig", "PaletteTokenizer", "VQConfig", "VQTokenizer", "is_diffusers_vae_folder",
           "load_tokenizer"]
