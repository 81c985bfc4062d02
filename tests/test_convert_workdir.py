"""``jaxddpm convert`` in both directions, and its refusals."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="conversion to and from the PyTorch model needs PyTorch (pip install -e '.[parity]')")
pytestmark = pytest.mark.torch

from jaxddpm import cli
from parity import convert, reference


@pytest.mark.slow
def test_torch_checkpoint_to_workdir_then_sample_and_back(tmp_path, capsys):
    torch.manual_seed(0)
    model = reference.SimpleUNet(image_channels=3, channels=(8, 16, 32), out_channels=3, time_emb_dim=16)
    pt = tmp_path / "article.pt"
    torch.save(model.state_dict(), pt)
    workdir = tmp_path / "imported"
    assert cli.main(["convert", "--from-torch", str(pt), "--out", str(workdir)]) == 0
    assert cli.main(["sample", "--workdir", str(workdir), "--num", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 64, 64, 3)

    back = tmp_path / "back.pt"
    assert cli.main(["convert", "--to-torch", str(workdir), "--out", str(back)]) == 0
    reloaded = reference.SimpleUNet(image_channels=3, channels=(8, 16, 32), out_channels=3, time_emb_dim=16)
    reloaded.load_state_dict(torch.load(back, weights_only=True), strict=True)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, reloaded.state_dict()[k]), k


def test_trained_workdir_exports_to_the_article_model(tiny_run, tmp_path):
    workdir = tiny_run
    out = tmp_path / "model.pt"
    assert cli.main(["convert", "--to-torch", workdir, "--out", str(out)]) == 0
    model = reference.SimpleUNet(image_channels=1, channels=(4, 8), out_channels=1, time_emb_dim=8)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_wrong_model_checkpoint_is_refused_without_writing(tmp_path, capsys):
    pt = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "init_conv.weight": torch.zeros(8, 3, 3, 3)}, pt)
    workdir = tmp_path / "w"
    assert cli.main(["convert", "--from-torch", str(pt), "--out", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not workdir.exists()


def test_existing_outputs_are_never_overwritten(tiny_run, tmp_path, capsys):
    workdir = tiny_run
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    assert cli.main(["convert", "--to-torch", workdir, "--out", str(out)]) == 2
    assert out.read_bytes() == b"precious"
    sd = convert.flax_to_torch(convert.torch_to_flax(reference.SimpleUNet(channels=(4, 8, 16)).state_dict()))
    pt = tmp_path / "a.pt"
    torch.save(sd, pt)
    before = sorted(os.listdir(workdir))
    assert cli.main(["convert", "--from-torch", str(pt), "--out", workdir]) == 2
    assert sorted(os.listdir(workdir)) == before
    assert "already holds a run" in capsys.readouterr().err


def test_a_ddpm_unet_workdir_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    import json
    import shutil

    workdir = tmp_path / "unet"
    shutil.copytree(tiny_run, workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["name"] = "ddpm_unet"
    (workdir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "model.pt"
    assert cli.main(["convert", "--to-torch", str(workdir), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --to-torch writes the article's SimpleUNet; {workdir} holds a ddpm_unet model "
                                       "(--to-diffusers writes a ddpm_unet as a diffusers UNet2DModel)\n")
    assert not out.exists()
