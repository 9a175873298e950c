"""`google-speech`: Google Speech Commands v0.02, 36 classes (35 words + background noise).

Raw format: `speech_commands_v0.02.tar.gz` (http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz),
as downloaded or extracted in data_dir: `<word>/<speaker>_nohash_<n>.wav` (16 kHz PCM),
`_background_noise_/*.wav` (long noise recordings), `validation_list.txt` and
`testing_list.txt` (one `<word>/<file>.wav` per line).

Class set (as DABS): the 35 words of v0.02 plus `_background_noise_`, i.e. 36 classes; the
label is the index in `LABELS` (the 35 words sorted, then `_background_noise_`).
Splits (official): files in testing_list.txt -> test, in validation_list.txt -> val, all other
files (including the noise recordings) -> train. As DABS, the linear probe trains on
train + val and reports on test (spec `protocol`).
Input: DABS log-mel, fixed DABS statistics mean -46.847, std 19.151.

A prepared TFDS `speech_commands` dataset is NOT accepted in place of the archive (its folder is
recognized, and the error says why): the TFDS builder keeps 12 labels (10 words, `_silence_`,
`_unknown_`), folds the other 25 words into `_unknown_` without keeping file names, cuts the
background-noise recordings into 1-second `_silence_` clips and takes its test split from a
different archive, so neither the 36 DABS classes nor the official lists can be recovered.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from preprocessing.datasets import _archives, _speech, _tfds
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

ARCHIVE_NAME = "speech_commands_v0.02.tar.gz"
URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
         "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one",
         "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow",
         "yes", "zero")
LABELS = WORDS + ("_background_noise_",)
WAV_PATTERN = r"(?:^|/)(" + "|".join(LABELS) + r")/([^/]+\.wav)$"
LIST_FILES = {"val": "validation_list.txt", "test": "testing_list.txt"}
LIST_PATTERNS = {split: rf"(?:^|/){re.escape(name)}$" for split, name in LIST_FILES.items()}
TFDS_BUILDER = "speech_commands"
TFDS_UNUSABLE = (
    f"a prepared TFDS `{TFDS_BUILDER}` dataset cannot stand in for it: TFDS keeps 12 labels (10 "
    "words, _silence_, _unknown_), folds the other 25 words into _unknown_ without their file "
    "names and cuts the background noise into 1-second clips, so the 36 DABS classes and the "
    "official validation/testing lists cannot be recovered from it")


class GoogleSpeechReader(_speech.SpeechReader):
    name = "google-speech"
    label_names_ = LABELS
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))  # names only: splits are fixed
    fixed_normalization = {"mean": [-46.847], "std": [19.151]}
    protocol = _speech.PROBE_ON_TRAIN_AND_VAL  # the probe trains on train + val
    raw_url = URL

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        self._split_lists: dict[str, str] | None = None

    def expected_files(self) -> list[str]:
        return [f"{ARCHIVE_NAME} (or extracted <word>/*.wav + validation_list.txt + testing_list.txt; "
                f"a prepared TFDS {TFDS_BUILDER} dataset cannot stand in: it keeps 12 of the 36 classes)"]

    def split_lists(self) -> dict[str, str]:
        """relative wav path -> "val" | "test", from the official list files."""
        if self._split_lists is None:
            found = _archives.read_small_files(self._data_dir(), [ARCHIVE_NAME], LIST_PATTERNS)
            missing = sorted(set(LIST_PATTERNS) - set(found))
            if missing:
                files = [LIST_FILES[m] for m in missing]
                raise RawDataMissing(
                    f"{self.name}: {', '.join(files)} not found in {os.path.abspath(self._data_dir())}; "
                    f"they are in {ARCHIVE_NAME} ({URL})")
            lists = {}
            for split in ("val", "test"):
                for line in found[split][1].decode().splitlines():
                    if line.strip():
                        lists[line.strip()] = split
            self._split_lists = lists
        return self._split_lists

    def check_raw(self) -> None:
        d = self._data_dir()
        if _archives.archives_in(d, [ARCHIVE_NAME]) or _archives.walk_files(d, WAV_PATTERN):
            self.split_lists()
            return
        message = (f"{self.name}: no Speech Commands audio in {os.path.abspath(d)}. Download {ARCHIVE_NAME} "
                   f"from {URL} and put it in {os.path.abspath(d)}/ (as downloaded or extracted).")
        builder_dir = _tfds.find_builder_dir(d, TFDS_BUILDER)
        if builder_dir:
            message += f" The {TFDS_BUILDER} dataset in {builder_dir} is not used: {TFDS_UNUSABLE}."
        raise RawDataMissing(message)

    def list_sources(self) -> list[tuple]:
        self.check_raw()
        return _archives.file_sources(self._data_dir(), [ARCHIVE_NAME], WAV_PATTERN,
                                      files_per_source=500, archive_shards=8)

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        regex = re.compile(WAV_PATTERN)
        lists = self.split_lists()
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            word, filename = regex.search(rel).groups()
            key = f"{word}/{filename}"
            # `<speaker>_nohash_<n>`: the speaker hash groups one person's recordings.
            speaker = filename.split("_nohash_")[0]
            yield _speech.speech_example(where, data, key, LABELS.index(word),
                                         split=lists.get(key, "train"), group=speaker)


READERS = {"google-speech": GoogleSpeechReader}
