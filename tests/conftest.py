"""Shared test fixtures: the official reference data (tests/reference, carried by the repository) and tiny
models."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]
# the repository's own copy; ARGEN_SHARED=/path/to/shared tests against another copy (e.g. a newer one)
REFERENCE = (Path(os.environ["ARGEN_SHARED"]) / "reference" if os.environ.get("ARGEN_SHARED")
             else REPO / "tests" / "reference")
FIXTURES = REFERENCE / "fixtures"
LAYOUTS = REFERENCE / "layouts"


def _skip_missing(path: Path | str) -> None:
    pytest.skip(f"official reference data not found: {path} (tests/reference, or $ARGEN_SHARED/reference)",
                allow_module_level=True)


def reference_layouts(pattern: str) -> set[str]:
    """Names of the layouts matching ``pattern``; the test skips where the layouts folder is absent."""
    if not LAYOUTS.is_dir():
        _skip_missing(LAYOUTS)
    return {p.stem for p in LAYOUTS.glob(pattern)}


def reference_file(path: Path) -> Path:
    """``path`` in the reference data; where the data is absent, the test (or the module reading it at import)
    that needs it skips, saying so -- the rest of the suite runs."""
    if not path.is_file():
        _skip_missing(path)
    return path


@contextlib.contextmanager
def _missing_reference_skips():
    """A reference file read directly (``FIXTURES / name``) that is absent skips, like :func:`reference_file`."""
    try:
        yield
    except FileNotFoundError as e:
        missing = Path(str(e.filename or ""))
        if e.filename and missing.is_relative_to(REFERENCE) and not missing.exists():
            _skip_missing(missing)
        raise


class _Module(pytest.Module):
    """A test module that reads absent reference data at import is skipped with the reason, not a collection
    error that stops the whole run."""

    def _getobj(self):
        with _missing_reference_skips():
            return super()._getobj()


def pytest_pycollect_makemodule(module_path: Path, parent):
    if module_path.name != "__init__.py":
        return _Module.from_parent(parent, path=module_path)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _missing_reference_skips():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _missing_reference_skips():
        return (yield)


def fixture_config(name: str, drop: tuple[str, ...] = ()) -> dict:
    cfg = json.loads(reference_file(FIXTURES / f"{name}.json").read_text())["config"]
    return {k: v for k, v in cfg.items() if k not in drop}


def fixture_weights(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(reference_file(FIXTURES / f"{name}.weights.safetensors")))


def fixture_io(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(reference_file(FIXTURES / f"{name}.io.safetensors")))


# official constructor arguments of the tiny fixtures (the JSON adds derived, non-argument fields), read when a
# test module imports them (so a missing fixture skips that module only)
def gpt_tiny_args() -> dict:
    return fixture_config("llamagen_gpt_tiny", drop=("ffn_hidden",))


def vq_tiny_args() -> dict:
    return fixture_config("llamagen_vq_tiny", drop=("image_size",))


def __getattr__(name: str):
    if name in ("GPT_TINY_ARGS", "VQ_TINY_ARGS"):
        return gpt_tiny_args() if name == "GPT_TINY_ARGS" else vq_tiny_args()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@pytest.fixture(scope="module")
def one_thread():
    """Two cores shared with other jobs: one torch thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gpt_tiny():
    from argen.convert.llamagen import load_gpt

    return load_gpt(fixture_weights("llamagen_gpt_tiny"), **gpt_tiny_args())


@pytest.fixture(scope="session")
def vq_tiny():
    from argen.convert.llamagen import load_vq

    return load_vq(fixture_weights("llamagen_vq_tiny"), **vq_tiny_args())


@pytest.fixture(scope="session")
def gpt_io():
    return fixture_io("llamagen_gpt_tiny")


@pytest.fixture(scope="session")
def vq_io():
    return fixture_io("llamagen_vq_tiny")


@pytest.fixture(scope="session")
def official_ckpts(tmp_path_factory):
    """The tiny fixture weights written as official-format .pt files (DDP ``{"model": ...}``)."""
    d = tmp_path_factory.mktemp("official")
    torch.save({"model": fixture_weights("llamagen_gpt_tiny"), "steps": 1}, d / "gpt.pt")
    torch.save({"model": fixture_weights("llamagen_vq_tiny")}, d / "vq.pt")
    (d / "gpt.json").write_text(json.dumps(gpt_tiny_args()))
    (d / "vq.json").write_text(json.dumps(vq_tiny_args()))
    return d


