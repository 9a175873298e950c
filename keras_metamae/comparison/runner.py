"""Runs a comparison of pretraining methods: every method × seed pretrained and probed the same
way, resumably, one run directory each.

    <workdir>/<method>/seed-<s>/     a training run directory (keras_metamae/rundir/); for
                                     "random" only its config, spec and evaluation record
    <workdir>/<method>/seed-<s>/diverged.json   a run the non-finite guard stopped: recorded,
                                     shown in the table, never retried by a rerun

A rerun skips every run whose checkpoints reached `steps`, every evaluation already recorded
for that step with the same probe settings, and every diverged run; an interrupted run resumes
from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os

from commandline import filesystem
from keras_metamae import methods
from keras_metamae.evaluation.run import run_evaluation
from keras_metamae.rundir import RunDir
from keras_metamae.training.run import NonFiniteTraining, resolve_config, run_training
from preprocessing.atomic_files import write_text_atomically

RANDOM = "random"
# The column order of the paper's Tables 1-3, then Table 4's decoder MAE.
PAPER_ORDER = (RANDOM, "emix", "shed", "capri", "dabs-mae", "mae", "metamae")
DIVERGED = "diverged.json"


def check_methods(names: list[str]) -> list[str]:
    """The methods a comparison runs, in order; ValueError naming the choices otherwise."""
    known = (RANDOM, *methods.METHOD_NAMES)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"--methods: got {','.join(names) or '(none)'}, expected a "
                         f"comma-separated list of {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods: {','.join(names)} names a method twice")
    return list(names)


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; ValueError naming the flag unless distinct integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: got {text!r}, expected distinct comma-separated integers, "
                         f"e.g. 0,1,2")
    return seeds


def parse_methods(text: str) -> list[str]:
    """`--methods random,mae` -> the checked list (see `check_methods`)."""
    return check_methods([m.strip() for m in text.split(",") if m.strip()])


@dataclasses.dataclass
class Comparison:
    """What a comparison runs: `dataset` pretrained on, `probe_dataset` probed on (the same,
    or a transfer set of a paper row), `methods` × `seeds`, `steps` each."""

    dataset: str
    methods: list
    seeds: list
    steps: int
    workdir: str
    data_dir: str
    probe_dataset: str = ""
    epochs: int = 100
    probe: str = "both"
    overrides: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.probe_dataset = self.probe_dataset or self.dataset
        check_methods(self.methods)
        if not self.seeds:
            raise ValueError("--seeds: expected at least one seed")

    def run_dir(self, method: str, seed: int) -> RunDir:
        return RunDir(os.path.join(self.workdir, method, f"seed-{seed}"))

    def train_overrides(self, method: str, seed: int) -> dict:
        """The training config of one run: the dataset's preset, the user's overrides, then
        the method, the seed and the step budget (no export: the comparison probes the
        checkpoints directly)."""
        model = "metamae" if method == RANDOM else method  # the random encoder's architecture
        return dict(self.overrides, model=model, seed=seed, steps=self.steps, export=False)


def _json(path: str) -> dict | None:
    try:
        return json.loads(filesystem.read_text(path))
    except (OSError, ValueError):
        return None


def _write_json(path: str, record: dict) -> None:
    filesystem.makedirs(os.path.dirname(path))
    write_text_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _recorded_evaluation(run_dir: RunDir, comparison: Comparison, encoder_kind: str,
                         step: int) -> dict | None:
    """The evaluation already recorded for this step and these probe settings, if any."""
    record = _json(run_dir.eval_path(comparison.probe_dataset, encoder_kind))
    if record and record.get("step") == step and record.get("epochs") == comparison.epochs \
            and record.get("probe") == comparison.probe:
        return record
    return None


def _evaluate(run_dir: RunDir, comparison: Comparison, encoder_kind: str, step: int) -> dict:
    record = _recorded_evaluation(run_dir, comparison, encoder_kind, step)
    if record is None:
        record = run_evaluation(run_dir.path, dataset=comparison.probe_dataset,
                                data_dir=comparison.data_dir, encoder_kind=encoder_kind,
                                epochs=comparison.epochs, baseline=False,
                                transfer=comparison.probe_dataset != comparison.dataset,
                                probe=comparison.probe, progress=False)
    return record


def run_random(comparison: Comparison, seed: int, spec, version_dir: str) -> dict:
    """The randomly initialised encoder of the shared architecture, seeded by `seed`."""
    run_dir = comparison.run_dir(RANDOM, seed)
    if not filesystem.exists(run_dir.config_path):
        config = resolve_config(comparison.dataset, comparison.train_overrides(RANDOM, seed),
                                spec, comparison.data_dir, run_dir.path)
        run_dir.record_spec(spec, version_dir)
        config.save(run_dir.path)
    record = _evaluate(run_dir, comparison, "random", 0)
    return {"seed": seed, "step": 0, "evaluation": record, "online": []}


def run_trained(comparison: Comparison, method: str, seed: int, verbose) -> dict:
    """Pretrains (or resumes) one method with one seed and probes it; a run the non-finite
    guard stopped is recorded as diverged instead of failing the comparison."""
    run_dir = comparison.run_dir(method, seed)
    diverged = _json(run_dir.file(DIVERGED))
    if diverged is None:
        steps_done = run_dir.checkpoint_steps()
        if not steps_done or steps_done[-1] < comparison.steps:
            try:
                run_training(comparison.dataset, comparison.train_overrides(method, seed),
                             comparison.data_dir, run_dir.path, verbose=verbose)
            except NonFiniteTraining as e:
                steps_done = run_dir.checkpoint_steps()
                diverged = {"diverged_at": e.step,
                            "last_good_checkpoint": steps_done[-1] if steps_done else 0,
                            "message": str(e)}
                _write_json(run_dir.file(DIVERGED), diverged)
    if diverged is not None:
        return {"seed": seed, "diverged": diverged}
    step = run_dir.checkpoint_steps()[-1]
    summary = _json(run_dir.train_summary_path) or {}
    online = (summary.get("online_eval") or {}).get("history") or []
    return {"seed": seed, "step": step, "evaluation": _evaluate(run_dir, comparison,
                                                                "pretrained", step),
            "online": online}


def run_comparison(comparison: Comparison, verbose=0) -> dict:
    """Every method × seed of `comparison`; returns `{method: [per-seed record]}`."""
    from keras_metamae import data
    from preprocessing.spec import load_spec

    version_dir = data.find_dataset_dir(comparison.data_dir, comparison.dataset)
    spec = load_spec(version_dir)
    runs = {}
    for method in comparison.methods:
        runs[method] = []
        for seed in comparison.seeds:
            if verbose:
                print(f"[compare] {method}, seed {seed}")
            if method == RANDOM:
                runs[method].append(run_random(comparison, seed, spec, version_dir))
            else:
                runs[method].append(run_trained(comparison, method, seed, verbose))
    return runs
