"""Training ELM's binary autoencoder: gradients pass the Bernoulli bits straight-through, and
`argen train tokenizer --kind binary` writes a folder that argen's tokenizer loading reads."""
import json

import pytest
import torch
from PIL import Image

from argen.cli import main
from argen.tokenizers import load_tokenizer
from argen.tokenizers.binary import BinaryAutoEncoder
from argen.train.tokenizer import tokenizer_config, vq_loss


def _images(n=4, res=16):
    torch.manual_seed(0)
    return torch.rand(n, 3, res, res) * 2 - 1


def test_presets_follow_the_resolution():
    tiny, small = tokenizer_config("tiny", "binary", 16), tokenizer_config("small", "binary", 64, codebook_size=12)
    assert (tiny.downsample, tiny.img_size, tiny.attn_resolutions, tiny.codebook_size) == (4, 16, [4], 8)
    assert (small.downsample, small.img_size, small.attn_resolutions, small.codebook_size) == (8, 64, [8], 12)


def test_bernoulli_bits_pass_gradients_straight_through():
    model = BinaryAutoEncoder(tokenizer_config("tiny", "binary", 16)).train()
    images = _images()
    loss, recon, logs = vq_loss(model, images)
    assert recon.shape == images.shape and set(logs) == {"rec", "code"}
    loss.backward()
    assert model.encoder.blocks[0].weight.grad.abs().sum() > 0 and model.quantize.proj[0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # training draws the bits; eval thresholds them (as does --deterministic)
        a = model(images, generator=torch.Generator().manual_seed(0))[0]
        b = model(images, generator=torch.Generator().manual_seed(1))[0]
        assert not torch.equal(a, b)
        model.eval()
        assert torch.equal(model(images)[0], model(images)[0])
    det = BinaryAutoEncoder(tokenizer_config("tiny", "binary", 16, deterministic=True)).train()
    opt = torch.optim.Adam(det.parameters(), lr=1e-3)
    before, _, _ = vq_loss(det, images)
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _, _ = vq_loss(det, images)
    assert after < before


@pytest.fixture()
def image_folder(tmp_path):
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            im = Image.new("RGB", (16, 16), (255, 255, 255))
            im.paste(colour, (2 * i, 2 * i, 8 + 2 * i, 8 + 2 * i))
            im.save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    return tmp_path / "data"


def test_train_binary_with_the_cli(image_folder, tmp_path):
    out = tmp_path / "bae"
    assert main(["train", "tokenizer", "--kind", "binary", "--bits", "8", "--token-each", "2", "--data",
                 str(image_folder), "--resolution", "16", "--steps", "3", "--batch-size", "4", "--warmup-steps", "1",
                 "--sample-every", "3", "--checkpoint-every", "3", "--disc-weight", "0.1", "--disc-start", "1",
                 "--out", str(out), "-q"]) == 0
    tok = load_tokenizer(out)
    assert isinstance(tok, BinaryAutoEncoder) and tok.kind == "bits" and not tok.training
    assert (tok.bits, tok.token_each, tok.code_dim, tok.codebook_size, tok.downsample) == (8, 2, 4, 16, 4)
    images = _images(2)
    with torch.no_grad():
        ids = tok.encode(images)
        assert ids.shape == (2, 4, 4, 2) and int(ids.max()) < 16
        assert tok.decode(ids).shape == images.shape
    assert (out / "samples" / "tokenizer_000003.png").is_file()
    logs = json.loads((out / "train.json").read_text())["final_losses"]
    assert {"rec", "code", "gen_adv", "disc"} <= set(logs)


@pytest.mark.parametrize("args, message", [
    (["--kind", "vq", "--bits", "8"], "--bits / --token-each / --deterministic are for --kind binary"),
    (["--kind", "binary", "--codebook-size", "8"], "--codebook-size: not options of a binary autoencoder"),
    (["--kind", "binary", "--bits", "8", "--token-each", "3"], "token_each=3 does not divide the 8 bits"),
])
def test_bad_binary_options_are_one_line(args, message, tmp_path, capsys):
    assert main(["train", "tokenizer", *args, "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
