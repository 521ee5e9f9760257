"""Generators: token-wise (LlamaGen), scale-wise (VAR; later FlowAR) and continuous-token (MAR)."""
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.generators.mar import MAR, MARConfig
from argen.generators.var import VAR, VARConfig

__all__ = ["LlamaGen", "LlamaGenConfig", "MAR", "MARConfig", "VAR", "VARConfig"]
