"""archlab.explain: attribution methods equal to Captum and shap, and the axioms they promise.

Tiny random models with fixed seeds; every comparison with a peer is on the same model and inputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import archlab
import archlab.explain as E
from archlab.errors import ArchlabError

pytestmark = pytest.mark.usefixtures("single_thread")


def captum_attr():
    pytest.importorskip("captum", reason="peer `captum` not installed (pip install archlab[test])")
    warnings.filterwarnings("ignore", module="captum")
    from captum import attr

    return attr


class SmallCNN(nn.Module):
    """conv-ReLU-pool-conv-ReLU-linear-act-linear on 1x8x8 images, 3 classes; every layer a module."""

    def __init__(self, pool: type[nn.Module] = nn.AvgPool2d, act: type[nn.Module] = nn.ReLU, bias: bool = True):
        super().__init__()
        self.conv1, self.r1, self.pool = nn.Conv2d(1, 4, 3, padding=1, bias=bias), nn.ReLU(), pool(2)
        self.conv2, self.r2 = nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU()
        self.fc, self.r3, self.out = nn.Linear(96, 8, bias=bias), act(), nn.Linear(8, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.r2(self.conv2(self.pool(self.r1(self.conv1(x)))))
        return self.out(self.r3(self.fc(h.flatten(1))))


def cnn(**kw) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallCNN(**kw).eval()
    return model, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])


def mlp(d: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol


def test_methods_listed():
    assert set(E.methods()) >= {"saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deeplift",
                                "gradcam", "guided_gradcam", "occlusion", "lrp", "shapley", "kernel_shap", "lime",
                                "deep_shap", "attention_rollout", "attention_flow"}


# ----------------------------------------------------------------------------- equal to Captum
def test_gradient_methods_equal_captum():
    C = captum_attr()
    model, x, t = cnn()
    base = 0.1 * torch.randn(1, 1, 8, 8)
    close(E.attribute(model, x, t, "saliency"), C.Saliency(model).attribute(x, t))
    close(E.attribute(model, x, t, "saliency", abs=False), C.Saliency(model).attribute(x, t, abs=False))
    close(E.attribute(model, x, t, "input_x_gradient"), C.InputXGradient(model).attribute(x, t))
    for rule in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle"):
        ours = E.attribute(model, x, t, "integrated_gradients", baselines=base, n_steps=20, rule=rule)
        close(ours, C.IntegratedGradients(model).attribute(x, base, t, n_steps=20, method=rule))
    # Captum's trapezoid weights are 1/n with halved ends (they sum to (n-1)/n); ours are 1/(n-1) with
    # halved ends (they sum to 1), so Captum's result is ours times (n-1)/n.
    ours = E.attribute(model, x, t, "integrated_gradients", baselines=base, n_steps=20, rule="riemann_trapezoid")
    theirs = C.IntegratedGradients(model).attribute(x, base, t, n_steps=20, method="riemann_trapezoid")
    close(ours * 19 / 20, theirs)
    chunked = E.attribute(model, x, t, "integrated_gradients", n_steps=10, internal_batch_size=7)
    close(chunked, E.attribute(model, x, t, "integrated_gradients", n_steps=10))


def test_deeplift_equal_captum():
    C = captum_attr()
    for act in (nn.ReLU, nn.Tanh, nn.Sigmoid):
        model, x, t = cnn(act=act)
        base = 0.1 * torch.randn(4, 1, 8, 8)
        close(E.attribute(model, x, t, "deeplift", baselines=base), C.DeepLift(model).attribute(x, base, t))


class TokenClassifier(nn.Module):
    """Token ids -> embedding -> mean over positions -> MLP -> 3 scores (a toy text classifier)."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.act, self.out = nn.Embedding(20, 6), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(self.embed(ids).mean(1))))


def test_layer_integrated_gradients_on_tokens_equal_captum_and_complete():
    C = captum_attr()
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    ids, t = torch.randint(1, 20, (4, 7)), torch.tensor([0, 1, 2, 0])
    ours = E.attribute(model, ids, t, "integrated_gradients", layer="embed", baselines=0, n_steps=32)
    theirs = C.LayerIntegratedGradients(model, model.embed).attribute(ids, torch.zeros_like(ids), target=t,
                                                                      n_steps=32)
    close(ours, theirs)
    gap = model(ids).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(ids))[:, :].gather(1, t[:, None])[:, 0]
    close(ours.sum((1, 2)), gap.detach(), 1e-4)
    cnn_model, x, tt = cnn()   # on images: the path in conv2's output space
    close(E.attribute(cnn_model, x, tt, "integrated_gradients", layer="conv2", n_steps=16),
          C.LayerIntegratedGradients(cnn_model, cnn_model.conv2).attribute(x, target=tt, n_steps=16))


