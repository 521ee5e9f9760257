"""argen: autoregressive image generation -- one API over LlamaGen, VAR, MAR, FlowAR and friends."""
__version__ = "0.1.0"
