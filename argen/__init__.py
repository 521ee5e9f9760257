"""argen: autoregressive image generation -- one API over LlamaGen, VAR, MAR, FlowAR and friends.

    import argen
    pipe = argen.load("llamagen-gpt-b")
    images = pipe.generate(classes=[207, 360], seed=0)
"""
from argen.errors import ArgenError, CheckpointError, ConfigError, DownloadError, UnknownModelError  # noqa: E402
from argen.pipeline import ARPipeline  # noqa: E402
from argen.version import __version__  # noqa: E402
from argen.zoo import list_models, load  # noqa: E402

__all__ = [
    "ARPipeline",
    "ArgenError",
    "CheckpointError",
    "ConfigError",
    "DownloadError",
    "UnknownModelError",
    "list_models",
    "load",
    "__version__",
]
