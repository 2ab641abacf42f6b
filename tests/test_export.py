"""Export contract over the whole registry: every model either exports to ONNX and onnxruntime reproduces
PyTorch (<= 1e-5, scaled by the output's size above one), or it declares why not -- and the declared reason
is what ``archlab export`` says, and still true (the exporter really fails on it)."""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab.cli import main
from archlab.errors import ArchlabError

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the export extra is not installed")

from archlab.export import TOLERANCE, NotExportable, _quiet, example_inputs, export_onnx  # noqa: E402

NAMES = archlab.list()

# Smaller configurations of the same classes, to keep the file fast (the code paths are the same).
TINY = {
    "darts_supernet": {"layers": 2, "steps": 2, "multiplier": 2},
    "efficientnet": {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.5, "num_classes": 10},
    "mobilenetv2": {"image_size": 32, "width_mult": 0.25, "num_classes": 10},
    "resnet56": {"depth": 20},
    "resnet32": {"depth": 20},
    "born_machine": {"rows": 2, "cols": 2, "layers": 1},
    "hybrid_qnn": {"qubits": 2, "layers": 1},
    "reuploading_classifier": {"layers": 1},
    "vqe_h2": {"layers": 1},
}
# RL agents are built on an environment; the tabular one needs discrete observations, SAC and TD3 a box.
ENVS = {"qlearning": "FrozenLake-v1", "sac": "Pendulum-v1", "td3": "Pendulum-v1"}


# tiny graphs: extra threads only wait for the loaded cores
pytestmark = pytest.mark.usefixtures("single_thread")


def _build(name: str):
    entry = archlab.registry.get(name)
    torch.manual_seed(0)
    if entry.family == "rl":
        return archlab.create(name, env=ENVS.get(name, "CartPole-v1"))
    return archlab.create(name, **TINY.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_export_or_declared_reason(name, tmp_path):
    model = _build(name)
    blocker = type(model).export_blocker
    out = tmp_path / f"{name}.onnx"
    if blocker is None:
        result = export_onnx(model.train(), out, batch=2)
        assert out.is_file() and result.outputs >= 1
        assert model.training  # exported in eval mode, handed back as it came
        assert result.scaled_diff <= TOLERANCE, result.summary()
        if result.max_abs_output <= 1:  # outputs of order one: the plain absolute bound
            assert result.max_abs_diff <= TOLERANCE
        # and relative to the output, which also means something for models whose outputs at initialization
        # are tiny (EfficientNet's are ~1e-11): float32 round-off, not a wrong operator
        assert result.max_abs_diff <= 1e-4 * result.max_abs_output, result.summary()
        return
    assert isinstance(blocker, str) and blocker and "\n" not in blocker
    with pytest.raises(NotExportable) as err:
        export_onnx(model, out)
    assert err.value.reason == blocker
    assert not out.exists()
    if isinstance(model, torch.nn.Module):
        # the declaration is still true: the exporter itself fails on this model (else remove it)
        model.eval()
        with _quiet(), pytest.raises(Exception):  # noqa: B017 -- the exporter's errors share no base class
            torch.onnx.export(model, example_inputs(model, 2), dynamo=True, verbose=False)


def test_cli_exports_a_run_and_prints_the_check(tmp_path, capsys):
    torch.manual_seed(0)
    archlab.create("lenet5").save_pretrained(tmp_path / "lenet5")
    assert main(["export", str(tmp_path / "lenet5"), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--batch", "3", "--opset", "18"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("archlab: exported lenet5 (batch 3, opset 18)")
    assert printed[1].startswith("onnxruntime vs PyTorch: max |diff| = ") and printed[1].endswith(": ok")
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [3, 1, 28, 28]


def test_cli_one_line_reason_for_a_model_that_cannot_export(tmp_path, capsys):
    archlab.create("gcn").save_pretrained(tmp_path / "gcn")
    assert main(["export", str(tmp_path / "gcn"), "--out", str(tmp_path / "g.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err == f"archlab: error: gcn cannot be exported to ONNX: {archlab.registry.get('gcn').cls.export_blocker}"
    assert not (tmp_path / "g.onnx").exists()


def test_cli_bad_arguments_are_one_line(tmp_path, capsys):
    archlab.create("mlp").save_pretrained(tmp_path / "mlp")
    assert main(["export", str(tmp_path / "mlp"), "--out", str(tmp_path / "m.onnx"), "--batch", "0"]) == 2
    assert "--batch must be in [1, 4096]" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "mlp"), "--out", str(tmp_path / "m.onnx"), "--opset", "11"]) == 2
    assert "--opset must be in [18, " in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "is not a saved model" in capsys.readouterr().err


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    import archlab.export as export

    monkeypatch.setattr(export, "_importable", lambda module: module != "onnxruntime")
    archlab.create("mlp").save_pretrained(tmp_path / "mlp")
    assert main(["export", str(tmp_path / "mlp"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("archlab: error: archlab export needs the optional extra 'export' (onnxruntime missing): "
                   "pip install 'archlab[export]'")


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    import archlab.export as export

    monkeypatch.setattr(export, "run_onnx", lambda path, inputs, threads=0: [x.numpy() * 0 + 1e3 for x in
                                                                              [torch.zeros(2, 10)]])
    with pytest.raises(ArchlabError, match="check failed, nothing written"):
        export_onnx(archlab.create("mlp"), tmp_path / "m.onnx", batch=2)
    assert list(tmp_path.iterdir()) == []
