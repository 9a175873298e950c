"""Reading a dataset from a prepared TFDS directory, for readers whose dataset has a TFDS builder.

`tfds.builder(name, data_dir=D).download_and_prepare()` leaves
`D/<builder>/[<config>/]<version>/dataset_info.json` next to the record shards. A reader that
mixes in `PreparedTfds` accepts such a directory under `--raw_data_dir` when its own raw files are
absent: data_dir may be D itself, the `<builder>` folder, the `<config>` folder or a
`<version>` folder; the newest version whose dataset_info.json names the builder (and config)
is used. Nothing is ever downloaded: the dataset is opened with `tfds.builder_from_directory`.

Beam sources are `TfdsSource(builder_dir, split, start, stop)` ranges of
`tfds_examples_per_source` examples, each read with
`builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False)` through
`tfds.as_numpy`, one record at a time. A record that tf.data cannot read or decode, or that the
reader rejects (wrong shape, label out of range...), becomes
`BadRecord("tfds:<builder_dir>:<split>[<i>]", reason)`; reading resumes at the next record
(after 8 unreadable records in a row, the rest of the range is reported unreadable).
Tabular and token readers (higgs, genomics) use their `rows_per_source` as the range size,
as for their CSV files.

Images are read with `SkipDecoding` and decoded by the reader with Pillow, exactly as the raw
image files are, so both formats give the same pixels.

Not a dataset module: the leading underscore keeps the registry from importing it as one.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from preprocessing.datasets.base import BadRecord, RawDataMissing, RawExample

EXAMPLES_PER_SOURCE = 1000
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
# Re-reads after records tf.data could not read, in a row, before the rest of the range is
# reported unreadable without trying (a damaged shard fails every record after the damage).
_MAX_RESTARTS = 8
# A record's reader-side problems: they fail that record only.
_RECORD_ERRORS = (ValueError, KeyError, IndexError, TypeError, OSError)


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """Examples `[start, stop)` of TFDS split `split` of the prepared dataset in `builder_dir`."""

    builder_dir: str
    split: str
    start: int
    stop: int


def _version_of(path: str) -> tuple[int, int, int] | None:
    m = _VERSION_RE.match(os.path.basename(os.path.normpath(path)))
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def _names_builder(version_dir: str, builder: str, config: str | None) -> bool:
    try:
        with open(os.path.join(version_dir, "dataset_info.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    if info.get("name") != builder:
        return False
    # Old dataset_info.json files may lack configName; the folder layout then decides.
    return config is None or info.get("configName", config) == config


def find_builder_dir(data_dir: str | None, builder: str,
                     configs: Iterable[str | None] = (None,)) -> str | None:
    """The newest prepared version folder of `builder` (one of `configs`) at or below data_dir."""
    if not data_dir or not os.path.isdir(data_dir):
        return None
    for config in configs:
        parts = [builder] + ([config] if config else [])
        # data_dir above the builder folder, at the builder folder, at the config folder.
        bases = [os.path.join(data_dir, *parts[i:]) for i in range(len(parts))] + [data_dir]
        candidates = {os.path.normpath(p) for base in bases
                      for p in glob.glob(os.path.join(glob.escape(base), "*", ""))}
        candidates.add(os.path.normpath(data_dir))  # data_dir is a version folder
        found = [(_version_of(p), p) for p in candidates
                 if _version_of(p) and _names_builder(p, builder, config)]
        if found:
            return max(found)[1]
    return None


def layout(builder: str, configs: Iterable[str | None] = (None,)) -> str:
    """`<builder>/<config>/<version>/` as a reader's messages name it."""
    configs = [c for c in configs if c]
    middle = f"{'|'.join(configs)}/" if configs else ""
    return f"{builder}/{middle}<version>/"


