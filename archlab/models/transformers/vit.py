"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), and attention rollout.

The image is cut into ``N = (H / P) * (W / P)`` non-overlapping ``P x P`` patches; each is flattened and
projected to ``D`` dimensions (a Conv2d with kernel = stride = P computes exactly that). A learned class
token is prepended and learned position embeddings are added (eq. 1):

    z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos                      E_pos: [N + 1, D]
    z'_l = z_{l-1} + MSA(LN(z_{l-1}))                                 (eq. 2, pre-norm)
    z_l  = z'_l + MLP(LN(z'_l))                                       (eq. 3, MLP = Linear-GELU-Linear)
    y    = Head(LN(z_L^0))                                            (eq. 4, the class token's output)

``pool="mean"`` classifies the mean of the patch tokens of ``LN(z_L)`` instead of the class token (the
global-average-pooling variant of the paper's appendix D.3). With the class token, the last layer is
run for that one token only (the other tokens serve only as its keys and values): same logits, about
``1 / depth`` less work.

Attention rollout (Abnar & Zuidema 2020) explains a prediction by following attention through the
layers: the residual connection is accounted for by adding the identity, each layer's head-averaged
attention is renormalized into a row-stochastic matrix, and the layers are multiplied,

    A~_l = normalize_rows(mean_h A_l + I),        R = A~_L A~_{L-1} ... A~_1,

so ``R[cls, j]`` is the share of the class token's final representation that flows from patch ``j``.
``discard_ratio`` first zeroes the weakest fraction of the head-averaged attention links (a noise
filter popularised by Gildenblat's "Exploring explainability for vision transformers").

Hugging Face: ``ViTForImageClassification`` (and ``ViTModel`` as ``head="none"``) load and save with
:func:`archlab.from_hf` / ``model.save_hf``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ArchlabError
from ...nn.attention import attention
from ...nn.checkpointing import ActivationCheckpointing
from ...nn.transformer import TransformerLayer
from ...registry import register
from .hf import HFModel

Pool = Literal["cls", "mean"]
Head = Literal["linear", "none"]


@dataclass
class ViTConfig:
    image_size: int = 28
    """side of the (square) input image in pixels"""
    patch_size: int = 7
    """side of a square patch; image_size must be a multiple of it (28 / 7 = a 4 x 4 grid of 16 patches)"""
    in_channels: int = 1
    """image channels (1 = grayscale, 3 = RGB)"""
    num_classes: int = 10
    """number of classes (output logits)"""
    dim: int = 64
    """width D of the token embeddings"""
    depth: int = 4
    """number of encoder layers"""
    heads: int = 4
    """attention heads per layer (dim must be divisible by heads)"""
    mlp_dim: int = 128
    """hidden width of each layer's MLP"""
    dropout: float = 0.0
    """dropout on the embeddings and on each residual branch"""
    attn_dropout: float = 0.0
    """dropout on the attention probabilities"""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (1e-12 as in the Hugging Face checkpoints; timm uses 1e-6)"""
    pool: Pool = "cls"
    """what the head classifies: the class token ("cls") or the mean of the patch tokens ("mean")"""
    head: Head = "linear"
    """linear: logits [B, num_classes]; none: the final hidden states [B, N + 1, dim] (HF ViTModel)"""

    def __post_init__(self) -> None:
        if min(self.image_size, self.patch_size, self.in_channels, self.dim, self.depth, self.heads,
               self.mlp_dim) < 1:
            raise ValueError("sizes, depth and heads must be >= 1")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.num_classes < 2 and self.head == "linear":
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attn_dropout < 1.0):
            raise ValueError("dropout and attn_dropout must be in [0, 1)")
        if self.layer_norm_eps <= 0.0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")


class ViTFeatures(NamedTuple):
    """What :meth:`ViT.features` returns."""

    last_hidden_state: torch.Tensor
    """``LN(z_L)``: ``[B, N + 1, D]``"""
    hidden_states: list[torch.Tensor] | None
    """``[z_0, z_1, ..., z_L]`` (before the final LayerNorm), each ``[B, N + 1, D]``; with output_hidden_states"""
    attentions: list[torch.Tensor] | None
    """per layer ``[B, heads, N + 1, N + 1]``; with output_attentions"""


@register("vit", family="transformers")
class ViT(HFModel, ActivationCheckpointing):
    """Vision Transformer (Dosovitskiy et al. 2021): patch embedding, class token, pre-norm encoder.

    Shapes:
        x: ``[B, in_channels, image_size, image_size]`` -> logits ``[B, num_classes]``
        (``head="none"``: hidden states ``[B, N + 1, dim]``, ``N = (image_size / patch_size)^2``)
    """

    config_class = ViTConfig
    hf_model_types: ClassVar[tuple[str, ...]] = ("vit",)
    sharding_blocker = ("its class-token shortcut in the last layer slices attn.qkv.weight directly, which "
                        "bypasses FSDP's hooks and the tensor-parallel layout (use ddp or local_sgd)")

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        c = config
        self.grid = c.image_size // c.patch_size
        self.patch_embed = nn.Conv2d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, c.dim))
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(c.dim, c.heads, c.mlp_dim, norm_first=True, eps=c.layer_norm_eps, activation="gelu",
                             dropout=c.dropout, attn_dropout=c.attn_dropout)
            for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.dim, c.num_classes) if c.head == "linear" else None
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT / timm: truncated normal(0.02) for tokens, position embeddings and linear maps, zero biases;
        # PyTorch's default uniform init of the patch convolution (fan-in scaled) is kept
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @classmethod
    def example_input(cls, config: ViTConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, config.image_size, config.image_size)

    # ------------------------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``z_0`` (eq. 1): ``[B, C, H, W]`` -> ``[B, N + 1, D]``."""
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"expected {size}x{size} images, got {tuple(x.shape[-2:])}")
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)          # [B, N, D], row-major patch order
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)
        return self.dropout(tokens + self.pos_embed)

    def features(self, x: torch.Tensor, *, output_hidden_states: bool = False,
                 output_attentions: bool = False) -> ViTFeatures:
        """The encoder: final normalized tokens, and optionally every layer's input/output and attention."""
        h = self.embed(x)
        hidden = [h] if output_hidden_states else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        for layer in self.layers:
            if attentions is not None:
                # need_weights switches this layer to the eager backend (the fused kernel keeps no weights)
                h, w = layer(h, need_weights=True)
                attentions.append(w)
            else:
                h = self.checkpointed(layer, h)
            if hidden is not None:
                hidden.append(h)
        return ViTFeatures(self.norm(h), hidden, attentions)

    def _classify(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return last_hidden_state
        pooled = last_hidden_state[:, 0] if self.config.pool == "cls" else last_hidden_state[:, 1:].mean(dim=1)
        return self.head(pooled)

    def _class_token_last_layer(self, h: torch.Tensor) -> torch.Tensor:
        """The last layer computed for the class token only: ``[B, N + 1, D] -> [B, 1, D]``.

        The head reads nothing but ``z_L^0``, and in the last layer the other tokens enter it only as
        keys and values; so one query, one attention row and one MLP row replace ``N + 1`` of each. Same
        numbers as the full layer (the same pre-norm steps as :class:`TransformerLayer`, on one row)."""
        layer = self.layers[-1]
        attn = layer.attn
        b, t, d = h.shape
        x = layer.norm1(h)
        w, bias = attn.qkv.weight, attn.qkv.bias
        q = F.linear(x[:, :1], w[:d], bias[:d]).view(b, 1, attn.n_head, attn.head_dim).transpose(1, 2)
        k, v = F.linear(x, w[d:], bias[d:]).view(b, t, 2 * attn.n_head, attn.head_dim).transpose(1, 2).chunk(2, 1)
        o = attention(q, k, v, dropout_p=attn.dropout if self.training else 0.0, scale=attn.scale)
        cls = h[:, :1] + layer.dropout(attn.out(o.transpose(1, 2).reshape(b, 1, d)))
        return cls + layer.dropout(layer.ffn(layer.norm2(cls)))

    def forward(self, x: torch.Tensor,
                output_attentions: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[B, num_classes]``; with ``output_attentions`` also the per-layer attention weights
        ``[B, heads, N + 1, N + 1]`` (computed by the slower eager attention)."""
        if output_attentions or self.head is None or self.config.pool != "cls":
            feats = self.features(x, output_attentions=output_attentions)
            out = self._classify(feats.last_hidden_state)
            return (out, feats.attentions) if output_attentions else out
        h = self.embed(x)
        for layer in self.layers[:-1]:
            h = self.checkpointed(layer, h)
        return self.head(self.norm(self.checkpointed(self._class_token_last_layer, h))[:, 0])

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward(x, output_attentions=True)``: (logits, per-layer attention weights)."""
        return self(x, output_attentions=True)

    def plot_examples(self, images: torch.Tensor, labels: torch.Tensor | None, folder: str | os.PathLike) -> Path:
        """``folder/attention_rollout.png`` for a few examples (the training loops call this at the end of a run)."""
        return plot_attention_rollout(self, images, labels, Path(folder) / "attention_rollout.png")

    # ------------------------------------------------------------------------------- HF format
    @classmethod
    def config_from_hf(cls, hf_config: dict[str, Any]) -> ViTConfig:
        for key, want in (("hidden_act", "gelu"), ("qkv_bias", True)):
            if hf_config.get(key, want) != want:
                raise ArchlabError(f"ViT: {key}={hf_config[key]!r} is not supported (only {want!r})")
        size, patch = hf_config.get("image_size", 224), hf_config.get("patch_size", 16)
        if isinstance(size, (list, tuple)) or isinstance(patch, (list, tuple)):
            raise ArchlabError("ViT: only square images and patches (int image_size / patch_size) are supported")
        archs = hf_config.get("architectures") or ["ViTModel"]
        classifier = any(a.endswith("ForImageClassification") for a in archs)
        num_labels = len(hf_config["id2label"]) if "id2label" in hf_config else hf_config.get("num_labels", 2)
        head: dict[str, Any] = {"num_classes": num_labels} if classifier else {"head": "none"}
        return ViTConfig(image_size=size, patch_size=patch, in_channels=hf_config.get("num_channels", 3),
                         dim=hf_config["hidden_size"],
                         depth=hf_config["num_hidden_layers"], heads=hf_config["num_attention_heads"],
                         mlp_dim=hf_config["intermediate_size"],
                         dropout=hf_config.get("hidden_dropout_prob", 0.0),
                         attn_dropout=hf_config.get("attention_probs_dropout_prob", 0.0),
                         layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12), **head)

    def config_to_hf(self) -> dict[str, Any]:
        c = self.config
        if c.pool != "cls":
            raise ArchlabError("ViT: Hugging Face ViT classifies the class token; pool='mean' has no HF form")
        out: dict[str, Any] = {
            "model_type": "vit",
            "architectures": ["ViTForImageClassification" if self.head is not None else "ViTModel"],
            "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.in_channels,
            "hidden_size": c.dim, "num_hidden_layers": c.depth, "num_attention_heads": c.heads,
            "intermediate_size": c.mlp_dim, "hidden_act": "gelu", "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attn_dropout, "layer_norm_eps": c.layer_norm_eps,
            "qkv_bias": True, "initializer_range": 0.02, "encoder_stride": c.patch_size,
        }
        if self.head is not None:
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_classes)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(c.num_classes)}
        return out

    # archlab layer suffix <-> HF suffix under "encoder.layer.N." (the checkpoint naming; transformers >= 5
    # renames these in memory but still reads and writes them)
    _HF_LAYER: ClassVar[dict[str, str]] = {
        "norm1": "layernorm_before", "attn.out": "attention.output.dense", "norm2": "layernorm_after",
        "ffn.fc1": "intermediate.dense", "ffn.fc2": "output.dense",
    }
    # transformers >= 5 in-memory names (as in ViTModel().state_dict()) -> checkpoint names
    _HF_MODULAR: ClassVar[tuple[tuple[str, str], ...]] = (
        (".attention.q_proj.", ".attention.attention.query."), (".attention.k_proj.", ".attention.attention.key."),
        (".attention.v_proj.", ".attention.attention.value."), (".attention.o_proj.", ".attention.output.dense."),
        (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."),
    )

    @classmethod
    def state_from_hf(cls, config: ViTConfig, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        src: dict[str, torch.Tensor] = {}
        for name, tensor in hf_state.items():
            name = name.removeprefix("vit.")
            if name.startswith("layers."):
                name = "encoder.layer." + name.removeprefix("layers.")
                for new, old in cls._HF_MODULAR:
                    name = name.replace(new, old)
            src[name] = tensor
        try:
            state = {
                "cls_token": src["embeddings.cls_token"],
                "pos_embed": src["embeddings.position_embeddings"],
                "patch_embed.weight": src["embeddings.patch_embeddings.projection.weight"],
                "patch_embed.bias": src["embeddings.patch_embeddings.projection.bias"],
                "norm.weight": src["layernorm.weight"], "norm.bias": src["layernorm.bias"],
            }
            if config.head == "linear":
                state["head.weight"], state["head.bias"] = src["classifier.weight"], src["classifier.bias"]
            for i in range(config.depth):
                p = f"encoder.layer.{i}."
                for kind in ("weight", "bias"):
                    a = f"{p}attention.attention."
                    state[f"layers.{i}.attn.qkv.{kind}"] = torch.cat(
                        [src[f"{a}query.{kind}"], src[f"{a}key.{kind}"], src[f"{a}value.{kind}"]], dim=0)
                    for ours, theirs in cls._HF_LAYER.items():
                        state[f"layers.{i}.{ours}.{kind}"] = src[f"{p}{theirs}.{kind}"]
        except KeyError as exc:
            raise ArchlabError(f"ViT: Hugging Face weight {exc.args[0]!r} is missing") from None
        return state

    def state_to_hf(self) -> dict[str, torch.Tensor]:
        sd = self.state_dict()
        pre = "vit." if self.head is not None else ""
        out = {
            f"{pre}embeddings.cls_token": sd["cls_token"],
            f"{pre}embeddings.position_embeddings": sd["pos_embed"],
            f"{pre}embeddings.patch_embeddings.projection.weight": sd["patch_embed.weight"],
            f"{pre}embeddings.patch_embeddings.projection.bias": sd["patch_embed.bias"],
            f"{pre}layernorm.weight": sd["norm.weight"], f"{pre}layernorm.bias": sd["norm.bias"],
        }
        if self.head is not None:
            out["classifier.weight"], out["classifier.bias"] = sd["head.weight"], sd["head.bias"]
        for i in range(self.config.depth):
            p = f"{pre}encoder.layer.{i}."
            for kind in ("weight", "bias"):
                q, k, v = sd[f"layers.{i}.attn.qkv.{kind}"].chunk(3, dim=0)
                for name, t in (("query", q), ("key", k), ("value", v)):
                    out[f"{p}attention.attention.{name}.{kind}"] = t
                for ours, theirs in self._HF_LAYER.items():
                    out[f"{p}{theirs}.{kind}"] = sd[f"layers.{i}.{ours}.{kind}"]
        return out


# ------------------------------------------------------------------------------ attention rollout
def rollout_matrix(attentions: list[torch.Tensor], discard_ratio: float = 0.0) -> torch.Tensor:
    """The full rollout ``R = A~_L ... A~_1`` (module docstring): row-stochastic ``[B, T, T]``.

    Shapes:
        attentions: per layer ``[B, H, T, T]`` (first layer first) -> ``[B, T, T]``
    """
    if not attentions:
        raise ValueError("attention rollout needs the attention weights of at least one layer")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, device=attentions[0].device)
    result = eye.expand(b, t, t)
    for att in attentions:
        a = att.float().mean(dim=1)
        n_drop = int(t * t * discard_ratio)
        if n_drop:
            flat = a.flatten(1)
            flat = flat.scatter(1, flat.topk(n_drop, dim=1, largest=False).indices, 0.0)
            a = flat.view(b, t, t)
        a = a + eye                                  # the residual path carries the token itself
        a = a / a.sum(dim=-1, keepdim=True)
        result = torch.bmm(a, result)
    return result


def attention_rollout(attentions: list[torch.Tensor], discard_ratio: float = 0.0) -> torch.Tensor:
    """The class token's row of the rollout, over the patches, as an image-shaped map.

    The values are the shares of the class token's representation that come from each patch; they sum
    to ``1 - R[cls, cls]``.

    Shapes:
        attentions: per layer ``[B, H, N + 1, N + 1]`` -> ``[B, grid, grid]``, ``grid = sqrt(N)``
    """
    r = rollout_matrix(attentions, discard_ratio)
    n = r.shape[-1] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"{n} patches do not form a square grid")
    return r[:, 0, 1:].reshape(-1, grid, grid)


