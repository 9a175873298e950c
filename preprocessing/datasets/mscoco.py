"""`mscoco` (vision-language pretraining) and its transfer sets `mismatched-caption` and `vqa`.

One example = ONE token sequence holding image patch tokens and word tokens (a segmented
spec, see `preprocessing/spec.py`): the image resized to 32 x 32 RGB in [0, 1] (as the other
DABS natural-image sets, `_images.resize_to_input`), 4 x 4 patches -> an 8 x 8 grid of 64
continuous tokens of 48 values (feature `tokens`), followed by `TEXT_LENGTH` (32) word ids
(feature `text_tokens`, a 1-D grid). Per-channel image statistics are computed by the
pipeline on the train split.

Raw format (official COCO 2014, https://cocodataset.org/#download), in data_dir as downloaded
or extracted:
- images: `train2014.zip` / `val2014.zip` (http://images.cocodataset.org/zips/train2014.zip,
  http://images.cocodataset.org/zips/val2014.zip), or the extracted folders
  `train2014/COCO_train2014_<12-digit id>.jpg`, `val2014/COCO_val2014_<id>.jpg`;
- captions: `annotations_trainval2014.zip`
  (http://images.cocodataset.org/annotations/annotations_trainval2014.zip) or the extracted
  `annotations/captions_train2014.json` and `annotations/captions_val2014.json`
  (`{"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id", "caption"}]}`).
- `vqa` also needs the VQA v2 files (https://visualqa.org/download.html):
  `v2_OpenEnded_mscoco_{train,val}2014_questions.json` and
  `v2_mscoco_{train,val}2014_annotations.json`, extracted or inside the official zips
  `v2_Questions_{Train,Val}_mscoco.zip`, `v2_Annotations_{Train,Val}_mscoco.zip`.

Splits: train2014 -> `train`; val2014 -> `val` / `test` (half each, by a hash of the COCO
image id, so all examples of one image stay in one split).

Word vocabulary (deterministic, same for mscoco and both transfer sets, so a pretrained
embedding transfers): text is lower-cased and split on every non-letter (`[a-z]+` runs);
the vocabulary is built from ALL train2014 captions: words sorted by decreasing count, ties
alphabetically, ids from 2 up to `vocab_size - 1`; id 0 = PAD (padding after the text),
id 1 = UNK (every word not in the vocabulary). `vocab_size` (reader option
`--vocab_size`, default 10000) is fixed, whatever the data: ids the corpus does not fill stay
unused. Texts are truncated / padded to `TEXT_LENGTH` = 32 (reader option `text_length`).
The word list is written to `spec.extra["vocabulary"]` (index = id).

Datasets:
- `mscoco`: one example per image with ONE caption, the one with the lowest annotation id;
  label -1 (no label; pretraining only).
- `mismatched-caption` (binary): one example per image; with probability 1/2 (hash of the
  image id, seed `MISMATCH_SEED`) the caption is replaced by the caption of another image of
  the same COCO subset (chosen by the same hash among the other captioned images, never the
  image itself). label 1 = the caption belongs to the image, 0 = mismatched.
- `vqa` (multiclass): one example per VQA v2 question on the image; the text segment holds
  the question's word ids; answer classes = the `num_answers` (reader option, default
  K = 1000) most frequent `multiple_choice_answer`s of the train questions (ties
  alphabetically); questions whose answer is not among them are left out (of every split).
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Iterator

import numpy as np

from preprocessing.datasets import _archives, _images
from preprocessing.datasets.base import (BadRecord, DatasetReader, RawDataMissing, RawExample,
                                         hash_fraction)
from preprocessing.spec import DatasetSpec

IMAGE_ARCHIVES = ("train2014.zip", "val2014.zip")
ANNOTATIONS_ARCHIVE = "annotations_trainval2014.zip"
VQA_ARCHIVES = ("v2_Questions_Train_mscoco.zip", "v2_Questions_Val_mscoco.zip",
                "v2_Annotations_Train_mscoco.zip", "v2_Annotations_Val_mscoco.zip")
URLS = {
    "train2014.zip": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014.zip": "http://images.cocodataset.org/zips/val2014.zip",
    ANNOTATIONS_ARCHIVE: "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    "v2_Questions_Train_mscoco.zip": "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Questions_Train_mscoco.zip",
    "v2_Questions_Val_mscoco.zip": "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Questions_Val_mscoco.zip",
    "v2_Annotations_Train_mscoco.zip": "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Annotations_Train_mscoco.zip",
    "v2_Annotations_Val_mscoco.zip": "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Annotations_Val_mscoco.zip",
}
SUBSETS = ("train2014", "val2014")
IMAGE_PATTERN = r"(?:^|/)(?:train|val)2014/COCO_(train|val)2014_(\d+)\.jpg$"
TEXT_LENGTH = 32
VOCAB_SIZE = 10000
NUM_ANSWERS = 1000
PAD_ID, UNK_ID = 0, 1
SPECIAL_TOKENS = ("<pad>", "<unk>")
MISMATCH_SEED = 0
IMAGE_TOKENS = 64  # 8 x 8 patches of 4 x 4 x 3
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters: `"A man's 2 dogs."` -> `["a", "man", "s", "dogs"]`."""
    return _WORD.findall(str(text).lower())


