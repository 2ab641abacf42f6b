"""Progress output: what a user reads in a log file (no terminal) and on a terminal."""

from __future__ import annotations

import io

import pytest

from archlab.engine.progress import Progress, _fmt


class Clock:
    """A clock the test moves by hand, so rate limits are checked without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def log_progress(total: int = 100, interval_s: float = 10.0) -> tuple[Progress, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    return Progress(total, "train", stream=stream, interval_s=interval_s, clock=clock), stream, clock


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.parametrize(
    ("value", "text"),
    [(223, "223"), (223.0, "223"), (20000.0, "20000"), (0.0, "0"), (-3.0, "-3"), (True, "True"),
     (0.123456, "0.1235"), (1234.5678, "1235"), (12345.678, "12346"), (2.5e-5, "2.5e-05"),
     (float("nan"), "nan"), ("cuda", "cuda")],
)
def test_numbers_print_readably(value: object, text: str) -> None:
    assert _fmt(value) == text


def test_a_whole_float_counter_prints_as_an_integer_in_the_line() -> None:
    progress, stream, _ = log_progress()
    progress.update(5, episodes=223.0, loss=0.25)
    assert "episodes=223 loss=0.25 " in lines(stream)[0]


def test_close_after_an_update_at_the_same_step_prints_the_line_once() -> None:
    progress, stream, clock = log_progress()
    progress.update(100, loss=0.5)
    clock.now = 1.0
    progress.close(100)
    assert len(lines(stream)) == 1 and lines(stream)[0].startswith("train 100/100 (100%) loss=0.5 ")


def test_close_prints_the_final_line_when_it_shows_something_new() -> None:
    progress, stream, clock = log_progress()
    progress.update(1, loss=0.5)
    clock.now = 1.0
    progress.update(2, loss=0.4)  # within the interval: not printed
    progress.close(2)
    assert [line.split(" [")[0] for line in lines(stream)] == ["train 1/100 (  1%) loss=0.5",
                                                               "train 2/100 (  2%) loss=0.4"]
    progress.update(2, val_acc=0.9)  # an evaluation at the same step, rate-limited away ...
    progress.close(2)  # ... is still shown by the final line
    assert len(lines(stream)) == 3 and "val_acc=0.9" in lines(stream)[2]


def test_regular_lines_are_rate_limited_by_time() -> None:
    progress, stream, clock = log_progress(total=60)
    for step in range(1, 61):  # one step a second
        clock.now = float(step)
        progress.update(step, loss=1.0 / step)
    assert [line.split()[1] for line in lines(stream)] == ["1/60", "11/60", "21/60", "31/60", "41/60", "51/60"]


def test_forced_lines_print_at_once_but_at_most_once_per_interval() -> None:
    progress, stream, clock = log_progress(total=40)
    progress.update(1, loss=1.0)
    clock.now = 3.0
    progress.update(3, force=True, val_acc=0.5)  # an evaluation shows without waiting for the interval
    assert len(lines(stream)) == 2
    for step in range(4, 41):  # then an evaluation every step, one step a second
        clock.now = float(step)
        progress.update(step, loss=1.0 / step)
        progress.update(step, force=True, val_acc=step / 100)
    steps = [line.split()[1] for line in lines(stream)]
    assert steps == ["1/40", "3/40", "13/40", "23/40", "33/40"]
    progress.close(40)  # the final line is never held back
    assert lines(stream)[-1].startswith("train 40/40 (100%)") and "val_acc=0.4 " in lines(stream)[-1]


def test_a_rare_evaluation_shows_at_once_and_regular_lines_go_on() -> None:
    progress, stream, clock = log_progress(total=60)
    for step in range(1, 61):
        clock.now = float(step)
        progress.update(step, loss=1.0 / step)
        if step == 25:
            progress.update(step, force=True, val_acc=0.5)
    steps = [line.split()[1] for line in lines(stream)]
    assert steps == ["1/60", "11/60", "21/60", "25/60", "35/60", "45/60", "55/60"]
    assert "val_acc" not in lines(stream)[2] and "val_acc=0.5 " in lines(stream)[3]


def test_disabled_progress_prints_nothing_but_keeps_the_metrics() -> None:
    stream = io.StringIO()
    progress = Progress(10, "x", stream=stream, enabled=False)
    progress.update(1, loss=0.5)
    progress.message("hello")
    progress.close(1)
    assert stream.getvalue() == "" and progress.metrics == {"loss": 0.5}


def test_a_terminal_gets_one_bar_redrawn_in_place_and_a_newline_at_the_end() -> None:
    stream, clock = Terminal(), Clock()
    progress = Progress(10, "train", stream=stream, clock=clock)
    for step in range(1, 11):
        clock.now = step * 0.07  # 14 updates a second: every other one redraws
        progress.update(step, loss=1.0 / step)
    progress.close(10)
    out = stream.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1
    assert out.count("\r\033[K") == 6  # steps 1, 3, 5, 7, 9 and the final bar
    assert out.rsplit("\r\033[K", 1)[1].startswith("train 10/10 (100%) loss=0.1 ")
