"""BERT uncased WordPiece text tokens as TensorFlow ops (tensorflow-text `FastBertTokenizer`).

The same op turns caption strings into ids in the Beam job and inside the exported SavedModel,
so the served encoder sees exactly the ids it was trained on. The layout is the one DABS gets
from `AutoTokenizer.from_pretrained('bert-base-uncased').encode(text[, pair], max_length=L,
truncation=True, padding='max_length')`:

    one text:  [CLS] text [SEP] [PAD] ...
    a pair:    [CLS] first [SEP] second [SEP] [PAD] ...      (VQA: question, answer)

Text is lower-cased, NFD-decomposed and stripped of accents, split on whitespace and
punctuation, then into the longest vocabulary pieces (`##` marks a continuation); a word with
no piece becomes `[UNK]`. Truncation is HuggingFace's `longest_first`: tokens are removed one
at a time from the end of the longer text (the second one on a tie) until everything fits.

The vocabulary is the 30,522-line `vocab.txt` of bert-base-uncased (one piece per line, id =
line number; `[PAD]` 0, `[UNK]` 100, `[CLS]` 101, `[SEP]` 102), never downloaded at run time:
`load_vocabulary` reads the file a reader was given.
"""

from __future__ import annotations

import functools
import os

# TensorFlow is imported inside the functions: the constants here are read by modules that
# must stay light (preprocessing/official_files.py).
BERT_VOCAB_FILE = "bert-base-uncased-vocab.txt"
BERT_VOCAB_URL = "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt"
BERT_VOCAB_SIZE = 30522
PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


def load_vocabulary(path: str) -> list[str]:
    """The pieces of a WordPiece `vocab.txt` (index = id); a missing or unusable file raises
    FileNotFoundError / ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: WordPiece vocabulary not found; put bert-base-uncased's vocab.txt "
            f"({BERT_VOCAB_URL}) there, or pass --reader_option vocab_file=PATH")
    with open(path, encoding="utf-8") as f:
        vocabulary = [line.rstrip("\r\n") for line in f]
    while vocabulary and not vocabulary[-1]:
        vocabulary.pop()  # a trailing empty line is not a piece
    missing = [t for t in (PAD, UNK, CLS, SEP) if t not in vocabulary]
    if missing:
        raise ValueError(f"{path}: not a BERT WordPiece vocabulary (lacks {missing})")
    return vocabulary


@functools.lru_cache(maxsize=4)
def _tokenizer(vocabulary: tuple[str, ...]):
    import tensorflow as tf
    import tensorflow_text as tf_text

    # Built eagerly even when first asked for inside a tf.function, so the cached tokenizer's
    # tensors belong to no particular graph.
    with tf.init_scope():
        return tf_text.FastBertTokenizer(vocab=list(vocabulary), token_out_type=tf.int64,
                                         unknown_token=UNK, lower_case_nfd_strip_accents=True)


def tokenizer(vocabulary):
    """The `FastBertTokenizer` of a vocabulary (cached: building one costs ~1 s for BERT's)."""
    return _tokenizer(tuple(vocabulary))


def _keep_longest_first(len_a, len_b, budget: int):
    """How many tokens of each text HuggingFace's `longest_first` truncation keeps."""
    import tensorflow as tf

    excess = len_a + len_b - budget
    trim_a_only = (len_a > len_b) & (len_a - excess >= len_b)
    trim_b_only = (len_b >= len_a) & (len_b - excess >= len_a)
    half_a, half_b = budget - budget // 2, budget // 2  # removals alternate, b first on a tie
    keep_a = tf.where(excess <= 0, len_a, tf.where(trim_a_only, len_a - excess,
                                                   tf.where(trim_b_only, len_a, half_a)))
    keep_b = tf.where(excess <= 0, len_b, tf.where(trim_b_only, len_b - excess,
                                                   tf.where(trim_a_only, len_b, half_b)))
    return keep_a, keep_b


def _first(pieces, keep):
    """The first `keep[i]` pieces of each row of a ragged `[B, (n)]`."""
    import tensorflow as tf

    positions = tf.ragged.range(pieces.row_lengths())
    return tf.ragged.boolean_mask(pieces, positions < tf.expand_dims(keep, 1))


def encode(texts, vocabulary, length: int):
    """Strings `[B]` (one text each) or `[B, 2]` (a pair each) -> int64 ids `[B, length]`."""
    import tensorflow as tf

    texts = tf.convert_to_tensor(texts, tf.string)
    ids = {t: vocabulary.index(t) for t in (PAD, CLS, SEP)}
    tok = tokenizer(vocabulary)
    batch = tf.shape(texts)[0]

    def column(token):
        return tf.RaggedTensor.from_tensor(tf.fill([batch, 1], tf.constant(ids[token], tf.int64)))

    if texts.shape.rank == 1:
        pieces = tok.tokenize(texts)
        keep = tf.minimum(pieces.row_lengths(), length - 2)
        parts = [column(CLS), _first(pieces, keep), column(SEP)]
    elif texts.shape.rank == 2 and texts.shape[1] == 2:
        first, second = tok.tokenize(texts[:, 0]), tok.tokenize(texts[:, 1])
        keep_a, keep_b = _keep_longest_first(first.row_lengths(), second.row_lengths(), length - 3)
        parts = [column(CLS), _first(first, keep_a), column(SEP), _first(second, keep_b),
                 column(SEP)]
    else:
        raise ValueError(f"WordPiece texts must be strings [batch] or pairs [batch, 2], "
                         f"got shape {texts.shape}")
    sequence = tf.concat(parts, axis=1)
    return sequence.to_tensor(default_value=tf.constant(ids[PAD], tf.int64), shape=[None, length])