def read_metadata(builder_dir: str) -> dict[str, Any]:
    """The builder's `metadata.json` (e.g. LibriSpeech's speakers), {} if it has none."""
    try:
        with open(os.path.join(builder_dir, "metadata.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_builder(builder_dir: str):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(builder_dir)


def plan_sources(dataset: str, builder_dir: str, splits: Iterable[str],
                 examples_per_source: int = EXAMPLES_PER_SOURCE, first: int = 0,
                 last: int | None = None) -> list[TfdsSource]:
    """`(start, stop)` ranges covering examples `[first, last)` of each wanted split present."""
    splits = list(splits)
    builder = open_builder(builder_dir)
    present = builder.info.splits
    wanted = [s for s in splits if s in present]
    if not wanted:
        raise RawDataMissing(
            f"{dataset}: the prepared TFDS dataset in {builder_dir} has splits "
            f"{', '.join(sorted(present)) or '(none)'}, but none of {', '.join(splits)}")
    sources = []
    per = max(1, int(examples_per_source))
    for split in wanted:
        n = present[split].num_examples
        stop = n if last is None else min(n, last)
        sources += [TfdsSource(builder_dir, split, start, min(start + per, stop))
                    for start in range(max(0, first), stop, per)]
    return sources


def _short(e: BaseException) -> str:
    """`<type>: <first line>` of an error, without TF's `{{function_node ...}}` prefix."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(e, "message", None) or str(e))
    lines = message.strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def read_records(source: TfdsSource,
                 convert: Callable[[dict[str, Any], int, str, Any], RawExample | None],
                 skip_decoding: Iterable[str] | Callable[[Any], Iterable[str]] = ()
                 ) -> Iterator[RawExample | BadRecord]:
    """Runs one source: `convert(record, index, split, info)` for each numpy record.

    `convert` returns a RawExample (or None to leave the record out) and raises ValueError (or
    KeyError, IndexError, TypeError, OSError) for a record that must become a BadRecord.
    `skip_decoding` names the features read as their encoded bytes (images the reader decodes
    itself), or is a function of the builder's DatasetInfo that names them.
    """
    import tensorflow_datasets as tfds

    builder = open_builder(source.builder_dir)
    info = builder.info
    if callable(skip_decoding):
        skip_decoding = skip_decoding(info)
    decoders = {key: tfds.decode.SkipDecoding() for key in skip_decoding} or None
    i = source.start
    failures = 0  # records in a row that tf.data could not read
    while i < source.stop:
        if failures >= _MAX_RESTARTS:
            # A damaged shard: everything after the damage fails alike; stop re-reading it.
            for j in range(i, source.stop):
                yield BadRecord(path=f"tfds:{source.builder_dir}:{source.split}[{j}]",
                                reason=f"unreadable TFDS record (as the {failures} before it)")
            return
        # (Re)started after a record tf.data could not read: skips the records before it.
        dataset = builder.as_dataset(split=f"{source.split}[{i}:{source.stop}]",
                                     shuffle_files=False, decoders=decoders,
                                     read_config=tfds.ReadConfig(try_autocache=False))
        records = iter(tfds.as_numpy(dataset))
        while i < source.stop:
            where = f"tfds:{source.builder_dir}:{source.split}[{i}]"
            try:
                record = next(records)
            except StopIteration:
                yield BadRecord(path=f"tfds:{source.builder_dir}:{source.split}[{i}:{source.stop}]",
                                reason="the split ends early: dataset_info.json counts more examples "
                                       "than its shards hold")
                return
            except Exception as e:  # tf.errors.OpError (DataLoss, InvalidArgument...), decode errors
                yield BadRecord(path=where, reason=f"unreadable TFDS record ({_short(e)})")
                failures += 1
                i += 1
                break
            failures = 0
            try:
                example = convert(record, i, source.split, info)
            except _RECORD_ERRORS as e:
                yield BadRecord(path=where, reason=str(e) or type(e).__name__)
            else:
                if example is not None:
                    yield example
            i += 1


def text(value: Any) -> str:
    """A TFDS Text feature's numpy value (bytes) as str."""
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def label_index(record: dict[str, Any], num_classes: int, key: str = "label") -> int:
    label = int(record[key])
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is outside 0..{num_classes - 1}")
    return label


def decode_image(data: bytes | np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A TFDS Image feature read with SkipDecoding (its encoded bytes) -> the 32 x 32 input in
    [0, 1], decoded and resized exactly as the raw image files are (`_images`).

    `shape`: the (height, width) every image of the dataset has (CIFAR, ImageNet32); another
    size raises ValueError instead of being resized.
    """
    from preprocessing.datasets import _images

    pixels = _images.decode_rgb(bytes(data)) if isinstance(data, (bytes, bytearray)) else np.asarray(data)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got shape {list(pixels.shape)}")
    if shape is not None and pixels.shape[:2] != tuple(shape):
        raise ValueError(f"expected a {shape[0]}x{shape[1]} image, got shape {list(pixels.shape)}")
    return _images.resize_to_input(pixels)


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """A TFDS Audio feature's integer samples -> mono float32 in [-1, 1], scaled as libsndfile
    (soundfile.read(dtype="float32")) scales the 16-bit PCM of the original files: / 2**15.

    int16 and int64 (TFDS versions before `dtype=int16` kept 16-bit samples in int64) use
    2**15, int32 2**31; float samples are kept. Multi-channel audio is averaged to mono.
    Raises ValueError for an empty or non-finite recording.
    """
    samples = np.asarray(samples)
    if samples.dtype in (np.int16, np.int64):
        waveform = samples.astype(np.float32) / np.float32(2 ** 15)
    elif samples.dtype == np.int32:
        waveform = (samples.astype(np.float64) / 2 ** 31).astype(np.float32)
    elif np.issubdtype(samples.dtype, np.floating):
        waveform = samples.astype(np.float32)
    else:
        raise ValueError(f"audio samples of dtype {samples.dtype} are not supported")
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    if waveform.ndim != 1:
        raise ValueError(f"expected audio of shape [samples] or [samples, channels], "
                         f"got {list(samples.shape)}")
    if waveform.shape[0] == 0:
        raise ValueError("the recording has no samples")
    if not np.all(np.isfinite(waveform)):
        raise ValueError("the recording holds NaN or infinite samples")
    return waveform


class PreparedTfds:
    """Mixin (first among the bases) for a reader that also reads a prepared TFDS directory.

    The reader's own raw files win: the TFDS directory is read only when the reader's raw check
    raises RawDataMissing and a prepared `tfds_builder` is found under data_dir. A subclass sets
    the `tfds_*` attributes and implements `tfds_example`. Its raw-format code is reached through
    `check_raw_files`, `list_raw_sources`, `read_raw_source` and `raw_expected_files`, which
    default to the next base class's `check_raw`, `list_sources`, `read_source` and
    `expected_files` (a reader that defines those itself names them with the `raw` names).
    """

    tfds_builder: str = ""
    tfds_configs: tuple[str | None, ...] = (None,)
    # TFDS split -> the split its examples go to (None: the reader's split_of decides).
    tfds_splits: dict[str, str | None] = {"train": None}
    tfds_examples_per_source: int = EXAMPLES_PER_SOURCE
    tfds_skip_decoding: tuple[str, ...] = ()

    # === for subclasses ===
    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample | None:
        """The RawExample of one TFDS record; raises ValueError for a bad one."""
        raise NotImplementedError

    def tfds_decoders(self, info: Any) -> tuple[str, ...]:
        """Features read as their encoded bytes; `tfds_skip_decoding` unless overridden."""
        return self.tfds_skip_decoding

    def check_tfds(self) -> None:
        """Further checks (raising RawDataMissing) once the TFDS dataset is the input."""

    def check_raw_files(self) -> None:
        super().check_raw()

    def list_raw_sources(self) -> list[Any]:
        return super().list_sources()

    def read_raw_source(self, source: Any) -> Iterator[RawExample | BadRecord]:
        return super().read_source(source)

    def raw_expected_files(self) -> list[str]:
        return super().expected_files()

    # === locating ===
    def tfds_dir(self) -> str | None:
        return find_builder_dir(self._data_dir(), self.tfds_builder, self.tfds_configs)

    def tfds_description(self) -> str:
        configs = [c for c in self.tfds_configs if c]
        name = self.tfds_builder + (f"/{'|'.join(configs)}" if configs else "")
        return (f"a prepared TFDS `{name}` dataset ({layout(self.tfds_builder, self.tfds_configs)}"
                f"dataset_info.json, as tfds.builder(...).download_and_prepare() leaves it; "
                f"splits {', '.join(self.tfds_splits)})")

    def reads_tfds(self) -> bool:
        """False when the raw files are there, True when only a prepared TFDS dataset is.

        Raises the raw check's RawDataMissing, naming the TFDS alternative too, when neither is.
        """
        decided = self.__dict__.get("_reads_tfds")
        if decided is not None:
            return decided
        try:
            self.check_raw_files()
            decided = False
        except RawDataMissing as e:
            builder_dir = self.tfds_dir()
            if builder_dir is None:
                d = os.path.abspath(self._data_dir())
                raise RawDataMissing(f"{e} Or put {self.tfds_description()} in {d}/.") from None
            logging.info("%s: %s; reading the prepared TFDS dataset in %s instead",
                         self.name, e, builder_dir)
            decided = True
        self.__dict__["_reads_tfds"] = decided
        return decided

    # === the reader contract ===
    def expected_files(self) -> list[str]:
        return self.raw_expected_files() + [f"or {self.tfds_description()}"]

    def check_raw(self) -> None:
        if self.reads_tfds():
            self.check_tfds()

    def list_sources(self) -> list[Any]:
        if self.reads_tfds():
            self.check_tfds()
            return self.tfds_sources()
        return self.list_raw_sources()

    def tfds_sources(self) -> list[TfdsSource]:
        return plan_sources(self.name, self.tfds_dir(), list(self.tfds_splits),
                            self.tfds_examples_per_source)

    def read_source(self, source: Any) -> Iterator[RawExample | BadRecord]:
        if isinstance(source, TfdsSource):
            return read_records(source, self.tfds_example, self.tfds_decoders)
        return self.read_raw_source(source)
