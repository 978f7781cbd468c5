"""Progress output: a live bar on a terminal, a plain line now and then in a log."""

import io

from ctr.progress import progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_whole_lines_not_redrawn_bars(monkeypatch):
    clock = iter(range(0, 10_000, 3))  # 3 s per update
    monkeypatch.setattr("tqdm.std.time", lambda: next(clock))
    buf = io.StringIO()
    with progress_bar(file=buf, total=100, desc="epoch 1/1", unit="step") as bar:
        for _ in range(100):
            bar.update(1)
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 5 <= len(lines) <= 12, lines          # ~300 s at one line per 30 s, plus the last
    assert all(line.startswith("epoch 1/1:") for line in lines)
    assert "100/100" in lines[-1] and text.endswith("\n") and not text.endswith("\n\n")


def test_a_terminal_gets_a_live_bar():
    buf = FakeTerminal()
    with progress_bar(file=buf, total=3, desc="x", mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert "\r" in buf.getvalue()


def test_a_disabled_bar_in_a_log_is_silent():
    buf = io.StringIO()
    with progress_bar(file=buf, total=3, disable=True) as bar:
        bar.update(3)
    assert buf.getvalue() == ""
