"""The DABS speech input: a fixed-length waveform -> a 224 x 224 log-mel spectrogram.

DABS (and MetaMAE after it) computes, for every speech dataset,
    librosa.power_to_db(librosa.feature.melspectrogram(y, sr, hop_length=672, n_mels=224) ** 2)
on the waveform zero-padded or cropped to 150,526 samples. This module reproduces those librosa
defaults in NumPy so the pipeline needs no librosa (and no numba):
- STFT: n_fft = win_length = 2048, periodic Hann window, `center=True` with zero padding of
  n_fft // 2 on both sides (librosa >= 0.10 pads with zeros), power spectrum |X|^2.
  150,526 samples at hop 672 give 1 + 150526 // 672 = 224 frames.
- Mel filterbank: 224 triangular filters on the Slaney mel scale (librosa `htk=False`) from 0 Hz
  to sr / 2, area-normalized (`norm="slaney"`).
- `power_to_db(S ** 2)`: 10 * log10(max(S^2, 1e-10)) with ref = 1.0 (absolute, not ref=max),
  then clipped from below at (max - 80 dB) (`top_db=80`). Squaring a power spectrum again is
  what DABS does; the published normalization statistics (e.g. LibriSpeech mean -22.924,
  std 12.587) are of this quantity, so we keep it.
`tests/test_logmel_librosa.py` compares this with values librosa 0.11 itself computed (stored by
`tests/fixtures/make_librosa_reference.py`): they agree to 1e-5 dB.
The result is `[n_mels, frames]` = frequency x time; the caller adds the channel axis
(`[224, 224, 1]`, channels-last), so token rows are frequency bands and columns are time.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_SAMPLES = 150_526
HOP_LENGTH = 672
NUM_MELS = 224
N_FFT = 2048
AMIN = 1e-10
TOP_DB = 80.0


def fit_length(waveform: np.ndarray, num_samples: int = NUM_SAMPLES) -> np.ndarray:
    """Crops to the first `num_samples` samples or zero-pads at the end (silence), as DABS does
    for evaluation (its training-time random choice of which end to crop is not reproducible
    in a preprocessing job, so we always keep the beginning)."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.shape[0] >= num_samples:
        return waveform[:num_samples]
    out = np.zeros(num_samples, np.float32)
    out[: waveform.shape[0]] = waveform
    return out


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int = N_FFT, n_mels: int = NUM_MELS) -> np.ndarray:
    """`[n_mels, 1 + n_fft // 2]` Slaney-normalized triangular filters from 0 Hz to sr / 2."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalization: each filter has unit area in Hz (constant energy per channel).
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=2)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann (scipy.signal.get_window("hann", n, fftbins=True)), as librosa uses.
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    window.setflags(write=False)
    return window


def power_spectrogram(waveform: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """`[1 + n_fft // 2, frames]` |STFT|^2 with centered, zero-padded frames."""
    padded = np.pad(np.asarray(waveform, np.float64), n_fft // 2, mode="constant")
    num_frames = 1 + (padded.shape[0] - n_fft) // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:num_frames]
    spectrum = np.fft.rfft(frames * _hann(n_fft), axis=-1)
    return (spectrum.real ** 2 + spectrum.imag ** 2).T


def power_to_db(power: np.ndarray, top_db: float = TOP_DB) -> np.ndarray:
    """10 * log10(power) with ref = 1.0, floored at AMIN and at (max - top_db)."""
    db = 10.0 * np.log10(np.maximum(power, AMIN))
    return np.maximum(db, db.max() - top_db)


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """The DABS speech input for one waveform: float32 `[224 mels, 224 frames, 1]`.

    The waveform is first padded/cropped to 150,526 samples; its sample rate only sets the
    mel filters' frequency range (DABS does not resample: AudioMNIST stays at 48 kHz).
    """
    mel = mel_filterbank(int(sample_rate)) @ power_spectrogram(fit_length(waveform))
    return power_to_db(mel ** 2).astype(np.float32)[..., np.newaxis]