def test_deep_shap_equal_captum_and_sums_to_mean_delta():
    C = captum_attr()
    model, x, t = cnn(act=nn.Tanh)
    background = torch.rand(5, 1, 8, 8)
    ours = E.attribute(model, x, t, "deep_shap", baselines=background)
    close(ours, C.DeepLiftShap(model).attribute(x, background, t))
    delta = model(x).gather(1, t[:, None])[:, 0] - model(background)[:, t].mean(0)
    close(ours.sum((1, 2, 3)), delta.detach(), 1e-5)


def test_gradcam_and_guided_gradcam_equal_captum():
    C = captum_attr()
    model, x, t = cnn()
    for relu in (False, True):
        ours = E.attribute(model, x, t, "gradcam", layer="r2", relu_attributions=relu)
        close(ours, C.LayerGradCam(model, model.r2).attribute(x, t, relu_attributions=relu))
    assert E.attribute(model, x, t, "gradcam").shape == (4, 1, 4, 4)  # default layer: the last conv
    for layer in ("r1", "r2"):
        ours = E.attribute(model, x, t, "guided_gradcam", layer=layer)
        close(ours, C.GuidedGradCam(model, getattr(model, layer)).attribute(x, t))


def test_occlusion_equal_captum():
    C = captum_attr()
    model, x, t = cnn()
    for window, strides in (((1, 3, 3), (1, 2, 2)), ((1, 2, 2), 2), ((1, 4, 3), (1, 3, 1))):
        ours = E.attribute(model, x, t, "occlusion", sliding_window_shapes=window, strides=strides, baselines=0.5,
                           perturbations_per_eval=3)
        theirs = C.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=strides, baselines=0.5,
                                              target=t)
        close(ours, theirs)


def test_smoothgrad_equal_captum_noise_tunnel():
    C = captum_attr()
    model, x, t = cnn()
    torch.manual_seed(1)
    theirs = C.NoiseTunnel(C.Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=7, stdevs=0.3, target=t)
    torch.manual_seed(1)  # the same draws in the same order: equal, not only statistically
    close(E.attribute(model, x, t, "smoothgrad", n_samples=7, stdevs=0.3), theirs)


@pytest.mark.parametrize("bias", [True, False])
def test_lrp_epsilon_equal_captum(bias: bool):
    C = captum_attr()
    model, x, t = cnn(pool=nn.MaxPool2d, act=nn.Tanh, bias=bias)
    close(E.attribute(model, x, t, "lrp"), C.LRP(model).attribute(x, t))
    close(E.attribute(model, x, t, "lrp", epsilon=0.1), _captum_lrp_eps(C, model, 0.1).attribute(x, t))


def _captum_lrp_eps(C, model: nn.Module, eps: float):
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in model.modules():   # max pooling passes relevance to the maximum here: Captum's rule with eps -> 0
        if isinstance(m, nn.Conv2d | nn.Linear | nn.MaxPool2d):
            m.rule = EpsilonRule(epsilon=1e-9 if isinstance(m, nn.MaxPool2d) else eps)
    return C.LRP(model)


# ----------------------------------------------------------------------------- axioms
def test_integrated_gradients_complete():
    """sum_i IG_i = F(x) - F(x') within 1e-3 at 256 steps (Sundararajan et al. 2017, Proposition 1)."""
    model, x, t = cnn()
    base = torch.rand(1, 1, 8, 8)
    gap = model(x).gather(1, t[:, None])[:, 0] - model(base)[0, t]
    for rule in ("gausslegendre", "riemann_trapezoid", "riemann_middle"):
        ig = E.attribute(model, x, t, "integrated_gradients", baselines=base, n_steps=256, rule=rule)
        assert (ig.sum((1, 2, 3)) - gap).abs().max().item() <= 1e-3, rule


def test_deeplift_sums_to_delta():
    model, x, t = cnn(act=nn.Tanh)
    base = torch.rand(1, 1, 8, 8)
    gap = model(x).gather(1, t[:, None])[:, 0] - model(base)[0, t]
    close(E.attribute(model, x, t, "deeplift", baselines=base).sum((1, 2, 3)), gap.detach(), 1e-5)


