"""``archlab sample`` and ``archlab interpolate`` on a tiny VAE run, a saved DCGAN and a saved DDPM."""

from __future__ import annotations

import pytest

import archlab
from archlab.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path_factory.mktemp("runs") / "vae"
    raw = {"name": "vae_cli", "seed": 0, "model": {"name": "vae", "hidden": [16], "latent_dim": 2},
           "data": {"name": "digits", "batch_size": 64}, "optim": {"name": "adam", "lr": 3e-3},
           "train": {"loop": "elbo", "steps": 10, "log_every": 5}, "loop": {"samples": 4}}
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    return out


def test_sample_and_interpolate_a_vae_run(vae_run, tmp_path, capsys):
    assert main(["sample", str(vae_run), "--n", "6", "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["interpolate", str(vae_run), "--pairs", "2", "--frames", "5", "--out", str(tmp_path / "i.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert (tmp_path / "i.png").stat().st_size > 0 and (tmp_path / "i.gif").stat().st_size > 0


def test_sample_a_ddpm_and_walk_a_dcgan(tmp_path):
    archlab.create("ddpm", image_shape=[1, 8, 8], channels=8, channel_mult=[1, 2], groups=4,
                   num_steps=20).save_pretrained(tmp_path / "ddpm")
    archlab.create("dcgan", image_shape=[1, 8, 8], latent_dim=4, width=4).save_pretrained(tmp_path / "gan")
    assert main(["sample", str(tmp_path / "ddpm"), "--n", "2", "--steps", "4", "--out", str(tmp_path / "d.png")]) == 0
    assert main(["sample", str(tmp_path / "ddpm"), "--n", "2", "--ddpm", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["interpolate", str(tmp_path / "gan"), "--pairs", "1", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "d.png").exists() and (tmp_path / "a.png").exists() and (tmp_path / "g.gif").exists()


@pytest.mark.parametrize("argv, message", [
    (["sample", "{run}", "--out", "{tmp}/grid.jpg"], ".png"),
    (["sample", "{run}", "--n", "0", "--out", "{tmp}/g.png"], "--n"),
    (["sample", "{run}", "--out", "{tmp}/no/such/g.png"], "does not exist"),
    (["sample", "{tmp}", "--out", "{tmp}/g.png"], "config.json"),
    (["interpolate", "{run}", "--frames", "1", "--out", "{tmp}/g.png"], "--frames"),
])
def test_bad_arguments_are_one_line(vae_run, tmp_path, capsys, argv, message):
    argv = [a.format(run=vae_run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
