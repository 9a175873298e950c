"""What every DABS speech dataset shares: audio decoding, the log-mel input and the spec.

All speech datasets (LibriSpeech and its transfer sets) use the same input: a 224 x 224 log-mel
spectrogram (`_logmel.py`), channels-last `[224 mels, 224 frames, 1]`, cut into 16 x 16 patches
-> a 14 x 14 grid of 196 tokens of 256 values (rows = frequency bands, columns = time).
Each dataset keeps the fixed DABS normalization statistics of its own spectrograms.

Audio is decoded with `soundfile` (libsndfile, bundled in its wheel), which reads the FLAC of
LibriSpeech and the PCM/float WAV of the other sets; multi-channel audio is averaged to mono.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from preprocessing.datasets import _logmel
from preprocessing.datasets.base import BadRecord, DatasetReader, RawExample
from preprocessing.spec import DatasetSpec

INPUT_SHAPE = [_logmel.NUM_MELS, _logmel.NUM_MELS, 1]
PATCH_SHAPE = [16, 16]
TOKEN_GRID = [INPUT_SHAPE[0] // PATCH_SHAPE[0], INPUT_SHAPE[1] // PATCH_SHAPE[1]]
# DABS trains the linear probe of the speech transfer sets (AudioMNIST, Fluent Speech x3, Google
# Speech Commands, VoxCeleb1) on train + val and reports on test; no split is left to select
# hyper-parameters on (dabs_datasets.md, "Probe training data").
PROBE_ON_TRAIN_AND_VAL = {"pretrain": ["train"], "probe_train": ["train", "val"],
                          "probe_val": [], "probe_test": ["test"]}


def decode_audio(data: bytes | str) -> tuple[np.ndarray, int]:
    """(mono float32 waveform in [-1, 1], sample rate) from encoded bytes or a file path.

    Raises ValueError for an unreadable, empty or non-finite recording.
    """
    import soundfile

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        samples, sample_rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        # libsndfile's message starts with the repr of the file object; keep only its reason.
        reason = str(e).split(": ", 1)[-1] if isinstance(source, io.BytesIO) else str(e)
        raise ValueError(f"not a readable audio file ({reason})") from None
    if samples.shape[0] == 0:
        raise ValueError("the recording has no samples")
    waveform = samples.mean(axis=1)
    if not np.all(np.isfinite(waveform)):
        raise ValueError("the recording holds NaN or infinite samples")
    return waveform, int(sample_rate)


def audio_to_input(data: bytes | str) -> np.ndarray:
    """Encoded audio -> the DABS log-mel input `[224, 224, 1]` float32 (un-normalized)."""
    waveform, sample_rate = decode_audio(data)
    return _logmel.log_mel_spectrogram(waveform, sample_rate)


def speech_example(where: str, data: bytes | str, example_id: str, label: int,
                   split: str | None = None, group: str | None = None) -> RawExample | BadRecord:
    """A RawExample for one recording, or a BadRecord naming `where` if it cannot be decoded."""
    try:
        spectrogram = audio_to_input(data)
    except (ValueError, OSError) as e:
        return BadRecord(path=where, reason=str(e))
    return RawExample(id=example_id, input=spectrogram, label=int(label), split=split, group=group)


class SpeechReader(DatasetReader):
    """Base of the speech readers: the shared spec; subclasses set the class attributes."""

    label_names_: tuple[str, ...] = ()
    pretrain_dataset: str = "librispeech"
    raw_url: str = ""

    def label_names(self) -> list[str]:
        return list(self.label_names_)

    def spec_template(self) -> DatasetSpec:
        names = self.label_names()
        return DatasetSpec(
            name=self.name,
            modality="speech",
            input_shape=list(INPUT_SHAPE),
            tokenizer="patch2d",
            patch_shape=list(PATCH_SHAPE),
            num_tokens=TOKEN_GRID[0] * TOKEN_GRID[1],
            token_dim=PATCH_SHAPE[0] * PATCH_SHAPE[1] * INPUT_SHAPE[2],
            token_grid=list(TOKEN_GRID),
            input_dtype="float32",
            task="multiclass",
            metric="accuracy",
            num_classes=self.num_classes(),
            label_names=names,
            label_shape=[],
            label_dtype="int64",
            pretrain_dataset=self.pretrain_dataset,
            extra={
                "raw_url": self.raw_url,
                "input_layout": "log-mel [mels, frames, 1]: token rows = frequency, columns = time",
                "log_mel": {"num_samples": _logmel.NUM_SAMPLES, "hop_length": _logmel.HOP_LENGTH,
                            "n_mels": _logmel.NUM_MELS, "n_fft": _logmel.N_FFT,
                            "window": "hann (periodic)", "center": "zero padding",
                            "mel_scale": "slaney, norm=slaney, 0..sr/2",
                            "db": "10*log10(max(mel_power**2, 1e-10)), ref=1.0, top_db=80"},
            },
        )

    def num_classes(self) -> int:
        return len(self.label_names_)

    def _data_dir(self) -> str:
        return self.data_dir or self.default_data_dir()


def file_chunks(paths: list[Any], per_source: int) -> list[tuple[Any, ...]]:
    """Splits a sorted file list into read tasks of `per_source` files."""
    return [tuple(paths[i:i + per_source]) for i in range(0, len(paths), per_source)]
