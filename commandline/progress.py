"""One progress line for the long jobs: training steps, evaluation phases, the Beam job.

    line = ProgressLine("train", total=1500, unit="steps", per_unit=("examples", 64))
    line.start(done=0, heartbeat=True)
    for step in ...:
        line.update(step, details=lambda: f"loss {loss:.4f}")
    line.finish(1500)

On a terminal (the stream is a TTY) the line is redrawn in place with `\\r`, cut to the
terminal's width (the details are cut first, then the bar and the second rate go):

    train [######----] 700/1,500 steps  46% | 11.8 steps/s (755 examples/s) | 1:04 elapsed, ETA 1:08 | loss 0.2143

In a log (not a TTY) the same text, without the bar, is written as a plain line every
`interval_s` seconds (15 by default) and once more when the phase ends. With `heartbeat=True` a
background thread keeps writing while nothing calls `update` (a first step that compiles, an
evaluation between steps, a Beam job that runs in another thread), so a run is never silent for
a minute. `set_note` says what happens meanwhile ("validation", "online evaluation at step N").

The rate is units per second since the first completed unit, so start-up (tracing, compiling,
opening files) stays out of it while recurring pauses (validation, checkpoints) count: the ETA
of a long run includes them. The text is a pure function of the counts and a clock
(`progress_text`, `ProgressLine.text`); tests pass a fake clock and an `io.StringIO` stream.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from typing import Callable, TextIO

# Seconds between two plain lines in a log (not a TTY).
LOG_INTERVAL_S = 15.0
# Seconds between two redraws of the line on a terminal.
REDRAW_S = 0.2
BAR_WIDTH = 10
# The heartbeat writes once nothing has called `update` for this long.
_STALLED_S = 1.0


def format_duration(seconds: float) -> str:
    """`0:07`, `12:03`, `1:02:03`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(rate: float, unit: str) -> str:
    """`12.3 steps/s`, `1,234 examples/s`; below one per second `2.50 s/step`."""
    singular = unit[:-1] if unit.endswith("s") else unit
    if rate <= 0:
        return f"0 {unit}/s"
    if rate < 1:
        return f"{1 / rate:.2f} s/{singular}"
    if rate < 100:
        return f"{rate:.1f} {unit}/s"
    return f"{rate:,.0f} {unit}/s"


def eta_seconds(done: int, total: int | None, rate: float | None) -> float | None:
    """Seconds left at `rate` units per second; None when unknown (no total, no rate yet)."""
    if total is None or rate is None or rate <= 0:
        return None
    return max(0, total - done) / rate


def progress_text(label: str, *, done: int | None = None, total: int | None = None,
                  unit: str | None = None, rate: float | None = None,
                  per_unit: tuple[str, float] | None = None, elapsed_s: float = 0.0,
                  finished: bool = False, note: str = "", details: str = "",
                  bar_width: int = 0) -> str:
    """The progress line for these counts (pure):
    `label [bar] done/total unit pct | rate (per-unit rate) | elapsed, ETA | note | details`.

    `per_unit` (name, amount per unit) adds a second rate, e.g. ("examples", batch size).
    `note` says what happens between counted units (e.g. "validation"); `details` are figures
    (losses). `bar_width` > 0 draws a `[###---]` bar (terminals only: in a log it is noise).
    """
    head = label
    parts = []
    if unit is not None and done is not None:
        if total:
            fraction = min(1.0, max(0.0, done / total))
            bar = ""
            if bar_width > 0:
                filled = int(fraction * bar_width)
                bar = f"[{'#' * filled}{'-' * (bar_width - filled)}] "
            head = f"{label} {bar}{done:,}/{total:,} {unit} {math.floor(fraction * 100):3d}%"
        else:
            head = f"{label} {done:,} {unit}"
        if rate is not None:
            rates = format_rate(rate, unit)
            if per_unit is not None:
                rates += f" ({format_rate(rate * per_unit[1], per_unit[0])})"
            parts.append(rates)
    if finished:
        parts.append(f"done in {format_duration(elapsed_s)}")
    else:
        eta = eta_seconds(done or 0, total, rate) if unit is not None else None
        timing = f"{format_duration(elapsed_s)} elapsed"
        if eta is not None:
            timing += f", ETA {format_duration(eta)}"
        parts.append(timing)
        if note:
            parts.append(note)
    if details:
        parts.append(details)
    return " | ".join([head] + parts)


class RateMeter:
    """Units per second since the first completed unit: `add(time, count)` after `start`.

    What comes before the first unit (tracing, compiling, opening files, an evaluation of the
    initial model) is start-up, not pace; pauses after it (validation, checkpoints) recur and
    belong in an ETA. No rate until a second unit completes.
    """

    def __init__(self):
        self._first: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._start_count: float | None = None

    def start(self, count: float) -> None:
        self._start_count, self._first, self._last = count, None, None

    def add(self, now: float, count: float) -> None:
        if self._start_count is None:
            self._start_count = count
            return
        if self._first is None:
            if count != self._start_count:
                self._first = (now, count)
            return
        if count != self._last_count:
            self._last = (now, count)

    @property
    def _last_count(self) -> float:
        return (self._last or self._first)[1]

    @property
    def rate(self) -> float | None:
        if self._first is None or self._last is None:
            return None
        (t0, c0), (t1, c1) = self._first, self._last
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