LLAMAGEN_TINY_DEFAULTS = {"cfg_scale": 4.0, "top_k": 8}  # the sampling options of the tiny LlamaGen pipelines


@pytest.fixture()
def tiny_pipe(gpt_tiny, vq_tiny):
    import copy

    from argen import ARPipeline

    return ARPipeline(copy.deepcopy(gpt_tiny), copy.deepcopy(vq_tiny), defaults=dict(LLAMAGEN_TINY_DEFAULTS),
                      name="tiny")


# -- a tiny pipeline of every registered family (tests/test_contract.py runs each through the contract) ------
def _tiny_llamagen():
    from argen.convert.llamagen import load_gpt, load_vq

    gen = load_gpt(fixture_weights("llamagen_gpt_tiny"), **gpt_tiny_args())
    return gen, load_vq(fixture_weights("llamagen_vq_tiny"), **vq_tiny_args()), dict(LLAMAGEN_TINY_DEFAULTS)


def _tiny_var():
    from argen.convert.var import load_var, load_var_vae

    cfg = fixture_config("var_tiny")
    vae = load_var_vae(fixture_weights("var_tiny_vqvae"), **{k: v for k, v in cfg["vae"].items() if k != "image_size"})
    return (load_var(fixture_weights("var_tiny"), vae=vae, drop_path_rate=0.0, **cfg["var"]), vae,
            {"cfg_scale": 1.5, "top_k": 10})


def _kl_vae(gen):
    """A random KL VAE (64 px, 16x down) with the latent channels ``gen`` models."""
    from argen.tokenizers import KLVAE, KLConfig

    return KLVAE(KLConfig(embed_dim=gen.config.vae_embed_dim, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1))


def _tiny_mar():
    from argen.generators import MAR, MARConfig

    gen = MAR(MARConfig(**fixture_config("mar_tiny")))
    gen.load_state_dict(fixture_weights("mar_tiny"))
    return gen, _kl_vae(gen), {"cfg_scale": 2.0, "num_iter": 2, "diffusion_steps": 2}


def _tiny_flowar():
    from argen.generators import FlowAR, FlowARConfig

    gen = FlowAR(FlowARConfig(**fixture_config("flowar_tiny", drop=("seq_len", "latent_hw"))))
    gen.load_state_dict(fixture_weights("flowar_tiny"))
    return gen, _kl_vae(gen), {"cfg_scale": 2.0, "num_steps": 2}


def _tiny_dd_llamagen():
    from argen.convert.dd_llamagen import load_dd_llamagen
    from argen.convert.llamagen import load_vq

    cfg = fixture_config("dd_llamagen_tiny")
    vq = load_vq(fixture_weights("llamagen_vq_tiny"), **{k: v for k, v in cfg["vq"].items() if k != "image_size"})
    dd = {k: v for k, v in cfg["dd"].items() if k not in ("ffn_hidden", "grid", "head_dim")}  # official ModelArgs
    return load_dd_llamagen(fixture_weights("dd_llamagen_tiny"), tokenizer=vq, two_step_t=5, split_t=5, **dd), vq, {}


def _tiny_dd_var():
    from argen.convert.dd_var import load_dd_var
    from argen.convert.var import load_var_vae

    cfg = fixture_config("dd_var_tiny")
    vae = load_var_vae(fixture_weights("var_tiny_vqvae"), **{k: v for k, v in cfg["vae"].items() if k != "image_size"})
    dd = {k: cfg["dd"][k] for k in ("depth", "embed_dim", "num_heads", "num_classes", "patch_nums", "shared_aln",
                                    "mlp_ratio", "norm_eps", "attn_l2_norm")}
    return load_dd_var(fixture_weights("dd_var_tiny"), vae=vae, drop_path_rate=0.0, two_step_t=2, loss_split_t=2,
                       **dd), vae, {}


