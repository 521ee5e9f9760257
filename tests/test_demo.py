"""The Gradio demo: the page builds; the event function streams previews, then the images and the
statistics; errors are messages; the pipeline cache stays bounded; a launched app serves
gradio_client requests (streamed, four at once through the queue) and a real headless browser."""
import importlib.util
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
from conftest import tiny_family_pipe  # noqa: E402

import argen  # noqa: E402
from argen import demo as app  # noqa: E402
from argen.demo_models import PipelineCache, model_info  # noqa: E402
from argen.preview import Finished, Preview, decode_partial, generate_stream  # noqa: E402

# gradio's queue (not this code) trips pandas 3 deprecations
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
              pytest.mark.usefixtures("one_thread")]
MODEL = "shapes-llamagen"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes():
    return argen.load(MODEL)


# -- building and the event function -------------------------------------------------------------
def test_build_demo_builds_without_launching():
    spec = importlib.util.spec_from_file_location("gradio_app", REPO / "apps" / "gradio_app.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)  # the thin launcher in apps/ re-exports the package's app
    demo = launcher.build_demo(models=[MODEL])
    assert isinstance(demo, gr.Blocks)
    props = {c.get("props", {}).get("label"): c.get("props", {}) for c in demo.get_config_file()["components"]}
    assert [v for _, v in props["sampler"]["choices"]] == ["ar", "sjd", "flow"]
    assert [lbl for lbl, _ in props["classes"]["choices"]][:2] == ["circle", "square"]
    card = json.loads((Path(__file__).parents[1] / "assets" / "shapes-llamagen" / "model_index.json").read_text())
    assert props["cfg scale"]["value"] == card["defaults"]["cfg_scale"] != 1.0  # the model card's default
    assert any(d.get("api_name") == "generate" for d in demo.get_config_file()["dependencies"])


def test_model_info_needs_no_weights():
    info = model_info("var-d16")  # offline: not downloadable, but described
    assert info.kind == "scale" and info.samplers() == ["ar", "flow"] and not info.local
    assert info.class_choices()[207] == ("207: golden retriever", 207)
    assert info.defaults["top_k"] == 900


def test_controls_follow_the_model_card():
    var = app._controls_for(model_info("var-d16"))
    assert var["sampler"] == {"choices": ["ar", "flow"], "value": "ar"}
    assert var["top_k"] == {"value": 900, "visible": True}
    assert var["classes"]["value"] == [207, 360, 387, 974] and len(var["classes"]["choices"]) == 1000
    assert "var" in var["cfg_schedule"]["choices"]
    mar = app._controls_for(model_info("mar-base"))
    assert mar["top_k"]["visible"] is False and mar["num_iter"] == {"value": 256, "visible": True}
    assert mar["cfg_schedule"]["value"] == "linear" and mar["preview_every"]["value"] == 16
    shapes = app._controls_for(model_info(MODEL), sampler="sjd")
    assert shapes["window"]["visible"] is True and shapes["sampler"]["value"] == "sjd"


@pytest.mark.parametrize("sampler", ["ar", "sjd"])
def test_event_function_streams_previews_then_images_then_stats(sampler, shapes):
    app.configure([MODEL])
    outs = list(app.generate(MODEL, sampler, ["star", 9], n_images=2, seed=3, preview_every=16, window=8))
    previews, (_, gallery, none), (_, gallery2, rows) = outs[:-2], outs[-2], outs[-1]
    assert len(previews) >= 2 and none is None
    for image, g, s in previews:
        assert isinstance(image, Image.Image) and image.size == (2 * 64 + 3 * 2, 64 + 2 * 2) and g is None and s is None
    assert [cap for _, cap in gallery] == ["6: star", "9: heart"] and gallery2 == gallery
    assert all(im.size == (64, 64) for im, _ in gallery)
    table = dict(rows)
    assert table["sampler"] == sampler and table["seed"] == "3" and table["images"] == "2"
    # streaming does not change the sample: same seed, same images as the plain pipeline
    direct = shapes.generate(["star", 9], seed=3, sampler=sampler, **({"window": 8} if sampler == "sjd" else {}))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), b in zip(gallery, direct))


def test_previews_can_be_turned_off():
    app.configure([MODEL])
    outs = list(app.generate(MODEL, "ar", [0], n_images=1, seed=0, preview_every=0))
    assert len(outs) == 2 and outs[0][1] is not None
    assert dict(outs[1][2])["previews"] == "0"


