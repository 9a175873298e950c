"""`python -m keras_metamae.export` — export the frozen encoder f_theta of a training run.

    python -m keras_metamae.export --workdir workdirs/digits-metamae
    saved_model_cli show --dir workdirs/digits-metamae/export/encoder/1 --all

Writes `<workdir>/export/encoder/<version>/` (integer versions: TF Serving's model base path
is `<workdir>/export/encoder`) for the newest checkpoint, or `--step` (any kept one), unless
that step is already exported (train exports its last step): one version per checkpoint step.
A version holds the SavedModel (signatures `serving_default` on raw examples,
`embed_tokens`, `tokens`; see keras_metamae/serving/saved_model.py), `encoder.keras` for
fine-tuning in Keras (`keras.saving.load_model` after `import keras_metamae.models`),
`spec.json` and `export_info.json` (the checkpoint step).
"""

from __future__ import annotations

import sys

from absl import flags

from commandline import cli
from keras_metamae.rundir import RunDir
from keras_metamae.rundir.run_dir import EXPORT_INFO
from keras_metamae.serving.saved_model import KERAS_ENCODER

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Command-line flags; defined only when run as a program."""
    flags.DEFINE_string("workdir", None, "Training workdir to export the encoder of (required).",
                        flag_values=flag_values)
    flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest; any "
                         "kept one).", flag_values=flag_values)
    flags.DEFINE_integer("version", None, "Version number (default: next free integer).",
                         flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


def plan_export(workdir: str, step: int | None, version: int | None):
    """(run directory, config, spec, the step, the version it is already exported as or None,
    the folder a new export would write): everything that can refuse the export, checked before
    a model is built. A checkpoint step is exported once: `existing` names that version."""
    if version is not None and version < 1:
        raise cli.UserError(f"invalid value {version}", f"--version {version}",
                            "expected a positive integer (TF Serving's version folders)")
    run_dir = RunDir(workdir)
    config, spec = run_dir.load()
    step = run_dir.check_step(step)
    existing = run_dir.export_of_step(step)
    if existing is None and version is not None and version in run_dir.export_versions():
        raise cli.UserError("that version exists; versions are never overwritten",
                            f"--version {version}", f"omit --version to write the next free "
                            f"one ({run_dir.next_export_version()})")
    target = run_dir.export_dir(version or run_dir.next_export_version())
    return run_dir, config, spec, step, existing, target


def describe_export(workdir: str, step: int | None, version: int | None) -> str:
    """What the export would write (--dry_run); checks what the export itself checks first."""
    _, config, spec, step, existing, target = plan_export(workdir, step, version)
    writes = (f"nothing: step {step} is already exported as {existing}" if existing else
              f"{target} (SavedModel, {KERAS_ENCODER}, spec.json, {EXPORT_INFO})")
    return "\n".join([
        f"workdir      {workdir} ({config.model} on {config.dataset}, tokens "
        f"{spec.num_tokens} x {spec.token_dim or spec.vocab_size})",
        f"checkpoint   step {step}",
        f"writes       {writes}",
        "nothing was written (--dry_run)",
    ])


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    cli.quiet_tensorflow_logs()
    workdir = cli.storage_path(FLAGS.workdir, "--workdir")
    if FLAGS.dry_run:
        print(describe_export(workdir, FLAGS.step, FLAGS.version))
        return 0
    run_dir, _, _, step, existing, _ = plan_export(workdir, FLAGS.step, FLAGS.version)
    if existing:
        # One export per checkpoint step, whichever command wrote it (train exports its
        # last step): TF Serving would otherwise load an identical new version.
        print(f"Step {step} is already exported as {existing}; nothing written")
        print(f"Inspect: saved_model_cli show --dir {existing} --all")
        return 0
    cli.check_writable(run_dir.export_base, "--workdir")
    from keras_metamae.serving.export import export_encoder

    model, spec, _, step = run_dir.load_trained_model(step)
    path = export_encoder(model, spec, workdir, FLAGS.version, step=step)
    print(f"Exported the encoder at step {step} to {path}")
    print(f"Inspect: saved_model_cli show --dir {path} --all")


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
