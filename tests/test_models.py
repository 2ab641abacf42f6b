"""Contract tests over every registered model, plus checks of the classic models against their papers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archlab
from archlab.debug import gradient_check, overfit_one_batch
from archlab.nn import INIT_SCHEMES, init_weights
from archlab.registry import entries

# The registry also holds the RL algorithms (what an RL run trains); they are agents, not modules with an
# example input, and tests/rl covers them.
NAMES = [e.name for e in entries() if e.family != "rl"]


# The tensors here are tiny: intra-op threads only add synchronisation, which stalls whenever another process
# holds one of the (two) cores -- 100 s instead of 7 s for this file.
pytestmark = pytest.mark.usefixtures("single_thread")


def _build(name: str, **overrides):
    model = archlab.create(name, **overrides)
    return model, type(model).example_input(model.config, batch_size=2)


def _call(model, inputs):
    """Models take one tensor (classic) or a tuple of positional inputs (graph: ``(x, edge_index, ...)``)."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _output(out):
    """The tensor to check: the output itself, or the first tensor of a tuple output."""
    return out[0] if isinstance(out, tuple) else out


def _has_field(name: str, field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(archlab.registry.get(name).config_class)}


def _first_int_field(name: str) -> str:
    return next(f.name for f in dataclasses.fields(archlab.registry.get(name).config_class)
                if f.type in (int, "int"))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters in registration order; shapes must agree one by one."""
    src_params, dst_params = list(src.parameters()), list(dst.parameters())
    assert [p.shape for p in src_params] == [p.shape for p in dst_params]
    with torch.no_grad():
        for s, d in zip(src_params, dst_params, strict=True):
            d.copy_(s)


# ---------------------------------------------------------------- contract tests over the registry


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_finite_outputs(name):
    model, x = _build(name)
    out = _output(_call(model, x))
    if _has_field(name, "num_classes"):  # classifiers: one row of logits per example
        assert out.shape == (2, model.config.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model, x = _build(name)
    full = _call(model, x)
    out = _output(full)
    if _has_field(name, "num_classes"):
        F.cross_entropy(out, torch.randint(0, out.shape[1], (out.shape[0],))).backward()
    else:  # a random projection of every float output reaches each parameter some output uses
        outs = [o for o in (full if isinstance(full, tuple) else (full,))
                if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    model, x = _build(name)
    model.eval()
    model.save_pretrained(tmp_path / name)
    loaded = archlab.load(tmp_path / name).eval()
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(_output(_call(model, x)), _output(_call(loaded, x)))


def test_save_hf_only_on_models_with_an_hf_counterpart():
    from archlab.models.transformers.hf import HFModel

    hf = {n for n in NAMES if issubclass(archlab.registry.get(n).cls, HFModel)}
    assert {"gpt", "bert", "vit", "t5", "bart"} <= hf
    for name in NAMES:
        assert hasattr(archlab.registry.get(name).cls, "save_hf") == (name in hf), name


@pytest.mark.parametrize("name", NAMES)
def test_seed_determinism(name):
    def state(seed):
        torch.manual_seed(seed)
        return archlab.create(name).state_dict()

    a, b, c = state(0), state(0), state(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
@pytest.mark.parametrize("name", [n for n in NAMES if _has_field(n, "init")])
def test_every_init_scheme(name, scheme):
    model, x = _build(name, init=scheme)
    assert model.config.init == scheme
    assert torch.isfinite(_output(_call(model, x))).all()


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_lists_allowed_keys(name):
    with pytest.raises(archlab.ArchlabError) as err:
        archlab.create(name, no_such_key=1)
    message = str(err.value)
    assert "no_such_key" in message
    for f in dataclasses.fields(archlab.registry.get(name).config_class):
        assert f.name in message


@pytest.mark.parametrize("name", NAMES)
def test_wrong_type_is_rejected(name):
    field = _first_int_field(name)
    with pytest.raises(archlab.ArchlabError, match=field):
        archlab.create(name, **{field: "ten"})
    if _has_field(name, "init"):
        with pytest.raises(archlab.ArchlabError, match="'xavier'"):
            archlab.create(name, init="glorot")


# ---------------------------------------------------------------------------------- init schemes


def test_init_schemes_set_what_they_promise():
    torch.manual_seed(0)
    he = archlab.create("cnn1d", init="he", norm="batch")
    assert all(torch.count_nonzero(m.bias) == 0 for m in he.modules() if isinstance(m, nn.Linear))
    bns = [m for m in he.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    conv = he.features[0]
    expected_std = (2 / (conv.out_channels * conv.kernel_size[0])) ** 0.5  # fan_out for convolutions
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.3)

    gru = archlab.create("gru", hidden_size=8, num_layers=2, init="orthogonal")
    for name, p in gru.rnn.named_parameters():
        if name.startswith("weight_hh"):
            for gate in p.split(8):  # each gate's recurrent matrix is orthogonal
                torch.testing.assert_close(gate @ gate.T, torch.eye(8), atol=1e-5, rtol=0)
        else:
            assert name.startswith("weight_ih") or torch.count_nonzero(p) == 0

    torch.manual_seed(3)
    default = archlab.create("mlp")
    torch.manual_seed(3)
    same = init_weights(archlab.create("mlp"), "default")
    assert all(torch.equal(a, b) for a, b in zip(default.parameters(), same.parameters(), strict=True))
    with pytest.raises(ValueError, match="orthogonal"):
        init_weights(default, "uniform")


# ---------------------------------------------------------------- the MNIST-1D paper models (2020)


class _PaperMLPBase(nn.Module):
    """notebooks/models.py MLPBase of the MNIST-1D repository, rewritten: note the skip around linear2."""

    def __init__(self):
        super().__init__()
        self.linear1, self.linear2, self.linear3 = nn.Linear(40, 100), nn.Linear(100, 100), nn.Linear(100, 10)

    def forward(self, x):
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


def test_mlp_defaults_are_the_mnist1d_mlp():
    model = archlab.create("mlp")
    plain = nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    expected = (40 + 1) * 100 + (100 + 1) * 100 + (100 + 1) * 10
    assert _num_params(model) == _num_params(plain) == expected == 15_210
    _copy_params(model, plain)
    x = torch.randn(4, 40)
    torch.testing.assert_close(model(x), plain(x))

    residual, paper = archlab.create("mlp", residual=True), _PaperMLPBase()
    _copy_params(residual, paper)
    torch.testing.assert_close(residual(x), paper(x))


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("residual", [False, True])
def test_mlp_options(norm, residual):
    model = archlab.create("mlp", hidden=[16, 16, 8], norm=norm, residual=residual, dropout=0.1)
    assert [layer.residual for layer in model.layers] == [False, residual, False]
    assert model(torch.randn(3, 4, 10)).shape == (3, 10)  # any input shape is flattened


def test_cnn1d_defaults_are_the_mnist1d_convbase():
    model = archlab.create("cnn1d")
    paper = nn.Sequential(
        nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(125, 10),
    )  # fmt: skip
    assert model.config.feature_length() == 5
    expected = (1 * 25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    assert _num_params(model) == _num_params(paper) == expected == 5_210
    _copy_params(model, paper)
    x = torch.randn(4, 40)
    torch.testing.assert_close(model(x), paper(x.unsqueeze(1)))
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))  # [B, L] == [B, 1, L]


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_cnn_norms(norm):
    cnn1d = archlab.create("cnn1d", norm=norm, dropout=0.2, in_channels=2, length=50)
    assert cnn1d(torch.randn(3, 2, 50)).shape == (3, 10)
    cnn2d = archlab.create("cnn2d", norm=norm, in_channels=3, image_size=32, channels=[8, 8, 8], hidden=16)
    assert cnn2d(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    with pytest.raises(archlab.ArchlabError, match="same length"):
        archlab.create("cnn1d", channels=[4, 4])


def test_gru_flatten_is_the_mnist1d_grubase():
    model = archlab.create("gru", hidden_size=6, bidirectional=True, readout="flatten")
    gru, linear = nn.GRU(1, 6, batch_first=True, bidirectional=True), nn.Linear(2 * 6 * 40, 10)
    # per direction 3 gates x (W_i: 6x1, W_h: 6x6, b_i, b_h: 6 each); then Linear(480, 10)
    expected = 2 * 3 * (6 * 1 + 6 * 6 + 6 + 6) + (480 * 10 + 10)
    assert _num_params(model) == _num_params(gru) + _num_params(linear) == expected == 5_134
    _copy_params(model, nn.ModuleList([gru, linear]))
    x = torch.randn(4, 40)
    out, _ = gru(x.unsqueeze(-1))
    torch.testing.assert_close(model(x), linear(out.reshape(4, -1)))


# ----------------------------------------------------------------------------------- recurrent readouts


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_last_readout_is_final_state_of_each_direction(name):
    h = 5
    model = archlab.create(name, hidden_size=h, num_layers=2, bidirectional=True, seq_len=7, input_size=3)
    reference = type(model.rnn)(3, h, num_layers=2, batch_first=True, bidirectional=True)
    reference.load_state_dict(model.rnn.state_dict())
    x = torch.randn(4, 7, 3)
    out, _ = reference(x)
    # forward direction: state after the last step; backward direction: state after reaching t = 0
    expected = torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)
    torch.testing.assert_close(model.features(x), expected)
    torch.testing.assert_close(model(x), model.head(expected))


def test_recurrent_readouts():
    x = torch.randn(4, 9)  # [B, T]: one feature per step
    last = archlab.create("lstm", hidden_size=5, seq_len=9)
    out, _ = last.rnn(x.unsqueeze(-1))
    torch.testing.assert_close(last.features(x), out[:, -1])
    torch.testing.assert_close(last(x), last(x.unsqueeze(-1)))

    mean = archlab.create("gru", hidden_size=5, seq_len=9, bidirectional=True, readout="mean")
    out, _ = mean.rnn(x.unsqueeze(-1))
    torch.testing.assert_close(mean.features(x), out.mean(1))
    assert mean.head.in_features == 10

    flat = archlab.create("rnn", hidden_size=5, seq_len=9, readout="flatten")
    assert flat.head.in_features == 9 * 5
    assert flat(x).shape == (4, 10)


# --------------------------------------------------------------------------------------- LeNet-5, ResNet


def test_lenet5_shapes_and_parameters():
    model = archlab.create("lenet5")
    x = torch.randn(2, 1, 28, 28)
    c1 = model.c1(x)
    assert c1.shape == (2, 6, 28, 28)  # padding 2 keeps the paper's 28x28 C1 maps
    assert model.c5(model.s4(model.c3(model.s2(c1)))).shape == (2, 120, 1, 1)
    assert model(x).shape == (2, 10)
    assert _num_params(model) == 61_706
    paper_size = archlab.create("lenet5", image_size=32, activation="tanh", pool="avg")
    assert _num_params(paper_size) == 61_706
    assert paper_size(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    bigger = archlab.create("lenet5", norm="batch", in_channels=3, image_size=40, dropout=0.5)
    assert bigger(torch.randn(2, 3, 40, 40)).shape == (2, 10)


def test_resnet_parameter_counts_match_the_paper():
    counts = {name: _num_params(archlab.create(name)) for name in ("resnet20", "resnet32", "resnet56")}
    assert counts == {"resnet20": 269_722, "resnet32": 464_154, "resnet56": 853_018}  # 0.27M, 0.46M, 0.85M
    assert archlab.create("resnet20").config.depth == 20
    assert archlab.create("resnet56").config.blocks_per_stage == 9
    projection = _num_params(archlab.create("resnet20", shortcut="B"))
    # option B adds a 1x1 conv + BN at the two downsampling blocks
    assert projection == counts["resnet20"] + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(archlab.ArchlabError, match=r"6n \+ 2"):
        archlab.create("resnet20", depth=21)
    assert _num_params(archlab.create("resnet32", depth=20)) == 269_722


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_on_mnist_sized_input(shortcut):
    model = archlab.create("resnet20", in_channels=1, shortcut=shortcut, num_classes=7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.stages(model.stem(torch.randn(2, 1, 28, 28))).shape == (2, 64, 7, 7)


# ------------------------------------------------------------------------------------------- debug tools


def test_gradient_check_passes_on_a_tiny_mlp():
    torch.manual_seed(0)
    model = archlab.create("mlp", in_features=3, hidden=[4, 4], num_classes=2, activation="tanh")
    assert gradient_check(model, torch.randn(2, 3))
    assert next(model.parameters()).dtype == torch.float32  # the check ran on a float64 copy


class _WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # wrong on purpose: d(x^2)/dx = 2x


class _BadModule(nn.Module):
    def __init__(self, wrong_on_input: bool):
        super().__init__()
        self.wrong_on_input = wrong_on_input
        self.scale = nn.Parameter(torch.randn(3))

    def forward(self, x):
        if self.wrong_on_input:
            return _WrongSquare.apply(x) * self.scale
        return x * _WrongSquare.apply(self.scale)


def test_gradient_check_fails_on_a_wrong_backward():
    with pytest.raises(AssertionError, match="input 0"):
        gradient_check(_BadModule(wrong_on_input=True), torch.randn(2, 3))
    with pytest.raises(AssertionError, match="parameter 'scale'"):
        gradient_check(_BadModule(wrong_on_input=False), torch.randn(2, 3))
    assert gradient_check(lambda a, b: (a * b).sin(), torch.randn(3), torch.randn(3))


def test_overfit_one_batch_mlp():
    torch.manual_seed(0)
    model = archlab.create("mlp")
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    before = [p.clone() for p in model.parameters()]
    result = overfit_one_batch(model, x, y)
    assert result["acc"] == 1.0
    assert result["loss"] < 0.05 < result["initial_loss"]
    # the model itself is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
