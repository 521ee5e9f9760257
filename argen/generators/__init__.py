"""Generators: token-wise (LlamaGen), scale-wise (VAR; later FlowAR) and, later, continuous (MAR)."""
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.generators.var import VAR, VARConfig

__all__ = ["LlamaGen", "LlamaGenConfig", "VAR", "VARConfig"]
