"""``train.activation_checkpointing``: blocks are recomputed in the backward pass, and the gradients (and
BatchNorm statistics) equal the plain run's; models without it say which ones have it."""

from __future__ import annotations

import copy

import pytest
import torch

import archlab
from archlab.errors import ArchlabError
from archlab.nn.checkpointing import ActivationCheckpointing, enable_activation_checkpointing, supporting_models

# Tiny configurations with dropout on, so the recomputation must replay the same random masks.
MODELS = {
    "gpt": ({"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.1},
            lambda m: m.layers[0]),
    "vit": ({"image_size": 16, "patch_size": 4, "dim": 16, "depth": 2, "heads": 2, "mlp_dim": 32, "dropout": 0.1},
            lambda m: m.layers[0]),
    "resnet20": ({"in_channels": 1, "width": 4}, lambda m: m.stages[1][0]),
    "bert": ({"vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32,
              "dropout": 0.1, "attention_dropout": 0.1}, lambda m: m.layers[0]),
    "t5": ({"d_model": 16, "d_kv": 4, "d_ff": 32, "num_heads": 4, "dropout": 0.1}, lambda m: m.decoder[0]),
    "bart": ({}, lambda m: m.encoder[0]),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _loss(model, inputs) -> torch.Tensor:
    out = model(*inputs)
    return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()  # every output entry matters


def _step(model, inputs, seed: int = 7):
    """One forward + backward under a fixed seed: the loss, the gradients, the buffers, block calls."""
    calls = []
    block = MODELS[model.registry_name][1](model)
    handle = block.register_forward_pre_hook(lambda *_: calls.append(1))  # the recomputation stops early
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = _loss(model, inputs)
    loss.backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers, len(calls)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_equal_the_plain_run(name):
    torch.manual_seed(0)
    plain = archlab.create(name, **MODELS[name][0]).train()
    checkpointed = copy.deepcopy(plain)
    enable_activation_checkpointing(checkpointed)
    assert checkpointed.activation_checkpointing and not plain.activation_checkpointing
    x = type(plain).example_input(plain.config, batch_size=3)
    inputs = x if isinstance(x, tuple) else (x,)

    loss_a, grads_a, buffers_a, calls_a = _step(plain, inputs)
    loss_b, grads_b, buffers_b, calls_b = _step(checkpointed, inputs)
    assert (calls_a, calls_b) == (1, 2)  # the block really ran again in the backward pass
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == sum(1 for _ in plain.parameters())
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], atol=1e-6, rtol=0, msg=key)
    # BatchNorm running statistics are updated once per forward, not again by the recomputation
    for key in buffers_a:
        assert torch.equal(buffers_a[key], buffers_b[key]), key
    if name == "resnet20":
        assert any("running_mean" in k for k in buffers_a)


def test_evaluation_and_no_grad_run_blocks_once():
    torch.manual_seed(0)
    model = archlab.create("gpt", **MODELS["gpt"][0])
    model.set_activation_checkpointing(True)
    x = type(model).example_input(model.config, batch_size=2)
    calls = []
    model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    model.eval()
    _loss(model, (x,)).backward()  # eval mode: a plain forward (dropout off, nothing recomputed)
    with torch.no_grad():
        model.train()(x)
    assert len(calls) == 2
    out = model.eval().generate(x[:, :3], 4, temperature=0.0)  # KV-cache decoding is untouched
    assert out.shape == (2, 7)


def test_supporting_models_and_the_one_line_error():
    names = supporting_models()
    assert {"gpt", "bert", "roberta", "distilbert", "albert", "vit", "t5", "bart",
            "resnet20", "resnet32", "resnet56"} <= set(names)
    assert all(issubclass(archlab.registry.get(n).cls, ActivationCheckpointing) for n in names)
    with pytest.raises(ArchlabError) as err:
        enable_activation_checkpointing(archlab.create("mlp"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("train.activation_checkpointing: model 'mlp' cannot recompute its blocks; "
                              "models that can: ")
    assert message.endswith(", ".join(names))


GPT_RECIPE = {"model": {"name": "gpt", "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16},
              "data": {"name": "text_toy", "batch_size": 4},
              "train": {"loop": "lm", "steps": 4, "log_every": 1, "activation_checkpointing": True},
              "loop": {"eval_iters": 2}}


def _write(raw, path):
    import tomli_w

    path.write_text(tomli_w.dumps(raw))
    return path


def test_training_through_the_cli(tmp_path, capsys):
    from archlab.cli import main

    recipe = _write(GPT_RECIPE, tmp_path / "gpt.toml")
    plain = _write({**GPT_RECIPE, "train": {**GPT_RECIPE["train"], "activation_checkpointing": False}},
                   tmp_path / "plain.toml")
    assert main(["train", str(recipe), "--out", str(tmp_path / "ckpt"), "--no-progress"]) == 0
    assert main(["train", str(plain), "--out", str(tmp_path / "plain"), "--no-progress"]) == 0
    capsys.readouterr()
    a = archlab.load(tmp_path / "ckpt").state_dict()
    b = archlab.load(tmp_path / "plain").state_dict()
    for key in a:  # four optimizer steps with recomputed blocks land on the plain run's weights
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert "activation_checkpointing = true" in (tmp_path / "ckpt" / "recipe.toml").read_text()

    bad = _write({"model": {"name": "mlp", "in_features": 40, "hidden": [8]},
                  "data": {"name": "mnist1d", "options": {"num_samples": 200}},
                  "train": {"steps": 2, "activation_checkpointing": True}}, tmp_path / "bad.toml")
    assert main(["train", str(bad), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model 'mlp' cannot recompute its blocks; models that can: " in err
    assert not (tmp_path / "bad").exists()
    assert main(["train", str(recipe), "--out", str(tmp_path / "typo"), "--no-progress",
                 "--set", "train.activation_checkpointing=1"]) == 2
    assert "train.activation_checkpointing" in capsys.readouterr().err
