"""`fluent-speech-action|object|location`: Fluent Speech Commands, one dataset per slot.

Raw format: the official `fluent_speech_commands_dataset` folder (or its `.tar.gz`) from
https://fluent.ai/fluent-speech-commands-a-dataset-for-spoken-language-understanding-research/
in data_dir: `data/{train,valid,test}_data.csv` (columns `,path,speakerId,transcription,action,
object,location`; the first column is pandas' index) and `wavs/speakers/<speakerId>/<uuid>.wav`
(16 kHz PCM) named by `path`.

Each utterance carries three labels (action 6, object 14, location 4 classes); the model takes
one class label per example, so the three are three datasets sharing the same spectrograms:
`fluent-speech-action`, `fluent-speech-object`, `fluent-speech-location`. Class order is DABS's.
Splits: the official CSVs (train / valid -> val / test); as DABS, the linear probe trains
on train + val and reports on test (spec `protocol`).
Input: DABS log-mel, fixed DABS statistics mean -31.809, std 13.127.
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Iterator

from preprocessing.datasets import _archives, _speech
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

ARCHIVE_NAMES = ("fluent_speech_commands_dataset.tar.gz",)
URL = "https://fluent.ai/fluent-speech-commands-a-dataset-for-spoken-language-understanding-research/"
ACTIONS = ("change language", "activate", "deactivate", "increase", "decrease", "bring")
OBJECTS = ("none", "music", "lights", "volume", "heat", "lamp", "newspaper", "juice", "socks",
           "shoes", "Chinese", "Korean", "English", "German")
LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
CSV_FILES = {"train": "train_data.csv", "val": "valid_data.csv", "test": "test_data.csv"}
CSV_PATTERNS = {split: rf"(?:^|/)data/{re.escape(name)}$" for split, name in CSV_FILES.items()}
WAV_PATTERN = r"(?:^|/)(wavs/speakers/([^/]+)/[^/]+\.wav)$"


class FluentSpeechReader(_speech.SpeechReader):
    """Base: `label_column` picks the slot; the three registered subclasses set it."""
    raw_folder = "fluent-speech"

    label_column = ""
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))  # names only: splits are fixed
    fixed_normalization = {"mean": [-31.809], "std": [13.127]}
    protocol = _speech.PROBE_ON_TRAIN_AND_VAL  # the probe trains on train + val
    raw_url = URL

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        self._rows: dict[str, tuple[str, str]] | None = None

    def expected_files(self) -> list[str]:
        return ["fluent_speech_commands_dataset/data/{train,valid,test}_data.csv + wavs/speakers/*/*.wav"]

    def rows(self) -> dict[str, tuple[str, str]]:
        """wav path (`wavs/speakers/...`) -> (split, label value of this reader's slot)."""
        if self._rows is None:
            found = _archives.read_small_files(self._data_dir(), ARCHIVE_NAMES, CSV_PATTERNS)
            missing = [CSV_FILES[s] for s in CSV_FILES if s not in found]
            if missing:
                raise RawDataMissing(
                    f"{self.name}: data/{', data/'.join(missing)} not found in "
                    f"{os.path.abspath(self._data_dir())}; put the fluent_speech_commands_dataset "
                    f"folder from {URL} there.")
            rows = {}
            for split in CSV_FILES:
                where, data = found[split]
                reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
                for field in ("path", self.label_column):
                    if field not in (reader.fieldnames or []):
                        raise RawDataMissing(f"{self.name}: {where} has no `{field}` column "
                                             f"(columns: {reader.fieldnames})")
                for row in reader:
                    rows[row["path"].strip()] = (split, row[self.label_column].strip())
            self._rows = rows
        return self._rows

    def check_raw(self) -> None:
        self.rows()
        d = self._data_dir()
        if not (_archives.archives_in(d, ARCHIVE_NAMES) or _archives.walk_files(d, WAV_PATTERN)):
            raise RawDataMissing(f"{self.name}: no wavs/speakers/<speaker>/<uuid>.wav files in "
                                 f"{os.path.abspath(d)}; download the dataset from {URL}")

    def list_sources(self) -> list[tuple]:
        self.check_raw()
        return _archives.file_sources(self._data_dir(), ARCHIVE_NAMES, WAV_PATTERN,
                                      files_per_source=500, archive_shards=8)

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        regex = re.compile(WAV_PATTERN)
        rows = self.rows()
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            key, speaker = regex.search(rel).groups()
            if key not in rows:
                continue  # a recording that no official split lists is not part of the dataset
            split, value = rows[key]
            if value not in self.label_names_:
                yield BadRecord(path=where, reason=f"{self.label_column}={value!r} is not one of "
                                                   f"{list(self.label_names_)}")
                continue
            example_id = os.path.splitext(key.split("/")[-1])[0]
            yield _speech.speech_example(where, data, example_id, self.label_names_.index(value),
                                         split=split, group=speaker)


class FluentSpeechActionReader(FluentSpeechReader):
    name = "fluent-speech-action"
    label_column = "action"
    label_names_ = ACTIONS


class FluentSpeechObjectReader(FluentSpeechReader):
    name = "fluent-speech-object"
    label_column = "object"
    label_names_ = OBJECTS


class FluentSpeechLocationReader(FluentSpeechReader):
    name = "fluent-speech-location"
    label_column = "location"
    label_names_ = LOCATIONS


READERS = {
    "fluent-speech-action": FluentSpeechActionReader,
    "fluent-speech-object": FluentSpeechObjectReader,
    "fluent-speech-location": FluentSpeechLocationReader,
}
