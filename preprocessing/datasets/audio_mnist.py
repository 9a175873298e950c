"""`audio-mnist`: spoken digits 0-9 (AudioMNIST, 60 speakers x 10 digits x 50 repetitions).

Raw format: the official repository https://github.com/soerenab/AudioMNIST, cloned or as its
GitHub zip `AudioMNIST-master.zip`, in data_dir: `data/<speaker 01..60>/<digit>_<speaker>_<n>.wav`
(48 kHz mono PCM WAV; `data/audioMNIST_meta.txt` is not needed). Label = the digit in the name.

Input: the DABS log-mel spectrogram at the native 48 kHz (DABS does not resample), normalized
with the fixed DABS AudioMNIST statistics mean -90.293, std 11.799.
Splits: the fixed DABS speaker lists (AudioMNIST's digit-task fold 0): 36 train, 12 val and 12
test speakers. As DABS, the linear probe trains on train + val and reports on test (spec
`protocol`).
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from preprocessing.datasets import _archives, _speech
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

REPO_URL = "https://github.com/soerenab/AudioMNIST"
ARCHIVE_NAMES = ("AudioMNIST-master.zip",)
TRAIN_SPEAKERS = (28, 56, 7, 19, 35, 1, 6, 16, 23, 34, 46, 53, 36, 57, 9, 24, 37, 2, 8, 17, 29, 39,
                  48, 54, 43, 58, 14, 25, 38, 3, 10, 20, 30, 40, 49, 55)
VAL_SPEAKERS = (12, 47, 59, 15, 27, 41, 4, 11, 21, 31, 44, 50)
TEST_SPEAKERS = (26, 52, 60, 18, 32, 42, 5, 13, 22, 33, 45, 51)
WAV_PATTERN = r"(?:^|/)data/(\d\d)/(\d)_\1_(\d+)\.wav$"


def split_of_speaker(speaker: int) -> str | None:
    if speaker in TRAIN_SPEAKERS:
        return "train"
    if speaker in VAL_SPEAKERS:
        return "val"
    if speaker in TEST_SPEAKERS:
        return "test"
    return None


class AudioMNISTReader(_speech.SpeechReader):
    name = "audio-mnist"
    label_names_ = tuple(str(d) for d in range(10))
    split_fractions = (("train", 0.6), ("val", 0.2), ("test", 0.2))  # names only: splits are fixed
    fixed_normalization = {"mean": [-90.293], "std": [11.799]}
    protocol = _speech.PROBE_ON_TRAIN_AND_VAL  # the probe trains on train + val
    raw_url = REPO_URL

    def expected_files(self) -> list[str]:
        return [f"data/<speaker>/<digit>_<speaker>_<n>.wav (a clone of {REPO_URL} or {ARCHIVE_NAMES[0]})"]

    def check_raw(self) -> None:
        d = self._data_dir()
        if _archives.archives_in(d, ARCHIVE_NAMES) or _archives.walk_files(d, WAV_PATTERN):
            return
        raise RawDataMissing(
            f"{self.name}: no data/<speaker>/<digit>_<speaker>_<n>.wav files in {os.path.abspath(d)}. "
            f"Run `git clone {REPO_URL}` (or download {ARCHIVE_NAMES[0]} from {REPO_URL}/archive/"
            f"refs/heads/master.zip) into {os.path.abspath(d)}/."
        )

    def list_sources(self) -> list[tuple]:
        self.check_raw()
        return _archives.file_sources(self._data_dir(), ARCHIVE_NAMES, WAV_PATTERN,
                                      files_per_source=250, archive_shards=4)

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        regex = re.compile(WAV_PATTERN)
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            speaker, digit, n = regex.search(rel).groups()
            split = split_of_speaker(int(speaker))
            if split is None:
                yield BadRecord(path=where, reason=f"speaker {speaker} is not one of AudioMNIST's 60 speakers")
                continue
            yield _speech.speech_example(where, data, f"{digit}_{speaker}_{n}", int(digit),
                                         split=split, group=speaker)


READERS = {"audio-mnist": AudioMNISTReader}