def build_vocabulary(texts, vocab_size: int) -> list[str]:
    """`[PAD, UNK, most frequent words...]`, at most `vocab_size` entries (index = id)."""
    counts = collections.Counter(w for t in texts for w in words(t))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + ranked[:max(0, vocab_size - len(SPECIAL_TOKENS))]


def encode(text: str, word_ids: dict[str, int], length: int) -> np.ndarray:
    """int64 `[length]` word ids (UNK for unknown words), truncated, PAD-padded."""
    ids = [word_ids.get(w, UNK_ID) for w in words(text)][:length]
    return np.asarray(ids + [PAD_ID] * (length - len(ids)), np.int64)


def _split_of_val(image_id: int) -> str:
    return "val" if hash_fraction(f"coco-image/{image_id}", 0) < 0.5 else "test"


class MscocoReader(DatasetReader):
    raw_folder = "mscoco"  # vqa and mismatched-caption read the same COCO files
    name = "mscoco"
    split_fractions = (("train", 0.8), ("val", 0.1), ("test", 0.1))  # names only: splits are fixed
    fixed_normalization = None
    pretrain_dataset = ""
    task, metric = "multiclass", "accuracy"

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        try:
            self.vocab_size = int(options.get("vocab_size", VOCAB_SIZE))
            self.text_length = int(options.get("text_length", TEXT_LENGTH))
        except ValueError as e:
            raise ValueError(f"{self.name}: --vocab_size / text_length must be integers ({e})") from None
        if self.vocab_size < 3 or self.text_length < 1:
            raise ValueError(f"{self.name}: --vocab_size={self.vocab_size} must be >= 3 and "
                             f"text_length={self.text_length} >= 1")
        self._captions: dict[str, dict[int, list[tuple[int, str]]]] | None = None
        self._vocabulary: list[str] | None = None

    # === files ===
    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()

    def expected_files(self) -> list[str]:
        return ["train2014.zip + val2014.zip (or extracted train2014/, val2014/)",
                f"{ANNOTATIONS_ARCHIVE} (or annotations/captions_{{train,val}}2014.json)"]

    def _caption_patterns(self) -> dict[str, str]:
        return {s: rf"(?:^|/)captions_{s}\.json$" for s in SUBSETS}

    def _small_files(self, patterns: dict[str, str], archives) -> dict[str, tuple[str, bytes]]:
        return _archives.read_small_files(self._data_dir(), archives, patterns)

    def _missing(self, what: list[str], archives: list[str]) -> RawDataMissing:
        d = os.path.abspath(self._data_dir())
        urls = "; ".join(f"{a}: {URLS[a]}" for a in archives)
        return RawDataMissing(f"{self.name}: {', '.join(what)} not found in {d}; download {urls} "
                              f"into {d}/ (zips or extracted)")

    def check_raw(self) -> None:
        d = self._data_dir()
        images = _archives.archives_in(d, IMAGE_ARCHIVES) if os.path.isdir(d) else []
        if not images and not (os.path.isdir(d) and _archives.walk_files(d, IMAGE_PATTERN)):
            raise self._missing(["train2014.zip / val2014.zip (or train2014/*.jpg, val2014/*.jpg)"],
                                list(IMAGE_ARCHIVES))
        if not (os.path.isdir(d) and _archives.walk_files(d, r"(?:^|/)captions_train2014\.json$")) \
                and not _archives.archives_in(d, [ANNOTATIONS_ARCHIVE]):
            raise self._missing([f"{ANNOTATIONS_ARCHIVE} (or annotations/captions_train2014.json)"],
                                [ANNOTATIONS_ARCHIVE])

    def list_sources(self) -> list[tuple]:
        """Per subset: chunks of the extracted JPEGs if any, else shards of its zip."""
        self.check_raw()
        d, sources = self._data_dir(), []
        for subset, archive in zip(SUBSETS, IMAGE_ARCHIVES):
            pattern = rf"(?:^|/){subset}/COCO_{subset}_(\d+)\.jpg$"
            rels = _archives.walk_files(d, pattern) if os.path.isdir(d) else []
            if rels:
                sources += [("files", d, tuple(rels[i:i + 64])) for i in range(0, len(rels), 64)]
            else:
                sources += [("archive", a, pattern, shard, 4)
                            for a in _archives.archives_in(d, [archive]) for shard in range(4)]
        return sources

    # === captions and vocabulary ===
    def captions(self) -> dict[str, dict[int, list[tuple[int, str]]]]:
        """subset -> image id -> [(annotation id, caption)] sorted by annotation id."""
        if self._captions is None:
            found = self._small_files(self._caption_patterns(), [ANNOTATIONS_ARCHIVE])
            if "train2014" not in found:
                raise self._missing([f"annotations/captions_train2014.json (or {ANNOTATIONS_ARCHIVE})"],
                                    [ANNOTATIONS_ARCHIVE])
            result = {}
            for subset, (where, data) in found.items():
                try:
                    doc = json.loads(data)
                    per_image: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
                    for ann in doc["annotations"]:
                        per_image[int(ann["image_id"])].append((int(ann["id"]), str(ann["caption"])))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{where}: not a COCO captions file ({type(e).__name__}: {e})") from None
                result[subset] = {k: sorted(v) for k, v in per_image.items()}
            self._captions = result
        return self._captions

    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            texts = (c for caps in self.captions()["train2014"].values() for _, c in caps)
            self._vocabulary = build_vocabulary(texts, self.vocab_size)
        return self._vocabulary

    def word_ids(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocabulary())}

    # === spec ===
    def label_info(self) -> tuple[int, list[str], str]:
        """(num_classes, label_names, task) of the examples."""
        return 0, [], "multiclass"

    def spec_template(self) -> DatasetSpec:
        num_classes, label_names, task = self.label_info()
        n = IMAGE_TOKENS + self.text_length
        extra = {"raw_urls": dict(URLS), "pixel_scale": "RGB in [0, 1]",
                 "resize": "bilinear, antialiased, to 32x32 (aspect not kept)",
                 "text": f"lower-cased [a-z]+ words, {self.text_length} ids, PAD={PAD_ID}, "
                         f"UNK={UNK_ID}, vocabulary by train2014 caption frequency"}
        try:
            extra["vocabulary"] = self.vocabulary()
        except (RawDataMissing, ValueError):
            pass  # no raw captions yet (e.g. `--list`); the published spec always has it
        return DatasetSpec(
            name=self.name, modality="vision_language", input_shape=list(_images.INPUT_SHAPE),
            tokenizer="segments", patch_shape=[4, 4], num_tokens=n, token_grid=[n], token_dim=48,
            vocab_size=0, input_dtype="float32", task=task, metric=self.metric,
            num_classes=num_classes, label_names=label_names, label_shape=[], label_dtype="int64",
            pretrain_dataset=self.pretrain_dataset, extra=extra,
            segments=[
                {"name": "image", "kind": "continuous", "num_tokens": IMAGE_TOKENS,
                 "token_dim": 48, "token_grid": [8, 8], "feature": "tokens",
                 "input_shape": list(_images.INPUT_SHAPE), "tokenizer": "patch2d",
                 "patch_shape": [4, 4]},
                {"name": "text", "kind": "discrete", "num_tokens": self.text_length,
                 "vocab_size": self.vocab_size, "token_grid": [self.text_length],
                 "feature": "text_tokens", "input_shape": [self.text_length],
                 "tokenizer": "discrete"},
            ],
        )

    # === examples ===
    def split_of(self, example: RawExample, seed: int) -> str:
        return example.split

    def texts_for_image(self, subset: str, image_id: int) -> Iterator[tuple[str, str, Any]]:
        """(example id suffix, text, label) of the examples of one image."""
        caps = self.captions().get(subset, {}).get(image_id)
        if caps:
            yield "", caps[0][1], -1

    def read_source(self, source: tuple) -> Iterator[RawExample | BadRecord]:
        word_ids = None
        for where, rel, data in _archives.iter_source_files(source):
            if isinstance(data, Exception):
                yield BadRecord(path=where, reason=str(data))
                continue
            match = re.search(IMAGE_PATTERN, rel)
            if match is None:
                continue
            subset, image_id = f"{match.group(1)}2014", int(match.group(2))
            texts = list(self.texts_for_image(subset, image_id))
            if not texts:
                continue  # an image without captions / questions: not part of this dataset
            try:
                image = _images.resize_to_input(_images.decode_rgb(data))
            except ValueError as e:
                yield BadRecord(path=where, reason=str(e))
                continue
            if word_ids is None:
                word_ids = self.word_ids()
            split = "train" if subset == "train2014" else _split_of_val(image_id)
            for suffix, text, label in texts:
                yield RawExample(
                    id=f"{subset}-{image_id:012d}{suffix}",
                    input={"image": image, "text": encode(text, word_ids, self.text_length)},
                    label=int(label), split=split, group=str(image_id))


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
        caps = per_image.get(image_id)
        if not caps:
            return
        u = hash_fraction(f"mismatch/{subset}/{image_id}", MISMATCH_SEED)
        if u >= 0.5 or len(per_image) < 2:
            yield "", caps[0][1], 1
            return
        if subset not in self._sorted_ids:
            self._sorted_ids[subset] = sorted(per_image)
        ids = self._sorted_ids[subset]
        # Another image of the subset: an offset in 1..n-1 from this one (never itself).
        offset = 1 + int(hash_fraction(f"mismatch-pick/{subset}/{image_id}", MISMATCH_SEED)
                         * (len(ids) - 1))
        other = ids[(ids.index(image_id) + offset) % len(ids)]
        yield "", per_image[other][0][1], 0


