"""Generators: token-wise (LlamaGen), later scale-wise (VAR, FlowAR) and continuous (MAR)."""
from argen.generators.llamagen import LlamaGen, LlamaGenConfig

__all__ = ["LlamaGen", "LlamaGenConfig"]
