"""Progress: live lines per running stage on a terminal, plain append-only lines elsewhere."""

from __future__ import annotations

import io
import re
import threading

from packager.progress import Reporter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: apply cursor-up + erase-line, as a terminal would."""
    lines: list[str] = []
    for chunk in re.split(r"(\x1b\[1A\x1b\[2K)", raw):
        if chunk == "\x1b[1A\x1b[2K":
            lines.pop()
        else:
            lines += chunk.splitlines()
    return lines


def test_a_terminal_shows_one_live_line_per_running_stage_and_keeps_messages_above() -> None:
    out = Terminal()
    reporter = Reporter(stream=out)
    inner_started, release = threading.Event(), threading.Event()

    def other_target() -> None:
        with reporter.running("ios"), reporter.running("convert Core ML (int8)"):
            inner_started.set()
            release.wait(5)

    thread = threading.Thread(target=other_target)
    with reporter.running("android"), reporter.running("export .pte 8da8w"):
        thread.start()
        inner_started.wait(5)
        reporter.percent("export .pte 8da8w")(50, 100)
        reporter.say("verifying GGUF Q8_0")
        reporter.redraw()
        screen = _screen(out.getvalue())
        assert screen[0] == "edgepack: verifying GGUF Q8_0"  # messages stay above the live block
        live = sorted(screen[1:])
        assert len(live) == 2, screen
        assert live[0].startswith("   50% android: export .pte 8da8w (0:0") and "left)" in live[0]
        assert live[1].startswith("  ios: convert Core ML (int8) (0:0")
        release.set()
        thread.join()
    reporter.redraw()
    assert _screen(out.getvalue()) == ["edgepack: verifying GGUF Q8_0"]  # nothing left running, no live line


def test_a_log_or_pipe_gets_plain_lines_and_percent_every_tenth() -> None:
    out = io.StringIO()
    reporter = Reporter(stream=out)
    with reporter.running("web"):
        update = reporter.percent("gguf F16")
        for done in range(0, 101):
            update(done, 100)
    text = out.getvalue()
    assert "\x1b[" not in text  # no cursor movement in a file
    assert len([line for line in text.splitlines() if line.startswith("edgepack: gguf F16:")]) == 11
