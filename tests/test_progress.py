"""Long loops report progress when their output is not a terminal too (issue 21: a 9-minute silence)."""

from convnext import progress as progress_module
from convnext.progress import LineProgress, progress


def test_a_log_file_gets_a_line_every_interval_with_count_share_and_what(capsys, monkeypatch):
    clock = iter([0.0, 10.0, 61.0, 70.0, 125.0])  # start, then one reading per update
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar = LineProgress(range(4), desc="robustness", unit="img")
    bar.set_postfix_str("c/fog/3")
    assert list(bar) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["robustness: 2/4 img (50%), 1.0 min, c/fog/3", "robustness: 4/4 img (100%), 2.1 min, c/fog/3"]


def test_off_a_terminal_lines_and_nothing_at_all_when_asked(monkeypatch):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress(total=3, desc="x", unit="step"), LineProgress)
    assert progress(total=3, desc="x", unit="step", show=False).disable