def test_closing_a_stream_stops_the_sampler(shapes):
    stream = generate_stream(shapes, [0, 1], seed=0, preview_every=8)
    assert isinstance(next(stream), Preview)
    stream.close()  # the worker stops at its next step; the pipeline is free again
    assert not [t for t in threading.enumerate() if t.name == "argen-generate"]
    assert len(shapes.generate([2], seed=0)) == 1


def test_errors_are_messages_not_tracebacks():
    app.configure([MODEL, "llamagen-gpt-b"])
    try:
        cases = {
            "llamagen-gpt-b": dict(model="llamagen-gpt-b"),  # offline, not cached
            "not-served": dict(model="var-d16"),
            "images": dict(n_images=0),
            "option": dict(extra_options="bogus=1"),
            "class": dict(classes=["dragon"]),
        }
        for what, kwargs in cases.items():
            with pytest.raises(gr.Error) as err:
                list(app.generate(**{"model": MODEL, "n_images": 1, "preview_every": 0, **kwargs}))
            msg = err.value.message
            assert "Traceback" not in msg, what
        with pytest.raises(gr.Error, match="offline"):
            list(app.generate("llamagen-gpt-b", n_images=1))
    finally:
        app.configure([MODEL])


def test_pipeline_cache_is_bounded(tiny_pipe, tmp_path):
    folder = str(tiny_pipe.save_pretrained(tmp_path / "tiny"))
    cache = PipelineCache(max_loaded=1)
    a = cache.get(MODEL)
    assert cache.get(MODEL) is a and cache.loaded == [MODEL]  # loaded once, then cached
    cache.get(folder)
    assert cache.loaded == [folder]  # switching models drops the least recently used
    assert cache.get(MODEL) is not a and cache.lock(MODEL) is cache.lock(MODEL)


# -- previews of every model kind --------------------------------------------------------------------
def test_token_preview_greys_out_what_is_not_sampled(shapes):
    codes = shapes.generate([1], seed=0, output_type="codes")
    torch.testing.assert_close(decode_partial(shapes, 64, codes), shapes.decode(codes))
    part = decode_partial(shapes, 24, codes[:, :24])  # 3 of 8 token rows, 8 px each
    assert part.shape == (1, 3, 64, 64) and part[..., 24:, :].abs().max() == 0 and part[..., :24, :].abs().max() > 0


@pytest.mark.parametrize("kind", ["var", "mar", "flowar", "elm"])
def test_stream_previews_every_step_for_other_model_kinds(kind):
    pipe, opts = tiny_family_pipe(kind)
    events = list(generate_stream(pipe, [1, 2], seed=4, preview_every=1, **opts))
    previews, done = events[:-1], events[-1]
    # VAR: one per scale; ELM: one per position (of 2 sub-tokens); MAR: per iteration; FlowAR: 3 scales
    steps = {"var": len(getattr(pipe.tokenizer, "patch_nums", ())), "elm": pipe.generator.seq_len}.get(
        kind, opts.get("num_iter", 3))
    assert isinstance(done, Finished) and len(previews) == steps and all(isinstance(p, Preview) for p in previews)
    assert all(im.size == done.images[0].size for p in previews for im in p.images)
    direct = pipe.generate([1, 2], seed=4, output_type="pt", **opts)
    torch.testing.assert_close(decode_partial(pipe, steps, pipe.last_codes), direct)


# -- a launched app ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served():
    demo = app.launch(port=None, block=False, models=[MODEL])
    yield demo.local_url
    demo.close()


def test_client_gets_streamed_outputs(served):
    from gradio_client import Client

    client = Client(served, verbose=False)
    job = client.submit(model=MODEL, sampler="ar", classes=[0, 1], n_images=2, seed=1, preview_every=16,
                        api_name="/generate")
    _, gallery, rows = job.result(timeout=120)
    outputs = job.outputs()
    assert len(outputs) >= 3  # previews, the gallery, then the statistics
    assert not outputs[0][1] and Path(outputs[0][0]).is_file(), outputs[0]
    assert len(gallery) == 2 and all(Path(g["image"]).suffix == ".png" for g in gallery)
    assert ["sampler", "ar"] in rows["data"]


def test_four_concurrent_requests_queue_and_complete(served):
    from gradio_client import Client
    from gradio_client.utils import Status

    client = Client(served, verbose=False)
    jobs = [client.submit(model=MODEL, sampler=s, classes=[i], n_images=1, seed=i, preview_every=32,
                          api_name="/generate") for i, s in enumerate(["ar", "sjd", "ar", "sjd"])]
    queued = set()
    deadline = time.monotonic() + 120
    while not all(j.done() for j in jobs) and time.monotonic() < deadline:
        for i, j in enumerate(jobs):
            st = j.status()
            if st.code == Status.IN_QUEUE and (st.rank or 0) > 0:
                queued.add(i)
        time.sleep(0.02)
    results = [j.result(timeout=5) for j in jobs]
    assert all(len(r[1]) == 1 and r[2] for r in results)
    assert queued, "with one generation at a time, some request must have waited with a queue position"


