"""``archlab explain`` on a language-model run: which prompt tokens the next-token prediction rests on.

The prompt (``--prompt``, tokenized with the run's tokenizer) goes through the model; the explained score
is the logit of the predicted next token (the most likely one) at the last position. Integrated Gradients
runs in the space of the token embedding (``layer`` = the model's input embedding, baseline token id 0,
``--steps`` points); a token's attribution is the sum over its embedding dimensions, and the tokens are
drawn as text on boxes coloured by it (red: pushes towards the predicted token, blue: away), with the
predicted continuation after them.
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


def run_text(model: nn.Module, data: Any, args: argparse.Namespace) -> int:
    tokenizer = data.tokenizer
    if args.probe:
        return probe_report(model, data, args)
    ids = torch.tensor(tokenizer.encode(args.prompt), dtype=torch.long)
    if len(ids) == 0:
        raise ArchlabError("--prompt is empty after tokenization")
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block and len(ids) > block:   # the model's context window: its last block_size tokens
        ids = ids[-block:]
    attr, target = token_attributions(model.eval(), ids, args.steps)
    tokens = [tokenizer.decode([int(i)]) for i in ids]
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots" / "explain_text.png"
    draw_tokens(tokens, attr, tokenizer.decode([target]), out)
    print(" ".join(f"{t!r}:{a:+.3f}" for t, a in zip(tokens, attr.tolist(), strict=True)))
    print(f"predicted next token {tokenizer.decode([target])!r}; wrote {out}")
    return 0


def draw_tokens(tokens: list[str], attr: torch.Tensor, predicted: str, out: Path, per_line: int = 24) -> Path:
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
    shown = predicted.replace("\n", "\\n").replace(" ", "␣")
    ax.set_title(f"Integrated Gradients over token embeddings; predicted next token: {shown!r}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def probe_report(model: nn.Module, data: Any, args: argparse.Namespace) -> int:
    """Linear probes per layer for the previous character's category, with the control task:
    ``OUT.json``, ``OUT.md``, ``OUT.png``."""
    import json

    from .probing import language_model_probe

    tok = data.tokenizer
    block = getattr(getattr(model, "config", None), "block_size", None) or 64
    stream = data.val if len(data.val) > 4 * block else data.train
    rows = language_model_probe(model, stream, lambda i: tok.decode([i]), block, n_train=args.probe,
                                n_test=max(1, args.probe // 2), seed=args.seed)
    for r in rows:
        print(f"{r['layer']:10s} task {r['task']:.3f}  control {r['control']:.3f}  selectivity {r['selectivity']:+.3f}")
    prefix = Path(args.out).with_suffix("") if args.out else Path(args.run_dir) / "plots" / "probe"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"property": "category of the previous character (vowel, consonant, upper, space/newline, other)",
            "train_positions": args.probe, "test_positions": max(1, args.probe // 2), "seed": args.seed,
            "run_dir": str(args.run_dir)}
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
    ax.set_title("probing (Alain & Bengio 2016)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=100)
    plt.close(fig)
    print(f"wrote {prefix.with_suffix('.json')}, .md, .png")
    return 0
