"""The DP-SGD fast path (archlab/privacy/dpsgd_fast.py) against the vmap reference (archlab/privacy/dpsgd.py):
the clipped, summed per-example gradient and the norms on small random MLPs / CNNs (dp_cnn included), in float64
(to 1e-10) and float32 (to 1e-6 absolute, 1e-5 relative), with ghost norms forced, and with a channels-last
forward; a whole noisy step with the same noise generator; the dpsgd loop with ``loop.fast``.
The Opacus comparisons of the fast path are in tests/test_privacy.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import dpsgd_tiny
from torch import nn

from archlab import create
from archlab.privacy import DPSGD, clip_per_sample, per_sample_grads
from archlab.privacy.dpsgd_fast import clipped_grad_sum, unsupported_layers

pytestmark = pytest.mark.usefixtures("single_thread")


class Twice(nn.Module):
    """One Linear used twice (its per-example gradient is the sum over both calls) and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(10, 8), nn.Linear(8, 8), nn.Linear(8, 4)
        self.frozen, self.unused = nn.Linear(8, 8), nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(self.frozen(h))))


class Tied(nn.Module):
    """Two Linear layers sharing one weight matrix (tied), with an in-place ReLU on a layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6, bias=False), nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(F.relu(self.a(x), inplace=True)))


class Sequence(nn.Module):
    """Linear and LayerNorm over (B, T, D) positions (L = T > 1), pooled to logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm, self.head = nn.Linear(5, 12), nn.LayerNorm(12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.embed(x))).mean(1))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 6, 3, stride=2, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3), nn.ReLU(),
                         nn.Conv2d(6, 4, (2, 3), padding="valid", bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 3 * 1, 5))


def _conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 5, 4, stride=2, padding=2), nn.Tanh(), nn.Conv1d(5, 4, 3, dilation=2),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))


def _conv3d() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 3, 2, stride=(1, 2, 2), padding=(0, 1, 1)), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(3))


CASES = {  # name: (model factory, input shape without batch, classes)
    "mlp": (lambda: nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)),
            (7,), 3),
    "mlp_layernorm": (lambda: create("mlp", in_features=9, hidden=[8, 8], num_classes=4, norm="layer"), (9,), 4),
    "used_twice_frozen_unused": (Twice, (10,), 4),
    "tied_inplace": (Tied, (6,), 3),
    "sequence": (Sequence, (7, 5), 4),
    "cnn": (_cnn, (2, 8, 6), 5),
    "conv1d": (_conv1d, (3, 17), 3),
    "conv3d": (_conv3d, (1, 3, 4, 4), 3),
    "dp_cnn": (lambda: create("dp_cnn"), (1, 28, 28), 10),
}


def _setup(name: str, batch: int, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    factory, shape, classes = CASES[name]
    torch.manual_seed(0)
    model = factory()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g)
    model(x[:1])  # materialise lazy layers
    return model.to(dtype), x.to(dtype), torch.randint(0, classes, (batch,), generator=g)


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float):
    clipped, norms = clip_per_sample(per_sample_grads(model, F.cross_entropy, x, y), clip)
    return {n: g.sum(0) for n, g in clipped.items()}, norms


@pytest.mark.parametrize("name", list(CASES))
def test_fast_clipped_sum_equals_the_reference(name):
    batch = 24 if name == "dp_cnn" else 9
    for dtype, tol in ((torch.float64, {"rtol": 1e-10, "atol": 1e-10}), (torch.float32, {"rtol": 1e-5, "atol": 1e-6})):
        model, x, y = _setup(name, batch, dtype)
        ref, ref_norms = _reference(model, x, y, clip=0.5)
        clip = ref_norms.median().item()  # about half the examples clipped
        ref, ref_norms = _reference(model, x, y, clip)
        layouts = (False, True) if x.dim() == 4 else (False,)
        # ghost norms everywhere; per-example gradients where L > 1; and those with a channels-last forward
        for max_instantiate, channels_last in [(0, False), *((1 << 25, cl) for cl in layouts)]:
            fast, norms, loss = clipped_grad_sum(model, F.cross_entropy, x, y, clip, max_instantiate=max_instantiate,
                                                 channels_last=channels_last)
            assert fast.keys() == ref.keys()
            torch.testing.assert_close(norms, ref_norms, **tol)
            torch.testing.assert_close(loss, F.cross_entropy(model(x), y), **tol)
            for n in ref:
                torch.testing.assert_close(fast[n], ref[n], **tol, msg=f"{name} {dtype} {n}")
        assert (ref_norms > clip).any() and (ref_norms < clip).any()


