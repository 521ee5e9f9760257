"""The Gradio demo: choose a model, sampler, classes and options, and watch the images form.

    argen demo                                  # http://127.0.0.1:7860, offline, no share link
    from argen.demo import build_demo           # the gr.Blocks, built without launching

:func:`generate` is the event function, a plain generator that can be called directly. It yields
previews while the model samples, then the final gallery, then the statistics table. Requests
queue (bounded), and one generation at a time runs. Errors reach the user as ``gr.Error``
messages, never as stack traces. It lives in the package, not in ``apps/``, because ``argen demo``
must be able to import it after a plain ``pip install``.
"""
from __future__ import annotations

import logging
import os
import secrets
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import gradio as gr
from PIL import Image

from argen.demo_models import ModelInfo, PipelineCache, available_models, imagenet_class_names, model_info
from argen.errors import ArgenError, ConfigError, UnknownModelError
from argen.images import make_grid
from argen.preview import Finished, Preview, generate_stream
from argen.samplers.logits import CFG_SCHEDULES
from argen.zoo import DEFAULT_MODEL

log = logging.getLogger(__name__)

MODEL_DEFAULT = "model default"  # the cfg schedule choice that keeps the model's own convention
MAX_IMAGES = 16
SCHEDULES = {"token": list(CFG_SCHEDULES), "scale": ["constant", "linear", "var"],
             "continuous": ["constant", "linear"], "flow-scale": ["constant", "linear"],
             "masked": [s for s in CFG_SCHEDULES if s != "var"]}
# which sampling controls each generator kind takes (others are ignored, not passed on)
KIND_OPTIONS = {
    "token": ("top_k", "top_p", "temperature"),
    "scale": ("top_k", "top_p", "temperature"),
    "continuous": ("temperature", "num_iter", "diffusion_steps"),
    "flow-scale": ("num_steps",),
    "distilled": ("steps",),
    "masked": ("top_k", "top_p", "temperature", "num_iter"),
}
# the kinds with a steps control: the option it sets, its label and its minimum (FlowAR: flow steps per
# scale; a distilled student: its passes, 1 or 2 at the released restart points)
STEP_CONTROL = {"flow-scale": ("num_steps", "FlowAR flow steps per scale", 2),
                "distilled": ("steps", "DD passes (1 or 2)", 1)}
UNGUIDED_KINDS = {"distilled"}  # no cfg controls: a student's guidance was distilled into it
Row = tuple[Image.Image | None, list[tuple[Image.Image, str]] | None, list[list[str]] | None]


@dataclass
class DemoState:
    """What the event function works with: the pipeline cache and the models it may load."""

    cache: PipelineCache
    allowed: frozenset[str] | None = None  # None: any zoo name


STATE = DemoState(PipelineCache())


def configure(models: Sequence[str] | None = None, *, device: str = "cpu", dtype: Any = None,
              checkpoint_dir: str | None = None, offline: bool | None = None, max_loaded: int = 2) -> list[ModelInfo]:
    """Set up the module's cache and model list; returns the models the demo offers."""
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    infos = ([model_info(m, checkpoint_dir) for m in models] if models
             else available_models(checkpoint_dir, offline))
    if not infos:
        raise ConfigError("no model is available: the bundled assets are missing and no official weights are "
                          "cached (pass --checkpoint-dir, or go online)")
    old = STATE.cache
    if (old.max_loaded, old.device, old.dtype, old.checkpoint_dir, old.offline) != (
            max_loaded, device, dtype, checkpoint_dir, offline):
        old.clear()
        STATE.cache = PipelineCache(max_loaded, device=device, dtype=dtype, checkpoint_dir=checkpoint_dir,
                                    offline=offline)
    STATE.allowed = frozenset(models) if models else None
    return infos


def random_seed() -> int:
    return secrets.randbelow(2**31)


