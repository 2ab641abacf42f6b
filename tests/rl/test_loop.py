"""The engine's RL loop end to end: recipes with [algo]/[env], run directories, resume, eval, rollout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gymnasium", reason="the rl extra (gymnasium) is not installed")

from archlab import recipe as recipe_mod  # noqa: E402
from archlab.cli import main  # noqa: E402
from archlab.errors import ArchlabError  # noqa: E402

RECIPE = """
name = "ppo_tiny"
seed = 0

[algo]
name = "ppo"
n_envs = 2
n_steps = 32
batch_size = 32
n_epochs = 2

[optim]
lr = 1e-3

[env]
id = "CartPole-v1"
eval_episodes = 3

[train]
loop = "rl"
steps = 640
eval_every = 320
log_every = 2

[expect]
metric = "eval_return_mean"
value = 1
compare = "min"
source = "a smoke test: any policy lasts at least one step"
"""


def write(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["train", *args, "--no-progress"])
    cap = capsys.readouterr()
    return code, cap.err + cap.out


def test_train_writes_an_rl_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, _ = train(capsys, str(write(tmp_path)), "--out", str(run))
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["steps"] == 10 and m["env_steps"] == 640 and summary["passed"] is True
    assert {"eval_return_mean", "eval_return_std", "train_return_mean", "episodes"} <= set(m)
    assert (run / "plots" / "returns.png").stat().st_size > 0
    rows = (run / "episodes.csv").read_text().splitlines()
    assert rows[0] == "step,return,length" and len(rows) - 1 == m["episodes"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["env_steps"] for r in val] == [320, 640]
    # `archlab eval` recomputes the same final metrics from the saved agent
    assert main(["eval", str(run)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["eval_return_mean"] == m["eval_return_mean"]


def test_resume_continues_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(capsys, str(path), "--out", str(full))[0] == 0
    # stop half way (the budget is cut), then resume with the full budget
    assert train(capsys, str(path), "--out", str(part), "--set", "train.steps=320")[0] == 0
    (part / "summary.json").unlink()
    text = (part / "recipe.toml").read_text().replace("steps = 320", "steps = 640")
    (part / "recipe.toml").write_text(text)
    code, err = train(capsys, str(path), "--out", str(part), "--resume")
    assert code == 0 and "resuming" in err
    assert (part / "episodes.csv").read_text() == (full / "episodes.csv").read_text()
    a, b = (json.loads((d / "summary.json").read_text())["metrics"] for d in (full, part))
    assert a == b


def test_rollout_writes_a_gif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pygame", reason="rendering needs pygame (gymnasium[classic-control])")
    run = tmp_path / "run"
    assert train(capsys, str(write(tmp_path)), "--out", str(run), "--set", "train.steps=64")[0] == 0
    gif = tmp_path / "play.gif"
    assert main(["rollout", str(run), "--episodes", "2", "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert out.count("episode ") == 2 and "mean return over 2 episodes" in out
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames > 2 and im.size == (600, 400)


@pytest.mark.parametrize("edit, fragment", [
    (("CartPole-v1", "CartPol-v1"), "env.id 'CartPol-v1'"),
    (('name = "ppo"', 'name = "ppoo"'), "algo.name: unknown algorithm 'ppoo'; loop 'rl' trains: a2c, a3c, dqn"),
    (("n_epochs = 2", "n_epochs = 0"), "algo"),
    (("n_epochs = 2", "n_epoch = 2"), "unknown key algo.n_epoch"),
    (("[env]", "[data]\nname = 'digits'\n[env]"), "unknown key data in recipe for loop 'rl'"),
    (("eval_episodes = 3", "eval_episodes = 0"), "eval_episodes must be in [1, 10000]"),
    (("n_epochs = 2", "n_epochs = 2\nlearning_rate = 1e-3"), "algo.learning_rate has moved to optim.lr"),
    (("n_epochs = 2", "n_epochs = 2\nlr_schedule = 'linear'"), "algo.lr_schedule has moved to optim.schedule"),
    (("n_epochs = 2", "n_epochs = 2\noptimizer_eps = 1e-5"), "algo.optimizer_eps has moved to optim.eps"),
    (("lr = 1e-3", "lr = 1e-3\n[optim.critic]\nlr = 1e-4"), "optim.critic: loop 'rl' has no optimizer 'critic'; "
                                                             "its optimizers: policy"),
    (("lr = 1e-3", "lr = -1.0"), "lr must be a number in [0, 100]"),
])
def test_bad_rl_recipes_fail_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           edit: tuple[str, str], fragment: str) -> None:
    path = write(tmp_path, RECIPE.replace(*edit))
    code, err = train(capsys, str(path), "--out", str(tmp_path / "run"))
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("archlab: error")]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_rl_recipe_round_trips_through_toml(tmp_path: Path) -> None:
    rec = recipe_mod.load(write(tmp_path))
    again = recipe_mod.from_dict(__import__("tomllib").loads(rec.to_toml()))
    assert again.model == rec.model and again.model_name == "ppo"  # [algo] is the trained object's table
    assert again.tables["env"] == rec.tables["env"] and again.data is None
    with pytest.raises(ArchlabError, match="no \\[env\\] table"):
        recipe_mod.from_dict({"algo": {"name": "ppo"}, "train": {"loop": "rl", "steps": 10}})


def test_missing_box2d_is_one_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    # gymnasium registers LunarLander whether or not Box2D is installed; hide the module to test both cases
    import sys

    from archlab.errors import ArchlabError
    from archlab.rl.env import make_single

    monkeypatch.setitem(sys.modules, "Box2D", None)
    for name in [m for m in sys.modules if m.startswith("gymnasium.envs.box2d")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ArchlabError) as info:
        make_single("LunarLander-v3")
    msg = str(info.value)
    assert "archlab[box2d]" in msg and "did you mean" not in msg and "\n" not in msg