class ProgressLine:
    """Writes one progress line to `stream` (default stderr): redrawn on a TTY, periodic in logs.

    `unit=None` shows no count of its own, only `details` (the Beam job's per-stage counts).
    `poll`, with `start(heartbeat=True)`, is called by the heartbeat thread for `(done,
    details)` when the counts live elsewhere (the preprocessing job's tallies).
    """

    def __init__(self, label: str, total: int | None = None, unit: str | None = "steps", *,
                 per_unit: tuple[str, float] | None = None, stream: TextIO | None = None,
                 tty: bool | None = None, interval_s: float = LOG_INTERVAL_S,
                 redraw_s: float = REDRAW_S, width: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 poll: Callable[[], tuple[int | None, str]] | None = None):
        self.label = label
        self.total = total
        self.unit = unit
        self.per_unit = per_unit
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval_s = redraw_s if tty else interval_s
        self.width = width
        self.clock = clock
        self.poll = poll
        self.meter = RateMeter()
        self.done: int | None = None
        self.details = ""
        self.note = ""  # what happens now between counted units; see `set_note`
        self._started_at: float | None = None
        self._last_write: float | None = None
        self._last_update: float | None = None
        self._drawn = 0  # characters of the line now on the terminal (TTY only)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    # === the text ===
    @property
    def rate(self) -> float | None:
        return self.meter.rate

    @property
    def finished(self) -> bool:
        return self._finished

    def text(self, now: float | None = None, finished: bool = False,
             width: int | None = None) -> str:
        """The line as of `now`. With `width` (terminals), the details are cut to fit, and the
        bar, then the second rate, are left out when the rest would not fit without them."""
        now = self.clock() if now is None else now
        elapsed = now - (self._started_at if self._started_at is not None else now)
        options = dict(done=self.done, total=self.total, unit=self.unit, rate=self.rate,
                       per_unit=self.per_unit, elapsed_s=elapsed, finished=finished,
                       note=self.note, details=self.details,
                       bar_width=BAR_WIDTH if self.tty else 0)
        if width is None:
            return progress_text(self.label, **options)
        for drop in ({"bar_width": 0}, {"per_unit": None}):
            if len(progress_text(self.label, **dict(options, details=""))) <= width:
                break
            options.update(drop)
        return progress_text(self.label, **options)[:width]

    # === writing ===
    def start(self, done: int | None = 0, heartbeat: bool = False) -> "ProgressLine":
        with self._lock:
            now = self.clock()
            self._started_at = now
            self._last_write = now  # the first line comes after one interval
            self._last_update = now
            self.done = done
            if done is not None:
                self.meter.start(done)
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"progress {self.label}",
                                            daemon=True)
            self._thread.start()
        return self

    def update(self, done: int | None,
               details: str | Callable[[], str] | None = None) -> str | None:
        """Records `done`; writes the line if it is due. `details` may be a callable, evaluated
        only when a line is written (e.g. reading a loss off the device). Returns what was
        written, if anything."""
        with self._lock:
            if self._finished:
                return None
            if self._started_at is None:
                self.start(done)
            now = self.clock()
            self._last_update = now
            self.done = done
            if done is not None:
                self.meter.add(now, done)
            if isinstance(details, str):  # also for the heartbeat's lines
                self.details = details
            if now - self._last_write < self.interval_s:
                return None
            if callable(details):
                self.details = details()
            return self._write(now)

    def set_note(self, note: str) -> None:
        """Shows `note` from now on (cleared with ""); written at once on a terminal, with the
        next periodic line in a log."""
        with self._lock:
            changed, self.note = note != self.note, note
            if changed and self.tty and self._started_at is not None and not self._finished:
                self._write(self.clock())

    def finish(self, done: int | None = None,
               details: str | Callable[[], str] | None = None) -> str:
        """Writes the final line (ending it with a newline on a terminal) and stops the
        heartbeat."""
        self._stop_heartbeat()
        with self._lock:
            if self._started_at is None:
                self.start(done)
            now = self.clock()
            if done is not None:
                self.done = done
                self.meter.add(now, done)
            if details is not None:
                self.details = details() if callable(details) else details
            text = self._write(now, finished=True)
            self._finished = True
            return text

    def close(self) -> None:
        """Stops the heartbeat and, on a terminal, ends a drawn line (before an error message)."""
        self._stop_heartbeat()
        with self._lock:
            if self.tty and self._drawn and not self._finished:
                self.stream.write("\n")
                self.stream.flush()
            self._finished = True

    def __enter__(self) -> "ProgressLine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _write(self, now: float, finished: bool = False) -> str:
        if self.tty:
            # One character short of the width: a line that wraps cannot be redrawn in place.
            width = (self.width or shutil.get_terminal_size((100, 24)).columns) - 1
            text = self.text(now, finished, width=max(20, width))
            pad = " " * max(0, self._drawn - len(text))
            self.stream.write("\r" + text + pad + ("\n" if finished else ""))
            self._drawn = 0 if finished else len(text)
        else:
            text = self.text(now, finished)
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_write = now
        return text

    # === heartbeat ===
    def _beat(self) -> None:
        tick = min(1.0, self.interval_s)
        while not self._stop.wait(tick):
            with self._lock:
                if self._finished:
                    return
                now = self.clock()
                if self.poll is not None:
                    done, self.details = self.poll()
                    self.done = done
                    if done is not None:
                        self.meter.add(now, done)
                # Only while nothing reports (`update` writes its own lines, with fresh
                # details); on a terminal, the elapsed time moves once a second at most.
                stalled = self.poll is not None or now - self._last_update >= _STALLED_S
                if stalled and now - self._last_write >= max(self.interval_s,
                                                             1.0 if self.tty else 0.0):
                    self._write(now)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