def default_preview_every(kind: str, options: dict[str, Any]) -> int:
    """Preview every 16 tokens, every scale, or about 16 times per MAR run (each is a VAE decode)."""
    if kind == "token":
        return 16
    if kind == "continuous":
        return max(1, int(options.get("num_iter") or 64) // 16)
    return 1


# -- the event function --------------------------------------------------------------------------
def generate(
    model: str = DEFAULT_MODEL,
    sampler: str = "ar",
    classes: Sequence[int | str] | None = None,
    n_images: int = 4,
    cfg_scale: float | None = None,
    cfg_schedule: str | None = MODEL_DEFAULT,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float | None = None,
    seed: int | float | None = 0,
    preview_every: int | float | None = None,
    window: int | float | None = None,
    num_iter: int | float | None = None,
    diffusion_steps: int | float | None = None,
    num_steps: int | float | None = None,
    extra_options: str = "",
    draft: str | None = None,
    gamma: int | float | None = None,
) -> Iterator[Row]:
    """Yield (preview grid, None, None) while sampling, then (final grid, gallery, None), then
    (final grid, gallery, statistics rows). None for an option means the model card's value
    (``preview_every``: the kind's default, see :func:`default_preview_every`; 0: no previews)."""
    try:
        if STATE.allowed is not None and model not in STATE.allowed:
            raise UnknownModelError(f"this demo serves {', '.join(sorted(STATE.allowed))}, not {model!r}")
        n = _count(n_images, "number of images", 1)
        if n > MAX_IMAGES:
            raise ConfigError(f"at most {MAX_IMAGES} images per request, got {n}")
        with STATE.cache.lock(model):
            try:
                pipe = STATE.cache.get(model)
            except ArgenError as exc:
                raise type(exc)(f"cannot load {model}: {exc}") from None
            ids = _class_ids(pipe, classes)
            ids = [ids[i % len(ids)] for i in range(n)]
            opts = _options(pipe.generator.kind, sampler, cfg_scale, cfg_schedule, top_k, top_p, temperature,
                            window, num_iter, diffusion_steps, num_steps, extra_options)
            if sampler == "cspd":  # a draft model from the served ones (loaded once, beside the target)
                if draft and STATE.allowed is not None and draft not in STATE.allowed:
                    raise UnknownModelError(f"this demo serves {', '.join(sorted(STATE.allowed))}, not {draft!r}")
                opts.setdefault("draft", draft or None)
                if gamma is not None:
                    opts["gamma"] = _count(gamma, "gamma", 1)
            used_seed = random_seed() if seed is None else _count(seed, "seed", 0)
            every = (default_preview_every(pipe.generator.kind, {**pipe.defaults, **opts}) if preview_every is None
                     else _count(preview_every, "preview every", 0))
            done = None
            # closing(): if the client goes away, the sampler stops before the model's lock is released
            with closing(generate_stream(pipe, ids, seed=used_seed, sampler=sampler, preview_every=every,
                                         **opts)) as stream:
                for event in stream:
                    if isinstance(event, Preview):
                        yield make_grid(event.images), None, None
                    elif isinstance(event, Finished):
                        done = event
            gallery = [(im, _caption(pipe, c)) for im, c in zip(done.images, ids)]
            grid = make_grid(done.images)
            yield grid, gallery, None
            yield grid, gallery, _stats_rows(model, ids, done)
    except gr.Error:
        raise
    except (ArgenError, OSError) as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception as exc:  # never a stack trace in the UI; the log has it
        log.exception("generation failed")
        raise gr.Error(f"generation failed: {type(exc).__name__}: {exc}", print_exception=False) from None


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
        raise ConfigError(f"{what} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _class_ids(pipe: Any, classes: Sequence[int | str] | None) -> list[int]:
    """Class ids from the selection (ids or names); no selection: a few classes to show. An unconditional
    model takes none: its one condition."""
    if not pipe.conditional:
        if classes:
            raise ConfigError(f"{pipe.name or 'this model'} is unconditional: it takes no classes")
        return [0]
    if not classes:
        from argen.zoo import IMAGENET_DEMO_CLASSES

        n = pipe.generator.num_classes
        return list(IMAGENET_DEMO_CLASSES) if n == 1000 else list(range(min(n, 16)))
    if isinstance(classes, (int, str)):
        classes = [classes]
    names = pipe.class_names or (imagenet_class_names() if pipe.generator.num_classes == 1000 else None)
    out = []
    for c in classes:
        if isinstance(c, str) and not pipe.class_names and names and c in names:  # an ImageNet name
            out.append(names.index(c))
        else:
            out.extend(pipe.resolve_classes([c]))
    return out


def _options(kind: str, sampler: str, cfg_scale, cfg_schedule, top_k, top_p, temperature, window, num_iter,
             diffusion_steps, num_steps, extra: str) -> dict[str, Any]:
    from argen.options import parse_key_values

    given = {"top_k": top_k, "top_p": top_p, "temperature": temperature, "num_iter": num_iter,
             "diffusion_steps": diffusion_steps, "num_steps": num_steps, "steps": num_steps}  # one steps control
    opts: dict[str, Any] = {k: given[k] for k in KIND_OPTIONS.get(kind, ()) if given[k] is not None}
    for k in ("top_k", "num_iter", "diffusion_steps", "num_steps", "steps"):
        if k in opts:
            opts[k] = _count(opts[k], k, 0)
    if cfg_scale is not None and kind not in UNGUIDED_KINDS:
        opts["cfg_scale"] = float(cfg_scale)
    if cfg_schedule and cfg_schedule != MODEL_DEFAULT:
        opts["cfg_schedule"] = cfg_schedule
    if sampler == "sjd" and window is not None:
        opts["window"] = _count(window, "window", 1)
    opts.update(parse_key_values((extra or "").split()))
    return opts


def _caption(pipe: Any, class_id: int) -> str:
    if not pipe.conditional:
        return "unconditional"
    names = pipe.class_names or (imagenet_class_names() if pipe.generator.num_classes == 1000 else None)
    return f"{class_id}: {names[class_id]}" if names and class_id < len(names) else f"class {class_id}"


def _stats_rows(model: str, ids: list[int], done: Finished) -> list[list[str]]:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [["model", model], ["images", str(len(ids))]]
    # zeros are noise except where they are the news (a draft none of whose tokens were kept)
    rows += [[k, fmt(v)] for k, v in done.stats.items()
             if v not in (None, [], 0) or k == "seed" or k.endswith("acceptance")]
    rows += [["previews", str(done.previews)], ["preview decoding s", fmt(done.preview_s)]]
    return rows


# -- the page ------------------------------------------------------------------------------------
def _steps_control(kind: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The steps control of a kind that has one (:data:`STEP_CONTROL`), hidden for the others."""
    if kind not in STEP_CONTROL:
        return dict(value=None, visible=False, label="steps", minimum=1)
    option, label, low = STEP_CONTROL[kind]
    return dict(value=defaults.get(option, 1 if option == "steps" else None), visible=True, label=label, minimum=low)


def _controls_for(info: ModelInfo, sampler: str | None = None) -> dict[str, dict[str, Any]]:
    """Component settings (choices, values, visibility) for a model, from its card: used to build
    the page and, as updates, when the user picks another model."""
    d, kinds = info.defaults, KIND_OPTIONS.get(info.kind, ())
    guided = info.kind not in UNGUIDED_KINDS and info.num_classes > 0  # an unconditional model has no guidance
    samplers = info.samplers()
    sampler = sampler if sampler in samplers else samplers[0]
    if info.num_classes == 1000:
        from argen.zoo import IMAGENET_DEMO_CLASSES

        first = list(IMAGENET_DEMO_CLASSES[:4])
    else:
        first = list(range(min(4, info.num_classes)))
    return {
        "sampler": dict(choices=samplers, value=sampler),
        "classes": dict(choices=info.class_choices(), value=first, visible=info.num_classes > 0),
        "cfg_scale": dict(value=d.get("cfg_scale", 1.0), visible=guided),
        "cfg_schedule": dict(choices=[MODEL_DEFAULT, *SCHEDULES.get(info.kind, [])],
                             value=d.get("cfg_schedule", MODEL_DEFAULT), visible=guided),
        "top_k": dict(value=d.get("top_k", 0), visible="top_k" in kinds),
        "top_p": dict(value=d.get("top_p", 1.0), visible="top_p" in kinds),
        "temperature": dict(value=d.get("temperature", 1.0), visible="temperature" in kinds),
        "preview_every": dict(value=default_preview_every(info.kind, d)),
        "window": dict(visible=sampler == "sjd"),
        "draft": dict(visible=sampler == "cspd"),
        "gamma": dict(visible=sampler == "cspd"),
        "num_iter": dict(value=d.get("num_iter"), visible="num_iter" in kinds),
        "diffusion_steps": dict(value=d.get("diffusion_steps"), visible="diffusion_steps" in kinds),
        "num_steps": _steps_control(info.kind, d),
        "about": dict(value=f"**{info.name}** ({info.kind}-wise): {info.description}"),
    }


def build_demo(
    models: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    dtype: Any = None,
    checkpoint_dir: str | None = None,
    offline: bool | None = None,
    max_loaded: int = 2,
    queue_size: int = 16,
    concurrency_limit: int = 1,
) -> gr.Blocks:
    """The demo page, not launched. ``models``: names or folders to offer (default: what is usable
    here). At most ``max_loaded`` pipelines stay in memory; ``queue_size`` requests wait at most."""
    infos = {i.name: i for i in configure(models, device=device, dtype=dtype, checkpoint_dir=checkpoint_dir,
                                          offline=offline, max_loaded=max_loaded)}
    first = next(iter(infos.values()))
    init = _controls_for(first)
    with gr.Blocks(title="argen demo", analytics_enabled=False) as demo:
        gr.Markdown("# argen: autoregressive image generation\nPick a model and classes, then Generate. "
                    "Previews show the image as it is sampled.")
        with gr.Row():
            with gr.Column(scale=1):
                c: dict[str, Any] = {}
                c["model"] = gr.Dropdown([(i.label, n) for n, i in infos.items()], value=first.name, label="model")
                c["about"] = gr.Markdown(**init["about"])
                c["sampler"] = gr.Dropdown(label="sampler", **init["sampler"])
                c["classes"] = gr.Dropdown(multiselect=True, label="classes", info="cycled to the number of images",
                                           **init["classes"])
                c["n_images"] = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images")
                with gr.Row():
                    c["seed"] = gr.Number(0, precision=0, minimum=0, label="seed")
                    dice = gr.Button("randomise seed", size="sm")
                c["cfg_scale"] = gr.Slider(0.0, 20.0, step=0.05, label="cfg scale", **init["cfg_scale"])
                c["cfg_schedule"] = gr.Dropdown(label="cfg schedule", **init["cfg_schedule"])
                with gr.Accordion("sampling filters", open=False):
                    c["top_k"] = gr.Number(precision=0, minimum=0, label="top-k (0 = off)", **init["top_k"])
                    c["top_p"] = gr.Slider(0.0, 1.0, step=0.01, label="top-p", **init["top_p"])
                    c["temperature"] = gr.Slider(0.05, 2.0, step=0.05, label="temperature", **init["temperature"])
                with gr.Accordion("sampler options", open=False):
                    c["preview_every"] = gr.Number(precision=0, minimum=0, label="preview every N steps",
                                                   info="tokens, scales or iterations; 0 = off (no decoding cost)",
                                                   **init["preview_every"])
                    c["window"] = gr.Slider(1, 64, value=16, step=1, label="SJD window (tokens per pass)",
                                            **init["window"])
                    drafts = [n for n, i in infos.items() if i.kind == "continuous"]
                    c["draft"] = gr.Dropdown(drafts, value=next((n for n in drafts if n.endswith("-draft")),
                                                                 drafts[0] if drafts else None),
                                             label="CSpD draft model", **init["draft"])
                    c["gamma"] = gr.Number(4, precision=0, minimum=1, label="CSpD draft steps per verification",
                                           **init["gamma"])
                    c["num_iter"] = gr.Number(precision=0, minimum=1, label="iterations (MAR, masked LM)",
                                              **init["num_iter"])
                    c["diffusion_steps"] = gr.Number(precision=0, minimum=1, label="MAR diffusion steps",
                                                     **init["diffusion_steps"])
                    c["num_steps"] = gr.Number(precision=0, **init["num_steps"])
                    c["extra_options"] = gr.Textbox("", label="more options",
                                                    placeholder="key=value ... (e.g. init=random)")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                preview = gr.Image(label="preview", type="pil", format="png", elem_id="preview", interactive=False)
                gallery = gr.Gallery(label="images", format="png", columns=4, elem_id="gallery",
                                     buttons=["download", "fullscreen"], interactive=False)
                stats = gr.Dataframe(headers=["statistic", "value"], label="statistics", interactive=False)

        def on_model(name: str, sampler: str) -> list[Any]:
            info = infos.get(name) or model_info(name, checkpoint_dir)
            return [gr.update(**kw) for kw in _controls_for(info, sampler).values()]

        c["model"].change(on_model, [c["model"], c["sampler"]], [c[k] for k in init], api_visibility="private")
        c["sampler"].change(lambda s: [gr.update(visible=s == "sjd")] + [gr.update(visible=s == "cspd")] * 2,
                            c["sampler"], [c["window"], c["draft"], c["gamma"]], api_visibility="private")
        dice.click(random_seed, None, c["seed"], api_visibility="private")
        inputs = [c[k] for k in ("model", "sampler", "classes", "n_images", "cfg_scale", "cfg_schedule", "top_k",
                                 "top_p", "temperature", "seed", "preview_every", "window", "num_iter",
                                 "diffusion_steps", "num_steps", "extra_options", "draft", "gamma")]
        run.click(generate, inputs, [preview, gallery, stats], api_name="generate",
                  concurrency_limit=concurrency_limit, concurrency_id="generate")
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency_limit)
    return demo


def launch(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, *, block: bool = True,
           **build_kwargs: Any) -> gr.Blocks:
    """Build and serve the demo (analytics off, no share link unless asked). ``block=False``
    returns at once with the server running (``demo.close()`` stops it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo = build_demo(**build_kwargs)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block)
    return demo