class VqaReader(MscocoReader):
    name = "vqa"
    pretrain_dataset = "mscoco"

    def __init__(self, data_dir: str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        try:
            self.num_answers = int(options.get("num_answers", NUM_ANSWERS))
        except ValueError:
            raise ValueError(f"vqa: num_answers={options.get('num_answers')!r} must be an integer") from None
        if self.num_answers < 2:
            raise ValueError(f"vqa: num_answers={self.num_answers} must be >= 2")
        self._questions = None
        self._answers: list[str] | None = None

    def expected_files(self):
        return super().expected_files() + [
            "v2_OpenEnded_mscoco_{train,val}2014_questions.json + v2_mscoco_{train,val}2014_"
            f"annotations.json (or the zips {', '.join(VQA_ARCHIVES)} from "
            f"{URLS[VQA_ARCHIVES[0]].rsplit('/', 1)[0]}/)"]

    def _vqa_patterns(self):
        patterns = {}
        for s in SUBSETS:
            patterns[f"q-{s}"] = rf"(?:^|/)v2_OpenEnded_mscoco_{s}_questions\.json$"
            patterns[f"a-{s}"] = rf"(?:^|/)v2_mscoco_{s}_annotations\.json$"
        return patterns

    def check_raw(self):
        super().check_raw()
        found = self._small_files({k: v for k, v in self._vqa_patterns().items() if "train" in k},
                                  ["v2_Questions_Train_mscoco.zip", "v2_Annotations_Train_mscoco.zip"])
        missing = [n for n, key in (("v2_OpenEnded_mscoco_train2014_questions.json", "q-train2014"),
                                    ("v2_mscoco_train2014_annotations.json", "a-train2014"))
                   if key not in found]
        if missing:
            raise self._missing(missing, list(VQA_ARCHIVES))

    def questions(self) -> dict[str, dict[int, list[tuple[int, str, str]]]]:
        """subset -> image id -> [(question id, question, multiple-choice answer)]."""
        if self._questions is None:
            found = self._small_files(self._vqa_patterns(), VQA_ARCHIVES)
            if "q-train2014" not in found or "a-train2014" not in found:
                raise self._missing(["v2_OpenEnded_mscoco_train2014_questions.json / "
                                     "v2_mscoco_train2014_annotations.json"], list(VQA_ARCHIVES))
            result = {}
            for s in SUBSETS:
                if f"q-{s}" not in found or f"a-{s}" not in found:
                    continue
                (qwhere, qdata), (awhere, adata) = found[f"q-{s}"], found[f"a-{s}"]
                try:
                    answers = {int(a["question_id"]): str(a["multiple_choice_answer"])
                               for a in json.loads(adata)["annotations"]}
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{awhere}: not a VQA v2 annotations file ({e})") from None
                try:
                    per_image = collections.defaultdict(list)
                    for q in json.loads(qdata)["questions"]:
                        qid = int(q["question_id"])
                        if qid in answers:
                            per_image[int(q["image_id"])].append((qid, str(q["question"]), answers[qid]))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{qwhere}: not a VQA v2 questions file ({e})") from None
                result[s] = {k: sorted(v) for k, v in per_image.items()}
            self._questions = result
        return self._questions

    def answers(self) -> list[str]:
        if self._answers is None:
            counts = collections.Counter(
                a for qs in self.questions()["train2014"].values() for _, _, a in qs)
            ranked = sorted(counts, key=lambda a: (-counts[a], a))
            if len(ranked) < self.num_answers:
                raise ValueError(f"vqa: the train questions have only {len(ranked)} distinct "
                                 f"answers, fewer than num_answers={self.num_answers}; pass "
                                 f"--reader_option num_answers=N with N <= {len(ranked)}")
            self._answers = ranked[:self.num_answers]
        return self._answers

    def label_info(self):
        try:
            names = self.answers()
        except RawDataMissing:
            names = []
        return self.num_answers, names, "multiclass"

    def texts_for_image(self, subset, image_id):
        classes = {a: i for i, a in enumerate(self.answers())}
        for qid, question, answer in self.questions().get(subset, {}).get(image_id, []):
            if answer in classes:
                yield f"-q{qid}", question, classes[answer]


READERS = {"mscoco": MscocoReader, "mismatched-caption": MismatchedCaptionReader,
           "vqa": VqaReader}
