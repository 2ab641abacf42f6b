"""ViT: equal to Hugging Face ViT (logits, hidden states, save_hf round trip), attention rollout properties, plot."""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab import from_hf
from archlab.models.transformers.vit import attention_rollout, plot_attention_rollout, rollout_matrix

SMALL = dict(image_size=16, patch_size=4, in_channels=3, dim=32, depth=2, heads=4, mlp_dim=64)


pytestmark = pytest.mark.usefixtures("single_thread")


def _hf_config(transformers, num_labels: int = 5):
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  image_size=16, patch_size=4, num_channels=3, num_labels=num_labels,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  attn_implementation="eager")


def test_shapes_and_attentions():
    model = archlab.create("vit", **SMALL).eval()
    x = torch.randn(3, 3, 16, 16)
    logits, atts = model.forward_with_attention(x)
    assert logits.shape == (3, 10)
    assert len(atts) == 2 and atts[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(atts[0].sum(-1), torch.ones(3, 4, 17))
    # the eager path that returns weights computes the same logits as the fused one
    torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
    logits2, atts2 = model(x, output_attentions=True)
    assert torch.equal(logits2, logits) and all(torch.equal(a, b) for a, b in zip(atts, atts2, strict=True))
    with pytest.raises(ValueError, match="16x16"):
        model(torch.randn(1, 3, 20, 20))


def test_class_token_shortcut_equals_the_full_last_layer():
    """forward() runs the last layer for the class token only; values and gradients match the full path."""
    torch.manual_seed(0)
    model = archlab.create("vit", **SMALL).train()
    x = torch.randn(3, 3, 16, 16)
    fast = model(x)
    fast.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = model.head(model.features(x).last_hidden_state[:, 0])
    full.square().sum().backward()
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_mean_pool_and_no_head():
    x = torch.randn(2, 3, 16, 16)
    assert archlab.create("vit", **SMALL, pool="mean")(x).shape == (2, 10)
    assert archlab.create("vit", **SMALL, head="none")(x).shape == (2, 17, 32)
    with pytest.raises(archlab.ArchlabError, match="patch_size"):
        archlab.create("vit", image_size=30, patch_size=7)


def test_equals_hf_classifier_and_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ref = transformers.ViTForImageClassification(_hf_config(transformers)).eval()
    ref.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf")
    assert model.config.num_classes == 5 and model.config.layer_norm_eps == 1e-12
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = ref(pixel_values=x, output_hidden_states=True)
        got = model(x)
        feats = model.features(x, output_hidden_states=True)
    assert (got - want.logits).abs().max() <= 1e-4
    assert len(feats.hidden_states) == len(want.hidden_states) == 3
    for ours, theirs in zip(feats.hidden_states, want.hidden_states, strict=True):
        assert (ours - theirs).abs().max() <= 1e-4
    # archlab -> HF: transformers loads what save_hf writes and computes the same logits
    model.save_hf(tmp_path / "ours")
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (back(pixel_values=x).logits - got).abs().max() <= 1e-4
    # and the HF attention weights agree with ours
    with torch.no_grad():
        want_att = ref(pixel_values=x, output_attentions=True).attentions
        _, atts = model.forward_with_attention(x)
    for ours, theirs in zip(atts, want_att, strict=True):
        assert (ours - theirs).abs().max() <= 1e-5


def test_equals_hf_vit_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    ref = transformers.ViTModel(_hf_config(transformers)).eval()
    ref.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf")         # the pooler (dense + tanh on CLS) is not part of archlab's ViT
    assert model.config.head == "none"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - ref(pixel_values=x).last_hidden_state).abs().max() <= 1e-4
    # the in-memory names of transformers >= 5 (layers.N.attention.q_proj ...) are read too
    state = model.state_from_hf(model.config, ref.state_dict())
    assert set(state) == set(model.state_dict())


def test_rollout_rows_are_stochastic():
    torch.manual_seed(0)
    atts = [torch.softmax(torch.randn(2, 3, 10, 10), dim=-1) for _ in range(3)]
    for ratio in (0.0, 0.5):
        r = rollout_matrix(atts, discard_ratio=ratio)
        assert r.shape == (2, 10, 10) and (r >= 0).all()
        torch.testing.assert_close(r.sum(-1), torch.ones(2, 10))
    m = attention_rollout(atts)
    assert m.shape == (2, 3, 3)
    r = rollout_matrix(atts)
    torch.testing.assert_close(m.flatten(1).sum(-1), 1 - r[:, 0, 0])


def test_rollout_of_identity_and_uniform_attention():
    t, layers = 17, 3
    eye = [torch.eye(t).expand(1, 2, t, t) for _ in range(layers)]
    torch.testing.assert_close(rollout_matrix(eye), torch.eye(t)[None])
    assert attention_rollout(eye).abs().max() == 0           # the class token only ever sees itself
    uniform = [torch.full((1, 2, t, t), 1.0 / t) for _ in range(layers)]
    m = attention_rollout(uniform)
    # (U + I) / 2 composed L times = (1 - 2^-L) U + 2^-L I: every patch gets (1 - 2^-L) / T
    torch.testing.assert_close(m, torch.full((1, 4, 4), (1 - 2.0 ** -layers) / t))


def test_rollout_follows_a_single_path():
    # layer 1: every token attends to patch 5 only; layer 2: the class token attends to token 2 only
    t = 10
    a1 = torch.zeros(1, 1, t, t)
    a1[..., 5] = 1.0
    a2 = torch.eye(t)[None, None].clone()
    a2[0, 0, 0] = 0.0
    a2[0, 0, 0, 2] = 1.0
    r = rollout_matrix([a1, a2])
    # class row after layer 2: half itself, half token 2; each of those is half itself, half patch 5
    want = torch.zeros(t)
    want[0], want[2], want[5] = 0.25, 0.25, 0.5
    torch.testing.assert_close(r[0, 0], want)


def test_plot_attention_rollout(tmp_path):
    model = archlab.create("vit", depth=2)
    images, labels = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))
    model.train()
    path = plot_attention_rollout(model, images, labels, tmp_path / "plots" / "rollout.png")
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert model.training                     # the model's mode is restored


def test_supervised_run_writes_attention_rollout(tmp_path):
    """The supervised loop asks the model for its example plots at the end of a run."""
    from archlab import recipe as recipe_mod
    from archlab.runner import train

    rec = recipe_mod.from_dict({
        "name": "vit_tiny", "model": {"name": "vit", "image_size": 8, "patch_size": 4, "dim": 16, "depth": 1,
                                      "heads": 2, "mlp_dim": 16},
        "data": {"name": "digits", "batch_size": 32},
        "train": {"steps": 3, "threads": 1},
    })
    summary = train(rec, out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "plots" / "attention_rollout.png").stat().st_size > 1000
    assert summary["num_params"] > 0
