"""`librispeech` (DABS speech pretraining) and `librispeech-dev-clean` (its speaker-id transfer set).

Raw format (https://www.openslr.org/12): the official tarballs `train-clean-100.tar.gz`,
`train-clean-360.tar.gz`, `train-other-500.tar.gz` (pretraining) and `dev-clean.tar.gz`
(transfer), put in data_dir as downloaded or extracted. Inside:
`LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` (16 kHz FLAC),
`<speaker>-<chapter>.trans.txt` (transcripts, unused: the task is speaker identification) and
`LibriSpeech/SPEAKERS.TXT` (`ID | SEX | SUBSET | MINUTES | NAME`, `;` comments), which lists
every speaker of every subset.

Labels: the index of the speaker id among the sorted ids that SPEAKERS.TXT lists for the
reader's subsets -- 2,338 speakers for the three training subsets (DABS ALL_TRAIN_NUM_CLASSES),
40 for dev-clean -- so the label map does not depend on which tarballs are present. An
utterance whose speaker is not listed is a BadRecord.

Input: the DABS log-mel spectrogram `[224, 224, 1]` (see `_logmel.py`), normalized with the
fixed DABS statistics mean -22.924, std 12.587 (both datasets, as in DABS).

Splits: `librispeech` train/val/test 90/5/5 by a seeded hash of the utterance id (every
speaker appears in every split). `librispeech-dev-clean` train/test exactly as DABS's
`LibriSpeechTransfer.train_test_split`: the utterance ids of dev-clean sorted as text (torchaudio's
file list), then for each speaker in numeric order, one `numpy.random.RandomState(42)` shuffles
that speaker's utterances and the first int(0.8 * n) are train, the rest test, so each speaker
is split 80/20 and the sets are the reference's (the seed is DABS's fixed 42, not `--seed`).
That needs every utterance id before any is assigned: the driver lists them once when the
sources are listed (the extracted tree's file names, the tarball's member names - one pass over
dev-clean.tar.gz that reads no audio -, or the prepared TFDS split's `id`s with the audio left
encoded) and the map travels to the workers with the reader.

Without the tarballs, a prepared TFDS `librispeech` dataset (config `default` or `lazy_decode`,
`librispeech/<config>/<version>/dataset_info.json`, nothing downloaded) is read instead, 128
utterances per source: splits `train_clean100`, `train_clean360`, `train_other500`
(`librispeech`) or `dev_clean` (`librispeech-dev-clean`). Its `speech` samples (int16, or int64
in older TFDS versions; the `lazy_decode` config keeps the FLAC bytes, decoded with soundfile as
above) are scaled by 1 / 32768 exactly as libsndfile scales the FLAC's 16-bit samples, then go
through the same log-mel; its `id` is the utterance id above, so splits are the same. The label
map comes from SPEAKERS.TXT when one is under data_dir, else from the `speakers` (id -> subset)
that the TFDS builder stores in the dataset's metadata.json, which is SPEAKERS.TXT's content.
"""

from __future__ import annotations

import os
import re
import tarfile
import zipfile
import zlib
from typing import Any, Iterable, Iterator

import numpy as np

from preprocessing.datasets import _archives, _logmel, _speech, _tfds
from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

URL_TEMPLATE = "https://www.openslr.org/resources/12/{}.tar.gz"
SPEAKERS_FILE = "SPEAKERS.TXT"
LIBRISPEECH_MEAN = [-22.924]
LIBRISPEECH_STD = [12.587]
DABS_DEV_CLEAN_SEED = 42  # LibriSpeechTransfer.train_test_split: np.random.RandomState(42)
DABS_DEV_CLEAN_TRAIN_FRACTION = 0.8


def dabs_dev_clean_splits(utterance_ids: Iterable[str]) -> dict[str, str]:
    """utterance id (`<speaker>-<chapter>-<utt>`) -> "train" / "test", as DABS splits dev-clean:
    torchaudio lists the files sorted by name; per speaker (numerically sorted) one shared
    RandomState(42) shuffles the indices of that speaker's files and the first int(0.8 * n)
    are train."""
    stems = sorted(set(utterance_ids))
    speaker_of = np.array([int(stem.split("-", 1)[0]) for stem in stems], dtype=np.int64)
    rs = np.random.RandomState(DABS_DEV_CLEAN_SEED)
    splits = {}
    for speaker in sorted(set(speaker_of.tolist())):
        indices = np.where(speaker_of == speaker)[0]
        rs.shuffle(indices)
        num_train = int(DABS_DEV_CLEAN_TRAIN_FRACTION * len(indices))
        for rank, index in enumerate(indices.tolist()):
            splits[stems[index]] = "train" if rank < num_train else "test"
    return splits


def archive_member_names(archive: str, pattern: str) -> list[str]:
    """Names of the archive's files matching `pattern`, without reading their data. An archive
    that breaks mid-way gives the names before the break (reading it reports the break)."""
    regex = re.compile(pattern)
    names = []
    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                return [i.filename for i in zf.infolist() if regex.search(i.filename)]
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and regex.search(member.name):
                    names.append(member.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError):
        pass
    return names


