"""Training with accelerate: ``train_tokenizer`` (VQ) and ``train_generator`` (LlamaGen-style)."""
from argen.train.generator import train_generator
from argen.train.loop import TrainSettings
from argen.train.tokenizer import train_tokenizer

__all__ = ["TrainSettings", "train_generator", "train_tokenizer"]
