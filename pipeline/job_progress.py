"""The preprocessing job's progress line, from what the driver can see.

    with JobProgress("digits", beam_args, num_sources=10, work_dir=...):
        runners.run_graph(...)

- In-process runners (the default FnApiRunner, `--direct_running_mode` in_memory or
  multi_threading): the DoFns of pipeline/transforms.py add to this module's tally as they go
  (`add`: sources finished and examples read by the statistics pass, tokenized by the main
  pass, written to shards), and the line shows each stage's counts and rate, once a second on
  a terminal and every 15 s in a log:

      preprocess eurosat | 1:12 elapsed | tokenize 3/10 sources, 8,128 examples (640 examples/s) | statistics 10/10 sources, 27,000 read (1,100 examples/s)

- Other runners (`multi_processing` workers, Dask, Dataflow, Flink, Spark) run the DoFns in
  other processes or machines, whose tally the driver cannot read. It shows what they leave in
  the job's folder (spilled runs, finished shards; a local or mounted folder) and the elapsed
  time. Remote runners show the per-step counts, the Beam counters
  `keras_metamae.preprocess/*`, in their own UI (the Dataflow console, Flink's web UI); the
  Dask runner reports no Beam metrics at all (its dashboard shows tasks, not examples).

The tally is a process-wide counter, so one job at a time per process is watched.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import TextIO

from commandline import progress

# Tally names (see `add` in pipeline/transforms.py).
STATS_READ, STATS_SOURCES = "stats_read", "stats_sources"
TOKENIZED, TOKENIZE_SOURCES = "tokenized", "tokenize_sources"
BAD_RECORDS = "bad_records"
SHARDS_WRITTEN, EXAMPLES_WRITTEN = "shards_written", "examples_written"
# What `runners.runner_name` gives for the local runner (None: no --runner).
LOCAL_RUNNER_NAMES = ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner")
# Seconds between two listings of the job's folder (out-of-process runners).
_LIST_EVERY_S = 10.0

_lock = threading.Lock()
_tally: collections.Counter = collections.Counter()
_watchers = 0


def add(name: str, amount: int = 1) -> None:
    """Adds to the tally this process's driver reads (a no-op for it on remote workers)."""
    with _lock:
        _tally[name] += amount


def watched() -> bool:
    """Whether a driver in this process shows the tally (so workers need not log counts)."""
    return _watchers > 0


def _snapshot() -> dict[str, int]:
    with _lock:
        return dict(_tally)


def in_process(beam_args: list[str]) -> bool:
    """Whether the runner these flags select runs the DoFns in this process."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from pipeline import runners

    if runners.runner_name(beam_args) not in runners.LOCAL_RUNNERS:
        return False
    return PipelineOptions(beam_args).view_as(DirectOptions).direct_running_mode != "multi_processing"


def stages_text(counts: dict[str, int], rates: dict[str, float | None], num_sources: int) -> str:
    """The per-stage part of the line from tally counts and rates (pure): the latest stage
    first (a terminal cuts the end of a long line), bad records next to it."""

    def rate(name: str) -> str:
        value = rates.get(name)
        return f" ({progress.format_rate(value, 'examples')})" if value else ""

    stages = []
    if counts.get(STATS_READ) or counts.get(STATS_SOURCES):
        stages.append(f"statistics {counts.get(STATS_SOURCES, 0)}/{num_sources} sources, "
                      f"{counts.get(STATS_READ, 0):,} read{rate(STATS_READ)}")
    if counts.get(TOKENIZED) or counts.get(TOKENIZE_SOURCES):
        stages.append(f"tokenize {counts.get(TOKENIZE_SOURCES, 0)}/{num_sources} sources, "
                      f"{counts.get(TOKENIZED, 0):,} examples{rate(TOKENIZED)}")
    if counts.get(EXAMPLES_WRITTEN) or counts.get(SHARDS_WRITTEN):
        stages.append(f"shards {counts.get(SHARDS_WRITTEN, 0)} written, "
                      f"{counts.get(EXAMPLES_WRITTEN, 0):,} examples{rate(EXAMPLES_WRITTEN)}")
    if not stages:
        return f"reading {num_sources} sources"
    stages.reverse()
    if counts.get(BAD_RECORDS):
        stages.insert(1, f"{counts[BAD_RECORDS]:,} bad records")
    return " | ".join(stages)


def files_text(spilled_runs: int | None, shards: int | None, runner: str,
               finished: bool = False) -> str:
    """The line's part for a runner whose workers the driver cannot see (pure)."""
    seen = ("" if spilled_runs is None else
            f"{spilled_runs} runs spilled, {shards} shards written{'' if finished else ' so far'}; ")
    if runner in LOCAL_RUNNER_NAMES:
        return f"{seen}the worker processes' example counts are not visible here"
    return (f"{seen}example counts per step: {runner}'s own UI "
            f"(Beam counters keras_metamae.preprocess/*)")


def count_files(work_dir: str) -> tuple[int, int] | None:
    """(spilled run files, finished shard files) in the job's folder; None when it cannot be
    listed from here (a remote URL)."""
    if "://" in work_dir:
        return None
    runs = shards = 0
    for folder, _, names in os.walk(work_dir):
        for name in names:
            if name.endswith(".run"):
                runs += 1
            elif name.endswith((".tfrecord", ".tfrecord.gz")) and ".tmp-" not in name:
                shards += 1
    return runs, shards


class JobProgress:
    """The job's progress line while the Beam graph runs (a context manager)."""

    def __init__(self, dataset: str, beam_args: list[str], num_sources: int, work_dir: str,
                 stream: TextIO | None = None, **line_options):
        from pipeline import runners

        self.num_sources = num_sources
        self.work_dir = work_dir
        self.local = in_process(beam_args)
        self.runner = runners.runner_name(beam_args) or "FnApiRunner"
        self.meters = {name: progress.RateMeter()
                       for name in (STATS_READ, TOKENIZED, EXAMPLES_WRITTEN)}
        self._files: tuple[int, int] | None = None
        self._listed_at = -_LIST_EVERY_S
        self.line = progress.ProgressLine(f"preprocess {dataset}", unit=None, stream=stream,
                                          poll=self._poll, **line_options)

    def details(self, now: float | None = None, finished: bool = False) -> str:
        now = time.monotonic() if now is None else now
        if self.local:
            counts = _snapshot()
            for name, meter in self.meters.items():
                meter.add(now, counts.get(name, 0))
            return stages_text(counts, {n: m.rate for n, m in self.meters.items()},
                               self.num_sources)
        if now - self._listed_at >= _LIST_EVERY_S:
            self._files, self._listed_at = count_files(self.work_dir), now
        runs, shards = self._files if self._files is not None else (None, None)
        return files_text(runs, shards, self.runner, finished)

    def _poll(self):
        return None, self.details(self.line.clock())

    def __enter__(self) -> "JobProgress":
        global _watchers
        with _lock:
            _tally.clear()
            if self.local:
                _watchers += 1
        for meter in self.meters.values():
            meter.start(0)
        self.line.start(None, heartbeat=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _watchers
        try:
            if exc_type is None:
                self._listed_at = -_LIST_EVERY_S  # the final line counts the files again
                self.line.finish(details=self.details(self.line.clock(), finished=True))
            else:
                self.line.close()
        finally:
            if self.local:
                with _lock:
                    _watchers -= 1
