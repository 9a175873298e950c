"""`eurosat`: DABS multi-spectral EuroSAT (13-band 64x64 Sentinel-2 tiles, 10 land-use classes).

Raw formats accepted under `--raw_data_dir`, tried in this order:
1. the official `EuroSATallBands.zip` (any `*.zip` whose members look like
   `<...>/<Class>/<Class>_<n>.tif`, at any depth inside the archive);
2. that archive extracted: `<Class>/<Class>_<n>.tif` files at any depth below data_dir;
3. a TFDS `eurosat/all` dataset that was already prepared there
   (`eurosat/all/<version>/dataset_info.json`, read with `tfds.builder_from_directory` in ranges
   of 1,000 examples; nothing is ever downloaded; see `_tfds.py`).

Each tile is read as `[64, 64, 13]` (band-first `[13, 64, 64]` files are transposed) and
normalized per band with the fixed DABS statistics. The official tiles are uncompressed 16-bit
strip TIFFs, which `decode_plain_tiff` reads straight from the strip offsets (tifffile's
general parser took longer than everything else the job does per tile); any other TIFF layout
is read with tifffile. The example id is `<Class>_<n>` in all
three formats, so the same tile lands in the same split whatever format it came from.

Splits (DABS protocol): 10 % of the 27,000 tiles are held out as the transfer set and never
pretrained on; the linear probe trains and tests 90/10 on that part (2,430 / 270 tiles). The
spec's protocol names them: pretraining reads `pretrain`, the probe trains on `transfer_train`
and reports on `transfer_test`.
- TFDS `eurosat/all` input: exactly DABS's split (`dabs_split`). DABS reads that dataset's
  `train` split in record order as a DataFrame, shuffles it with pandas'
  `sample(frac=1, random_state=42)`, pretrains on `head(ceil(0.9 n))` and keeps
  `tail(floor(0.1 n))` as the transfer set, whose `head(ceil(0.9 m))` trains the probe and
  `tail(floor(0.1 m))` tests it. A record's split follows from its index and the record count
  (`_dabs_shuffle.py`); the seed is DABS's fixed 42, not `--seed`. The same TFDS version gives
  the same record order, so the same tiles.
- The zip and the extracted tiles carry no TFDS record order, so they approximate it: one
  seeded hash of the tile id (`--seed`, default 42) assigns each tile to `pretrain` (90 %),
  `transfer_train` (9 %) or `transfer_test` (1 %): the same proportions, stable across runs
  and machines, but other tiles than DABS's.
"""

from __future__ import annotations

import glob
import io
import os
import re
import zipfile
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _dabs_shuffle, _tfds
from preprocessing.datasets.base import BadRecord, DatasetReader, RawDataMissing, RawExample
from preprocessing.spec import DatasetSpec

ARCHIVE_NAME = "EuroSATallBands.zip"
ARCHIVE_URL = "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip"
CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
IMAGE_SHAPE = (64, 64, 13)
# Fixed DABS per-band statistics of the raw Sentinel-2 values (bands B01..B12, B8A order of the tif).
DABS_MEAN = [1354.3003, 1117.7579, 1042.2800, 947.6443, 1199.6334, 2001.9829, 2372.5579,
             2299.6663, 731.0175, 12.0956, 1822.4083, 1119.5759, 2598.4456]
DABS_STD = [244.0469, 323.4128, 385.0928, 584.1638, 566.0543, 858.5753, 1083.6704,
            1103.0342, 402.9594, 4.7207, 1002.4071, 759.6080, 1228.4104]

# `<Class>/<Class>_<n>.tif` anywhere in a path; the class directory must match the file prefix.
_TIF_RE = re.compile(r"(?:^|/)(?P<cls>" + "|".join(CLASSES) + r")/(?P=cls)_(?P<n>\d+)\.tiff?$")
# Tiles per read task: opening the zip's central directory once per task, not once per tile.
_TILES_PER_SOURCE = 256


def parse_tile_path(path: str) -> tuple[str, int] | None:
    """`(<Class>_<n>, label)` for a path that names an EuroSAT tile, else None."""
    m = _TIF_RE.search(path.replace(os.sep, "/"))
    if not m:
        return None
    return f"{m['cls']}_{m['n']}", CLASSES.index(m["cls"])