def parse_speakers(text: str, subsets: tuple[str, ...]) -> list[str]:
    """Sorted (numerically) speaker ids that SPEAKERS.TXT lists for `subsets`.

    Fields are split on the first four `|` only: one reader's NAME contains `|`.
    """
    ids = set()
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) >= 3 and fields[2] in subsets and fields[0].isdigit():
            ids.add(int(fields[0]))
    return [str(i) for i in sorted(ids)]


def speakers_of_metadata(speakers: dict[str, Any], subsets: tuple[str, ...]) -> list[str]:
    """Sorted (numerically) speaker ids of `subsets` in a TFDS librispeech metadata.json's
    `speakers` ({"<id>": {"subset": "train-clean-100", ...}})."""
    ids = {int(k) for k, v in speakers.items() if str(k).strip().isdigit() and isinstance(v, dict)
           and str(v.get("subset", "")).strip() in subsets}
    return [str(i) for i in sorted(ids)]


class LibriSpeechReader(_tfds.PreparedTfds, _speech.SpeechReader):
    raw_folder = "librispeech"  # one LibriSpeech/ tree holds every subset
    name = "librispeech"
    subsets: tuple[str, ...] = ("train-clean-100", "train-clean-360", "train-other-500")
    official_num_speakers = 2338
    split_fractions = (("train", 0.9), ("val", 0.05), ("test", 0.05))
    fixed_normalization = {"mean": LIBRISPEECH_MEAN, "std": LIBRISPEECH_STD}
    pretrain_dataset = ""
    raw_url = URL_TEMPLATE.format("train-clean-100")
    _files_per_source = 128
    tfds_builder = "librispeech"
    tfds_configs = ("default", "lazy_decode")
    tfds_splits = {"train_clean100": None, "train_clean360": None, "train_other500": None}
    tfds_examples_per_source = _files_per_source

    def __init__(self, data_dir: str | None = None, **options):
        super().__init__(data_dir, **options)
        self._speakers: list[str] | None = None

    # === raw layout ===
    def archive_names(self) -> list[str]:
        return [f"{s}.tar.gz" for s in self.subsets]

    def audio_pattern(self) -> str:
        subsets = "|".join(self.subsets)
        return rf"(?:^|/)(?:{subsets})/(\d+)/(\d+)/\1-\2-(\d+)\.flac$"

    def raw_expected_files(self) -> list[str]:
        return [f"{a} (or extracted LibriSpeech/{a[:-7]}/...) from {URL_TEMPLATE.format(a[:-7])}"
                for a in self.archive_names()]

    def speakers(self) -> list[str]:
        """The label map (sorted speaker ids); reads SPEAKERS.TXT once."""
        if self._speakers is None:
            found = _archives.read_small_files(self._data_dir(), self.archive_names(),
                                               {"speakers": rf"(?:^|/){SPEAKERS_FILE}$"})
            tfds_speakers = None
            if "speakers" not in found:
                builder_dir = self.tfds_dir()
                tfds_speakers = _tfds.read_metadata(builder_dir).get("speakers") if builder_dir else None
                if not isinstance(tfds_speakers, dict):
                    raise RawDataMissing(
                        f"{self.name}: {SPEAKERS_FILE} not found in {os.path.abspath(self._data_dir())} "
                        f"(it is in every official LibriSpeech tarball at LibriSpeech/{SPEAKERS_FILE}, "
                        f"and a prepared TFDS librispeech dataset keeps it as `speakers` in its "
                        f"metadata.json); download {self.archive_names()[0]} from "
                        f"{URL_TEMPLATE.format(self.subsets[0])}"
                    )
            if tfds_speakers is not None:
                where = os.path.join(self.tfds_dir(), "metadata.json")
                self._speakers = speakers_of_metadata(tfds_speakers, self.subsets)
            else:
                where, data = found["speakers"]
                self._speakers = parse_speakers(data.decode("utf-8", "replace"), self.subsets)
            if not self._speakers:
                raise RawDataMissing(f"{self.name}: {where} lists no speaker of subsets {self.subsets}")
        return self._speakers

    def label_names(self) -> list[str]:
        try:
            return self.speakers()
        except RawDataMissing:
            return []  # spec of a dataset that is not downloaded yet (e.g. `--list`)

    def num_classes(self) -> int:
        names = self.label_names()
        return len(names) if names else self.official_num_speakers

    def check_raw_files(self) -> None:
        d = self._data_dir()
        if _archives.archives_in(d, self.archive_names()) or _archives.walk_files(d, self.audio_pattern()):
            self.speakers()
            return
        raise RawDataMissing(
            f"{self.name}: no LibriSpeech audio in {os.path.abspath(d)}. Download "
            + ", ".join(f"{a} ({URL_TEMPLATE.format(a[:-7])})" for a in self.archive_names())
            + f" and put them in {os.path.abspath(d)}/ (as downloaded or extracted)."
        )

    # === reading ===
    def list_raw_sources(self) -> list[tuple]:
        self.check_raw()
        return _archives.file_sources(self._data_dir(), self.archive_names(), self.audio_pattern(),
                                      files_per_source=self._files_per_source,
                                      archive_shards=int(self.options.get("archive_shards", 8)))

    def read_raw_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        index = {s: i for i, s in enumerate(self.speakers())}
        regex = re.compile(self.audio_pattern())
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            speaker, chapter, utterance = regex.search(rel).groups()
            speaker_id = str(int(speaker))
            if speaker_id not in index:
                yield BadRecord(path=where, reason=f"speaker {speaker} is not listed for subsets "
                                                   f"{', '.join(self.subsets)} in {SPEAKERS_FILE}")
                continue
            yield _speech.speech_example(where, data, f"{speaker}-{chapter}-{utterance}", index[speaker_id])

    # === a prepared TFDS `librispeech` dataset ===
    def check_tfds(self) -> None:
        self.speakers()

    def tfds_decoders(self, info: Any) -> tuple[str, ...]:
        # The lazy_decode config stores the FLAC bytes: decode them with soundfile, as above.
        lazy = getattr(info.features["speech"].to_json_content(), "lazy_decode", False)
        return ("speech",) if lazy else ()

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        if self.__dict__.get("_speaker_index") is None:
            self._speaker_index = {s: i for i, s in enumerate(self.speakers())}
        utterance = _tfds.text(record["id"])
        speaker_id = str(int(record["speaker_id"]))
        if speaker_id not in self._speaker_index:
            raise ValueError(f"{utterance}: speaker {speaker_id} is not listed for subsets "
                             f"{', '.join(self.subsets)}")
        speech = record["speech"]
        if isinstance(speech, (bytes, bytearray)):
            spectrogram = _speech.audio_to_input(bytes(speech))
        else:
            sample_rate = info.features["speech"].sample_rate or 16000
            spectrogram = _logmel.log_mel_spectrogram(_tfds.pcm_to_float(speech), sample_rate)
        return RawExample(id=utterance, input=spectrogram, label=self._speaker_index[speaker_id])


