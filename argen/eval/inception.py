"""The FID Inception-v3 (TF "2015-12-05" graph) as the ADM evaluator uses it, from torch-fidelity.

torch-fidelity's ``FeatureExtractorInceptionV3`` carries the TF1 bilinear resize to 299 and the
TF-compatible blocks; argen adds the sFID features (ADM's ``mixed_6/conv``: the output of
``Mixed_6d.branch1x1``, 192 x 17 x 17, of which ADM keeps the first 7 channels in NHWC order), weight
resolution that never downloads behind the user's back, and a record of what was used.

    net = load_inception()                       # path -> $ARGEN_INCEPTION_WEIGHTS -> cache -> download
    out = net(images)                            # uint8 (B, H, W, 3)
    out["pool_3"], out["logits"], out["mixed_6"]  # (B, 2048), (B, 1008), (B, 192, 17, 17)
"""
from __future__ import annotations

import hashlib
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from argen.errors import CheckpointError, ConfigError, DownloadError

WEIGHTS_NAME = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
ENV_WEIGHTS = "ARGEN_INCEPTION_WEIGHTS"
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]: 17 * 17 * 7 = 2023 features
RESIZE = "TF1 bilinear to 299x299, align_corners=False (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x)"


def cached_weights_path() -> Path:
    """Where torch-fidelity itself caches the file (the torch.hub checkpoints folder), so one copy serves both."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """An explicit choice wins; otherwise downloads are on unless ``HF_HUB_OFFLINE=1`` (as for checkpoints)."""
    return allow_download if allow_download is not None else os.environ.get("HF_HUB_OFFLINE") != "1"


def _how_to_provide() -> str:
    return (f"download {URL_INCEPTION_V3} elsewhere and put it at {cached_weights_path()}, or pass its path "
            f"(inception_weights=PATH; CLI: --inception-weights PATH) or set ${ENV_WEIGHTS}")


def resolve_weights(weights: str | os.PathLike | None = None, *, allow_download: bool | None = None) -> Path:
    """The weights file: ``weights``, else $ARGEN_INCEPTION_WEIGHTS, else the cache, else downloaded
    into the cache when allowed; otherwise a DownloadError that says where to put the file."""
    for path, origin in ((weights, "the given path"), (os.environ.get(ENV_WEIGHTS), f"${ENV_WEIGHTS}")):
        if path:
            if not Path(path).is_file():
                raise DownloadError(f"Inception weights file {path} (from {origin}) does not exist; "
                                    f"{_how_to_provide()}")
            return Path(path)
    cache = cached_weights_path()
    if cache.is_file():
        return cache
    if not downloads_allowed(allow_download):
        raise DownloadError(f"the FID Inception weights ({WEIGHTS_NAME}) are not cached and downloads are off; "
                            f"{_how_to_provide()}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".part")
    try:
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(partial), progress=True)
    except Exception as exc:  # offline, proxy, moved file
        reason = f"{type(exc).__name__}: {exc}"
        raise DownloadError(f"cannot download {URL_INCEPTION_V3} ({reason}); {_how_to_provide()}") from None
    partial.rename(cache)
    return cache


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from .safetensors or a torch file, never unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read Inception weights {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of the FID Inception")
    return state


class _Network(FeatureExtractorInceptionV3):
    """torch-fidelity's network built with a ``None`` state (its constructor always loads one, with
    ``weights_only=False``): argen reads the weights itself and loads them afterwards."""

    def load_state_dict(self, state_dict, *args, **kwargs):
        if state_dict is None:  # the constructor's load: keep the random initialisation
            return None
        return super().load_state_dict(state_dict, *args, **kwargs)


def _build_network(state: dict[str, torch.Tensor] | None) -> _Network:
    empty = io.BytesIO()
    torch.save(None, empty)
    empty.seek(0)
    net = _Network("argen-inception-v3", ["2048", "logits_unbiased"], feature_extractor_weights_path=empty)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"the weights do not fit the FID Inception-v3: {str(exc).splitlines()[0]}") from None
    return net.eval()


@contextmanager
def _no_tf32(device: torch.device) -> Iterator[None]:
    """Full float32 convolutions and matmuls on CUDA during feature extraction (TF32 moves FID)."""
    if device.type != "cuda":
        yield
        return
    knobs = [(torch.backends.cuda.matmul, "fp32_precision", "ieee"),
             (torch.backends.cudnn.conv, "fp32_precision", "ieee")]
    if not hasattr(torch.backends.cudnn.conv, "fp32_precision"):  # torch < 2.9
        knobs = [(torch.backends.cuda.matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)]
    saved = [getattr(obj, name) for obj, name, _ in knobs]
    try:
        for obj, name, value in knobs:
            setattr(obj, name, value)
        yield
    finally:
        for (obj, name, _), value in zip(knobs, saved):
            setattr(obj, name, value)


def spatial_features(mixed_6: torch.Tensor) -> torch.Tensor:
    """(B, 192, 17, 17) -> (B, 2023): channels last, the first 7 kept, flattened, as ADM's
    ``mixed_6/conv:0[..., :7]`` on its NHWC tensor (taking channels first gives sFID ~300)."""
    return mixed_6.permute(0, 2, 3, 1)[..., :SPATIAL_CHANNELS].reshape(mixed_6.shape[0], -1)


class InceptionExtractor:
    """pool_3, the 1008 IS logits and the mixed_6 spatial map of uint8 images, in one forward pass."""

    def __init__(self, net: FeatureExtractorInceptionV3, *, weights: str, weights_sha256: str,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.weights, self.weights_sha256 = weights, weights_sha256
        self._mixed_6: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_mixed_6)

    def _keep_mixed_6(self, module, inputs, output) -> None:
        self._mixed_6 = output

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3) of any size -> float32 ``pool_3`` (B, 2048), ``logits`` (B, 1008,
        ADM's softmax input: no bias) and ``mixed_6`` (B, 192, 17, 17), on the CPU."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ConfigError(f"the Inception takes uint8 images (B, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).to(self.device)
        with _no_tf32(self.device):
            pool, logits = self.net(x)
        mixed_6, self._mixed_6 = self._mixed_6, None
        return {"pool_3": pool.float().cpu(), "logits": logits.float().cpu(), "mixed_6": mixed_6.float().cpu()}

    def protocol(self) -> dict:
        import torch_fidelity

        return {
            "network": f"Inception-v3 TF 2015-12-05 via torch-fidelity {torch_fidelity.__version__} "
                       "FeatureExtractorInceptionV3",
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "resize": RESIZE,
            "features": {"fid": "pool_3 (2048)", "is": "softmax(pool_3 @ W), W 2048x1008 without bias",
                         "sfid": "Mixed_6d.branch1x1 (ADM mixed_6/conv) 17x17, first 7 channels NHWC (2023)"},
            "dtype": "float32, TF32 off",
            "device": str(self.device),
        }


def load_inception(weights: str | os.PathLike | None = None, *, allow_download: bool | None = None,
                   device: torch.device | str = "cpu") -> InceptionExtractor:
    """The extractor with weights from ``weights`` / $ARGEN_INCEPTION_WEIGHTS / the cache / a download
    (see :func:`resolve_weights`)."""
    path = resolve_weights(weights, allow_download=allow_download)
    net = _build_network(_read_state_dict(path))
    return InceptionExtractor(net, weights=path.name, weights_sha256=file_sha256(path), device=device)


def write_random_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """A randomly initialised weights file of the right layout (about 96 MB): for offline tests and
    speed benchmarks, never for reported numbers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build_network(None)
        for m in net.modules():  # variance-preserving, so activations neither vanish nor explode
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
