"""archlab tune (archlab/search/tune.py) and the engine's on_eval hook it uses for pruning.

Every trial is a tiny MLP on the shipped digits (40 steps, well under a second). Checked: trials are
ordinary run directories; the sampler's sequence equals Optuna's own for the same seed; two worker
processes on one journal storage complete N distinct trials; a study resumes after its worker was
killed (the trial it left running is failed and queued again); bad spaces fail in one line before
anything is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from archlab import recipe as recipe_mod  # noqa: E402
from archlab.errors import ArchlabError  # noqa: E402
from archlab.runner import read_summary, train  # noqa: E402
from archlab.search.tune import tune  # noqa: E402

TINY = """
name = "tiny"
seed = 0
[model]
name = "mlp"
in_features = 64
hidden = [32]
[data]
name = "digits"
batch_size = 32
[optim]
name = "adam"
lr = 1e-3
[train]
steps = 40
eval_every = 10
log_every = 10
threads = 1
checkpoint_minutes = 0
[tune]
metric = "best_val_acc"
[tune.params]
"optim.lr" = { type = "float", low = 1e-4, high = 1e-1, log = true }
"optim.name" = { type = "categorical", choices = ["adam", "sgd"] }
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def quiet(*_: object) -> None:
    pass


def test_on_eval_callback_stops_a_run_that_still_finishes(tiny: Path, tmp_path: Path) -> None:
    seen = []

    def on_eval(step: int, scores: dict[str, float]) -> bool:
        seen.append((step, set(scores)))
        return step >= 20

    summary = train(recipe_mod.load(tiny), out=tmp_path / "run", progress=False, on_eval=on_eval)
    assert seen == [(10, {"val_acc", "val_loss"}), (20, {"val_acc", "val_loss"})]
    assert summary["status"] == "stopped" and summary["steps"] == 20
    assert read_summary(tmp_path / "run")["status"] == "stopped"  # an ordinary, finished run directory


def test_tune_writes_trial_runs_best_recipe_table_and_plots(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = tune(tiny, trials=3, out=out, pruner="none", log=quiet)
    assert result["complete"] == 3 and (out / "study.db").is_file()
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0] == "number,state,best_val_acc,optim.lr,optim.name,duration_s,run_dir" and len(rows) == 4
    best = result["best"]
    trial_recipe = recipe_mod.load(Path(best["run_dir"]) / "recipe.toml")
    assert trial_recipe.optim["model"].lr == best["params"]["optim.lr"]
    assert read_summary(best["run_dir"])["metrics"]["best_val_acc"] == best["value"]
    assert (out / "best.toml").read_bytes() == (Path(best["run_dir"]) / "recipe.toml").read_bytes()
    assert (out / "plots" / "history.png").is_file() and (out / "plots" / "importance.png").is_file()


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_same_seed_gives_the_trial_sequence_of_optuna_itself(tiny: Path, tmp_path: Path, sampler: str) -> None:
    result = tune(tiny, trials=4, out=tmp_path / "s", sampler=sampler, pruner="none", seed=7, log=quiet)
    ours = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    values = {t.number: t.value for t in ours.trials}

    def objective(trial: optuna.Trial) -> float:  # the same space, fed the values our trials reached
        trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("optim.name", ["adam", "sgd"])
        return values[trial.number]

    cls = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
    direct = optuna.create_study(direction="maximize", sampler=cls(seed=7))
    direct.optimize(objective, n_trials=4)
    assert [t.params for t in direct.trials] == [t.params for t in ours.trials]


def test_two_workers_on_one_journal_complete_n_distinct_trials(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "par"
    result = tune(tiny, trials=4, jobs=2, out=out, pruner="none", log=quiet)
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert result["complete"] == 4 and len(study.trials) == 4
    assert len({t.user_attrs["pid"] for t in complete}) == 2  # both workers ran trials
    assert len({t.params["optim.lr"] for t in complete}) == 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-{i:04d}" for i in range(4)]
    assert all((out / "trials" / f"trial-{i:04d}" / "summary.json").is_file() for i in range(4))


def test_study_resumes_after_its_worker_is_killed(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "archlab", "tune", str(tiny), "--trials", "2", "--out", str(out),
           "--set", "train.steps=100000", "--pruner", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / "trials" / "trial-0000" / "recipe.toml").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the first trial never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lines = []
    result = tune(tiny, trials=2, out=out, pruner="none", log=lines.append)
    assert any("trial 0 was left running by a stopped worker" in line for line in lines)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"] and result["complete"] == 2
    assert study.trials[1].params == study.trials[0].params  # the killed trial ran again, first
    assert study.trials[1].user_attrs["retry_of"] == 0


def test_list_choices_and_multi_objective_pareto_front(tiny: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text('metric = ["best_val_acc", "num_params"]\n'
                     '[params]\n"model.hidden" = { type = "categorical", choices = [[8], [64, 64]] }\n')
    out = tmp_path / "mo"
    result = tune(tiny, space, trials=3, out=out, seed=1, log=quiet)
    assert result["complete"] == 3
    for t in result["best"]:  # Optuna stores a list choice as its TOML text; the trial's recipe has the list
        hidden = recipe_mod.load(out / "trials" / f"trial-{t['number']:04d}" / "recipe.toml").model["hidden"]
        assert t["params"]["model.hidden"] in ("[8]", "[64, 64]") and str(hidden) == t["params"]["model.hidden"]
    assert (out / "pareto.csv").is_file() and (out / "plots" / "pareto.png").is_file()


@pytest.mark.parametrize(("space", "args", "message"), [
    ('metric = "val_accuracy"\n[params]\n"optim.lr" = { type = "float", low = 0.1, high = 0.2 }\n', {},
     "'val_accuracy' is not a metric of loop 'supervised'"),
    ('[params]\n"optim.lr" = { type = "float", low = -1.0, high = 0.2 }\n', {}, "space.params.optim.lr = -1.0: "),
    ('[params]\n"optim.lr" = { type = "float", low = 0.1, high = 0.2 }\n', {"sampler": "grid"}, "needs a 'step'"),
    ('[params]\n"optim.lr" = { type = "float", low = 0.1, high = 0.2, log = true, step = 0.01 }\n', {},
     "step and log = true cannot be combined"),
    ('[params]\n"model.widht" = { type = "int", low = 1, high = 2 }\n', {}, "model.widht"),
    ('metric = ["best_val_acc", "num_params"]\n[params]\n"optim.lr" = { type = "float", low = 0.1, high = 0.2 }\n',
     {"pruner": "median"}, "cannot prune multi-objective"),
    ('[params]\n', {}, "[params] is empty"),
    ('[params]\n"optim.lr" = { type = "float", low = 0.1, high = 0.2 }\n', {"fixed": ["optim.lr=0.1"]},
     "fixed by --set and searched"),
])
def test_bad_spaces_fail_in_one_line_before_anything_is_written(tiny: Path, tmp_path: Path, space: str,
                                                                args: dict, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(space)
    with pytest.raises(ArchlabError) as exc:
        tune(tiny, path, trials=2, out=tmp_path / "never", log=quiet, **args)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "never").exists()


def test_cli_tune_reports_one_line_errors(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from archlab.cli import main

    assert main(["tune", str(tiny), "--trials", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--trials must be in [1," in capsys.readouterr().err
    assert main(["tune", str(tiny), "--sampler", "bayes", "--out", str(tmp_path / "x")]) == 2
    assert "--sampler 'bayes': choose one of tpe, random, grid, cmaes, gp, nsga2" in capsys.readouterr().err
