"""``archlab explain`` on a language-model run: which prompt tokens a prediction rests on.

Causal language models (``train.loop = "lm"``, GPT): the prompt (``--prompt``, tokenized with the run's
tokenizer) goes through the model; the explained score is the logit of the predicted next token (the most
likely one) at the last position. Integrated Gradients runs in the space of the token embedding
(``layer`` = the model's input embedding, baseline token id 0, ``--steps`` points); a token's attribution
is the sum over its embedding dimensions, and the tokens are drawn as text on boxes coloured by it (red:
pushes towards the predicted token, blue: away), with the predicted continuation after them.

Masked language models (``train.loop = "mlm"``, BERT and its kin): the prompt's character at ``--mask-at``
(an index into the prompt's tokens, negative from the end; default the middle) is replaced by ``[MASK]``,
the text wrapped as ``[CLS] ... [SEP]`` as in training, and the explained score is the logit of the
model's prediction for the masked position (the most likely text token). Integrated Gradients runs over
the word embeddings (the position and type embeddings stay those of the input) from a baseline that
masks every text token (``[CLS]`` and ``[SEP]`` kept), so the attributions sum to
``F(prompt) - F(all characters masked)``: how much each visible character moved the prediction.

``--probe N`` trains per-layer linear probes (:mod:`archlab.explain.probing`) on N positions of the
validation text instead; an encoder's windows are ``[CLS] + loop.seq_len characters + [SEP]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArchlabError
from .integrated_gradients import layer_integrated_gradients


class NextToken(nn.Module):
    """``ids [B, T] -> logits of the next token [B, V]`` (the last position) for a causal language model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[:, -1, :]


def token_attributions(model: nn.Module, ids: torch.Tensor, steps: int = 32) -> tuple[torch.Tensor, int]:
    """Per-token IG attributions ``[T]`` of the predicted next token of ``ids`` ``[T]``, and that token."""
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is None:
        raise ArchlabError(f"{type(model).__name__} has no token embedding to attribute through")
    wrapped = NextToken(model).eval()
    with torch.no_grad():
        target = int(wrapped(ids[None]).argmax(-1))
    attr = layer_integrated_gradients(wrapped, ids[None], target, layer=embedding, baselines=0, n_steps=steps)
    return attr[0].sum(-1), target


class MaskedToken(nn.Module):
    """``ids [B, T] -> logits [B, V]`` at position ``position`` of a masked language model."""

    def __init__(self, model: nn.Module, position: int) -> None:
        super().__init__()
        self.model, self.position = model, position
        self.train(model.training)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[:, self.position, :]


