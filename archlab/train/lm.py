"""Autoregressive language modelling on a token stream (nanoGPT's ``train.py``).

One step = ``accumulate`` micro-batches -> one optimizer update. A micro-batch is ``batch_size``
windows of ``block_size + 1`` tokens starting at uniformly random offsets of the training stream
(with replacement, like nanoGPT's ``get_batch``); inputs are the first ``block_size`` tokens, targets
the same window shifted by one:

    x = s[i : i + T],   y = s[i + 1 : i + T + 1],     i ~ U{0 .. len(s) - T - 1}
    loss = (1 / (B T)) sum_{b,t} -log softmax(f(x_b))_{t, y_{b,t}}     (nats per token)
    W <- AdamW(W, clip(grad loss)),   lr <- warmup + cosine decay       (recipe [optim])

Evaluation (``train.eval_every``) averages the loss of ``train.eval_iters`` random batches of train
and of val (nanoGPT's ``estimate_loss``) and reports ``train_loss`` and ``val_loss``; the lowest
``val_loss`` is remembered. The run's final metrics are one more estimate over ``eval_iters`` batches
drawn by a generator seeded from the run's seed -- so ``archlab eval RUN`` gives the same numbers --
plus ``val_ppl = exp(val_loss)`` and ``best_val_loss`` / ``best_step`` of the periodic evaluations.
The saved model is the final one (not the best).

Offsets come from private generators whose states are in the checkpoint, so a resumed run draws
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data.text import TextDataset, load_text_dataset
from ..data.tokenizers import Tokenizer, load_tokenizer
from ..engine.loop import Context, Loop, register_loop
from ..engine.parallel import STRATEGIES
from ..errors import ArchlabError
from ..io import atomic_write_bytes
from ..models.base import ArchModel
from ..registry import get

if TYPE_CHECKING:
    from ..recipe import Recipe

TOKENIZER_FILE = "tokenizer.json"
SAMPLES_FILE = "samples.txt"
#: ``samples.txt``: this many tokens continuing "\n", sampled as nanoGPT's ``sample.py`` does.
SAMPLE_TOKENS = 500
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 200


def random_windows(ids: torch.Tensor, block_size: int, batch_size: int, gen: torch.Generator,
                   offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random (input, target) windows of ``ids``.

    Shapes: ids ``[N]`` -> x, y ``[batch_size, block_size]`` (on ``ids``' device; ``offsets`` is
    ``arange(block_size + 1)`` there)."""
    start = torch.randint(len(ids) - block_size, (batch_size,), generator=gen).to(ids.device)
    windows = ids[start[:, None] + offsets]
    return windows[:, :-1], windows[:, 1:]


@dataclass
class LMConfig:
    """``[loop]`` of the language-model loop."""

    eval_iters: int = 200
    """Random batches of train and of val averaged per evaluation (nanoGPT's eval_iters)."""

    def __post_init__(self) -> None:
        if not 1 <= self.eval_iters <= 10**6:
            raise ValueError(f"eval_iters must be in [1, 1e6], got {self.eval_iters}")


