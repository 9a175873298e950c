"""`mscoco` (vision-language pretraining) and its transfer sets `mismatched-caption` and `vqa`,
as DABS builds them (paper Table 16; DABS `captioned_images/mscoco.py`, `vqa.py`).

One example = ONE token sequence holding image patch tokens and text tokens (a segmented spec,
see `preprocessing/spec.py`), 196 + 32 = 228 tokens:
- image: DABS's transform — resized to 480 wide x 640 high (aspect not kept), centre-cropped
  to 480 x 480, resized to 224 x 224 (PIL bilinear, as torchvision does on PIL images) —
  stored as uint8 RGB `[224, 224, 3]`; 16 x 16 patches -> a 14 x 14 grid of 196 continuous
  tokens of 768 values (feature `tokens`), fed as [0, 1] pixels like DABS's ToTensor (a fixed
  normalization, mean 0 and std 255 on the 0..255 scale, `TO_TENSOR_NORMALIZATION`): no
  per-channel z-score, so the image MSE keeps DABS's scale against the text cross-entropy and
  the contrast term;
- text: 32 BERT uncased WordPiece ids (feature `text_tokens`): `[CLS] caption [SEP]` padded
  with `[PAD]` (VQA: `[CLS] question [SEP] answer [SEP]`), the vocabulary's 30,522 ids (the
  paper's "30552 x 32"). The raw example holds the caption STRING; the pipeline tokenizes it
  with the same TF op the exported SavedModel runs (`preprocessing/wordpiece.py`).

The vocabulary file (bert-base-uncased `vocab.txt`) is read from `--reader_option
vocab_file=PATH`, else `<data_dir>/bert-base-uncased-vocab.txt` (where `pipeline.preprocess
--download` puts it). Its pieces are written to `spec.extra["vocabulary"]` (index = id), so the
spec alone tokenizes at serving time.

Raw formats, in data_dir (zips as downloaded, or extracted):
- `mscoco`, `mismatched-caption`: COCO 2017 (https://cocodataset.org/#download)
  `train2017.zip` / `val2017.zip` (or `train2017/<12-digit id>.jpg`, `val2017/...`) and
  `annotations_trainval2017.zip` (or `annotations/captions_{train,val}2017.json`,
  `{"images": [...], "annotations": [{"id", "image_id", "caption"}]}`).
- `vqa`: VQA v1 multiple choice (https://visualqa.org/vqa_v1_download.html), as DABS:
  `Questions_{Train,Val}_mscoco.zip` (or `MultipleChoice_mscoco_{train,val}2014_questions.json`,
  questions with their 18 `multiple_choices`), `Annotations_{Train,Val}_mscoco.zip` (or
  `mscoco_{train,val}2014_annotations.json`, with `multiple_choice_answer`), on the COCO 2014
  images `train2014.zip` / `val2014.zip` (or `train2014/COCO_train2014_<id>.jpg`, ...).

Splits: the official train subset -> `train`; the val subset -> `val` / `test` (half each, by
a hash of the COCO image id, so all examples of one image stay in one split).

Datasets:
- `mscoco`: one example per captioned image with ONE caption: DABS's `{image_id: caption}`
  over the captions file keeps the LAST caption of each image in file order, and so do we.
  Label -1 (pretraining only). (DABS also drops the ~1% of images that have no object
  instance in `instances_*.json`; we keep them, the captions file alone defines the set.)
- `mismatched-caption` (binary): the same examples; with probability 1/2 (hash of the image
  id, seed `MISMATCH_SEED`) the caption is that of another image of the same subset (picked by
  the same hash, never the image itself). Label 1 = the caption belongs to the image,
  0 = swapped.
- `vqa` (binary): one example per question whose `multiple_choice_answer` is among its
  `multiple_choices` (DABS drops the others); with probability 1/2 (hash of the question id,
  seed `VQA_SEED`) the answer is replaced by one of its other choices (same hash). Text =
  the pair (question, answer). Label 1 = the answer is the annotated one, 0 = swapped.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
from typing import Any, Iterator

import numpy as np

from preprocessing import wordpiece
from preprocessing.datasets import _archives
from preprocessing.datasets.base import (BadRecord, DatasetReader, RawDataMissing, RawExample,
                                         hash_fraction)
from preprocessing.spec import DatasetSpec

COCO_2017 = {
    "train2017.zip": "http://images.cocodataset.org/zips/train2017.zip",
    "val2017.zip": "http://images.cocodataset.org/zips/val2017.zip",
    "annotations_trainval2017.zip":
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
}
COCO_2014_IMAGES = {
    "train2014.zip": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014.zip": "http://images.cocodataset.org/zips/val2014.zip",
}
VQA_V1 = {name: f"https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/{name}"
          for name in ("Questions_Train_mscoco.zip", "Questions_Val_mscoco.zip",
                       "Annotations_Train_mscoco.zip", "Annotations_Val_mscoco.zip")}
URLS = {**COCO_2017, **COCO_2014_IMAGES, **VQA_V1,
        wordpiece.BERT_VOCAB_FILE: wordpiece.BERT_VOCAB_URL}
ANNOTATIONS_ARCHIVE = "annotations_trainval2017.zip"

IMAGE_SIZE, PATCH = 224, 16
GRID = IMAGE_SIZE // PATCH  # 14
IMAGE_TOKENS, TOKEN_DIM = GRID * GRID, PATCH * PATCH * 3  # 196, 768
INPUT_SHAPE = [IMAGE_SIZE, IMAGE_SIZE, 3]
TEXT_LENGTH = 32
# DABS: Resize((640, 480)) [height, width], CenterCrop(480), Resize((224, 224)).
RESIZE_WIDTH, RESIZE_HEIGHT, CROP = 480, 640, 480
MISMATCH_SEED = 0
VQA_SEED = 0
# DABS's ToTensor: pixel / 255, the same float32 division as `(pixel - 0) / 255`. "dabs": a
# fixed statistic of DABS's transform, not one the pipeline computes.
TO_TENSOR_NORMALIZATION = {"mean": [0.0] * 3, "std": [255.0] * 3, "source": "dabs"}
VOCAB_EXPECTED = (f"{wordpiece.BERT_VOCAB_FILE} (bert-base-uncased vocab.txt, or "
                  f"--reader_option vocab_file=PATH)")


def dabs_image(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 `[224, 224, 3]` by DABS's transform; ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB").resize((RESIZE_WIDTH, RESIZE_HEIGHT), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None
    top = int(round((RESIZE_HEIGHT - CROP) / 2.0))  # torchvision's CenterCrop offsets
    left = int(round((RESIZE_WIDTH - CROP) / 2.0))
    image = image.crop((left, top, left + CROP, top + CROP))
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), np.uint8)


def _split_of_val(image_id: int) -> str:
    return "val" if hash_fraction(f"coco-image/{image_id}", 0) < 0.5 else "test"


class MscocoReader(DatasetReader):
    raw_folder = "mscoco"  # vqa and mismatched-caption read the same folder
    name = "mscoco"
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))  # names only: splits are fixed
    fixed_normalization = TO_TENSOR_NORMALIZATION  # the image segment as [0, 1] pixels
    storage_dtype = "uint8"  # the image segment: RGB 0..255
    pretrain_dataset = ""
    task, metric = "multiclass", "accuracy"
    # (subset, its image zip, the image path pattern with the id as group 1)
    image_subsets = (
        ("train2017", "train2017.zip", r"(?:^|/)train2017/(\d{12})\.jpg$"),
        ("val2017", "val2017.zip", r"(?:^|/)val2017/(\d{12})\.jpg$"),
    )
    text_shape: list[int] = []  # one string per example (vqa: a [question, answer] pair)

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        try:
            self.text_length = int(options.get("text_length", TEXT_LENGTH))
        except ValueError as e:
            raise ValueError(f"{self.name}: --reader_option text_length must be an integer ({e})") from None
        if self.text_length < 4:
            raise ValueError(f"{self.name}: text_length={self.text_length} must be >= 4")
        self.vocab_file = options.get("vocab_file")
        self._captions: dict[str, dict[int, str]] | None = None
        self._vocabulary: list[str] | None = None

    # === files ===
    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def vocab_path(self) -> str:
        return self.vocab_file or os.path.join(self._data_dir(), wordpiece.BERT_VOCAB_FILE)

    def expected_files(self) -> list[str]:
        return ["train2017.zip + val2017.zip (or extracted train2017/, val2017/)",
                f"{ANNOTATIONS_ARCHIVE} (or annotations/captions_{{train,val}}2017.json)",
                VOCAB_EXPECTED]

    def _small_files(self, patterns: dict[str, str], archives) -> dict[str, tuple[str, bytes]]:
        return _archives.read_small_files(self._data_dir(), archives, patterns)

    def _missing(self, what: list[str], archives: list[str]) -> RawDataMissing:
        d = os.path.abspath(self._data_dir())
        urls = "; ".join(f"{a}: {URLS[a]}" for a in archives)
        return RawDataMissing(f"{self.name}: {', '.join(what)} not found in {d}; download {urls} "
                              f"into {d}/ (zips or extracted)")

    def _check_images(self) -> None:
        d = self._data_dir()
        zips = [z for _, z, _ in self.image_subsets]
        have_zip = os.path.isdir(d) and _archives.archives_in(d, zips)
        have_files = os.path.isdir(d) and any(_archives.walk_files(d, p)
                                              for _, _, p in self.image_subsets)
        if not (have_zip or have_files):
            folders = ", ".join(f"{s}/*.jpg" for s, _, _ in self.image_subsets)
            raise self._missing([f"{' / '.join(zips)} (or {folders})"], zips)

    def _check_vocabulary(self) -> None:
        path = self.vocab_path()
        if not os.path.isfile(path):
            raise RawDataMissing(
                f"{self.name}: WordPiece vocabulary {path} not found; put bert-base-uncased's "
                f"vocab.txt ({wordpiece.BERT_VOCAB_URL}) there, or pass --reader_option "
                f"vocab_file=PATH")

    def check_raw(self) -> None:
        self._check_images()
        d = self._data_dir()
        if not (os.path.isdir(d) and _archives.walk_files(d, r"(?:^|/)captions_train2017\.json$")) \
                and not _archives.archives_in(d, [ANNOTATIONS_ARCHIVE]):
            raise self._missing([f"{ANNOTATIONS_ARCHIVE} (or annotations/captions_train2017.json)"],
                                [ANNOTATIONS_ARCHIVE])
        self._check_vocabulary()

    def list_sources(self) -> list[tuple]:
        """Per subset: chunks of the extracted JPEGs if any, else shards of its zip."""
        self.check_raw()
        d, sources = self._data_dir(), []
        for _, archive, pattern in self.image_subsets:
            rels = _archives.walk_files(d, pattern) if os.path.isdir(d) else []
            if rels:
                sources += [("files", d, tuple(rels[i:i + 64])) for i in range(0, len(rels), 64)]
            else:
                sources += [("archive", a, pattern, shard, 4)
                            for a in _archives.archives_in(d, [archive]) for shard in range(4)]
        return sources

    # === captions and vocabulary ===
    def captions(self) -> dict[str, dict[int, str]]:
        """subset -> image id -> its caption (the last one in file order, as DABS keeps)."""
        if self._captions is None:
            patterns = {s: rf"(?:^|/)captions_{s}\.json$" for s, _, _ in self.image_subsets}
            found = self._small_files(patterns, [ANNOTATIONS_ARCHIVE])
            if "train2017" not in found:
                raise self._missing([f"annotations/captions_train2017.json (or {ANNOTATIONS_ARCHIVE})"],
                                    [ANNOTATIONS_ARCHIVE])
            result = {}
            for subset, (where, data) in found.items():
                try:
                    result[subset] = {int(a["image_id"]): str(a["caption"])
                                      for a in json.loads(data)["annotations"]}
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{where}: not a COCO captions file ({type(e).__name__}: {e})") from None
            self._captions = result
        return self._captions

    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            self._check_vocabulary()
            self._vocabulary = wordpiece.load_vocabulary(self.vocab_path())
        return self._vocabulary

    # === spec ===
    def label_info(self) -> tuple[int, list[str], str]:
        """(num_classes, label_names, task) of the examples."""
        return 0, [], "multiclass"

    def spec_template(self) -> DatasetSpec:
        num_classes, label_names, task = self.label_info()
        n = IMAGE_TOKENS + self.text_length
        extra = {"raw_urls": dict(URLS),
                 "pixel_scale": "RGB uint8 0..255, fed as [0, 1] (/ 255, DABS's ToTensor)",
                 "resize": "DABS: 480 wide x 640 high (aspect not kept), centre crop 480, "
                           "224 x 224 (PIL bilinear)",
                 "text": f"BERT uncased WordPiece, {self.text_length} ids: [CLS] text [SEP] "
                         f"(pairs: [CLS] a [SEP] b [SEP]), [PAD]-padded, longest_first truncation"}
        try:
            vocabulary = self.vocabulary()
            extra["vocabulary"] = vocabulary
            vocab_size = len(vocabulary)
        except (RawDataMissing, ValueError):
            vocab_size = wordpiece.BERT_VOCAB_SIZE  # no vocab file yet (e.g. `--list`)
        return DatasetSpec(
            name=self.name, modality="vision_language", input_shape=list(INPUT_SHAPE),
            tokenizer="segments", patch_shape=[PATCH, PATCH], num_tokens=n, token_grid=[n],
            token_dim=TOKEN_DIM, vocab_size=0, input_dtype="uint8", task=task,
            metric=self.metric, num_classes=num_classes, label_names=label_names,
            label_shape=[], label_dtype="int64", pretrain_dataset=self.pretrain_dataset,
            extra=extra,
            segments=[
                {"name": "image", "kind": "continuous", "num_tokens": IMAGE_TOKENS,
                 "token_dim": TOKEN_DIM, "token_grid": [GRID, GRID], "feature": "tokens",
                 "input_shape": list(INPUT_SHAPE), "tokenizer": "patch2d",
                 "patch_shape": [PATCH, PATCH]},
                {"name": "text", "kind": "discrete", "num_tokens": self.text_length,
                 "vocab_size": vocab_size, "token_grid": [self.text_length],
                 "feature": "text_tokens", "input_shape": list(self.text_shape),
                 "tokenizer": "wordpiece"},
            ],
        )

    # === examples ===
    def split_of(self, example: RawExample, seed: int) -> str:
        return example.split

    def texts_for_image(self, subset: str, image_id: int) -> Iterator[tuple[str, Any, int]]:
        """(example id suffix, text, label) of the examples of one image."""
        caption = self.captions().get(subset, {}).get(image_id)
        if caption is not None:
            yield "", caption, -1

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            subset, image_id = self._subset_and_id(rel)
            if subset is None:
                continue
            texts = list(self.texts_for_image(subset, image_id))
            if not texts:
                continue  # an image without captions / questions: not part of this dataset
            try:
                image = dabs_image(data)
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            split = "train" if subset.startswith("train") else _split_of_val(image_id)
            for suffix, text, label in texts:
                yield RawExample(id=f"{subset}-{image_id:012d}{suffix}",
                                 input={"image": image, "text": np.asarray(text, dtype=object)},
                                 label=int(label), split=split, group=str(image_id))

    def _subset_and_id(self, rel: str) -> tuple[str | None, int]:
        for subset, _, pattern in self.image_subsets:
            match = re.search(pattern, rel)
            if match:
                return subset, int(match.group(1))
        return None, 0


class MismatchedCaptionReader(MscocoReader):
    name = "mismatched-caption"
    pretrain_dataset = "mscoco"

    def label_info(self):
        return 2, ["mismatched", "matched"], "binary"

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self._sorted_ids: dict[str, list[int]] = {}

    def texts_for_image(self, subset, image_id):
        per_image = self.captions().get(subset, {})
        if image_id not in per_image:
            return
        u = hash_fraction(f"mismatch/{subset}/{image_id}", MISMATCH_SEED)
        if u >= 0.5 or len(per_image) < 2:
            yield "", per_image[image_id], 1
            return
        if subset not in self._sorted_ids:
            self._sorted_ids[subset] = sorted(per_image)
        ids = self._sorted_ids[subset]
        # Another image of the subset: an offset in 1..n-1 from this one (never itself).
        offset = 1 + int(hash_fraction(f"mismatch-pick/{subset}/{image_id}", MISMATCH_SEED)
                         * (len(ids) - 1))
        other = ids[(ids.index(image_id) + offset) % len(ids)]
        yield "", per_image[other], 0


class VqaReader(MscocoReader):
    name = "vqa"
    pretrain_dataset = "mscoco"
    image_subsets = (
        ("train2014", "train2014.zip", r"(?:^|/)train2014/COCO_train2014_(\d+)\.jpg$"),
        ("val2014", "val2014.zip", r"(?:^|/)val2014/COCO_val2014_(\d+)\.jpg$"),
    )
    text_shape = [2]  # (question, answer)

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self._questions = None

    def label_info(self):
        return 2, ["swapped", "correct"], "binary"

    def expected_files(self):
        return ["train2014.zip + val2014.zip (or extracted train2014/, val2014/)",
                f"{', '.join(VQA_V1)} (or MultipleChoice_mscoco_{{train,val}}2014_questions.json "
                f"+ mscoco_{{train,val}}2014_annotations.json)",
                VOCAB_EXPECTED]

    def _vqa_patterns(self):
        patterns = {}
        for s, _, _ in self.image_subsets:
            patterns[f"q-{s}"] = rf"(?:^|/)MultipleChoice_mscoco_{s}_questions\.json$"
            patterns[f"a-{s}"] = rf"(?:^|/)mscoco_{s}_annotations\.json$"
        return patterns

    def check_raw(self):
        self._check_images()
        found = self._small_files({k: v for k, v in self._vqa_patterns().items() if "train" in k},
                                  ["Questions_Train_mscoco.zip", "Annotations_Train_mscoco.zip"])
        missing = [n for n, key in (("MultipleChoice_mscoco_train2014_questions.json", "q-train2014"),
                                    ("mscoco_train2014_annotations.json", "a-train2014"))
                   if key not in found]
        if missing:
            raise self._missing(missing, list(VQA_V1))
        self._check_vocabulary()

    def questions(self) -> dict[str, dict[int, list[tuple[int, str, str, list[str]]]]]:
        """subset -> image id -> [(question id, question, answer, choices)] by question id."""
        if self._questions is None:
            found = self._small_files(self._vqa_patterns(), list(VQA_V1))
            if "q-train2014" not in found or "a-train2014" not in found:
                raise self._missing(["MultipleChoice_mscoco_train2014_questions.json / "
                                     "mscoco_train2014_annotations.json"], list(VQA_V1))
            result = {}
            for s, _, _ in self.image_subsets:
                if f"q-{s}" not in found or f"a-{s}" not in found:
                    continue
                (qwhere, qdata), (awhere, adata) = found[f"q-{s}"], found[f"a-{s}"]
                try:
                    answers = {int(a["question_id"]): str(a["multiple_choice_answer"])
                               for a in json.loads(adata)["annotations"]}
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{awhere}: not a VQA annotations file ({e})") from None
                try:
                    per_image = collections.defaultdict(list)
                    for q in json.loads(qdata)["questions"]:
                        qid = int(q["question_id"])
                        if qid in answers:
                            per_image[int(q["image_id"])].append(
                                (qid, str(q["question"]), answers[qid],
                                 [str(c) for c in q["multiple_choices"]]))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{qwhere}: not a VQA multiple-choice questions file "
                                     f"({type(e).__name__}: {e})") from None
                result[s] = {k: sorted(v) for k, v in per_image.items()}
            self._questions = result
        return self._questions

    def texts_for_image(self, subset, image_id):
        for qid, question, answer, choices in self.questions().get(subset, {}).get(image_id, []):
            if answer not in choices:
                continue  # DABS leaves these out
            wrong = sorted(set(choices) - {answer})
            if wrong and hash_fraction(f"vqa-swap/{qid}", VQA_SEED) < 0.5:
                pick = int(hash_fraction(f"vqa-wrong/{qid}", VQA_SEED) * len(wrong))
                yield f"-q{qid}", [question, wrong[pick]], 0
            else:
                yield f"-q{qid}", [question, answer], 1


READERS = {"mscoco": MscocoReader, "mismatched-caption": MismatchedCaptionReader,
           "vqa": VqaReader}