def masked_token_attributions(model: nn.Module, ids: torch.Tensor, position: int, special: Any,
                              steps: int = 32) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mask text token ``position`` of ``ids`` ``[T]`` and explain the model's prediction there.

    Returns ``(attr [T + 2], inputs [T + 2], predicted id)``: IG attributions of the inputs ``[CLS] ...
    [MASK] ... [SEP]`` over the word embeddings, from the baseline with every text token masked.
    ``special``: the ids of ``[MASK]``, ``[CLS]``, ``[SEP]`` and the text vocabulary size
    (:class:`archlab.train.mlm.SpecialTokens`)."""
    embedding = getattr(getattr(model, "embeddings", None), "word_embeddings", None)
    if not isinstance(embedding, nn.Embedding):
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is None:
        raise ArchlabError(f"{type(model).__name__} has no token embedding to attribute through")
    masked = ids.clone()
    masked[position] = special.mask
    inputs = torch.cat([torch.tensor([special.cls]), masked, torch.tensor([special.sep])])
    baseline = inputs.clone()
    baseline[1:-1] = special.mask
    wrapped = MaskedToken(model, position + 1).eval()
    with torch.no_grad():
        target = int(wrapped(inputs[None])[0, :special.num_text].argmax())
    attr = layer_integrated_gradients(wrapped, inputs[None], target, layer=embedding, baselines=baseline[None],
                                      n_steps=steps)
    return attr[0].sum(-1), inputs, target


def run_text(model: nn.Module, data: Any, args: argparse.Namespace, masked: bool = False) -> int:
    tokenizer = data.tokenizer
    if args.probe:
        return probe_report(model, data, args, masked)
    if masked:
        return run_masked(model, data, args)
    ids = torch.tensor(tokenizer.encode(args.prompt), dtype=torch.long)
    if len(ids) == 0:
        raise ArchlabError("--prompt is empty after tokenization")
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block and len(ids) > block:   # the model's context window: its last block_size tokens
        ids = ids[-block:]
    attr, target = token_attributions(model.eval(), ids, args.steps)
    tokens = [tokenizer.decode([int(i)]) for i in ids]
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots" / "explain_text.png"
    shown = tokenizer.decode([target]).replace("\n", "\\n").replace(" ", "␣")
    draw_tokens(tokens, attr, f"Integrated Gradients over token embeddings; predicted next token: {shown!r}", out)
    print(" ".join(f"{t!r}:{a:+.3f}" for t, a in zip(tokens, attr.tolist(), strict=True)))
    print(f"predicted next token {tokenizer.decode([target])!r}; wrote {out}")
    return 0


def run_masked(model: nn.Module, data: Any, args: argparse.Namespace) -> int:
    """The masked-LM view (module docstring)."""
    from ..train.mlm import SpecialTokens

    tokenizer, special = data.tokenizer, SpecialTokens(data.vocab_size)
    ids = torch.tensor(tokenizer.encode(args.prompt), dtype=torch.long)
    if len(ids) == 0:
        raise ArchlabError("--prompt is empty after tokenization")
    longest = _max_text_tokens(model)
    if longest is not None and len(ids) > longest:
        raise ArchlabError(f"--prompt has {len(ids)} tokens; this model takes at most {longest} besides [CLS] and "
                           "[SEP]")
    pos = len(ids) // 2 if args.mask_at is None else args.mask_at
    if not -len(ids) <= pos < len(ids):
        raise ArchlabError(f"--mask-at must be in [{-len(ids)}, {len(ids) - 1}] for this prompt ({len(ids)} tokens)")
    pos %= len(ids)
    attr, inputs, target = masked_token_attributions(model.eval(), ids, pos, special, args.steps)
    names = {special.mask: "[MASK]", special.cls: "[CLS]", special.sep: "[SEP]"}
    tokens = [names.get(int(i)) or tokenizer.decode([int(i)]) for i in inputs]
    true, pred = tokenizer.decode([int(ids[pos])]), tokenizer.decode([target])
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots" / "explain_masked.png"

    def show(t: str) -> str:
        return repr(t.replace("\n", "\\n").replace(" ", "␣"))

    draw_tokens(tokens, attr, f"Integrated Gradients over word embeddings (baseline: all characters masked); "
                f"[MASK] at {pos}: predicted {show(pred)}, true {show(true)}", out)
    print(" ".join(f"{t!r}:{a:+.3f}" for t, a in zip(tokens, attr.tolist(), strict=True)))
    print(f"masked position {pos} (true {true!r}): predicted {pred!r}; wrote {out}")
    return 0


def _max_text_tokens(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    length = getattr(type(model), "max_length", None)
    if config is None or length is None:
        return None
    return int(length(config)) - 2


def draw_tokens(tokens: list[str], attr: torch.Tensor, title: str, out: Path, per_line: int = 24) -> Path:
    """Tokens on boxes coloured by attribution (symmetric scale), ``per_line`` tokens a row."""
    from ..io import pyplot

    plt = pyplot()
    lim = float(attr.abs().max()) or 1.0
    rows = (len(tokens) + per_line - 1) // per_line
    fig, ax = plt.subplots(figsize=(min(per_line, len(tokens)) * 0.55 + 1.5, 0.6 * rows + 1.0))
    cmap = plt.get_cmap("bwr")
    for k, (tok, a) in enumerate(zip(tokens, attr.tolist(), strict=True)):
        r, c = divmod(k, per_line)
        shown = tok.replace("\n", "\\n").replace(" ", "␣")
        ax.text(c + 0.5, rows - r - 0.5, shown, ha="center", va="center", fontsize=10, family="monospace",
                bbox={"boxstyle": "round,pad=0.25", "facecolor": cmap(0.5 + 0.5 * a / lim), "edgecolor": "none"})
    ax.set_xlim(0, min(per_line, len(tokens)))
    ax.set_ylim(0, rows)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def probe_report(model: nn.Module, data: Any, args: argparse.Namespace, masked: bool = False) -> int:
    """Linear probes per layer for the previous character's category, with the control task:
    ``OUT.json``, ``OUT.md``, ``OUT.png``. ``masked``: an encoder trained by the mlm loop (windows of its
    ``loop.seq_len`` characters wrapped in ``[CLS]`` / ``[SEP]``)."""
    import json

    from .probing import language_model_probe

    tok = data.tokenizer
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    if masked:
        from .. import recipe as recipe_mod
        from ..runner import RECIPE
        from ..train.mlm import SpecialTokens

        special = SpecialTokens(data.vocab_size)
        prefix, suffix = (special.cls,), (special.sep,)
        block = recipe_mod.load(Path(args.run_dir) / RECIPE).loop.seq_len
    else:
        block = getattr(getattr(model, "config", None), "block_size", None) or 64
    stream = data.val if len(data.val) > 4 * block else data.train
    rows = language_model_probe(model, stream, lambda i: tok.decode([i]), block, n_train=args.probe,
                                n_test=max(1, args.probe // 2), seed=args.seed, prefix=prefix, suffix=suffix)
    for r in rows:
        print(f"{r['layer']:10s} task {r['task']:.3f}  control {r['control']:.3f}  selectivity {r['selectivity']:+.3f}")
    prefix = Path(args.out).with_suffix("") if args.out else Path(args.run_dir) / "plots" / "probe"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"property": "category of the previous character (vowel, consonant, upper, space/newline, other)",
            "train_positions": args.probe, "test_positions": max(1, args.probe // 2), "seed": args.seed,
            "run_dir": str(args.run_dir), "model": type(model).__name__}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "layers": rows}, indent=1) + "\n")
    lines = ["| layer | probe accuracy | control task | selectivity |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['task']:.3f} | {r['control']:.3f} | {r['selectivity']:+.3f} |" for r in rows]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    from ..io import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = range(len(rows))
    ax.plot(xs, [r["task"] for r in rows], marker="o", label="previous character's category")
    ax.plot(xs, [r["control"] for r in rows], marker="s", ls="--", label="control task (Hewitt & Liang 2019)")
    ax.set_xticks(list(xs), [r["layer"] for r in rows])
    ax.set_ylabel("linear probe test accuracy")
    ax.set_title(f"probing {type(model).__name__} (Alain & Bengio 2016)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=100)
    plt.close(fig)
    print(f"wrote {prefix.with_suffix('.json')}, .md, .png")
    return 0
