"""Generators: token-wise (LlamaGen), scale-wise (VAR, FlowAR) and continuous-token (MAR)."""
from argen.generators.flowar import FlowAR, FlowARConfig
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.generators.mar import MAR, MARConfig
from argen.generators.var import VAR, VARConfig

__all__ = ["FlowAR", "FlowARConfig", "LlamaGen", "LlamaGenConfig", "MAR", "MARConfig", "VAR", "VARConfig"]