# TIFF tags decode_plain_tiff reads, and the sizes of the value types it accepts.
_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _STRIP_OFFSETS = 256, 257, 258, 259, 273
_SAMPLES, _ROWS_PER_STRIP, _STRIP_BYTES, _PLANAR, _SAMPLE_FORMAT = 277, 278, 279, 284, 339
_TYPE_SIZES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def decode_plain_tiff(data: bytes) -> np.ndarray | None:
    """`[height, width, samples]` of a single-image, uncompressed, pixel-interleaved, unsigned
    16-bit strip TIFF (what EuroSAT's tiles are), read from its strips; None for any other
    TIFF (tiled, compressed, planar, several images, other sample types...), which tifffile
    reads instead."""
    import struct

    if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack_from(order + "H", data, ifd)
    end = ifd + 2 + 12 * count
    if end + 4 > len(data) or struct.unpack_from(order + "I", data, end)[0] != 0:
        return None  # truncated, or a second image follows
    tags = {}
    for i in range(count):
        tag, kind, n, inline = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * i)
        if kind not in _TYPE_SIZES:
            continue
        code, size = _TYPE_SIZES[kind]
        where = (inline, 0) if n * size <= 4 else (data, struct.unpack(order + "I", inline)[0])
        if where[1] + n * size > len(where[0]):
            return None
        tags[tag] = struct.unpack_from(f"{order}{n}{code}", *where)
    width, height = tags.get(_WIDTH, (0,))[0], tags.get(_HEIGHT, (0,))[0]
    samples = tags.get(_SAMPLES, (1,))[0]
    if (not width or not height or _STRIP_OFFSETS not in tags or _STRIP_BYTES not in tags
            or set(tags.get(_BITS, (16,))) != {16} or tags.get(_COMPRESSION, (1,))[0] != 1
            or tags.get(_PLANAR, (1,))[0] != 1 or set(tags.get(_SAMPLE_FORMAT, (1,))) != {1}
            or len(tags[_STRIP_OFFSETS]) != len(tags[_STRIP_BYTES])):
        return None
    strips = [data[o:o + n] for o, n in zip(tags[_STRIP_OFFSETS], tags[_STRIP_BYTES])]
    pixels = b"".join(strips)
    if any(len(s) != n for s, n in zip(strips, tags[_STRIP_BYTES])) or \
            len(pixels) != width * height * samples * 2:
        return None
    return np.frombuffer(pixels, order + "u2").reshape(height, width, samples)


def decode_tile(data: bytes | str) -> np.ndarray:
    """Decodes one multi-band GeoTIFF into `[64, 64, 13]` in the file's dtype (uint16 for
    EuroSAT, which the shards store as it is); raises ValueError if it is not one."""
    if not isinstance(data, (bytes, bytearray)):
        with open(data, "rb") as f:
            data = f.read()
    array = decode_plain_tiff(data)
    if array is None:
        import tifffile

        array = tifffile.imread(io.BytesIO(data))
    if array.shape == (IMAGE_SHAPE[2],) + IMAGE_SHAPE[:2]:  # band-first (planar) files
        array = np.transpose(array, (1, 2, 0))
    if array.shape != IMAGE_SHAPE:
        raise ValueError(
            f"expected a 64x64 tile with 13 bands (shape {list(IMAGE_SHAPE)}), got shape {list(array.shape)}"
        )
    return array