@register_loop("lm")
class LanguageModeling(Loop):
    """Next-token prediction on a token stream (GPT): random windows, cross-entropy, perplexity."""

    Config = LMConfig
    data_kind = "text"
    model_families = ("transformers",)
    parallel = STRATEGIES
    metrics = ("train_loss", "val_loss", "val_ppl")
    monitor = ("val_loss", "min")

    @classmethod
    def load_data(cls, recipe: Recipe) -> TextDataset:
        return load_text_dataset(recipe.data.name, recipe.data.options)

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: TextDataset) -> dict[str, Any]:
        """The vocabulary size comes from the tokenizer (when the model's config has the key)."""
        fields = {f.name for f in dataclasses.fields(get(recipe.model_name).config_class)}
        return {"vocab_size": data.vocab_size} if "vocab_size" in fields else {}

    def __init__(self, recipe: Recipe, model: ArchModel, data: TextDataset, ctx: Context) -> None:
        super().__init__(recipe, model, data, ctx)
        tc, dc = recipe.train, recipe.data
        block = getattr(model.config, "block_size", None)
        if not isinstance(block, int):
            raise ArchlabError(f"the lm loop needs a language model with a block_size (e.g. gpt); "
                               f"{recipe.model_name!r} has none")
        vocab = getattr(model.config, "vocab_size", data.vocab_size)
        if vocab < data.vocab_size:
            raise ArchlabError(f"model.vocab_size {vocab} is smaller than the tokenizer's vocabulary "
                               f"({data.vocab_size}); drop the key to take it from the data")
        for split in ("train", "val"):
            if len(getattr(data, split)) <= block:
                raise ArchlabError(f"the {split} split of {data.name!r} has {len(getattr(data, split))} tokens, "
                                   f"not more than block_size {block}")
        if dc.batch_size % ctx.dist.world_size:
            raise ArchlabError(f"data.batch_size {dc.batch_size} must be divisible by --nproc {ctx.dist.world_size}")
        self.block_size = block
        self.model = model.to(ctx.device)
        self.ids = {"train": data.train.to(ctx.device), "val": data.val.to(ctx.device)}
        self.offsets = torch.arange(block + 1, device=ctx.device)
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.eval_gen = torch.Generator().manual_seed(ctx.seed + 1)
        tokens_per_step = dc.batch_size * block * tc.accumulate
        self.total_steps = tc.steps or max(1, round(tc.epochs * len(data.train) / tokens_per_step))
        self.eval_every = tc.eval_every or self.total_steps
        self.opt = self.trainable("model", self.model)
        self.forward = torch.compile(self.model) if tc.compile else self.model

    # ----------------------------------------------------------------------------- training
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.ctx.precision.autocast():
            logits = self.forward(x)
        return self._token_loss(logits, y)

    @staticmethod
    def _token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per token. Shapes: logits ``[B, T, V]``, y ``[B, T]``."""
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def train_step(self, step: int) -> dict[str, Any]:
        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            # Every worker draws the same global batch (same generator); train.parallel picks its part.
            return random_windows(self.ids["train"], self.block_size, self.recipe.data.batch_size, self.gen,
                                  self.offsets)

        tc = self.recipe.train
        return self.opt.batch_step(tc.accumulate, tc.l1, next_batch, self.forward, self._token_loss)

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def estimate_loss(self, gen: torch.Generator) -> dict[str, float]:
        """Mean cross-entropy (nats per token) over ``eval_iters`` random batches of train and of val."""
        self.model.eval()
        out = {}
        for split in ("train", "val"):
            losses = [self._loss(*random_windows(self.ids[split], self.block_size, self.recipe.data.batch_size,
                                                 gen, self.offsets))
                      for _ in range(self.cfg.eval_iters)]
            out[f"{split}_loss"] = torch.stack(losses).mean().item()
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        return self.estimate_loss(self.eval_gen)

    def final_metrics(self) -> dict[str, float]:
        scores = self.estimate_loss(torch.Generator().manual_seed(self.ctx.seed + 2))
        return {**scores, "val_ppl": math.exp(scores["val_loss"])}

    # ----------------------------------------------------------------------------- artifacts
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``tokenizer.json`` (for ``archlab generate``) and ``samples.txt``: SAMPLE_TOKENS tokens after "\\n"."""
        run_dir = Path(run_dir)
        tok = self.data.tokenizer
        tok.save(run_dir / TOKENIZER_FILE)
        if not hasattr(self.model, "generate"):
            return
        text = sample(self.model, tok, "\n", SAMPLE_TOKENS, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K,
                      seed=self.ctx.seed, precision=self.ctx.precision)
        atomic_write_bytes(run_dir / SAMPLES_FILE, text.encode())

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "gen": self.gen.get_state(), "eval_gen": self.eval_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.gen.set_state(state["gen"])
        self.eval_gen.set_state(state["eval_gen"])


def sample(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, *,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
           precision: Any = None, compile: bool = False) -> str:
    """``prompt`` followed by ``max_new_tokens`` sampled tokens, decoded (the model is put in eval mode).
    ``compile``: decode through the model's compiled one-token step (``generate(compile=True)``)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ArchlabError("the prompt is empty: give at least one character")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    x = torch.tensor([ids], dtype=torch.long, device=device)
    ctx = precision.autocast() if precision is not None else contextlib.nullcontext()
    with ctx:
        extra = {"compile": True} if compile else {}
        out = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen,
                             **extra)
    return tokenizer.decode(out[0].tolist())


def generate_from_run(run_dir: str | os.PathLike, prompt: str, max_new_tokens: int, *, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                      device: str = "auto", compile: bool = False) -> str:
    """Continue ``prompt`` with the final model and tokenizer of a language-model run directory
    (``compile``: through the compiled one-token step, see :meth:`archlab.models.transformers.gpt.GPT.generate`)."""
    from ..engine.device import resolve_device
    from ..registry import CONFIG_FILE, load

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArchlabError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ArchlabError(f"{run_dir} has no final model ({CONFIG_FILE}): not a finished run directory")
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise ArchlabError(f"{run_dir} has no {TOKENIZER_FILE}: not a language-model run (train.loop = \"lm\")")
    if max_new_tokens < 0:
        raise ArchlabError(f"--tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise ArchlabError(f"--temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ArchlabError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ArchlabError(f"--top-p must be in (0, 1], got {top_p}")
    dev = resolve_device(device)
    model = load(run_dir, map_location=str(dev))
    if not hasattr(model, "generate"):
        raise ArchlabError(f"{run_dir} holds a {model.registry_name!r} model, which cannot generate text")
    if compile and "compile" not in inspect.signature(model.generate).parameters:
        raise ArchlabError(f"--compile: a {model.registry_name!r} model has no compiled decoding step")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    try:
        return sample(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      seed=seed, compile=compile)
    except Exception as e:
        if not compile or isinstance(e, ArchlabError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ArchlabError(f"--compile failed ({type(e).__name__}: {first}); torch.compile needs a working C++ "
                           "compiler on CPU. Run without --compile.") from e
