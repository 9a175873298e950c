"""The progress line (commandline/progress.py), the Beam job's stages text and the
TensorBoard reconstruction panels, as pure functions of counts, a fake clock and arrays."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from commandline import progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_text_shows_counts_rates_elapsed_and_eta():
    text = progress.progress_text("train", done=750, total=1500, unit="steps", rate=12.5,
                                  per_unit=("examples", 64), elapsed_s=64, details="loss 0.2")
    # ETA: 750 steps left at 12.5 steps/s = 60 s.
    assert text == ("train 750/1,500 steps  50% | 12.5 steps/s (800 examples/s) | "
                    "1:04 elapsed, ETA 1:00 | loss 0.2")
    assert progress.progress_text("train", done=0, total=10, unit="steps", elapsed_s=3,
                                  note="tracing the first step") == (
        "train 0/10 steps   0% | 0:03 elapsed | tracing the first step")
    assert progress.progress_text("embed", done=10, total=10, unit="examples", rate=0.4,
                                  elapsed_s=3725, finished=True) == (
        "embed 10/10 examples 100% | 2.50 s/example | done in 1:02:05")
    assert progress.eta_seconds(10, 10, 3.0) == 0 and progress.eta_seconds(1, None, 3.0) is None


def test_rate_leaves_out_start_up_and_counts_later_pauses():
    meter = progress.RateMeter()
    meter.start(0)
    meter.add(30.0, 1)  # the first step: 30 s of tracing
    assert meter.rate is None
    meter.add(31.0, 2)
    meter.add(41.0, 2)  # no progress: the rate is measured to the last step that ended
    assert meter.rate == 1.0
    meter.add(51.0, 3)  # a 19 s validation pause before step 3 counts
    assert meter.rate == pytest.approx(2 / 21)


def test_log_gets_a_plain_line_every_interval_and_a_final_line():
    clock, out = FakeClock(), io.StringIO()
    line = progress.ProgressLine("train", total=100, unit="steps", stream=out, tty=False,
                                 interval_s=15, clock=clock)
    line.start(0)
    for step in range(1, 41):
        clock.now = float(step)
        line.update(step, details=lambda: "loss 0.5")
    line.finish(40)
    lines = out.getvalue().split("\n")
    assert "\r" not in out.getvalue() and lines[-1] == ""
    assert lines[:-1] == [
        "train 15/100 steps  15% | 1.0 steps/s | 0:15 elapsed, ETA 1:25 | loss 0.5",
        "train 30/100 steps  30% | 1.0 steps/s | 0:30 elapsed, ETA 1:10 | loss 0.5",
        "train 40/100 steps  40% | 1.0 steps/s | done in 0:40 | loss 0.5",
    ]


def test_terminal_redraws_one_line_in_place_within_its_width():
    clock, out = FakeClock(), io.StringIO()
    line = progress.ProgressLine("train", total=1000, unit="steps", per_unit=("examples", 64),
                                 stream=out, tty=True, width=60, clock=clock)
    line.start(0)
    for step in range(1, 11):
        clock.now = step * 0.25  # a redraw is due every 0.2 s
        line.update(step, details="loss 0.123456")
    assert "\n" not in out.getvalue()
    drawn = out.getvalue().split("\r")[1:]
    assert len(drawn) == 10
    # Too wide for 60 columns: the bar and the examples/s go, then the end is cut.
    assert drawn[-1] == "train 10/1,000 steps   1% | 4.0 steps/s | 0:02 elapsed, ETA"
    assert all(len(d) <= 59 for d in drawn)
    line.finish(10)
    final = out.getvalue().split("\r")[-1]
    assert final.endswith("\n") and "done in 0:02" in final


def test_terminal_line_with_the_room_shows_a_bar():
    out = io.StringIO()
    line = progress.ProgressLine("train", total=20, unit="steps", stream=out, tty=True,
                                 width=200, clock=FakeClock())
    line.start(0)
    line.set_note("validation")  # a phase change is drawn at once
    assert out.getvalue() == "\rtrain [----------] 0/20 steps   0% | 0:00 elapsed | validation"
    line.finish(10)
    final = out.getvalue().split("\r")[-1]
    assert final.rstrip(" \n") == "train [#####-----] 10/20 steps  50% | done in 0:00"
    assert final.endswith(" \n")  # spaces over the longer line drawn before


def test_terminal_cuts_the_details_before_leaving_out_the_bar():
    clock, out = FakeClock(), io.StringIO()
    line = progress.ProgressLine("train", total=20, unit="steps", stream=out, tty=True,
                                 width=81, clock=clock)
    line.start(0)
    clock.now = 1.0
    line.update(1)
    clock.now = 2.0
    line.update(2, details="loss 0.5, val_loss 0.6, knn_accuracy 0.7")
    drawn = out.getvalue().split("\r")[-1]
    assert drawn == ("train [#---------] 2/20 steps  10% | 1.0 steps/s | 0:02 elapsed, "
                     "ETA 0:18 | loss")  # 80 columns


def test_shorter_line_erases_the_longer_one_and_close_ends_it():
    clock, out = FakeClock(), io.StringIO()
    line = progress.ProgressLine("x", total=None, unit="steps", stream=out, tty=True,
                                 width=200, clock=clock)
    line.start(0)
    clock.now = 1.0
    line.update(1, details="a long detail")
    clock.now = 2.0
    line.update(2, details="")
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first)  # padded with spaces over the old text
    line.close()
    assert out.getvalue().endswith("\n")


def test_heartbeat_writes_while_nothing_reports():
    out = io.StringIO()
    line = progress.ProgressLine("train", total=10, unit="steps", stream=out, tty=False,
                                 interval_s=0.05)
    line.start(0, heartbeat=True)
    line.set_note("tracing the first step")
    deadline = time.monotonic() + 5
    while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    line.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and lines[0].startswith("train 0/10 steps")
    assert lines[0].endswith("| tracing the first step")
    written = out.getvalue()
    time.sleep(0.2)
    assert out.getvalue() == written  # closed: the heartbeat has stopped


def test_beam_job_stages_text():
    from pipeline import job_progress

    counts = {job_progress.STATS_READ: 27000, job_progress.STATS_SOURCES: 10,
              job_progress.TOKENIZED: 8128, job_progress.TOKENIZE_SOURCES: 3,
              job_progress.BAD_RECORDS: 2}
    text = job_progress.stages_text(counts, {job_progress.TOKENIZED: 640.0}, num_sources=10)
    # The latest stage first: a terminal cuts the end of a long line.
    assert text == ("tokenize 3/10 sources, 8,128 examples (640 examples/s) | 2 bad records | "
                    "statistics 10/10 sources, 27,000 read")
    assert job_progress.stages_text({}, {}, 4) == "reading 4 sources"
    assert job_progress.files_text(12, 3, "DaskRunner") == (
        "12 runs spilled, 3 shards written so far; example counts per step: DaskRunner's own "
        "UI (Beam counters keras_metamae.preprocess/*)")


def test_reconstruction_panels_are_upscaled_masked_and_captioned():
    from keras_metamae.training import panels

    rng = np.random.default_rng(0)
    original = rng.uniform(size=(2, 8, 8, 1)).astype("float32")
    predicted = 1.0 - original
    mask = np.zeros((2, 8, 8), bool)
    mask[:, :4, :] = True  # the top half of each image is masked
    grid = panels.reconstruction_panels(original, predicted, mask)
    scale, caption, gap = 16, panels.CAPTION_HEIGHT, panels.PANEL_GAP
    cell = caption + 8 * scale
    assert grid.shape == (2 * cell + gap, 3 * 8 * scale + 2 * gap, 3)
    # Row 2, "original": nearest-neighbour upscaling of the image scaled to its own range.
    top = cell + gap
    image = grid[top + caption:top + cell, :8 * scale, 0]
    expected = (original[1, ..., 0] - original[1].min()) / np.ptp(original[1])
    np.testing.assert_allclose(image, expected.repeat(scale, 0).repeat(scale, 1), atol=1e-6)
    # "masked": the masked half in the mask colour, the rest as the original.
    left = 8 * scale + gap
    masked = grid[top + caption:top + cell, left:left + 8 * scale]
    np.testing.assert_allclose(masked[: 4 * scale], np.broadcast_to(
        panels.MASK_COLOR, (4 * scale, 8 * scale, 3)), atol=1e-6)
    np.testing.assert_allclose(masked[4 * scale:, :, 0], image[4 * scale:], atol=1e-6)
    # "reconstruction": the prediction on the masked half only.
    left = 2 * left
    filled = grid[top + caption:top + cell, left:left + 8 * scale, 0]
    shown_prediction = np.clip((predicted[1, ..., 0] - original[1].min()) / np.ptp(original[1]),
                               0, 1).repeat(scale, 0).repeat(scale, 1)
    np.testing.assert_allclose(filled[: 4 * scale], shown_prediction[: 4 * scale], atol=1e-5)
    np.testing.assert_allclose(filled[4 * scale:], image[4 * scale:], atol=1e-6)
    # Each caption strip holds dark text on white.
    for column in range(3):
        strip = grid[:caption, column * (8 * scale + gap):column * (8 * scale + gap) + 8 * scale]
        assert strip.min() < 0.3 and np.median(strip) == 1.0
    assert panels.panel_scale(64) == 2 and panels.panel_scale(224) == 1
