"""Unpaired image-to-image translation (CycleGAN, Zhu et al. 2017) between a dataset's images (domain A)
and a second domain B that the loop makes from the same dataset, with four named optimizers.

Domains: the training split is cut in two by a permutation seeded with ``loop.domain_seed``; the first half
is A as it is, the second half goes through the domain transform and is B, so no image of A has its
partner in B (unpaired). ``dilate_invert`` (the only transform so far) thickens the strokes by a grey
dilation (a k x k max filter, k = ``loop.dilation``) and inverts the result: white digits on black become
thick black digits on white. Validation and test images are transformed one to one, so content can be
measured (the networks never train on pairs).

One step (their Sec. 3 and code; LSGAN losses, Mao et al. 2017):

    a ~ A, b ~ B (in [-1, 1]),  G: A -> B, F: B -> A                 [optim.generator_ab], [optim.generator_ba]
    L_G = (D_B(G(a)) - 1)^2 + (D_A(F(b)) - 1)^2                             adversarial (bce: BCE(D, 1))
        + lambda (|F(G(a)) - a|_1 + |G(F(b)) - b|_1)                        cycle consistency (eq. 2)
        + lambda lambda_id (|G(b) - b|_1 + |F(a) - a|_1)                    identity (Sec. 5.2)
    b~ = pool_B(G(a)), a~ = pool_A(F(b))                                    history of 50 fakes (Shrivastava et al.)
    L_D_A = ((D_A(a) - 1)^2 + D_A(a~)^2) / 2,  L_D_B likewise         [optim.discriminator_a], [optim.discriminator_b]

(means over pixels, patches and the batch; lambda = ``cycle_weight``, lambda_id = ``identity_weight``).
With ``ema_decay`` > 0 the generators' weight averages are what the run saves.

Evaluation needs ``loop.classifier``, a trained classifier of domain A (e.g. the LeNet-5 run that FID uses):
``{split}_content_acc`` is its accuracy on F(b) against the labels of the images b was made from (content kept
by B -> A), ``{split}_raw_acc`` the same classifier on b itself (the baseline translation must beat);
the final metrics add ``test_content_acc_ab`` (A -> B: the classifier on 1 - G(a), which undoes the inversion
and leaves the thick strokes; ``test_raw_acc_ab`` on 1 - T(a) is its baseline), ``test_cycle_l1``
(|F(G(a)) - a| in [0, 1] units) and ``test_fid_ba`` (FID of F(b) against A's test images, with the same
classifier's features). The run directory gets ``translations.png``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..models.generative.fid import frechet_distance, load_feature_network
from ..models.generative.images import pixel_range, save_grid
from ..nn.ema import update_ema
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


def dilate_invert(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Domain B of ``dilate_invert``: 1 - maxfilter_k(x) for images (N, C, H, W) in [0, 1] (grey dilation with a
    k x k square, then inversion)."""
    return 1 - F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)