@torch.no_grad()
def plot_attention_rollout(model: ViT, images: torch.Tensor, labels: torch.Tensor | None,
                           path: str | os.PathLike, discard_ratio: float = 0.0, max_images: int = 8) -> Path:
    """PNG of up to ``max_images`` examples: each image (top row) and the same image under its upsampled
    attention-rollout map (bottom row), titled with the label and the model's prediction.

    Shapes:
        images: ``[B, C, H, W]``; labels: ``[B]`` or None
    """
    from ...io import pyplot  # noqa: PLC0415 -- matplotlib only when a plot is asked for

    if model.head is None:
        raise ValueError("plot_attention_rollout needs a classifier (head='linear')")
    images = images[:max_images]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, attentions = model.forward_with_attention(images.to(device))
    model.train(was_training)
    maps = attention_rollout(attentions, discard_ratio)
    maps = maps / maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]   # each map to [0, 1] for display
    maps = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()
    preds = logits.argmax(dim=-1).cpu()

    imgs = images.detach().float().cpu()
    lo, hi = imgs.flatten(1).amin(1), imgs.flatten(1).amax(1)
    imgs = (imgs - lo[:, None, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None, None]
    plt = pyplot()
    n = imgs.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for i in range(n):
        img = (imgs[i, 0] if imgs.shape[1] == 1 else imgs[i].permute(1, 2, 0)).numpy()
        cmap = "gray" if imgs.shape[1] == 1 else None
        title = f"pred {preds[i].item()}" if labels is None else f"y={int(labels[i])} pred={preds[i].item()}"
        axes[0, i].imshow(img, cmap=cmap)
        axes[0, i].set_title(title, fontsize=8)
        axes[1, i].imshow(img, cmap=cmap)
        axes[1, i].imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle("attention rollout (Abnar & Zuidema 2020)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