class EuroSATReader(_tfds.PreparedTfds, DatasetReader):
    name = "eurosat"
    # 90 % pretraining; the 10 % transfer part split 90/10 for the probe (0.09 / 0.01 overall).
    split_fractions = (("pretrain", 0.9), ("transfer_train", 0.09), ("transfer_test", 0.01))
    protocol = {"pretrain": ["pretrain"], "probe_train": ["transfer_train"],
                "probe_test": ["transfer_test"]}
    # DABS's head/tail proportions: pretrain, then the transfer set's probe-train part.
    pretrain_proportion = transfer_train_proportion = 0.9
    fixed_normalization = {"mean": DABS_MEAN, "std": DABS_STD}
    storage_dtype = "uint16"  # Sentinel-2 digital numbers, as the GeoTIFFs hold them

    def spec_template(self) -> DatasetSpec:
        return DatasetSpec(
            name=self.name,
            modality="multispectral_image",
            input_shape=list(IMAGE_SHAPE),
            tokenizer="patch2d",
            patch_shape=[8, 8],
            num_tokens=64,
            token_dim=8 * 8 * 13,
            token_grid=[8, 8],
            input_dtype="float32",
            task="multiclass",
            metric="accuracy",
            num_classes=len(CLASSES),
            label_names=list(CLASSES),
            label_shape=[],
            label_dtype="int64",
            extra={"raw_url": ARCHIVE_URL},
        )

    # TFDS `eurosat/all` (nothing is downloaded; see _tfds.py).
    tfds_builder = "eurosat"
    tfds_configs = ("all",)
    tfds_splits = {"train": None}

    def raw_expected_files(self) -> list[str]:
        return [ARCHIVE_NAME + " (or its extracted <Class>/<Class>_<n>.tif files)"]

    # === locating the raw data ===
    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def _archives(self) -> list[str]:
        d = self._data_dir()
        if os.path.isfile(d) and d.endswith(".zip"):
            return [d]
        if not os.path.isdir(d):
            return []
        return sorted(glob.glob(os.path.join(d, "*.zip")))

    def _tif_files(self) -> list[str]:
        d = self._data_dir()
        if not os.path.isdir(d):
            return []
        found = []
        for root, dirs, files in os.walk(d):
            dirs.sort()
            for f in sorted(files):
                path = os.path.join(root, f)
                if parse_tile_path(os.path.relpath(path, d)):
                    found.append(path)
        return found

    def check_raw_files(self) -> None:
        if self._archives() or self._tif_files():
            return
        d = os.path.abspath(self._data_dir())
        raise RawDataMissing(
            f"eurosat: no raw data in {d}. Download {ARCHIVE_NAME} (about 2 GB) from "
            f"{ARCHIVE_URL} and put it in {d}/ (extracted or not), or pass --raw_data_dir to the "
            f"folder that holds it."
        )

    # === reading ===
    def list_raw_sources(self) -> list[tuple[Any, ...]]:
        self.check_raw()
        sources: list[tuple[Any, ...]] = []
        archives = self._archives()
        if archives:
            for archive in archives:
                try:
                    with zipfile.ZipFile(archive) as zf:
                        members = sorted(m for m in zf.namelist() if parse_tile_path(m))
                except zipfile.BadZipFile as e:
                    raise RawDataMissing(
                        f"eurosat: {archive} is not a readable zip archive ({e}); download "
                        f"{ARCHIVE_NAME} again from {ARCHIVE_URL}"
                    ) from None
                for i in range(0, len(members), _TILES_PER_SOURCE):
                    sources.append(("zip", archive, tuple(members[i:i + _TILES_PER_SOURCE])))
            if sources:
                return sources
        files = self._tif_files()
        if files:
            return [("files", tuple(files[i:i + _TILES_PER_SOURCE]))
                    for i in range(0, len(files), _TILES_PER_SOURCE)]
        raise RawDataMissing(
            f"eurosat: {', '.join(archives)} holds no <Class>/<Class>_<n>.tif members; "
            f"expected the official {ARCHIVE_NAME} from {ARCHIVE_URL}"
        )

    def read_raw_source(self, source: tuple[Any, ...]) -> Iterator[RawExample | BadRecord]:
        kind = source[0]
        if kind == "zip":
            yield from self._read_zip(source[1], source[2])
        elif kind == "files":
            for path in source[1]:
                example_id, label = parse_tile_path(path)
                try:
                    image = decode_tile(path)
                except Exception as e:  # a corrupt tile must not stop the job
                    yield BadRecord(path=path, reason=f"{type(e).__name__}: {e}")
                    continue
                yield RawExample(id=example_id, input=image, label=label)
        else:
            raise ValueError(f"eurosat: unknown source kind {kind!r}")

    def _read_zip(self, archive: str, members: tuple[str, ...]) -> Iterator[RawExample | BadRecord]:
        with zipfile.ZipFile(archive) as zf:
            for member in members:
                path = f"{archive}:{member}"
                example_id, label = parse_tile_path(member)
                try:
                    image = decode_tile(zf.read(member))
                except Exception as e:  # CRC errors, truncated or non-TIFF members, wrong bands
                    yield BadRecord(path=path, reason=f"{type(e).__name__}: {e}")
                    continue
                yield RawExample(id=example_id, input=image, label=label)

    def tfds_example(self, record: dict[str, Any], index: int, split: str, info: Any) -> RawExample:
        filename = _tfds.text(record["filename"])
        image = np.asarray(record["sentinel2"], np.float32)
        if image.shape != IMAGE_SHAPE:
            raise ValueError(f"{filename}: expected shape {list(IMAGE_SHAPE)}, got {list(image.shape)}")
        class_name = info.features["label"].names[int(record["label"])]
        if class_name not in CLASSES:
            raise ValueError(f"{filename}: class {class_name!r} is not one of the 10 EuroSAT classes")
        return RawExample(id=os.path.splitext(filename)[0], input=image,
                          label=CLASSES.index(class_name),
                          split=self.dabs_split(index, info.splits[split].num_examples))

    def dabs_split(self, index: int, count: int) -> str:
        """The split DABS gives record `index` of TFDS `eurosat/all`'s `count` records (module
        docstring)."""
        row = int(_dabs_shuffle.shuffled_positions(count)[index])
        pretrain = _dabs_shuffle.head_rows(self.pretrain_proportion, count)
        if row < pretrain:
            return "pretrain"
        probe_train = _dabs_shuffle.head_rows(self.transfer_train_proportion, count - pretrain)
        return "transfer_train" if row - pretrain < probe_train else "transfer_test"


READERS = {"eurosat": EuroSATReader}