def tiny_igpt(num_classes: int = 10, side: int = 8, colours: int = 8, **overrides):
    """A tiny image-GPT (``side`` x ``side`` pixels, GPT-2 init, no dropout) on a random palette, bound:
    class-conditional with a null class, or unconditional (``num_classes`` 0) as the released ones."""
    from argen.generators.igpt import ImageGPT, ImageGPTConfig
    from argen.tokenizers.palette import PaletteTokenizer

    args = dict(vocab_size=colours + 1, n_positions=side * side, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, num_classes=num_classes, class_dropout_prob=0.1 if num_classes else 0.0)
    gen = ImageGPT(ImageGPTConfig(**{**args, **overrides}))
    gen.init_weights()
    tok = PaletteTokenizer.from_colours(torch.rand(colours, 3) * 2 - 1)
    return gen.bind_tokenizer(tok), tok


def _tiny_igpt():
    gen, tok = tiny_igpt()
    return gen, tok, {"cfg_scale": 1.5, "top_k": 4}


def tiny_elm():
    """ELM's tiny fixtures as a pair: the LM (2 sub-tokens of 4 bits, 4x4 positions) and the 8-bit BAE (32 px)."""
    from argen.convert.elm import load_bae, load_elm

    gen = load_elm(fixture_weights("elm_lm_tiny"), n_head=4, block_size=16)
    cfg = fixture_config("elm_bae_tiny")
    bae_args = {k: cfg[k] for k in ("img_size", "nf", "ch_mult", "res_blocks", "attn_resolutions", "emb_dim")}
    return gen, load_bae(fixture_weights("elm_bae_tiny"), token_each=2, **bae_args)


def _tiny_elm():
    return (*tiny_elm(), {"cfg_scale": 2.0, "cfg_schedule": "linear", "top_k": 4})


def _tiny_elm_mlm():
    """A random tiny ELM MLM (one 8-bit sub-token per position, 4x4) on the tiny 8-bit BAE read 1 x 8."""
    from argen.generators.elm_mlm import ElmMLM, ElmMLMConfig

    gen = ElmMLM(ElmMLMConfig(dim=32, n_layer=2, n_head=2, multiple_of=32, num_classes=10, token_each=1, code_dim=8,
                              block_size=16, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0))
    gen.init_weights()
    return gen, tiny_elm()[1].with_token_each(1), {"cfg_scale": 2.0, "cfg_schedule": "linear", "num_iter": 4}


TINY_PIPELINES = {"llamagen": _tiny_llamagen, "var": _tiny_var, "mar": _tiny_mar, "flowar": _tiny_flowar,
                  "dd-llamagen": _tiny_dd_llamagen, "dd-var": _tiny_dd_var, "igpt": _tiny_igpt, "elm": _tiny_elm,
                  "elm-mlm": _tiny_elm_mlm}


def tiny_family_pipe(family: str):
    """A tiny pipeline of ``family`` (its fixture weights; random VAEs seeded) and sampling options that keep it
    fast -> (pipeline, options). Every registered family needs one here."""
    from argen import ARPipeline

    if family not in TINY_PIPELINES:
        pytest.fail(f"add a tiny configuration for family {family!r} to TINY_PIPELINES in tests/conftest.py "
                    "(every registered family runs through tests/test_contract.py)")
    torch.manual_seed(0)
    gen, tok, opts = TINY_PIPELINES[family]()
    return ARPipeline(gen.eval(), tok.eval(), defaults=opts, name=f"{family}-tiny"), opts


def two_colour_bae(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-class folder of 16 px images and a 6-bit BAE (2 sub-tokens of 3 bits) trained on it through the CLI
    -> (data folder, BAE folder): what an ELM-family training test starts from."""
    import numpy as np
    from PIL import Image

    from argen.cli import main

    data, bae = tmp_path / "data", tmp_path / "bae"
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (data / f"class{c}").mkdir(parents=True)
        for i in range(4):
            im = np.zeros((16, 16, 3), np.uint8)
            im[: 6 + i] = colour
            Image.fromarray(im).save(data / f"class{c}" / f"{i}.png")
    assert main(["train", "tokenizer", "--kind", "binary", "--bits", "6", "--token-each", "2", "--data", str(data),
                 "--resolution", "16", "--steps", "2", "--batch-size", "4", "--out", str(bae), "-q"]) == 0
    return data, bae
