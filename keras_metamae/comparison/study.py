"""A comparison from end to end: the data (the embedded default preprocessed on demand), every
method × seed run (`runner.py`), the results written (`report.py`)."""

from __future__ import annotations


def compare_methods(dataset: str, methods: list[str], seeds: list[int], steps: int | None,
                    workdir: str, data_dir: str, epochs: int = 100, probe: str = "both",
                    overrides: dict | None = None, probe_dataset: str | None = None,
                    paper_row=None, verbose=0) -> tuple[dict, dict]:
    """Runs every method × seed pretrained on `dataset` and probed on `probe_dataset` (default
    the same) and writes the results into `workdir`; (results, {json, markdown, plot} paths).
    `paper_row`: an `evaluation.paper_rows.PaperRow` whose values go beside ours."""
    from keras_metamae.comparison import report, runner
    from keras_metamae.training.run import locate_or_prepare_dataset, resolve_config
    from preprocessing.spec import load_spec

    version_dir = locate_or_prepare_dataset(dataset, data_dir)
    # Before any run trains for hours: the probe set must have labels and the same tokens.
    check_probe_dataset(dataset, version_dir, probe_dataset or dataset, data_dir)
    overrides = dict(overrides or {})
    if steps is None:  # the preset's, resolved once so that every run uses the same budget
        spec = load_spec(version_dir)
        steps = resolve_config(dataset, overrides, spec, data_dir, workdir).steps
    comparison = runner.Comparison(dataset=dataset, methods=list(methods),
                                   seeds=seeds, steps=steps, workdir=workdir, data_dir=data_dir,
                                   probe_dataset=probe_dataset or dataset, epochs=epochs,
                                   probe=probe, overrides=overrides)
    runs = runner.run_comparison(comparison, verbose=verbose)
    results = report.summarize(comparison, runs, paper_row)
    return results, report.write(results, workdir)


def check_probe_dataset(dataset: str, version_dir: str, probe_dataset: str,
                        data_dir: str) -> None:
    """ValueError (one line: what, where, what to do) when `probe_dataset` cannot probe
    encoders pretrained on `dataset`: it has no labels, or other tokens."""
    from keras_metamae import data
    from preprocessing.spec import load_spec, token_layout_difference

    spec = load_spec(version_dir)
    probe_dir = version_dir if probe_dataset == dataset else data.find_dataset_dir(
        data_dir, probe_dataset)
    probe_spec = spec if probe_dir == version_dir else load_spec(probe_dir)
    if probe_spec.is_pretrain_only:
        raise ValueError(
            f"{probe_dataset} has no labels (pretrain-only), so there is nothing to probe "
            f"({probe_dir}/spec.json): probe on a labelled dataset of the same token layout "
            f"with --transfer_dataset LABELLED")
    field = token_layout_difference(spec, probe_spec)
    if field is not None:
        raise ValueError(f"{probe_dataset} has other tokens than {dataset} ({field} differs, "
                         f"{probe_dir}/spec.json): probe on a dataset preprocessed with the "
                         f"same token layout")
