"""`voxceleb1`: VoxCeleb1 speaker identification, 1,251 speakers.

Raw format (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html, registration needed):
`iden_split.txt` (lines `<1|2|3> id10001/<video>/<n>.wav`: 1 = train, 2 = val, 3 = test) and the
dev + test audio merged into `wav/<speaker id>/<video>/<n>.wav` (16 kHz PCM), in data_dir
(`vox1_dev_wav.zip` / `vox1_test_wav.zip` extracted together).

Labels: speaker ids are `id10001` .. `id11251`; label = index in that sorted list (as DABS:
sorted unique speakers). A wav listed for a speaker outside the range is a BadRecord.
Splits: iden_split.txt; as DABS, the linear probe trains on train + val and reports on test
(spec `protocol`). Input: DABS log-mel, fixed DABS statistics mean -37.075, std 19.776.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from preprocessing.datasets import _speech
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

URL = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html"
SPLIT_FILE = "iden_split.txt"
SPEAKERS = tuple(f"id{i}" for i in range(10001, 11252))
SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}
_LINE = re.compile(r"^([123])\s+((id\d{5})/[^/\s]+/[^/\s]+\.wav)$")
_FILES_PER_SOURCE = 500


class VoxCeleb1Reader(_speech.SpeechReader):
    name = "voxceleb1"
    label_names_ = SPEAKERS
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))  # names only: splits are fixed
    fixed_normalization = {"mean": [-37.075], "std": [19.776]}
    protocol = _speech.PROBE_ON_TRAIN_AND_VAL  # the probe trains on train + val
    raw_url = URL

    def expected_files(self) -> list[str]:
        return [SPLIT_FILE, "wav/<speaker id>/<video>/<n>.wav (vox1_dev_wav.zip + vox1_test_wav.zip extracted)"]

    def _split_file(self) -> str:
        return os.path.join(self._data_dir(), SPLIT_FILE)

    def check_raw(self) -> None:
        d = os.path.abspath(self._data_dir())
        if not os.path.isfile(self._split_file()):
            raise RawDataMissing(f"{self.name}: {SPLIT_FILE} not found in {d}; download it and the "
                                 f"VoxCeleb1 dev/test wav archives from {URL} into {d}/")
        if not os.path.isdir(os.path.join(d, "wav")):
            raise RawDataMissing(f"{self.name}: {d}/wav/ not found; extract vox1_dev_wav.zip and "
                                 f"vox1_test_wav.zip (from {URL}) into {d}/ so that wav/id10001/... exists")

    def list_sources(self) -> list[tuple]:
        self.check_raw()
        entries = []
        with open(self._split_file()) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    entries.append((number, line.strip()))
        return [tuple(entries[i:i + _FILES_PER_SOURCE]) for i in range(0, len(entries), _FILES_PER_SOURCE)]

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        index = {s: i for i, s in enumerate(SPEAKERS)}
        for number, line in source:
            m = _LINE.match(line)
            if not m:
                yield BadRecord(path=f"{self._split_file()}:{number}",
                                reason=f"expected `<1|2|3> idNNNNN/<video>/<n>.wav`, got {line!r}")
                continue
            code, rel, speaker = m.groups()
            path = os.path.join(self._data_dir(), "wav", *rel.split("/"))
            if speaker not in index:
                yield BadRecord(path=path, reason=f"speaker {speaker} is outside id10001..id11251")
                continue
            yield _speech.speech_example(path, path, rel[:-4].replace("/", "-"), index[speaker],
                                         split=SPLIT_CODES[code], group=speaker)


READERS = {"voxceleb1": VoxCeleb1Reader}
