"""Contrastive image-text pretraining (CLIP) on labelled images captioned by archlab.

One step:

    x, y   = next batch of the training split
    text   = one caption per image, drawn by archlab.data.captions from y and the image's attributes
             (template, wording and attribute choice from the loop's seeded generator)
    L      = model.ssl_loss(x, tokens(text))            (symmetric InfoNCE over the batch's N x N pairs)
    theta <- optimizer(theta, grad L) ; model.after_step(progress)   (logit scale clipped)

Labels reach the model only through the captions' words. Evaluation is zero-shot: every class's
prompts (``archlab.data.captions.PROMPTS``, averaged -- prompt ensembling) are embedded, and an image is
assigned the class whose text embedding is nearest (``{split}_zeroshot_acc``). The final metrics add
image->text and text->image retrieval on the first ``retrieval_size`` test images, each paired with one
caption drawn by a fixed generator: ``test_i2t_r{k}`` (k = 1, 5, 10) is the share of images whose caption is among the
``k`` texts nearest to it. Captions of different images can be the same string ("the digit 7"), and
identical strings have identical embeddings, so a retrieved caption counts as correct when its *text*
equals the image's own caption (and a retrieved image when its caption's text equals the query).

The checkpoint holds the model, the optimizer, the batch order and the caption generator: resuming
is bit-exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Dataset
from ..data.augment import make_views
from ..data.captions import CaptionGenerator, attributes, caption_tokenizer, class_prompts, encode
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from .probe import plot_embedding
from .supervised import BatchStream, total_steps

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class CLIPLoopConfig:
    """``[loop]`` of the image-text contrastive loop."""

    p_attribute: float = 0.5
    """chance that a training caption mentions a measured attribute (thick, slanted left, small ...)"""
    augment: list[str] = field(default_factory=list)
    """image augmentations (archlab.data.augment specs) applied to the training images; none by default"""
    retrieval_size: int = 1000
    """test images (with one caption each) in the retrieval evaluation (1k as in CLIP's Flickr30k test)"""
    caption_seed: int = 1234
    """seed of the generator drawing the retrieval captions (fixed, so every run is scored on the same texts)"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_attribute <= 1.0:
            raise ValueError(f"p_attribute must be in [0, 1], got {self.p_attribute}")
        if self.retrieval_size < 1:
            raise ValueError(f"retrieval_size must be >= 1, got {self.retrieval_size}")
        try:
            make_views(self.augment)
        except ArchlabError as exc:
            raise ValueError(str(exc)) from None


def recall_at_k(sim: torch.Tensor, match: torch.Tensor, ks: list[int]) -> dict[int, float]:
    """Share of rows whose ``k`` most similar columns contain a match.

    Shapes: sim ``[Q, G]`` similarities; match ``[Q, G]`` bool (which gallery items are correct) -> {k: recall}
    """
    order = sim.argsort(dim=1, descending=True)
    hit = match.gather(1, order)                                             # [Q, G] in rank order
    return {k: float(hit[:, :k].any(1).float().mean()) for k in ks}


@register_loop("clip")
class ContrastiveImageText(Loop):
    """CLIP pretraining on (image, generated caption) pairs; zero-shot accuracy and recall@k measure it."""

    Config = CLIPLoopConfig
    model_families = ("ssl",)
    metrics = ("val_zeroshot_acc", "test_zeroshot_acc", "test_i2t_r1", "test_i2t_r5", "test_i2t_r10",
               "test_t2i_r1", "test_t2i_r5", "test_t2i_r10")
    recall_k = (1, 5, 10)
    monitor = ("val_zeroshot_acc", "max")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: Any) -> None:
        if not getattr(model, "paired_text", False):
            raise ArchlabError(f"train.loop 'clip' trains image-text models (model.name = \"clip\"); "
                               f"{recipe.model_name!r} learns from augmented views: use train.loop = \"ssl\"")
        x = data.train.x[:2]
        if x.dim() != 4:
            raise ArchlabError(f"train.loop 'clip' captions images [N, C, H, W]; {recipe.data.name!r} has examples "
                               f"of shape {tuple(x.shape[1:])}")
        vocab = caption_tokenizer().vocab_size
        if model.config.vocab_size < vocab:
            raise ArchlabError(f"model.vocab_size: the captions use {vocab} symbols, got {model.config.vocab_size}")
        make_views(recipe.loop.augment)(x, torch.Generator().manual_seed(0))
        model.check_encoder_output(x)

    def __init__(self, recipe: Recipe, model: Any, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the clip loop runs in one process (the loss needs the whole batch); drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.tokenizer = caption_tokenizer()
        self.context = model.config.context_length
        self.captioner = CaptionGenerator(self.cfg.p_attribute)
        self.train_attrs = attributes(data.train.x, data.train.y)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.gen = torch.Generator().manual_seed(ctx.seed + 1)
        self.views = make_views(self.cfg.augment)
        self.total_steps, per_epoch = total_steps(recipe, len(data.train))
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.opt = self.trainable("model", model.trained_modules())
        prompts = class_prompts(data.num_classes)
        self.prompts = encode([p for ps in prompts for p in ps], self.tokenizer, self.context).view(
            data.num_classes, len(prompts[0]), self.context)

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        idx = self.stream.next()
        text = self.captioner.captions(self.data.train.y[idx], self.train_attrs[idx], self.gen)
        tokens = encode(text, self.tokenizer, self.context).to(self.ctx.device)
        x = self.data.train.x[idx].to(self.ctx.device)
        if self.cfg.augment:
            x = self.views(x, self.gen)
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            loss = self.model.ssl_loss(x, tokens)
        self.opt.backward(loss)
        lr = self.opt.step()
        extra = self.model.after_step((step + 1) / self.total_steps)
        return {"loss": loss.detach(), "lr": lr, **extra}

    def _image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.recipe.data.eval_batch_size
        with self.ctx.precision.autocast():
            out = [self.model.encode_image(x[i:i + bs].to(self.ctx.device)).float().cpu() for i in range(0, len(x), bs)]
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    @torch.no_grad()
    def zero_shot_accuracy(self, split: str) -> float:
        part = getattr(self.data, split)
        self.model.eval()
        classes = self.model.class_embeddings(self.prompts.to(self.ctx.device)).float().cpu()
        pred = (self._image_embeddings(part.x) @ classes.T).argmax(1)
        return float((pred == part.y).float().mean())

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        if len(getattr(self.data, split)) == 0:
            return {}
        return {f"{split}_zeroshot_acc": self.zero_shot_accuracy(split)}

    @torch.no_grad()
    def retrieval(self) -> dict[str, float]:
        """Image->text and text->image recall@k on the first ``retrieval_size`` test images (module docstring)."""
        n = min(self.cfg.retrieval_size, len(self.data.test))
        x, y = self.data.test.x[:n], self.data.test.y[:n]
        text = self.captioner.captions(y, attributes(x, y), torch.Generator().manual_seed(self.cfg.caption_seed))
        self.model.eval()
        img = self._image_embeddings(x)
        tokens = encode(text, self.tokenizer, self.context)
        bs = self.recipe.data.eval_batch_size
        txt = torch.cat([self.model.encode_text(tokens[i:i + bs].to(self.ctx.device)).float().cpu()
                         for i in range(0, n, bs)])
        sim = img @ torch.nn.functional.normalize(txt, dim=1).T                  # [n images, n texts]
        ids = {t: i for i, t in enumerate(sorted(set(text)))}
        key = torch.tensor([ids[t] for t in text])
        match = key[:, None] == key[None, :]                                     # same caption text
        out = {}
        for name, (s, m) in {"i2t": (sim, match), "t2i": (sim.T, match.T)}.items():
            out.update({f"test_{name}_r{k}": r for k, r in recall_at_k(s, m, list(self.recall_k)).items()})
        return out

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        out = {"test_zeroshot_acc": self.zero_shot_accuracy("test")}
        if len(self.data.val):
            out["val_zeroshot_acc"] = self.zero_shot_accuracy("val")
        out.update(self.retrieval())
        out["logit_scale"] = float(self.model.scale().detach())
        return out

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``plots/embedding.png``: PCA of the test set's image embeddings, coloured by class."""
        with torch.no_grad():
            self.model.eval()
            e = self._image_embeddings(self.data.test.x)
        plot_embedding(e, self.data.test.y, Path(run_dir) / "plots" / "embedding.png",
                       f"{self.recipe.name}: {self.recipe.model_name} image embeddings, PCA of the test set")

    def state_dict(self) -> dict[str, Any]:
        return {"optim": self.opt.state_dict(), "model": self.model.state_dict(),
                "stream": self.stream.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optim"])
        self.model.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
        self.gen.set_state(state["gen"])
