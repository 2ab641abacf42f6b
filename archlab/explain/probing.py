"""Linear probes on frozen hidden states (Alain & Bengio 2016, "Understanding intermediate layers using
linear classifier probes"), with a control task (Hewitt & Liang 2019, "Designing and Interpreting Probes
with Control Tasks").

A probe is a linear classifier trained on a layer's frozen representations to predict a property; its
test accuracy per layer says where the property becomes linearly readable. A probe can also succeed by
memorising token identities, so the same probe is trained on a *control task* -- every token type
mapped to a random label, the label distribution kept -- and the **selectivity** ``accuracy(task) -
accuracy(control)`` is what the layer adds beyond identity lookup.

For language models (:func:`language_model_probe`) the property here is the category of the *previous*
character (vowel, consonant, upper case, space or newline, other): the embedding layer of a causal model
(GPT) or of a bidirectional masked-LM encoder (BERT) sees only the current token and its position, so the
property has to be moved there by attention -- the curve shows at which layer that happens. An encoder's
windows are wrapped in its special tokens (``prefix`` / ``suffix``, e.g. ``[CLS] ... [SEP]``); the probed
positions are the text positions only. Probes: multinomial logistic regression on standardised features, L2 ``1e-3``,
full-batch L-BFGS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError


def layer_outputs(model: nn.Module, inputs: torch.Tensor, layers: list[nn.Module]) -> list[torch.Tensor]:
    """The outputs of ``layers`` (in that order) for ``inputs``, detached."""
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(i, out.detach()))
               for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(layers))]


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   l2: float = 1e-3, max_iter: int = 200) -> float:
    """Test accuracy of a multinomial logistic-regression probe trained on ``(train_x, train_y)``."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    a, b = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    k = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(a.shape[1], k, dtype=torch.double, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((b @ w + bias).argmax(1) == test_y).double().mean())


def control_labels(token_ids: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang's control task: each token type gets one random label, drawn from the task's label
    distribution; returns the control label of every position."""
    gen = torch.Generator().manual_seed(seed)
    types = torch.unique(token_ids)
    counts = torch.bincount(labels).double()
    draw = torch.multinomial(counts / counts.sum(), len(types), replacement=True, generator=gen)
    lookup = torch.zeros(int(token_ids.max()) + 1, dtype=torch.long)
    lookup[types] = draw
    return lookup[token_ids]


def char_category(ch: str) -> int:
    """0 vowel, 1 consonant, 2 upper case, 3 space or newline, 4 anything else."""
    if ch.isupper():
        return 2
    if ch.isalpha():
        return 0 if ch in "aeiou" else 1
    return 3 if ch in " \n" else 4


def language_model_probe(model: nn.Module, ids: torch.Tensor, decode, block: int, n_train: int = 2000,
                         n_test: int = 1000, seed: int = 0, prefix: tuple[int, ...] = (),
                         suffix: tuple[int, ...] = ()) -> list[dict[str, float]]:
    """Per layer (embedding, then each block), probe accuracy for the previous character's category, for the
    control task, and the selectivity. ``ids``: a 1-D token stream; ``decode(id) -> str``; ``block``: text
    tokens per window; ``prefix`` / ``suffix``: token ids put around every window (an encoder's ``[CLS]`` /
    ``[SEP]``)."""
    layers = _lm_layers(model)
    gen = torch.Generator().manual_seed(seed)
    n_windows = (n_train + n_test) // (block - 1) + 1
    if len(ids) < block + n_windows:
        raise ArchlabError(f"the token stream ({len(ids)} tokens) is too short to probe")
    starts = torch.randint(0, len(ids) - block, (n_windows,), generator=gen)
    windows = torch.stack([ids[s:s + block] for s in starts.tolist()])               # [W, block]
    cats = torch.tensor([char_category(decode(int(i))) for i in range(int(ids.max()) + 1)])
    labels = cats[windows[:, :-1]].flatten()                                           # the previous token's
    prev_ids = windows[:, :-1].flatten()
    control = control_labels(prev_ids, labels, seed)
    model.eval()
    b = len(windows)
    wrapped = torch.cat([windows.new_tensor(prefix).expand(b, len(prefix)), windows,
                         windows.new_tensor(suffix).expand(b, len(suffix))], dim=1)
    outs = layer_outputs(model, wrapped, layers)
    rows = []
    first = len(prefix) + 1                           # text positions 1..: those with a previous token
    for name, h in zip(["embedding", *[f"block {i + 1}" for i in range(len(layers) - 1)]], outs, strict=True):
        h = h[0] if isinstance(h, tuple) else h
        feats = h[:, first:first + block - 1].reshape(-1, h.shape[-1]).float()
        tr, te = slice(0, n_train), slice(n_train, n_train + n_test)
        task = probe_accuracy(feats[tr], labels[tr], feats[te], labels[te])
        ctrl = probe_accuracy(feats[tr], control[tr], feats[te], control[te])
        rows.append({"layer": name, "task": task, "control": ctrl, "selectivity": task - ctrl})
    return rows


def _lm_layers(model: nn.Module) -> list[nn.Module]:
    """The token embedding and every transformer block of a language model: ``embeddings`` (an encoder's whole
    embedding module: tokens + positions + LayerNorm, Hugging Face's ``hidden_states[0]``), else ``wte`` or
    the first ``nn.Embedding``; then ``layers``."""
    embedding = (getattr(model, "embeddings", None) or getattr(model, "wte", None)
                 or next((m for m in model.modules() if isinstance(m, nn.Embedding)), None))
    blocks = getattr(model, "layers", None)
    if embedding is None or not isinstance(blocks, nn.ModuleList):
        raise ArchlabError(f"{type(model).__name__}: probing needs a token embedding and a `layers` list of blocks")
    return [embedding, *blocks]