def unpaired_domains(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint index sets (A, B) splitting ``range(n)`` in halves by a permutation seeded with ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2: 2 * (n // 2)]


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): once full, each new fake is returned with
    probability 1/2, otherwise it replaces a random stored fake, which is returned instead."""

    def __init__(self, size: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.size, self.count = size, 0
        self.images = torch.zeros(size, *shape, device=device)

    def query(self, fakes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return fakes
        out = fakes.clone()
        for i in range(len(fakes)):
            if self.count < self.size:
                self.images[self.count] = fakes[i]
                self.count += 1
            elif float(torch.rand((), generator=gen)) < 0.5:
                j = int(torch.randint(0, self.size, (), generator=gen))
                out[i] = self.images[j].clone()
                self.images[j] = fakes[i]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images.copy_(state["images"])
        self.count = int(state["count"])


@dataclass
class CycleGANLoopConfig:
    """``[loop]`` of the cycle_gan loop."""

    domain_b: Literal["dilate_invert"] = "dilate_invert"
    """How domain B is made from the dataset's images."""
    dilation: int = 3
    """dilate_invert: side of the square max filter (odd)."""
    domain_seed: int = 0
    """Seed of the permutation that splits the training images into A and B."""
    loss: Literal["lsgan", "bce"] = "lsgan"
    """Adversarial loss: least squares (Zhu et al.) or the non-saturating cross-entropy."""
    cycle_weight: float = 10.0
    """lambda of the cycle-consistency loss (the paper's 10)."""
    identity_weight: float = 0.5
    """lambda_id, relative to lambda (the paper's 0.5); 0: no identity loss."""
    pool_size: int = 50
    """Generated images kept for the discriminators' history (0: use the newest fakes only)."""
    ema_decay: float = 0.0
    """Decay of the generators' weight averages; 0: no EMA."""
    classifier: str = ""
    """Run directory of a trained classifier of domain A; "": no evaluation."""
    eval_samples: int = 1000
    """Images of each split the evaluation translates."""
    samples: int = 10
    """Columns of ``translations.png``."""

    def __post_init__(self) -> None:
        if self.domain_b != "dilate_invert":
            raise ValueError(f"domain_b must be 'dilate_invert', got {self.domain_b!r}")
        if self.loss not in ("lsgan", "bce"):
            raise ValueError(f"loss must be 'lsgan' or 'bce', got {self.loss!r}")
        if self.dilation < 1 or self.dilation % 2 == 0 or self.dilation > 15:
            raise ValueError(f"dilation must be odd, 1 to 15, got {self.dilation}")
        if not 0 <= self.cycle_weight <= 1e4 or not 0 <= self.identity_weight <= 1e2 or not 0 <= self.ema_decay < 1:
            raise ValueError("need 0 <= cycle_weight <= 1e4, 0 <= identity_weight <= 100 and 0 <= ema_decay < 1")
        if not 0 <= self.pool_size <= 10**4 or not 1 <= self.eval_samples <= 10**6 or not 1 <= self.samples <= 64:
            raise ValueError("need 0 <= pool_size <= 1e4, 1 <= eval_samples <= 1e6 and 1 <= samples <= 64")


@register_loop("cycle_gan")
class CycleGANLoop(Loop):
    """CycleGAN between a dataset (A) and a domain made from it (B): two generators, two discriminators."""

    Config = CycleGANLoopConfig
    model_families = ("generative",)
    trainables = ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b")
    metrics = ("val_content_acc", "val_raw_acc", "test_content_acc", "test_raw_acc", "test_content_acc_ab",
               "test_raw_acc_ab", "test_cycle_l1", "test_fid_ba")
    monitor = ("val_content_acc", "max")
    progress_keys = ("loss", "d_loss")

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Dataset) -> dict[str, Any]:
        return {"image_shape": list(data.input_shape)}

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if any(getattr(model, k, None) is None for k in cls.trainables):
            raise ArchlabError(f"model {recipe.model_name!r} has no generator_ab / generator_ba / discriminator_a / "
                               "discriminator_b; the cycle_gan loop trains cyclegan")
        if list(data.input_shape) != list(model.config.image_shape):
            raise ArchlabError(f"model.image_shape: {recipe.model_name!r} translates images of shape "
                               f"{tuple(model.config.image_shape)}, but {recipe.data.name!r} has examples of "
                               f"shape {tuple(data.input_shape)}")
        if len(data.train) // 2 < recipe.data.batch_size:
            raise ArchlabError(f"data.batch_size {recipe.data.batch_size} is larger than each domain's half of "
                               f"the training split ({len(data.train) // 2} images)")
        if recipe.loop.classifier:
            load_feature_network(recipe.loop.classifier)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the cycle_gan loop runs in one process; drop --nproc")
        if ctx.precision.name == "fp16":  # one loss scaler cannot serve the two generators' shared backward
            raise ArchlabError("train.precision: the cycle_gan loop runs in fp32 or bf16, not fp16")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc, c = recipe.train, recipe.data, self.cfg
        self.scale = lo, hi = pixel_range(data.train.x, dc.name)
        a_idx, b_idx = unpaired_domains(len(data.train), c.domain_seed)
        unit = ((data.train.x - lo) / (hi - lo)).clamp(0, 1)
        self.train_a = (unit[a_idx] * 2 - 1).to(ctx.device)
        self.train_b = (self.to_b(unit[b_idx]) * 2 - 1).to(ctx.device)
        self.stream_a = BatchStream(len(a_idx), dc.batch_size, seed=ctx.seed)
        self.stream_b = BatchStream(len(b_idx), dc.batch_size, seed=ctx.seed + 1)
        self.noise = torch.Generator().manual_seed(ctx.seed + 2)
        per_epoch = max(1, len(a_idx) // dc.batch_size)
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.classifier = load_feature_network(c.classifier) if c.classifier else None
        self.eval_every = (tc.eval_every or per_epoch) if self.classifier is not None and len(data.val) else 0
        self.opt = {name: self.trainable(name, getattr(model, name)) for name in self.trainables}
        shape = tuple(data.input_shape)
        self.pools = {d: ImagePool(c.pool_size, shape, ctx.device) for d in ("a", "b")}
        self.ema = ({k: copy.deepcopy(getattr(model, k)).eval().requires_grad_(False)
                     for k in ("generator_ab", "generator_ba")} if c.ema_decay else None)

    def to_b(self, unit: torch.Tensor) -> torch.Tensor:
        """Domain B of images in [0, 1] (``loop.domain_b``)."""
        return dilate_invert(unit, self.cfg.dilation)

    def _adv(self, scores: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.full_like(scores, 1.0 if real else 0.0)
        if self.cfg.loss == "lsgan":
            return F.mse_loss(scores, target)
        return F.binary_cross_entropy_with_logits(scores, target)

    def generator_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_G and its parts (adversarial, cycle, identity) for batches a (of A) and b (of B) in [-1, 1]."""
        m, c = self.model, self.cfg
        fake_b, fake_a = m.generator_ab(a), m.generator_ba(b)
        adv = self._adv(m.discriminator_b(fake_b).float(), True) + self._adv(m.discriminator_a(fake_a).float(), True)
        cycle = F.l1_loss(m.generator_ba(fake_b), a) + F.l1_loss(m.generator_ab(fake_a), b)
        loss = adv + c.cycle_weight * cycle
        parts = {"adv": adv, "cycle": cycle, "fake_a": fake_a, "fake_b": fake_b}
        if c.identity_weight:
            ident = F.l1_loss(m.generator_ab(b), b) + F.l1_loss(m.generator_ba(a), a)
            loss = loss + c.cycle_weight * c.identity_weight * ident
            parts["identity"] = ident
        return loss, parts

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        m, opt = self.model, self.opt
        a = self.train_a[self.stream_a.next().to(self.ctx.device)]
        b = self.train_b[self.stream_b.next().to(self.ctx.device)]
        for name in ("generator_ab", "generator_ba"):
            opt[name].zero_grad()
        with self.ctx.precision.autocast():
            g_loss, parts = self.generator_loss(a, b)
        g_loss = g_loss.float()
        opt["generator_ab"].backward(g_loss)  # one backward fills both generators' gradients
        lr = opt["generator_ab"].step()
        opt["generator_ba"].step()
        # The generators' backward also reached the discriminators; their zero_grad clears it.
        fake_a = self.pools["a"].query(parts["fake_a"].detach(), self.noise)
        fake_b = self.pools["b"].query(parts["fake_b"].detach(), self.noise)
        d_losses = {}
        for name, real, fake in (("discriminator_a", a, fake_a), ("discriminator_b", b, fake_b)):
            opt[name].zero_grad()
            with self.ctx.precision.autocast():
                net = getattr(m, name)
                d_loss = (self._adv(net(real).float(), True) + self._adv(net(fake).float(), False)) / 2
            opt[name].backward(d_loss)
            opt[name].step()
            d_losses[name] = d_loss.detach()
        if self.ema is not None:
            for k, ema in self.ema.items():
                update_ema(ema, getattr(m, k), self.cfg.ema_decay)
        return {"loss": g_loss.detach(), "d_loss": d_losses["discriminator_a"] + d_losses["discriminator_b"],
                "cycle": parts["cycle"].detach(), "adv": parts["adv"].detach(), "lr": lr}

    def _sampling_model(self) -> ArchModel:
        if self.ema is None:
            return self.model.eval()
        model = copy.deepcopy(self.model).eval()
        for k, ema in self.ema.items():
            getattr(model, k).load_state_dict(ema.state_dict())
        return model

    def final_object(self) -> ArchModel:
        return self._sampling_model()

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(images in [0, 1], labels) of the first ``eval_samples`` of a split, or None."""
        data = getattr(self.data, split, None)
        if self.classifier is None or data is None or len(data) == 0:
            return None
        lo, hi = self.scale
        x = ((data.x[: self.cfg.eval_samples] - lo) / (hi - lo)).clamp(0, 1)
        return x, data.y[: self.cfg.eval_samples]

    def _translate(self, model: ArchModel, x: torch.Tensor, direction: str) -> torch.Tensor:
        return torch.cat([model.translate(x[i:i + 250].to(self.ctx.device), direction).cpu()
                          for i in range(0, len(x), 250)])

    def _accuracy(self, unit: torch.Tensor, y: torch.Tensor) -> float:
        lo, hi = self.scale
        _, logits = self.classifier(lo + unit * (hi - lo))
        return float((logits.argmax(1).cpu() == y).float().mean())

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        part = self._split(split)
        if part is None:
            return {}
        x, y = part
        b = self.to_b(x)
        model = self._sampling_model()
        return {f"{split}_content_acc": self._accuracy(self._translate(model, b, "ba"), y),
                f"{split}_raw_acc": self._accuracy(b, y)}

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        part = self._split("test")
        if part is None:
            return {}
        x, y = part
        model, lo, hi = self._sampling_model(), *self.scale
        fake_b = self._translate(model, x, "ab")
        back = self._translate(model, fake_b, "ba")
        fake_a = self._translate(model, self.to_b(x), "ba")
        feats_fake, _ = self.classifier(lo + fake_a * (hi - lo))
        feats_real, _ = self.classifier(lo + x * (hi - lo))
        return {**self.evaluate("val"), **self.evaluate("test"),
                "test_content_acc_ab": self._accuracy(1 - fake_b, y),
                "test_raw_acc_ab": self._accuracy(1 - self.to_b(x), y),
                "test_cycle_l1": float((back - x).abs().mean()),
                "test_fid_ba": frechet_distance(feats_fake, feats_real)}

    @torch.no_grad()
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        data = self.data.test if len(self.data.test) else self.data.train
        lo, hi = self.scale
        x = ((data.x[: self.cfg.samples] - lo) / (hi - lo)).clamp(0, 1)
        model, b = self._sampling_model(), self.to_b(x)
        g_a = self._translate(model, x, "ab")
        f_b = self._translate(model, b, "ba")
        rows = [x, g_a, self._translate(model, g_a, "ba"), b, f_b, self._translate(model, f_b, "ab")]
        save_grid(torch.cat(rows), Path(run_dir) / "translations.png", nrow=len(x),
                  title=f"{self.recipe.name}: rows a, G(a), F(G(a)), b, F(b), G(F(b))")

    def state_dict(self) -> dict[str, Any]:
        state = {name: t.state_dict() for name, t in self.opt.items()}
        state.update({"stream_a": self.stream_a.state_dict(), "stream_b": self.stream_b.state_dict(),
                      "noise": self.noise.get_state(), "pool_a": self.pools["a"].state_dict(),
                      "pool_b": self.pools["b"].state_dict()})
        if self.ema is not None:
            state["ema"] = {k: e.state_dict() for k, e in self.ema.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, t in self.opt.items():
            t.load_state_dict(state[name])
        self.stream_a.load_state_dict(state["stream_a"])
        self.stream_b.load_state_dict(state["stream_b"])
        self.noise.set_state(state["noise"])
        self.pools["a"].load_state_dict(state["pool_a"])
        self.pools["b"].load_state_dict(state["pool_b"])
        if self.ema is not None:
            for k, e in self.ema.items():
                e.load_state_dict(state["ema"][k])
