"""Progress a person can watch: live bars on a terminal, plain lines elsewhere, JSON events."""

from __future__ import annotations

import io
import json

from toolkit.report import Reporter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(reporter: Reporter) -> None:
    update = reporter.progress("gpu-01", "fetch qwen")
    for done in range(0, 101, 20):
        update(done * 10_000_000, 1_000_000_000)
        if done == 40:
            reporter.step_text("gpu-01", "a line while the bar runs")


def test_a_terminal_gets_a_live_bar_with_bytes_and_the_lines_above_it():
    out = Terminal()
    reporter = Reporter(stream=out)
    feed(reporter)
    text = out.getvalue()
    assert "gpu-01: fetch qwen" in text and "1.0/1.0 GB" in text, text
    assert "a line while the bar runs" in text
    assert reporter.bars is not None and not reporter.bars.live  # finished: the display stopped


def test_a_pipe_gets_plain_lines_every_tenth():
    out = io.StringIO()
    feed(Reporter(stream=out))
    lines = [line for line in out.getvalue().splitlines() if "fetch qwen" in line]
    assert lines[-1] == "gpu-01:               fetch qwen: 1000 MB of 1000 MB (100%)", lines
    assert "\x1b[" not in out.getvalue()


def test_json_gets_progress_events():
    out = io.StringIO()
    feed(Reporter(json_events=True, stream=out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 1_000_000_000