def test_lrp_conserves_relevance():
    model, x, t = cnn(pool=nn.MaxPool2d, bias=False)
    score = model(x).gather(1, t[:, None])[:, 0].detach()
    close(E.attribute(model, x, t, "lrp", epsilon=1e-9).sum((1, 2, 3)), score, 1e-5)
    close(E.attribute(model, x, t, "lrp", rule="alpha_beta", alpha=1.0, beta=0.0).sum((1, 2, 3)), score, 1e-5)
    # alpha=2, beta=1 conserves wherever every unit has contributions of both signs (a Tanh MLP on
    # Gaussian inputs); the epsilon rule with biases does not, its biases absorb relevance.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 12, bias=False), nn.Tanh(), nn.Linear(12, 3, bias=False)).double().eval()
    v = torch.randn(5, 10, dtype=torch.double)
    r = E.attribute(net, v, 2, "lrp", rule="alpha_beta", alpha=2.0, beta=1.0)
    close(r.sum(1), net(v)[:, 2].detach(), 1e-6)
    assert not torch.allclose(r, E.attribute(net, v, 2, "lrp", rule="alpha_beta"))


def test_shapley_axioms():
    d = 6
    torch.manual_seed(0)
    w = torch.randn(16, d, dtype=torch.double)
    w[:, 5] = 0.0                           # feature 5 is a dummy
    w[:, 1] = w[:, 0]                       # features 0 and 1 are interchangeable ...
    model = nn.Sequential(nn.Linear(d, 16, dtype=torch.double), nn.Tanh(), nn.Linear(16, 3, dtype=torch.double))
    model[0].weight.data = w
    x = torch.randn(3, d, dtype=torch.double)
    x[:, 1] = x[:, 0]                       # ... at equal values, against a zero baseline
    phi = E.attribute(model, x, 1, "shapley")
    close(phi.sum(1), (model(x)[:, 1] - model(torch.zeros(1, d, dtype=torch.double))[0, 1]).detach(), 1e-12)
    close(phi[:, 0], phi[:, 1], 1e-12)
    close(phi[:, 5], torch.zeros(3, dtype=torch.double), 1e-12)


def test_shapley_equal_captum_and_shap_and_kernel_shap_exact():
    C = captum_attr()
    shap = pytest.importorskip("shap", reason="peer `shap` not installed (pip install archlab[test])")
    d = 6
    model = mlp(d)
    x, base = torch.randn(3, d, dtype=torch.double), torch.randn(1, d, dtype=torch.double)
    exact = E.attribute(model, x, 1, "shapley", baselines=base)
    close(exact, C.ShapleyValues(model).attribute(x, base, target=1), 1e-5)
    close(E.attribute(model, x, 1, "kernel_shap", baselines=base, n_samples=2**d), exact, 1e-10)

    def f(a: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(a)).detach().numpy()[:, 1]

    theirs = shap.KernelExplainer(f, base.numpy()).shap_values(x.numpy(), nsamples=2**d, silent=True)
    assert np.abs(theirs - exact.numpy()).max() <= 1e-10
    # groups through feature_mask (Captum's convention: each feature carries its group's value)
    mask = torch.tensor([0, 0, 1, 2, 2, 2])
    grouped = E.attribute(model, x, 1, "shapley", baselines=base, feature_mask=mask)
    close(grouped, C.ShapleyValues(model).attribute(x, base, target=1, feature_mask=mask[None]), 1e-5)


def test_kernel_shap_sampled_agrees_with_exact_like_shap():
    """With 200 of the 1022 coalitions, KernelSHAP is within a few percent of the exact values, as shap's is."""
    shap = pytest.importorskip("shap", reason="peer `shap` not installed (pip install archlab[test])")
    d = 10
    model = mlp(d, seed=1)
    x, base = torch.randn(3, d, dtype=torch.double), torch.zeros(1, d, dtype=torch.double)
    exact = E.attribute(model, x, 1, "shapley")
    scale = exact.abs().max().item()
    ours = E.attribute(model, x, 1, "kernel_shap", n_samples=200, generator=torch.Generator().manual_seed(0))
    close(ours.sum(1), exact.sum(1), 1e-10)            # efficiency holds for every sample

    def f(a: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(a)).detach().numpy()[:, 1]

    np.random.seed(0)
    theirs = shap.KernelExplainer(f, base.numpy()).shap_values(x.numpy(), nsamples=200, silent=True)
    ours_err = (ours - exact).abs().max().item() / scale
    shap_err = np.abs(theirs - exact.numpy()).max() / scale
    assert ours_err < 0.05 and shap_err < 0.05, (ours_err, shap_err)


