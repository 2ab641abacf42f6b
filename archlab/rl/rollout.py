"""Play a saved policy: episode returns, and optionally an animated GIF of the rendered frames."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchlabError
from .env import VecEnv

#: GIFs keep at most this many frames (longer episodes are subsampled evenly) to stay small.
MAX_GIF_FRAMES = 600


def rollout(path: str | Path, episodes: int = 5, gif: str | Path | None = None, seed: int = 0,
            deterministic: bool = True, fps: int = 30, log: Any = print) -> list[float]:
    """Play ``episodes`` episodes with the agent saved in ``path`` (an ``agent.save`` folder or an RL
    run directory); with ``gif``, render them (``render_mode="rgb_array"``) into an animated GIF."""
    from . import load

    if episodes < 1:
        raise ArchlabError(f"--episodes must be >= 1, got {episodes}")
    if fps < 1:
        raise ArchlabError(f"--fps must be >= 1, got {fps}")
    path = Path(path)
    if not path.is_dir():
        raise ArchlabError(f"not a folder: {path}")
    agent = load(path)
    try:
        env = VecEnv(agent.env_id, 1, seed, agent.env_options, render_mode="rgb_array" if gif else None)
        frames: list[np.ndarray] = []
        returns: list[float] = []
        obs = env.reset()
        if gif:
            frames.append(env.render())
        while len(returns) < episodes:
            action = agent.predict(obs[0], deterministic=deterministic)
            obs, _, _, _, info = env.step(np.asarray(action)[None])
            if gif:
                frames.append(env.render())
            for ret, length in info["episodes"]:
                returns.append(ret)
                log(f"episode {len(returns)}: return {ret:.2f}, length {length}")
        env.close()
        if gif:
            write_gif(frames, gif, fps)
            log(f"wrote {gif} ({min(len(frames), MAX_GIF_FRAMES)} frames)")
    finally:
        if hasattr(agent, "close"):
            agent.close()
    log(f"mean return over {episodes} episodes: {np.mean(returns):.2f} ± {np.std(returns):.2f}")
    return returns


def write_gif(frames: list[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """An animated GIF (Pillow) of RGB frames ``[H, W, 3]`` uint8, written atomically."""
    from PIL import Image

    from ..io import atomic_write_bytes

    frames = [f for f in frames if f is not None]
    if not frames:
        raise ArchlabError("the environment rendered no frames (does it support render_mode='rgb_array'?)")
    if len(frames) > MAX_GIF_FRAMES:
        keep = np.linspace(0, len(frames) - 1, MAX_GIF_FRAMES).round().astype(int)
        frames = [frames[i] for i in keep]
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=max(20, 1000 // fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
