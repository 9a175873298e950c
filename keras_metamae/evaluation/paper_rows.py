"""The rows of the paper's Tables 1-3: which dataset is pretrained, which is probed, and the
published values (Jang et al., NeurIPS 2023) that `keras_metamae.reproduce` puts ours next to.

Values are as printed: percent for accuracy and weighted F1, Spearman's rho for Stability and
Fluorescence. Keys are the method names of `--model` (keras_metamae/methods/), plus "random":
"random" is the paper's randomly initialised encoder; "emix", "shed", "capri" the DABS
baselines (None where the paper prints "-": Capri's pretraining diverged); "dabs-mae" the
paper's MAE column (DABS 2.0's MAE: a linear decoder for continuous tokens, none for discrete
ones); "mae" the MAE with a Transformer decoder, Table 4's "decoder ✓" row, reported for six
in-domain rows only; "metamae" the paper's method.
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


def _row(table, pretrain, probe, label, random, emix, shed, capri, dabs_mae, metamae):
    return PaperRow(table, pretrain, probe, label,
                    {"random": random, "emix": emix, "shed": shed, "capri": capri,
                     "dabs-mae": dabs_mae, "metamae": metamae})


ROWS: tuple[PaperRow, ...] = (
    # Columns: random, e-Mix, ShED, Capri, MAE (DABS 2.0), MetaMAE.
    # Table 1: in-domain linear evaluation (WaferMap: weighted F1 %, the rest accuracy %).
    _row(1, "pamap2", "pamap2", "PAMAP2", 69.8, 80.1, 85.2, None, 85.3, 89.3),
    _row(1, "higgs", "higgs-transfer", "HIGGS", 54.8, 65.7, 68.0, None, 70.0, 71.5),
    _row(1, "eurosat", "eurosat", "EuroSAT", 62.3, 87.4, 61.5, 67.4, 86.3, 88.5),
    _row(1, "genomics", "genomics-id", "Genomics", 37.2, 40.5, 33.6, 23.5, 53.6, 69.4),
    _row(1, "pfam", "pfam", "Pfam", 30.1, 31.3, 54.7, 27.4, 44.7, 62.3),
    _row(1, "librispeech", "librispeech-dev-clean", "LibriSpeech", 17.1, 60.2, 34.8, 25.4, 46.0, 79.8),
    _row(1, "wafermap-unlabeled", "wafermap", "WaferMap", 77.7, 92.6, 92.4, 92.5, 93.9, 95.5),
    # Table 2: cross-domain linear evaluation (Stability, Fluorescence: Spearman).
    _row(2, "genomics", "genomics-ood", "Genomics -> Genomics-OOD", 8.6, 9.7, 7.3, 5.5, 22.2, 37.2),
    _row(2, "pfam", "scop", "Pfam -> SCOP", 8.0, 5.7, 10.7, 2.0, 7.9, 11.8),
    _row(2, "pfam", "secondary-structure", "Pfam -> Secondary", 52.4, 53.7, 67.6, 49.5, 62.5, 65.9),
    _row(2, "pfam", "stability", "Pfam -> Stability", 0.31, 0.39, 0.53, 0.26, 0.40, 0.53),
    _row(2, "pfam", "fluorescence", "Pfam -> Fluorescence", 0.04, 0.20, 0.27, 0.06, 0.06, 0.31),
    _row(2, "librispeech", "audio-mnist", "LibriSpeech -> Audio MNIST", 33.1, 80.4, 67.3, 53.6, 45.1, 89.5),
    _row(2, "librispeech", "fluent-speech-location", "LibriSpeech -> Fluent Loc", 62.1, 60.9, 60.2, 59.8, 61.7, 66.7),
    _row(2, "librispeech", "fluent-speech-action", "LibriSpeech -> Fluent Act", 26.2, 29.9, 30.5, 28.3, 26.8, 38.4),
    _row(2, "librispeech", "fluent-speech-object", "LibriSpeech -> Fluent Obj", 30.1, 39.9, 39.4, 33.1, 32.0, 49.3),
    _row(2, "librispeech", "google-speech", "LibriSpeech -> Google Speech", 4.9, 19.2, 20.7, 13.7, 9.5, 46.8),
    _row(2, "librispeech", "voxceleb1", "LibriSpeech -> VoxCeleb1", 0.6, 2.4, 2.8, 1.6, 1.6, 7.4),
    _row(2, "imagenet32", "cifar10", "ImageNet32 -> CIFAR-10", 24.2, 39.4, 39.6, 48.7, 46.0, 59.2),
    _row(2, "imagenet32", "cub", "ImageNet32 -> CUB", 1.6, 3.9, 3.0, 3.7, 3.1, 6.3),
    _row(2, "imagenet32", "vgg-flower", "ImageNet32 -> VGG Flowers", 9.0, 26.0, 13.0, 18.6, 22.2, 36.3),
    _row(2, "imagenet32", "dtd", "ImageNet32 -> DTD", 7.4, 8.8, 18.4, 14.7, 14.2, 20.9),
    _row(2, "imagenet32", "traffic-sign", "ImageNet32 -> Traffic Sign", 14.3, 65.1, 27.5, 28.0, 32.0, 67.1),
    _row(2, "imagenet32", "aircraft", "ImageNet32 -> Aircraft", 2.7, 10.2, 5.6, 6.4, 5.9, 16.4),
    # Table 3: vision-language (accuracy %).
    _row(3, "mscoco", "vqa", "MSCOCO -> VQA", 53.4, 57.6, 53.1, 52.9, 54.2, 69.7),
    _row(3, "mscoco", "mismatched-caption", "MSCOCO -> Mismatched-caption", 49.8, 50.1, 50.6, 49.6, 49.3, 70.5),
)

# Table 4's "decoder ✓" row (MAE with a Transformer decoder, our `--model mae`), in-domain.
_DECODER_MAE = {"pamap2": 86.5, "genomics-id": 65.2, "eurosat": 87.4,
                "librispeech-dev-clean": 64.1, "higgs-transfer": 70.5, "pfam": 61.3}
ROWS = tuple(
    dataclasses.replace(row, paper={**row.paper, "mae": _DECODER_MAE[row.probe]})
    if row.table == 1 and row.probe in _DECODER_MAE else row
    for row in ROWS
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