def test_lime_linear_model_exact_and_agrees_with_captum():
    C = captum_attr()
    from captum._utils.models.linear_model import SkLearnLinearRegression

    torch.manual_seed(0)
    lin = nn.Linear(8, 2).double()
    x = torch.randn(2, 8, dtype=torch.double)
    contribution = (lin.weight[0] * x).detach()        # S(x) - S(x without i), baseline 0
    close(E.attribute(lin, x, 0, "lime", alpha=0.0, n_samples=100), contribution, 1e-10)
    theirs = C.Lime(lin, interpretable_model=SkLearnLinearRegression()).attribute(x, target=0, n_samples=100)
    close(theirs, contribution, 1e-5)
    # a nonlinear model: statistical agreement with Captum's LIME under the same kernel and surrogate
    model = mlp(8, seed=2)

    def similarity(_x, _p, z, **_kw):
        kept = z.sum()
        dist = 1 - kept / (kept.sqrt() * 8**0.5).clamp(min=1e-12)
        return torch.exp(-dist**2 / 0.25**2)

    ours = E.attribute(model, x, 0, "lime", alpha=0.0, n_samples=4000, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = C.Lime(model, interpretable_model=SkLearnLinearRegression(), similarity_func=similarity).attribute(
        x, target=0, n_samples=4000)
    corr = np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1]
    assert corr > 0.95, corr


# ----------------------------------------------------------------------------- registered models, errors
def test_registered_lenet_default_layer_and_every_method_runs():
    model = archlab.create("lenet5")
    x = torch.randn(2, 1, 28, 28)
    for name in set(E.methods()) - {"attention_rollout", "attention_flow"}:   # LeNet has no attention
        options = {"sliding_window_shapes": (1, 7, 7), "strides": 7} if name == "occlusion" else {}
        if name == "deep_shap":
            options["baselines"] = torch.randn(3, 1, 28, 28)
        if name in ("shapley", "kernel_shap", "lime"):
            options["feature_mask"] = (torch.arange(28)[:, None] // 14 * 2 + torch.arange(28)[None] // 14)[None]
            if name != "shapley":
                options["n_samples"] = 16
        a = E.attribute(model, x, 3, name, **options)
        expected = (2, 1, 10, 10) if name == "gradcam" else x.shape   # C3's map (C5's is 1x1)
        assert a.shape == expected and torch.isfinite(a).all(), name
    assert model.training  # attribute restores the mode it found


def test_bad_input_is_one_line_archlab_error():
    model, x, t = cnn()
    cases = [
        lambda: E.attribute(model, x, t, "nope"),
        lambda: E.attribute(model, x, None, "saliency"),
        lambda: E.attribute(model, x, 7, "saliency"),
        lambda: E.attribute(model, x, t[:2], "saliency"),
        lambda: E.attribute(model, x, t, "integrated_gradients", rule="simpson"),
        lambda: E.attribute(model, x, t, "integrated_gradients", n_steps=0),
        lambda: E.attribute(model, x, t, "integrated_gradients", baselines=torch.zeros(3, 3)),
        lambda: E.attribute(model, x, t, "occlusion", sliding_window_shapes=(1, 9, 9)),
        lambda: E.attribute(model, x, t, "occlusion", sliding_window_shapes=(3, 3)),
        lambda: E.attribute(model, x, t, "gradcam", layer="nope"),
        lambda: E.attribute(model, x, t, "lrp", rule="gamma"),
        lambda: E.attribute(model, x, t, "lrp", rule="alpha_beta", alpha=2.0, beta=0.5),
        lambda: E.attribute(model, x, t, "shapley"),          # 64 features: 2^64 coalitions
        lambda: E.attribute(model, x, t, "lime", feature_mask=torch.full((1, 8, 8), 3)),
        lambda: E.attribute(model, x, t, "saliency", n_steps=3),
        lambda: E.attribute(nn.Sequential(nn.Flatten(), nn.GELU(), nn.Linear(64, 3)), x, t, "lrp"),
    ]
    for case in cases:
        with pytest.raises(ArchlabError) as info:
            case()
        assert "\n" not in str(info.value)


def test_attention_rollout_equals_vit_rollout_and_is_a_distribution():
    from archlab.models.transformers.vit import attention_rollout as vit_rollout

    torch.manual_seed(0)
    vit = archlab.create("vit", image_size=8, patch_size=2, in_channels=1, num_classes=3, dim=16, depth=2,
                         heads=2, mlp_dim=32).eval()
    x = torch.randn(3, 1, 8, 8)
    for ratio in (0.0, 0.5):
        ours = E.attribute(vit, x, None, "attention_rollout", discard_ratio=ratio)
        with torch.no_grad():
            _, att = vit.forward_with_attention(x)
        close(ours[:, 0], vit_rollout(att, ratio), 1e-6)
    from archlab.explain.attention_rollout import rollout

    r = rollout(att)
    close(r.sum(-1), torch.ones(3, 17), 1e-5)               # rows stay distributions
    assert (r >= 0).all()
    identity = [torch.eye(5).expand(2, 3, 5, 5)] * 3         # tokens attending only to themselves
    close(rollout(identity), torch.eye(5).expand(2, 5, 5), 1e-6)
    with pytest.raises(ArchlabError, match="attention"):
        E.attribute(cnn()[0], x, 0, "attention_rollout")


# ----------------------------------------------------------------------------- archlab explain
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    """A CNN trained for a few steps on the 8x8 digits (bundled with archlab): a run directory."""
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "digits_tiny", "seed": 0,
           "model": {"name": "cnn2d", "in_channels": 1, "image_size": 8, "num_classes": 10, "channels": [4, 8],
                     "hidden": 16, "norm": "none"},
           "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
           "optim": {"name": "adamw", "lr": 3e-3}, "train": {"steps": 20, "log_every": 10}}
    out = tmp_path_factory.mktemp("explain") / "run"
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    return out


