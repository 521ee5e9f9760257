"""Generators: pixel-wise (image-GPT), token-wise (LlamaGen, ELM), scale-wise (VAR, FlowAR), continuous-token
(MAR) and distilled students (LlamaGen-DD, VAR-DD)."""
from argen.generators.dd_llamagen import DDLlamaGen, DDLlamaGenConfig
from argen.generators.dd_var import DDVAR, DDVARConfig
from argen.generators.elm import ELM, ELMConfig
from argen.generators.elm_mlm import ElmMLM, ElmMLMConfig
from argen.generators.flowar import FlowAR, FlowARConfig
from argen.generators.igpt import ImageGPT, ImageGPTConfig
from argen.generators.llamagen import LlamaGen, LlamaGenConfig
from argen.generators.mar import MAR, MARConfig
from argen.generators.var import VAR, VARConfig

__all__ = ["DDLlamaGen", "DDLlamaGenConfig", "DDVAR", "DDVARConfig", "ELM", "ELMConfig", "ElmMLM", "ElmMLMConfig",
           "FlowAR", "FlowARConfig", "ImageGPT", "ImageGPTConfig", "LlamaGen", "LlamaGenConfig", "MAR", "MARConfig",
           "VAR", "VARConfig"]
