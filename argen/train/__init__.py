"""Training with accelerate: ``train_tokenizer`` (VQ, multi-scale VQ-VAE, KL VAE) and ``train_generator``
(every family with a training recipe in its record: LlamaGen, VAR, MAR, FlowAR), ``train_dd`` (a distilled
decoding student of a LlamaGen or VAR teacher)."""
from argen.train.dd import student_from_teacher, train_dd
from argen.train.generator import train_generator
from argen.train.loop import TrainSettings
from argen.train.tokenizer import train_tokenizer

__all__ = ["TrainSettings", "student_from_teacher", "train_dd", "train_generator", "train_tokenizer"]
