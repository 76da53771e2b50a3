"""What a run prints: the user's per-batch log lines, and on a terminal a live status line."""

import sys
import time


def fmt_duration(seconds: float) -> str:
    """"1:02:03", "2:03", or "0.4 s" under a second (a tiny run's wall time, not "0:00")."""
    if round(seconds, 1) < 1:  # (0.96 s is "0:01", as 1.2 s is: not "1.0 s" beside it)
        return f"{seconds:.1f} s" if seconds >= 0.05 else "<0.1 s"
    seconds = max(1, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def time_left(total_steps: int, step: int, elapsed: float) -> float:
    """Seconds to the last of `total_steps` at the pace of the `step` taken in `elapsed` seconds."""
    return (total_steps - step) * elapsed / step if step else 0.0


class Progress:
    """Log lines go to stdout; the live line (step, loss, tokens/s, time left) is redrawn in place on
    stderr, only when stderr is a terminal, at most a few times a second."""

    def __init__(self, total_steps: int, quiet: bool = False):
        self.total_steps = total_steps
        self.quiet = quiet
        self.stream = sys.stderr
        self.live = not quiet and self.stream is not None and self.stream.isatty()  # None: closed (pythonw, 2>&-)
        self._last_draw = 0.0
        self._width = 0

    def log(self, line: str) -> None:
        if self.quiet:
            return
        self._clear()
        print(line, flush=True)

    def update(self, step: int, loss: float | None, tokens_per_s: float, elapsed: float) -> None:
        now = time.monotonic()
        if not self.live or now - self._last_draw < 0.25:
            return
        self._last_draw = now
        left = time_left(self.total_steps, step, elapsed)
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        self.status(f"step {step}/{self.total_steps} | loss {loss_text} | {tokens_per_s:,.0f} tok/s | "
                    f"{fmt_duration(elapsed)} elapsed, {fmt_duration(left)} left")

    def status(self, text: str) -> None:
        """`text` on the live line, until the next update (on a terminal only)."""
        if not self.live:
            return
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