def test_fast_path_handles_a_batch_of_one_and_an_unclipped_batch():
    model, x, y = _setup("cnn", 1, torch.float64)
    for clip in (1e-3, 1e6):
        ref, _ = _reference(model, x, y, clip)
        fast, _, _ = clipped_grad_sum(model, F.cross_entropy, x, y, clip)
        for n in ref:
            torch.testing.assert_close(fast[n], ref[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_fast_dpsgd_step_equals_the_reference_step_with_the_same_noise(sigma):
    steps = {}
    for fast, channels_last in ((False, False), (True, False), (True, True)):
        model, x, y = _setup("dp_cnn", 16, torch.float32)
        dp = DPSGD(model, torch.optim.SGD(model.parameters(), lr=0.25), F.cross_entropy, sigma, 1.5, 16,
                   generator=torch.Generator().manual_seed(7), fast=fast, channels_last=channels_last)
        for _ in range(2):
            dp.step(x, y)
        steps[fast, channels_last] = dict(model.named_parameters())
    for key in ((True, False), (True, True)):
        for n, p in steps[False, False].items():
            torch.testing.assert_close(steps[key][n], p, rtol=1e-6, atol=1e-6, msg=f"{key} {n}")
            assert steps[key][n].is_contiguous()  # the channels-last copies never reach the model
    moved = _setup("dp_cnn", 16, torch.float32)[0]
    assert not torch.equal(steps[True, True]["features.0.weight"], moved.features[0].weight)


def test_fast_path_refuses_layers_it_cannot_handle():
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    model = nn.Sequential(nn.Embedding(5, 3), Raw(), nn.Conv1d(3, 3, 1, padding_mode="circular"), nn.Linear(3, 2))
    assert unsupported_layers(model) == ["0 (Embedding)", "1 (Raw)", "2 (Conv1d)"]
    with pytest.raises(ValueError, match=r"does not support: 0 \(Embedding\), 1 \(Raw\), 2 \(Conv1d\)"):
        DPSGD(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, 1.0, 1.0, 8, fast=True)
    with pytest.raises(ValueError, match="channels_last is an option of the fast path"):
        DPSGD(nn.Linear(3, 2), torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, 1.0, 1.0, 8,
              channels_last=True)
    frozen = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    frozen[0].requires_grad_(False)
    assert unsupported_layers(frozen) == []


DP_RECIPE = dpsgd_tiny("dpsgd_tiny_fast", model={"norm": "layer"}, loop={"fast": True})


def test_dpsgd_loop_fast_equals_the_reference_loop_and_resumes_exactly(tmp_path, assert_resume_exact):
    from safetensors.torch import load_file

    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = {}
    for fast in (True, False):
        raw = {**DP_RECIPE, "loop": {**DP_RECIPE["loop"], "fast": fast}}
        summary = train(from_dict(raw), out=tmp_path / str(fast), progress=False, log=lambda _m: None)
        losses = [r["loss"] for r in read_metrics(tmp_path / str(fast) / "metrics.jsonl") if r["split"] == "train"]
        out[fast] = summary["metrics"], load_file(str(tmp_path / str(fast) / "model.safetensors")), losses
    assert out[True][0]["test_acc"] > 0.5 and out[True][0]["epsilon"] == out[False][0]["epsilon"]
    for k, v in out[False][1].items():  # same batches and noise; 30 steps of rounding differences only
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the logged loss: the fast path's own forward, the reference's separate no-grad forward
    assert len(out[True][2]) == 6 and out[True][2] == pytest.approx(out[False][2], rel=1e-5)
    assert_resume_exact(DP_RECIPE)


def test_dpsgd_loop_refuses_fast_with_an_unsupported_model(tmp_path):
    from archlab.errors import ArchlabError
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {**DP_RECIPE, "model": {"name": "lstm"}, "data": {"name": "digits", "val_fraction": 0.1}}
    with pytest.raises(ArchlabError, match=r"loop.fast: the DP-SGD fast path does not support .*LSTM"):
        train(from_dict(raw), out=tmp_path / "bad", progress=False, log=lambda _m: None)
    raw = {**DP_RECIPE, "loop": {**DP_RECIPE["loop"], "fast": False, "channels_last": True}}
    with pytest.raises(ArchlabError, match="channels_last is an option of the fast path: set fast = true too"):
        train(from_dict(raw), out=tmp_path / "bad2", progress=False, log=lambda _m: None)
