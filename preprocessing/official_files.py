"""The official raw files that `pipeline.preprocess` can download for each dataset.

A dataset is listed here only when its files are published at a stable URL that needs no
login, licence form or API key. The rest (ImageNet32, VoxCeleb1, Fluent Speech Commands,
WM-811K, the genomics_ood CSVs) must be placed by hand; their readers' errors say where.

Sizes and sha256 sums are the published ones: those marked "tfds" are the values
tensorflow_datasets records for the same URL (`tensorflow_datasets/url_checksums/*.txt`),
the CIFAR-10 md5 is the one on the dataset's page. Files nobody publishes a checksum for
(PAMAP2, FGVC-Aircraft, GTSRB, AudioMNIST, VQA, the BERT vocabulary, TAPE) are checked only
against the size the server announces; the download prints the sha256 it got so it can be recorded.
"""

from __future__ import annotations

from preprocessing.datasets._protein import TAPE_LMDB_URL
from preprocessing.download import RemoteFile
from preprocessing.wordpiece import BERT_VOCAB_FILE, BERT_VOCAB_URL

_TFDS = "tensorflow_datasets url_checksums"


def _tfds(url: str, size: int, sha256: str, filename: str | None = None) -> RemoteFile:
    return RemoteFile(url=url, filename=filename or url.rsplit("/", 1)[-1], size=size,
                      sha256=sha256, checksum_source=f"{_TFDS} ({url})")


def _unverified(url: str, filename: str | None = None) -> RemoteFile:
    return RemoteFile(url=url, filename=filename or url.rsplit("/", 1)[-1],
                      checksum_source="no published checksum")


EUROSAT = _tfds("https://madm.dfki.de/files/sentinel/EuroSATallBands.zip", 2067725275,
                "751f070f9bffa2eed48b24ca2dd0b02959280c08837e8c9a5532a67ba611df59")
HIGGS = _tfds("https://archive.ics.uci.edu/ml/machine-learning-databases/00280/HIGGS.csv.gz",
              2816407858, "ea302c18164d4e3d916a1e2e83a9a8d07069fa6ebc7771e4c0540d54e593b698")
PAMAP2 = _unverified("https://archive.ics.uci.edu/ml/machine-learning-databases/00231/PAMAP2_Dataset.zip")
CIFAR10 = RemoteFile(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                     filename="cifar-10-python.tar.gz", size=170498071,
                     md5="c58f30108f718f92721af3b95e74349a",
                     checksum_source="https://www.cs.toronto.edu/~kriz/cifar.html")
DTD = _tfds("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", 625239812,
            "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205")
CUB = _tfds("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
            1150585339, "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
            filename="CUB_200_2011.tgz")
FLOWERS = (
    _tfds("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", 344862509,
          "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246"),
    _tfds("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", 502,
          "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d"),
    # setid.mat (the official 1,020/1,020/6,149 split) is not needed: DABS splits per class.
)
AIRCRAFT = _unverified("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz")
GTSRB = _unverified("https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
                    "GTSRB_Final_Training_Images.zip")
SPEECH_COMMANDS = _tfds("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                        2428923189, "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58")
AUDIO_MNIST = _unverified("https://github.com/soerenab/AudioMNIST/archive/refs/heads/master.zip",
                          filename="AudioMNIST-master.zip")
_LIBRISPEECH = {
    "train-clean-100": (6387309499, "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2"),
    "train-clean-360": (23049477885, "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf"),
    "train-other-500": (30593501606, "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2"),
    "dev-clean": (337926286, "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3"),
}


def _librispeech(subset: str) -> RemoteFile:
    # tfds records the http:// URL; openslr serves the same file over https.
    size, sha256 = _LIBRISPEECH[subset]
    return _tfds(f"https://www.openslr.org/resources/12/{subset}.tar.gz", size, sha256)


COCO_2017 = (
    _tfds("http://images.cocodataset.org/zips/train2017.zip", 19336861798,
          "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929"),
    _tfds("http://images.cocodataset.org/zips/val2017.zip", 815585330,
          "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
    _tfds("http://images.cocodataset.org/annotations/annotations_trainval2017.zip", 252907541,
          "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268"),
)
# DABS's vqa: VQA v1 multiple choice on the COCO 2014 images (no captions needed).
COCO_2014_IMAGES = (
    _tfds("http://images.cocodataset.org/zips/train2014.zip", 13510573713,
          "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775"),
    _tfds("http://images.cocodataset.org/zips/val2014.zip", 6645013297,
          "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0"),
)
VQA_V1 = tuple(_unverified(f"https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/{name}")
               for name in ("Questions_Train_mscoco.zip", "Questions_Val_mscoco.zip",
                            "Annotations_Train_mscoco.zip", "Annotations_Val_mscoco.zip"))
# bert-base-uncased's vocab.txt (30,522 pieces), saved under the name the readers look for.
BERT_VOCAB = _unverified(BERT_VOCAB_URL, filename=BERT_VOCAB_FILE)


def _tape(task: str) -> RemoteFile:
    # TAPE's LMDB release (the format TAPE's own loaders read); no checksums are published.
    return _unverified(TAPE_LMDB_URL.format(task=task))


OFFICIAL_FILES: dict[str, tuple[RemoteFile, ...]] = {
    "eurosat": (EUROSAT,),
    "higgs": (HIGGS,),
    "higgs-transfer": (HIGGS,),
    "pamap2": (PAMAP2,),
    "cifar10": (CIFAR10,),
    "dtd": (DTD,),
    "cub": (CUB,),
    "vgg-flower": FLOWERS,
    "aircraft": (AIRCRAFT,),
    "traffic-sign": (GTSRB,),
    "google-speech": (SPEECH_COMMANDS,),
    "audio-mnist": (AUDIO_MNIST,),
    "librispeech": tuple(_librispeech(s) for s in ("train-clean-100", "train-clean-360", "train-other-500")),
    "librispeech-dev-clean": (_librispeech("dev-clean"),),
    "mscoco": COCO_2017 + (BERT_VOCAB,),
    "mismatched-caption": COCO_2017 + (BERT_VOCAB,),
    "vqa": COCO_2014_IMAGES + VQA_V1 + (BERT_VOCAB,),
    "pfam": (_tape("pfam"),),
    "scop": (_tape("remote_homology"),),
    "secondary-structure": (_tape("secondary_structure"),),
    "stability": (_tape("stability"),),
    "fluorescence": (_tape("fluorescence"),),
}


def official_files(dataset: str) -> tuple[RemoteFile, ...]:
    """The files to download for `dataset`; empty when it cannot be downloaded automatically."""
    return OFFICIAL_FILES.get(dataset, ())