# -- a real browser ----------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_browser_click_generates_an_image(served, tmp_path):
    from headless_chromium import Chromium

    profile = tmp_path / "profile"
    profile.mkdir()
    with Chromium(shutil.which("chromium"), profile) as browser:
        page = browser.open(served)
        browser.wait_for(page, "!!document.querySelector('#generate')", timeout=60)
        # a click that lands before Gradio has bound its handlers is lost (seen once in CI): click again
        for attempt in range(4):
            browser.click(page, "#generate")
            try:
                browser.wait_for(page, "document.querySelectorAll('#gallery img').length >= 1",
                                 timeout=30 * (attempt + 1))
                break
            except TimeoutError:
                if attempt == 3:
                    raise
        time.sleep(0.5)  # let the statistics table render for the screenshot
        shot = browser.screenshot(page, tmp_path / "demo.png")
    assert Image.open(shot).size[0] > 0
    artifacts = REPO / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "demo_browser.png")


def test_a_student_gets_the_dd_sampler_and_no_guidance_controls():
    info = model_info("dd-var-d16")
    assert info.kind == "distilled" and info.samplers() == ["dd"]
    controls = app._controls_for(info)
    assert controls["sampler"]["value"] == "dd" and not controls["cfg_scale"]["visible"]
    # one steps control: a student's passes here, FlowAR's flow steps per scale there
    steps = controls["num_steps"]
    assert steps["visible"] and steps["value"] == 1 and steps["label"].startswith("DD passes")
    assert app._options("distilled", "dd", 4.0, None, None, None, None, None, None, None, 2, "") == {"steps": 2}
    assert app._options("flow-scale", "ar", None, None, None, None, None, None, None, None, 30, "") == {"num_steps": 30}
    assert not app._controls_for(model_info("shapes-llamagen"))["num_steps"]["visible"]


def test_cspd_takes_a_served_draft_and_shows_acceptance():
    controls = app._controls_for(model_info("shapes-mar"), sampler="cspd")
    assert controls["draft"]["visible"] and controls["gamma"]["visible"] and "cspd" in controls["sampler"]["choices"]
    assert not app._controls_for(model_info("shapes-mar"))["draft"]["visible"]
    app.configure(["shapes-mar", "shapes-mar-draft"])
    try:
        outs = list(app.generate("shapes-mar", "cspd", [2], n_images=1, seed=0, preview_every=0, num_iter=8,
                                 diffusion_steps=10, draft="shapes-mar-draft", gamma=2))
        table = dict(outs[-1][2])
        assert table["sampler"] == "cspd" and "token_acceptance" in table and "draft_passes" in table
        with pytest.raises(gr.Error, match="needs a draft model"):
            list(app.generate("shapes-mar", "cspd", [2], n_images=1, preview_every=0, draft=None))
        with pytest.raises(gr.Error, match="this demo serves"):
            list(app.generate("shapes-mar", "cspd", [2], n_images=1, preview_every=0, draft="mar-base"))
    finally:
        app.configure([MODEL])


def test_an_unconditional_model_hides_classes_and_guidance(tmp_path):
    from conftest import tiny_igpt

    info = model_info("igpt-s")  # offline: described from its record
    controls = app._controls_for(info)
    assert info.num_classes == 0 and not controls["classes"]["visible"] and controls["classes"]["value"] == []
    assert not controls["cfg_scale"]["visible"] and controls["top_k"] == {"value": 40, "visible": True}
    gen, tok = tiny_igpt(num_classes=0)
    folder = str(argen.ARPipeline(gen, tok, defaults={"top_k": 4}, name="pixels").save_pretrained(tmp_path / "px"))
    assert app._controls_for(model_info(folder))["classes"]["visible"] is False
    app.configure([folder])
    try:
        outs = list(app.generate(folder, "sjd", [], n_images=2, seed=0, preview_every=0))
        grid, gallery, table = outs[-1]
        assert [caption for _, caption in gallery] == ["unconditional"] * 2 and dict(table)["images"] == "2"
        with pytest.raises(gr.Error, match="unconditional"):
            list(app.generate(folder, "ar", [1], n_images=1, preview_every=0))
    finally:
        app.configure([MODEL])
