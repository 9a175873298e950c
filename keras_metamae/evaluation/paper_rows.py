"""The rows of the paper's Tables 1-3: which dataset is pretrained, which is probed, and the
published values (Jang et al., NeurIPS 2023) that `keras_metamae.reproduce` puts ours next to.

Values are as printed: percent for accuracy and weighted F1, Spearman's rho for Stability and
Fluorescence. "random" is the paper's randomly initialised encoder; "mae" is the DABS 2.0 MAE
the paper compares with (a linear decoder for continuous tokens, none for discrete ones);
"metamae" is the paper's method.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One row: pretrain on `pretrain`, probe on `probe`; `paper` maps method -> value."""

    table: int
    pretrain: str
    probe: str
    label: str
    paper: dict[str, float]

    @property
    def is_transfer(self) -> bool:
        return self.probe != self.pretrain

    @property
    def key(self) -> str:
        return self.probe


def _row(table, pretrain, probe, label, random, mae, metamae):
    return PaperRow(table, pretrain, probe, label,
                    {"random": random, "mae": mae, "metamae": metamae})


ROWS: tuple[PaperRow, ...] = (
    # Table 1: in-domain linear evaluation (WaferMap: weighted F1 %, the rest accuracy %).
    _row(1, "pamap2", "pamap2", "PAMAP2", 69.8, 85.3, 89.3),
    _row(1, "higgs", "higgs-transfer", "HIGGS", 54.8, 70.0, 71.5),
    _row(1, "eurosat", "eurosat", "EuroSAT", 62.3, 86.3, 88.5),
    _row(1, "genomics", "genomics-id", "Genomics", 37.2, 53.6, 69.4),
    _row(1, "pfam", "pfam", "Pfam", 30.1, 44.7, 62.3),
    _row(1, "librispeech", "librispeech-dev-clean", "LibriSpeech", 17.1, 46.0, 79.8),
    _row(1, "wafermap-unlabeled", "wafermap", "WaferMap", 77.7, 93.9, 95.5),
    # Table 2: cross-domain linear evaluation (Stability, Fluorescence: Spearman).
    _row(2, "genomics", "genomics-ood", "Genomics -> Genomics-OOD", 8.6, 22.2, 37.2),
    _row(2, "pfam", "scop", "Pfam -> SCOP", 8.0, 7.9, 11.8),
    _row(2, "pfam", "secondary-structure", "Pfam -> Secondary", 52.4, 62.5, 65.9),
    _row(2, "pfam", "stability", "Pfam -> Stability", 0.31, 0.40, 0.53),
    _row(2, "pfam", "fluorescence", "Pfam -> Fluorescence", 0.04, 0.06, 0.31),
    _row(2, "librispeech", "audio-mnist", "LibriSpeech -> Audio MNIST", 33.1, 45.1, 89.5),
    _row(2, "librispeech", "fluent-speech-location", "LibriSpeech -> Fluent Loc", 62.1, 61.7, 66.7),
    _row(2, "librispeech", "fluent-speech-action", "LibriSpeech -> Fluent Act", 26.2, 26.8, 38.4),
    _row(2, "librispeech", "fluent-speech-object", "LibriSpeech -> Fluent Obj", 30.1, 32.0, 49.3),
    _row(2, "librispeech", "google-speech", "LibriSpeech -> Google Speech", 4.9, 9.5, 46.8),
    _row(2, "librispeech", "voxceleb1", "LibriSpeech -> VoxCeleb1", 0.6, 1.6, 7.4),
    _row(2, "imagenet32", "cifar10", "ImageNet32 -> CIFAR-10", 24.2, 46.0, 59.2),
    _row(2, "imagenet32", "cub", "ImageNet32 -> CUB", 1.6, 3.1, 6.3),
    _row(2, "imagenet32", "vgg-flower", "ImageNet32 -> VGG Flowers", 9.0, 22.2, 36.3),
    _row(2, "imagenet32", "dtd", "ImageNet32 -> DTD", 7.4, 14.2, 20.9),
    _row(2, "imagenet32", "traffic-sign", "ImageNet32 -> Traffic Sign", 14.3, 32.0, 67.1),
    _row(2, "imagenet32", "aircraft", "ImageNet32 -> Aircraft", 2.7, 5.9, 16.4),
    # Table 3: vision-language (accuracy %).
    _row(3, "mscoco", "vqa", "MSCOCO -> VQA", 53.4, 54.2, 69.7),
    _row(3, "mscoco", "mismatched-caption", "MSCOCO -> Mismatched-caption", 49.8, 49.3, 70.5),
)

# Pretraining domains by the name users type (`--domain`): the Table 1 row's pretraining set.
DOMAINS = {
    "pamap2": "pamap2", "higgs": "higgs", "eurosat": "eurosat", "genomics": "genomics",
    "pfam": "pfam", "librispeech": "librispeech", "wafermap": "wafermap-unlabeled",
    "imagenet32": "imagenet32", "mscoco": "mscoco",
    # Not a paper row: the embedded default, so the whole loop runs offline in minutes.
    "digits": "digits",
}


def in_domain_row(domain: str) -> PaperRow | None:
    """The Table 1 row of a pretraining domain (None for imagenet32/mscoco/digits)."""
    pretrain = DOMAINS[domain]
    return next((r for r in ROWS if r.table == 1 and r.pretrain == pretrain), None)


def find_row(domain: str, transfer: str | None) -> PaperRow | None:
    """The row `--domain D [--transfer T]` reproduces; None where the paper has none (digits)."""
    pretrain = DOMAINS[domain]
    if transfer is None:
        return in_domain_row(domain)
    return next((r for r in ROWS if r.pretrain == pretrain and r.probe == transfer), None)


def transfers_of(domain: str) -> list[str]:
    pretrain = DOMAINS[domain]
    return [r.probe for r in ROWS if r.pretrain == pretrain and r.table in (2, 3)]
