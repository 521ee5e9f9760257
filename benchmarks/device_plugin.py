"""pytest plugin (``-p device_plugin`` with benchmarks/ on the path): runs the CPU fixture tests on
another device. scripts/gpu_check.sh loads it; the normal test run never does.

``ARGEN_TEST_DEVICE`` (e.g. ``cuda``) moves the session fixtures of tests/conftest.py -- the official
tiny LlamaGen and VQ models and their recorded inputs/outputs -- onto that device as they are made
(in place, so every test and every later fixture built from them sees the moved ones). TF32 is off:
float32 on CUDA is checked with the CPU tolerances.
"""
from __future__ import annotations

import os

import pytest
import torch

MOVED = ("gpt_tiny", "vq_tiny", "gpt_io", "vq_io")


def _device() -> torch.device:
    return torch.device(os.environ.get("ARGEN_TEST_DEVICE", "cpu"))


def pytest_configure(config: pytest.Config) -> None:
    dev = _device()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"ARGEN_TEST_DEVICE={dev} but torch {torch.__version__} sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def pytest_report_header(config: pytest.Config) -> str:
    dev = _device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return f"argen fixtures on {dev} ({name}), TF32 off"


def _move(value, dev: torch.device) -> None:
    if isinstance(value, torch.nn.Module):
        value.to(dev)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, torch.Tensor):
                value[k] = v.to(dev)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    value = yield
    if fixturedef.argname in MOVED:
        _move(value, _device())
    return value