class LibriSpeechDevCleanReader(LibriSpeechReader):
    name = "librispeech-dev-clean"
    subsets = ("dev-clean",)
    tfds_splits = {"dev_clean": None}
    official_num_speakers = 40
    split_fractions = (("train", 0.8), ("test", 0.2))  # names; the split is DABS's, see split_of
    pretrain_dataset = "librispeech"
    raw_url = URL_TEMPLATE.format("dev-clean")

    def utterance_ids(self) -> list[str]:
        """Every dev-clean utterance id present (sorted), decodable or not, as torchaudio's
        file list holds them: from the extracted tree, else the tarball, else TFDS."""
        regex = re.compile(self.audio_pattern())
        if self.reads_tfds():
            return sorted(self._tfds_utterance_ids())
        d = self._data_dir()
        names = _archives.walk_files(d, self.audio_pattern()) if os.path.isdir(d) else []
        if not names:
            for archive in _archives.archives_in(d, self.archive_names()):
                names += archive_member_names(archive, self.audio_pattern())
        ids = []
        for name in names:
            speaker, chapter, utterance = regex.search(name).groups()
            ids.append(f"{speaker}-{chapter}-{utterance}")
        return sorted(ids)

    def _tfds_utterance_ids(self) -> list[str]:
        import tensorflow_datasets as tfds

        builder = _tfds.open_builder(self.tfds_dir())
        ids = []
        for split in self.tfds_splits:
            if split not in builder.info.splits:
                continue
            dataset = builder.as_dataset(split=split, shuffle_files=False,
                                         decoders={"speech": tfds.decode.SkipDecoding()},
                                         read_config=tfds.ReadConfig(try_autocache=False))
            ids += [_tfds.text(i) for i in tfds.as_numpy(dataset.map(lambda r: r["id"]))]
        return ids

    def dabs_splits(self) -> dict[str, str]:
        """utterance id -> split (`dabs_dev_clean_splits`), computed once on the driver."""
        if self.__dict__.get("_dabs_splits") is None:
            self._dabs_splits = dabs_dev_clean_splits(self.utterance_ids())
        return self._dabs_splits

    def list_sources(self) -> list[Any]:
        sources = super().list_sources()
        self.dabs_splits()  # here, so the map travels to the workers with the reader
        return sources

    def split_of(self, example: RawExample, seed: int) -> str:
        split = self.dabs_splits().get(example.id)
        if split is None:  # not listed (e.g. a file added after listing): never silently train
            raise ValueError(f"{self.name}: utterance {example.id} was not in the dev-clean file "
                             f"list the DABS split was drawn from; rerun the job")
        return split


READERS = {"librispeech": LibriSpeechReader, "librispeech-dev-clean": LibriSpeechDevCleanReader}
