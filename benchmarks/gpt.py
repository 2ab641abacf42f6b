"""Factories for ``archlab bench gpt`` and ``archlab bench gpt_generate``: archlab's GPT versus Hugging Face's
``GPT2LMHeadModel`` with the same configuration and the same weights.

Train step = forward, cross-entropy over every position, backward, AdamW step (``torch.optim.AdamW``, foreach,
identical on both sides), on the same random batch; ``precision = "bf16"`` wraps forward and loss in CPU bf16
autocast on both sides. HF runs its default attention implementation (SDPA) in eval-free training mode with dropout 0.
Generation = greedy decoding of ``new_tokens`` tokens after a ``prompt``-token prompt, KV cache on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

import archlab


def _pair(n_layer: int, n_head: int, n_embd: int, block: int, vocab: int, threads: int):
    """archlab GPT and an HF GPT-2 holding the same weights (converted through save_hf -> from_pretrained)."""
    import tempfile

    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = archlab.create("gpt", vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          dropout=0.0)
    with tempfile.TemporaryDirectory() as d:
        ours.save_hf(d)
        peer = GPT2LMHeadModel.from_pretrained(d)
    return ours, peer


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _train_step(model: torch.nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], batch: int, block: int,
                vocab: int, precision: str) -> Callable[[], None]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (batch, block), generator=g)
    y = torch.randint(0, vocab, (batch, block), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(precision):
            logits = logits_of(x)
            loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        loss.backward()
        opt.step()

    return step


def ours(n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block: int = 64, batch: int = 12, vocab: int = 65,
         precision: str = "fp32", threads: int = 2, **_: Any) -> Callable[[], None]:
    model, _peer = _pair(n_layer, n_head, n_embd, block, vocab, threads)
    return _train_step(model, model, batch, block, vocab, precision)


def peer(n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block: int = 64, batch: int = 12, vocab: int = 65,
         precision: str = "fp32", threads: int = 2, **_: Any) -> Callable[[], None]:
    _ours, model = _pair(n_layer, n_head, n_embd, block, vocab, threads)
    return _train_step(model, lambda x: model(input_ids=x).logits, batch, block, vocab, precision)


# ------------------------------------------------------------------------------------ generation
def _prompt(prompt: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(2))


def gen_ours(n_layer: int = 6, n_head: int = 6, n_embd: int = 384, block: int = 512, vocab: int = 65,
             prompt: int = 16, new_tokens: int = 256, threads: int = 2, compile: bool = False,
             **_: Any) -> Callable[[], None]:
    model, _peer = _pair(n_layer, n_head, n_embd, block, vocab, threads)
    model.eval()
    ids = _prompt(prompt, vocab)

    @torch.no_grad()
    def run() -> None:
        out = model.generate(ids, new_tokens, temperature=0.0, compile=compile)
        assert out.shape[1] == prompt + new_tokens

    return run


def gen_peer(n_layer: int = 6, n_head: int = 6, n_embd: int = 384, block: int = 512, vocab: int = 65,
             prompt: int = 16, new_tokens: int = 256, threads: int = 2, compile: bool = False,
             **_: Any) -> Callable[[], None]:
    _ours, model = _pair(n_layer, n_head, n_embd, block, vocab, threads)
    model.eval()
    ids = _prompt(prompt, vocab)
    mask = torch.ones_like(ids)
    extra: dict[str, Any] = {}
    if compile:  # HF's recipe for compiled generation: a static KV cache and a compiled forward
        model.forward = torch.compile(model.forward, fullgraph=True)
        extra["cache_implementation"] = "static"

    @torch.no_grad()
    def run() -> None:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None, **extra)
        assert out.shape[1] == prompt + new_tokens

    return run


# ----------------------------------------------------------------------------------------- MFU
def matmul_peak(threads: int = 2, n: int = 4096, dtype: torch.dtype = torch.bfloat16, repeats: int = 5) -> float:
    """Measured matmul throughput (FLOP/s) of this machine: best of ``repeats`` n x n x n products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def train_flops(n_layer: int, n_head: int, n_embd: int, block: int, batch: int, vocab: int) -> float:
    """FLOPs of one training step (Chowdhery et al. 2022, appendix B): 6 N per token for the weight matmuls
    (N includes the tied LM head, used once as the output projection) plus 12 L T E per token for the
    attention scores and values (counted for the full T x T; a causal kernel skips half)."""
    n_params = n_layer * 12 * n_embd ** 2 + vocab * n_embd
    tokens = batch * block
    return tokens * (6 * n_params + 12 * n_layer * block * n_embd)


def report(result: dict[str, Any]) -> str:
    """Markdown appended to the table: model FLOP utilization of each train-step case against the measured
    bf16 and fp32 matmul peak of this machine."""
    threads = int(result["params"].get("threads", 2))
    peaks = {"bf16": matmul_peak(threads, dtype=torch.bfloat16), "fp32": matmul_peak(threads, dtype=torch.float32)}
    result["matmul_peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
    lines = ["", f"Measured matmul peak (4096^3, {threads} thread(s)): bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s, "
             f"fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s.", "",
             "| case | model TFLOP per step | archlab MFU | HF MFU |", "|---|---|---|---|"]
    for row in result["cases"]:
        p = row["params"]
        flops = train_flops(p["n_layer"], p["n_head"], p["n_embd"], p["block"], p["batch"], p["vocab"])
        peak = peaks[p.get("precision", "fp32")]
        mfu = {side: flops / row[side]["median_s"] / peak for side in ("ours", "peer")}
        row["mfu"] = mfu
        lines.append(f"| {row['case']} | {flops / 1e12:.4f} | {100 * mfu['ours']:.1f}% | {100 * mfu['peer']:.1f}% |")
    return "\n".join(lines) + "\n"