def test_explain_command_draws_and_scores(digits_run, tmp_path, capsys):
    from archlab.cli import main

    png = tmp_path / "maps.png"
    assert main(["explain", str(digits_run), "--method", "saliency", "--method", "gradcam", "--index", "0",
                 "--index", "5", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    prefix = tmp_path / "faith"
    assert main(["explain", str(digits_run), "--method", "integrated_gradients", "--faithfulness", "20",
                 "--steps", "8", "--out", str(prefix)]) == 0
    import json

    result = json.loads(prefix.with_suffix(".json").read_text())["methods"]
    assert set(result) == {"random", "integrated_gradients"}
    for r in result.values():
        assert 0.0 <= r["deletion_auc"] <= 1.0 and len(r["insertion_curve"]) == 29
    assert prefix.with_suffix(".png").is_file() and "| random |" in prefix.with_suffix(".md").read_text()
    capsys.readouterr()
    for bad in (["--method", "nope"], ["--index", "100000"], ["--faithfulness", "-1"], ["--steps", "0"],
                ["--sanity", "2", "--tcav", "2"]):
        assert main(["explain", str(digits_run), *bad, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("archlab: error:") and err.count("\n") == 1
    assert main(["explain", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2


def test_faithfulness_curves_rank_a_good_map_above_a_bad_one():
    from archlab.explain.faithfulness import area, curve

    # a "model" whose class-0 logit is the mean of the left half: the map that ranks the left half first
    # deletes the evidence fastest (low deletion area) and restores it fastest (high insertion area)
    class Left(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = 8 * x[:, 0, :, :4].mean((1, 2))
            return torch.stack([s, torch.zeros_like(s)], 1)

    x = torch.ones(2, 1, 6, 8)
    good = torch.zeros(2, 1, 6, 8)
    good[..., :4] = 1.0
    t = torch.zeros(2, dtype=torch.long)
    for mode, start in (("deletion", "blur"), ("insertion", "baseline")):
        g = area(curve(Left(), x, t, good, mode, steps=8, start=start))
        b = area(curve(Left(), x, t, -good, mode, steps=8, start=start))
        assert ((g < b) if mode == "deletion" else (g > b)).all()
    c = curve(Left(), x, t, good, "deletion", steps=4)
    assert c.shape == (2, 5) and torch.allclose(c[:, -1], torch.full((2,), 0.5))


def test_cascading_randomization_separates_model_blind_maps():
    from archlab.explain.sanity import cascading_randomization, layers_top_down, spearman

    model, x, t = cnn()
    assert [n for n, _ in layers_top_down(model)] == ["out", "fc", "conv2", "conv1"]
    blind = cascading_randomization(model, x, t, lambda m, v, tt: v.clone())       # ignores the model: "fails"
    assert [rho for _, rho in blind] == pytest.approx([1.0] * 5)
    grad = cascading_randomization(model, x, t, lambda m, v, tt: E.attribute(m, v, tt, "saliency"))
    assert grad[0] == ("none", 1.0) and grad[-1][1] < 0.5
    assert model.out.weight.equal(cnn()[0].out.weight)                             # the model itself is untouched
    close(spearman(torch.tensor([[1.0, 2, 3]]), torch.tensor([[10.0, 20, 30]])), torch.ones(1, dtype=torch.double))
    stats = pytest.importorskip("scipy.stats")
    a, b = torch.randint(0, 4, (3, 30)).float(), torch.randint(0, 4, (3, 30)).float()   # many ties
    expected = torch.tensor([stats.spearmanr(a[i], b[i]).statistic for i in range(3)], dtype=torch.double)
    close(spearman(a, b), expected, 1e-9)


def test_explain_command_sanity(digits_run, tmp_path):
    import json

    from archlab.cli import main

    prefix = tmp_path / "sanity"
    assert main(["explain", str(digits_run), "--method", "saliency", "--sanity", "8", "--out", str(prefix)]) == 0
    rows = json.loads(prefix.with_suffix(".json").read_text())["methods"]["saliency"]
    assert rows[0] == ["none", 1.0] and len(rows) == 5   # conv, conv, linear, linear
    assert prefix.with_suffix(".png").is_file()


def test_explain_command_roar_shares_the_0_cell_and_resumes(digits_run, tmp_path, capsys):
    import json

    from archlab.cli import main

    prefix = tmp_path / "roar"
    base = ["explain", str(digits_run), "--roar", "100", "--roar-epochs", "1", "--out", str(prefix)]
    assert main([*base, "--method", "saliency"]) == 0
    first = json.loads(prefix.with_suffix(".json").read_text())
    assert set(first["methods"]) == {"random", "saliency"} and first["meta"]["epochs"] == 1
    capsys.readouterr()
    assert main([*base, "--method", "saliency", "--method", "input_x_gradient"]) == 0
    assert "keeping random, saliency" in capsys.readouterr().out
    second = json.loads(prefix.with_suffix(".json").read_text())["methods"]
    assert second["saliency"] == first["methods"]["saliency"]               # kept, not recomputed
    assert second["input_x_gradient"]["0.0"] == second["random"]["0.0"]      # one 0% cell for every method
    assert "| input_x_gradient |" in prefix.with_suffix(".md").read_text() and prefix.with_suffix(".png").is_file()
    assert main([*base[:-4], "--roar-epochs", "2", "--out", str(prefix), "--method", "saliency"]) == 0
    third = json.loads(prefix.with_suffix(".json").read_text())          # other settings: a new table
    assert set(third["methods"]) == {"random", "saliency"} and third["meta"]["epochs"] == 2
    capsys.readouterr()
    assert main([*base, "--roar-epochs", "0"]) == 2


# ----------------------------------------------------------------------------- GNNExplainer
class SumNeighbours(nn.Module):
    """Node scores = own features + sum of weighted in-neighbour features (one message-passing layer)."""

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
        w = torch.ones(edge_index.shape[1]) if edge_weight is None else edge_weight
        return x.clone().index_add_(0, edge_index[1], w[:, None] * x[edge_index[0]])


def test_gnn_explainer_finds_the_deciding_edge_and_ignores_far_edges():
    from archlab.explain.gnn_explainer import fidelity, gnn_explainer

    # node 0 leans to class 0 by itself; its in-neighbour 1 carries strong class-1 evidence, 2 and 3 weak
    # class-0 evidence; edge 4 -> 5 is outside node 0's computation graph
    x = torch.tensor([[0.5, 0.0], [0.0, 3.0], [0.2, 0.0], [0.2, 0.0], [1.0, 0.0], [0.0, 1.0]])
    edges = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 5]])
    model = SumNeighbours()
    ex = gnn_explainer(model, x, edges, node=0, epochs=200, lr=0.1, feat_size=0.0, feat_ent=0.0)
    assert ex.target == 1 and int(ex.edge_mask.argmax()) == 0
    assert ex.edge_mask[3] == 0 and ((ex.edge_mask >= 0) & (ex.edge_mask <= 1)).all()
    plus, minus = fidelity(model, x, edges, 0, 1, ex.edge_mask, k=1)
    assert plus > 0.5 and minus <= 0.0      # the deciding edge is necessary and sufficient
    class IgnoresEdges(nn.Module):
        def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
            return x * 1.0

    with pytest.raises(ArchlabError, match="edge weight"):
        gnn_explainer(IgnoresEdges(), x, edges, node=0)


def test_explain_command_on_a_gcn_run(tmp_path):
    from archlab.cli import main
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "gcn_tiny", "seed": 0, "model": {"name": "gcn", "hidden_channels": 8},
           "data": {"name": "sbm"}, "optim": {"name": "adam", "lr": 0.01},
           "train": {"loop": "node", "epochs": 5, "eval_every": 5, "log_every": 5}}
    run = tmp_path / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    png = tmp_path / "g.png"
    assert main(["explain", str(run), "--node", "0", "--out", str(png)]) == 0 and png.stat().st_size > 1000
    assert main(["explain", str(run), "--faithfulness", "2", "--out", str(tmp_path / "fid")]) == 0
    assert "gnn_explainer" in (tmp_path / "fid.md").read_text()


# ----------------------------------------------------------------------------- TCAV
def test_tcav_recovers_a_planted_concept_and_its_t_test_matches_scipy():
    from archlab.explain.tcav import concept_vector, tcav, welch_t_test

    torch.manual_seed(0)
    hidden = nn.Linear(4, 4)
    hidden.weight.data, hidden.bias.data = torch.eye(4), torch.zeros(4)
    head = nn.Linear(4, 2)
    head.weight.data = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    model = nn.Sequential(hidden, nn.Tanh(), head)        # class 0 rises with the first hidden unit
    concept = torch.randn(60, 4) + torch.tensor([3.0, 0, 0, 0])
    randoms = [torch.randn(60, 4) for _ in range(10)]
    v = concept_vector(concept, randoms[0])
    assert v[0] > 0.9 and abs(float(v.norm()) - 1) < 1e-5
    inputs = torch.randn(50, 4)
    up = tcav(model, "1", inputs, 0, concept, randoms)
    assert up.scores == [1.0] * 10 and up.significant()
    down = tcav(model, "1", inputs, 0, -concept, randoms)
    assert down.scores == [0.0] * 10 and down.significant()
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.9, 0.8, 0.85, 0.95, 0.7], [0.5, 0.6, 0.4, 0.55, 0.45, 0.5]
    t, p = welch_t_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert abs(t - ref.statistic) < 1e-9 and abs(p - ref.pvalue) < 1e-6
    with pytest.raises(ArchlabError, match="random sets"):
        tcav(model, "1", inputs, 0, concept, randoms[:2])


def test_roar_random_removal_keeps_the_signal_a_good_map_removes_it():
    from archlab.explain.roar import remove_top, roar

    # the class is written in pixel (0, 0) of a 4x4 image, the rest is noise
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 1, 4, 4, generator=gen) * 0.1
    x[:, 0, 0, 0] = 2.0 * y - 1.0

    def build() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    def good(v: torch.Tensor, _t: torch.Tensor | None) -> torch.Tensor:   # ranks the informative pixel first
        m = torch.zeros_like(v)
        m[:, :, 0, 0] = 1.0
        return m

    acc = roar(build, good, x[:300], y[:300], x[300:], y[300:], fractions=(0.1,), epochs=20)
    assert acc[0.0] > 0.95 and acc[0.1] < 0.7        # the one informative pixel is gone: chance level
    noise = torch.Generator().manual_seed(1)
    rand = roar(build, lambda v, _t: torch.rand(v.shape, generator=noise), x[:300], y[:300], x[300:], y[300:],
                fractions=(0.1,), epochs=20)
    assert rand[0.1] > 0.8                            # 2 random pixels of 16: the signal mostly survives
    again = roar(build, good, x[:300], y[:300], x[300:], y[300:], fractions=(0.1,), epochs=20, reference=acc[0.0])
    assert again == acc                               # the shared 0% cell: same table without retraining it
    filled = remove_top(x[:2], -good(x[:2], None), 1 / 16, torch.tensor([5.0]))
    assert (filled[:, 0, 0, 0] == x[:2, 0, 0, 0]).all() and (filled == 5.0).sum() == 2


def test_attention_flow_equals_networkx_max_flow():
    nx = pytest.importorskip("networkx")
    from archlab.explain.attention_flow import flow_network, max_flow

    torch.manual_seed(0)
    vit = archlab.create("vit", image_size=4, patch_size=2, in_channels=1, num_classes=3, dim=8, depth=2,
                         heads=2, mlp_dim=16).eval()
    x = torch.randn(2, 1, 4, 4)
    flows = E.attribute(vit, x, None, "attention_flow")
    assert flows.shape == (2, 1, 2, 2)
    with torch.no_grad():
        _, att = vit.forward_with_attention(x)
    cap = flow_network([a[1] for a in att])
    g = nx.DiGraph()
    for u, row in enumerate(cap):
        for v, c in enumerate(row):
            if c > 0:
                g.add_edge(u, v, capacity=c)
    for j in range(1, 5):
        expected = nx.maximum_flow_value(g, j, 2 * 5)
        assert abs(max_flow(cap, j, 2 * 5) - expected) < 1e-6
        assert abs(float(flows[1].flatten()[j - 1]) - expected) < 1e-6
    # tokens that attend only to themselves carry nothing from the patches to the class token
    assert max_flow(flow_network([torch.eye(5).expand(2, 5, 5)] * 2), 1, 10) == 0.0


def test_explain_command_on_a_vit_run(tmp_path):
    """The transformer family: a ViT run on the 8x8 digits, drawn with attention rollout, flow and IG."""
    from archlab.cli import main
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "vit_tiny", "seed": 0,
           "model": {"name": "vit", "image_size": 8, "patch_size": 4, "in_channels": 1, "num_classes": 10, "dim": 16,
                     "depth": 1, "heads": 2, "mlp_dim": 16},
           "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
           "optim": {"name": "adamw", "lr": 3e-3}, "train": {"steps": 5, "log_every": 5}}
    run = tmp_path / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    png = tmp_path / "vit.png"
    assert main(["explain", str(run), "--method", "attention_rollout", "--method", "attention_flow", "--method",
                 "integrated_gradients", "--steps", "4", "--index", "0", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_explain_command_on_a_language_model_run(tmp_path, capsys):
    """Text: the next token after a prompt, explained over the GPT's token embedding."""
    from archlab.cli import main
    from archlab.explain.text_command import NextToken, token_attributions
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {"name": "gpt_tiny", "seed": 0, "model": {"name": "gpt", "block_size": 8, "n_layer": 1, "n_head": 2,
                                                    "n_embd": 16},
           "data": {"name": "text_toy", "batch_size": 4}, "train": {"loop": "lm", "steps": 3},
           "loop": {"eval_iters": 2}}
    run = tmp_path / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    png = tmp_path / "text.png"
    capsys.readouterr()
    assert main(["explain", str(run), "--prompt", "ab", "--steps", "64", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and "predicted next token" in capsys.readouterr().out
    assert main(["explain", str(run), "--probe", "60", "--out", str(tmp_path / "probe")]) == 0
    import json

    rows = json.loads((tmp_path / "probe.json").read_text())["layers"]
    assert [r["layer"] for r in rows] == ["embedding", "block 1"]
    assert all(0 <= r["task"] <= 1 and abs(r["selectivity"] - (r["task"] - r["control"])) < 1e-12 for r in rows)
    model = archlab.load(run).eval()
    ids = torch.tensor([1, 2, 3])
    attr, target = token_attributions(model, ids, steps=64)
    with torch.no_grad():   # completeness in embedding space: sum = F(ids) - F(all token 0)
        gap = NextToken(model)(ids[None])[0, target] - NextToken(model)(torch.zeros(1, 3, dtype=torch.long))[0, target]
    assert attr.shape == (3,) and abs(float(attr.sum() - gap)) < 1e-3


def test_linear_probe_reads_a_linear_property_and_control_labels_follow_types():
    from archlab.explain.probing import control_labels, probe_accuracy

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 5, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()        # linearly readable
    assert probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = torch.randint(0, 2, (600,), generator=gen)
    assert probe_accuracy(x[:400], noise[:400], x[400:], noise[400:]) < 0.65
    tokens = torch.randint(0, 7, (300,), generator=gen)
    ctrl = control_labels(tokens, tokens % 3)
    for t in range(7):                                # one label per token type
        assert len(torch.unique(ctrl[tokens == t])) <= 1
