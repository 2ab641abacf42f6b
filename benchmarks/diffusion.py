"""Factories for ``archlab bench diffusion``: archlab's DDPM U-Net and samplers versus ``diffusers``
(``UNet2DModel`` + ``DDPMScheduler`` / ``DDIMScheduler``) at the same U-Net size.

Both U-Nets: 28x28x1 images, channels (32, 64, 64) over three resolutions (28 -> 14 -> 7), one residual block
per resolution on the way down and two on the way up, GroupNorm with 8 groups, a sinusoidal time embedding
and a 128-wide time MLP, no attention (diffusers: ``DownBlock2D`` / ``UpBlock2D``, ``add_attention=False``).
Parameter counts are printed in the report (they differ by the layout of skips and resamplers, not size).

- ``task = "train"``: one DDPM training step: t ~ U{0..999}, eps ~ N(0, I), x_t from the schedule's
  ``add_noise``, MSE(eps_theta(x_t, t), eps), backward, Adam step (``torch.optim.Adam``, foreach, the same
  on both sides).
- ``task = "sample"``: DDIM with 50 steps, eta = 0, clipping of the predicted x_0 (archlab's
  ``model.sample``; diffusers' ``DDIMScheduler.step`` in the loop its pipelines run), from the same noise.

``precision = "bf16"``: CPU bf16 autocast around the network on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

import archlab


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _ours_model(threads: int) -> torch.nn.Module:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return archlab.create("ddpm", channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, groups=8, num_steps=1000)


def _peer_model(threads: int) -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       norm_num_groups=8, add_attention=False)


def _train_step(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], params: Any,
                add_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], batch: int,
                precision: str) -> Callable[[], None]:
    x0 = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gen = torch.Generator().manual_seed(2)
    opt = torch.optim.Adam(params, lr=1e-4, foreach=True)

    def step() -> None:
        t = torch.randint(1000, (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        opt.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = F.mse_loss(predict(add_noise(x0, eps, t), t).float(), eps)
        loss.backward()
        opt.step()

    return step


def ours(task: str = "train", batch: int = 32, precision: str = "fp32", threads: int = 1,
         **_: Any) -> Callable[[], Any]:
    model = _ours_model(threads)
    if task == "train":
        model.train()
        return _train_step(model, model.parameters(), model.schedule.add_noise, batch, precision)
    model.eval()

    def sample() -> torch.Tensor:
        with _autocast(precision):
            return model.sample(batch, torch.Generator().manual_seed(3), steps=50, eta=0.0)

    return sample


def peer(task: str = "train", batch: int = 32, precision: str = "fp32", threads: int = 1,
         **_: Any) -> Callable[[], Any]:
    from diffusers import DDIMScheduler, DDPMScheduler

    model = _peer_model(threads)
    if task == "train":
        model.train()
        sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        return _train_step(lambda x, t: model(x, t).sample, model.parameters(), sched.add_noise, batch, precision)
    model.eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)

    @torch.no_grad()
    def sample() -> torch.Tensor:
        sched.set_timesteps(50)
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(3))
        for t in sched.timesteps:
            with _autocast(precision):
                eps = model(x, t).sample
            x = sched.step(eps.float(), t, x, eta=0.0).prev_sample
        return (x + 1) / 2

    return sample


def report(result: dict[str, Any]) -> str:
    """Parameter counts of the two U-Nets (appended to the table)."""
    threads = int(result["params"].get("threads", 1))
    n_ours = sum(p.numel() for p in _ours_model(threads).parameters())
    n_peer = sum(p.numel() for p in _peer_model(threads).parameters())
    return f"\nParameters: archlab `ddpm` {n_ours:,}; diffusers `UNet2DModel` {n_peer:,}.\n"
