"""`python -m keras_metamae.reproduce` — one command per row of the paper's Tables 1-3.

    python -m keras_metamae.reproduce --plan                          # every row: command, splits, cost
    python -m keras_metamae.reproduce --domain eurosat                # Table 1, EuroSAT, MetaMAE
    python -m keras_metamae.reproduce --domain eurosat --method dabs-mae   # the paper's MAE column
    python -m keras_metamae.reproduce --domain pfam --transfer scop   # a Table 2 row
    python -m keras_metamae.reproduce --domain digits --steps 300     # the embedded default, offline
    python -m keras_metamae.reproduce --domain eurosat --methods random,emix,shed,capri,dabs-mae,mae,metamae --seeds 0,1,2

Each run: preprocesses the pretraining and probe datasets if they are not there yet (the raw
files under `--raw_root/<folder>`, downloaded where the dataset allows it), pretrains with the
paper preset (Table 8, 100k steps unless `--steps`) in `<workdir_root>/<pretrain>-<method>`
(rerunning resumes it), runs the linear evaluation on the protocol's splits (the paper's probe,
plus the converged probe and the random-encoder baseline), and appends one row, ours next to the
paper's, to `<workdir_root>/results.md`.

`--method dabs-mae` is the paper's MAE column: `--model dabs-mae`, DABS 2.0's MAE
(keras_metamae/methods/dabs_mae.py), with the row's preset. `--method mae` is OUR MAE with a
linear head (`--model mae --decoder_depth 0`), which this command ran as the MAE column before
`dabs-mae` existed (its workdirs keep resuming). It is not DABS 2.0's MAE (learned mask token
instead of zeroed embeddings, sin-cos instead of learned positions, Linear + MSE instead of
ReLU -> Linear and an un-squared L2 norm, ...), so its results row has no paper value.

`--methods` (with `--seeds`) runs the row as a comparison instead (keras_metamae/comparison/):
every listed method with every seed, in `<workdir_root>/compare-<pretrain>[-<probe>]/`, the
paper's value of each column beside ours in its results.md, intervals over seeds; there
`dabs-mae` is DABS 2.0's MAE itself, `mae` the MAE with a Transformer decoder (Table 4).
"""

from __future__ import annotations

import datetime
import os
import sys

from absl import flags

from commandline import cli, filesystem
from keras_metamae.evaluation import paper_rows
from preprocessing.atomic_files import write_text_atomically

METHODS = ("metamae", "dabs-mae", "mae")
# The paper's column each method is compared with (keras_metamae/evaluation/paper_rows.py);
# `mae` is none of them.
PAPER_COLUMN = {"metamae": "metamae", "dabs-mae": "dabs-mae"}
# The methods of the paper's columns, as --plan prices them.
PAPER_METHODS = ("metamae", "dabs-mae")
# Idle 2-core CPU, paper EuroSAT config (batch 64 x 64 tokens of 832, encoder 12x256), seconds
# per step (issue 11's side-by-side measurement); scaled by batch x tokens for other configs.
# dabs-mae: MetaMAE's x 1.42, BENCHMARKS.md's train_bench ratio (MAE (DABS 2.0) 1253.0 ms /
# MetaMAE second-order 884.5 ms per step, the same run).
CPU_SECONDS_PER_STEP = {"metamae": 1.08, "mae": 0.62, "dabs-mae": 1.53}

_REFERENCE_TOKENS = 64 * 64

RESULTS_HEADER = (
    "| date | table | row | method | steps | metric | ours: paper probe | ours: best on val "
    "| ours: converged probe | ours: random encoder | ours: kNN | paper | paper: random |\n"
    "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
)


def method_overrides(method: str) -> dict:
    """Train-config overrides of a `--method` (`mae`: our MAE with a linear head, as before)."""
    if method not in METHODS:
        raise ValueError(f"--method: got {method!r}, expected one of {METHODS}")
    return {"model": "mae", "decoder_depth": 0} if method == "mae" else {"model": method}


def planned_splits(dataset: str) -> dict[str, list[str]]:
    """The protocol a dataset's reader declares, defaults filled in as DatasetSpec does."""
    from preprocessing import registry
    from preprocessing.spec import DatasetSpec, SplitInfo

    reader = registry.get_reader(dataset)
    names = [name for name, _ in reader.split_fractions]
    template = reader.spec_template()
    spec = DatasetSpec(**{**template.__dict__,
                          "splits": {n: SplitInfo(0, "", 1) for n in names},
                          "protocol": dict(template.protocol or reader.protocol or {})})
    return {role: spec.protocol_splits(role)
            for role in ("pretrain", "probe_train", "probe_val", "probe_test")}


def estimated_cpu_hours(dataset: str, method: str, steps: int) -> float:
    """Rough pretraining hours on a 2-core CPU: the measured EuroSAT step scaled by batch x tokens."""
    from keras_metamae import config as config_lib
    from preprocessing import registry

    spec = registry.get_reader(dataset).spec_template()
    batch = config_lib.resolve(dataset, {}, spec.pretrain_dataset).batch_size
    return CPU_SECONDS_PER_STEP[method] * batch * spec.num_tokens / _REFERENCE_TOKENS * steps / 3600


def _paper_domain(row: paper_rows.PaperRow) -> str:
    return next(d for d, p in paper_rows.DOMAINS.items() if p == row.pretrain)


def command_of(row: paper_rows.PaperRow, method: str = "metamae") -> str:
    command = f"python -m keras_metamae.reproduce --domain {_paper_domain(row)}"
    if row.table != 1:
        command += f" --transfer {row.probe}"
    return command + ("" if method == "metamae" else f" --method {method}")


def plan(steps: int | None = None) -> str:
    """A markdown table of every paper row: command, splits, metric, paper values, cost."""
    from preprocessing import registry

    lines = ["| table | row | command (add `--method dabs-mae` for the MAE column) | pretrain on "
             "| probe train / val / test | metric | paper random / MAE / MetaMAE "
             "| est. CPU hours MetaMAE / MAE (dabs-mae) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in paper_rows.ROWS:
        pretrain = planned_splits(row.pretrain)["pretrain"]
        probe = planned_splits(row.probe)
        metric = registry.get_reader(row.probe).spec_template().metric
        n = steps or 100_000
        cost = " / ".join(f"{estimated_cpu_hours(row.pretrain, m, n):,.0f}" for m in PAPER_METHODS)
        paper = " / ".join(f"{row.paper[m]:g}" for m in ("random", "dabs-mae", "metamae"))
        splits = " / ".join("+".join(probe[r]) or "-" for r in ("probe_train", "probe_val", "probe_test"))
        lines.append(f"| {row.table} | {row.label} | `{command_of(row)}` | {row.pretrain} "
                     f"[{'+'.join(pretrain)}] | {row.probe}: {splits} | {metric} | {paper} | {cost} |")
    lines.append("")
    lines.append(f"Cost: {steps or 100_000:,} pretraining steps at the CPU step time measured on the "
                 f"EuroSAT config ({CPU_SECONDS_PER_STEP['metamae']} s MetaMAE per step on 2 "
                 f"cores; DABS 2.0's MAE {CPU_SECONDS_PER_STEP['dabs-mae']} s, by BENCHMARKS.md's "
                 f"ratio), scaled by batch x "
                 f"tokens; a GPU is one to two orders of magnitude faster. Probing is extra.")
    return "\n".join(lines) + "\n"


def ensure_processed(dataset: str, data_dir: str, raw_root: str | None) -> str:
    """The dataset's version directory, running the Beam job first if it is not there."""
    from keras_metamae import data
    from pipeline import preprocess
    from preprocessing import registry

    try:
        return data.find_dataset_dir(data_dir, dataset)
    except data.DataError:
        pass
    argv = ["--dataset", dataset, "--data_dir", data_dir]
    if raw_root and dataset != "digits":
        argv += ["--raw_data_dir", os.path.join(raw_root, registry.raw_folder(dataset))]
    print(f"Preprocessing {dataset}: python -m pipeline.preprocess {' '.join(argv)}")
    if preprocess.run(argv) is None:
        raise RuntimeError(f"preprocessing {dataset} failed (see the messages above)")
    return data.find_dataset_dir(data_dir, dataset)


def _scaled(value, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if metric == "spearman" else f"{100 * value:.1f}"


def results_row(record: dict, row: paper_rows.PaperRow | None, method: str, steps: int,
                table_label: str) -> str:
    metric = record["metric"]
    converged = (record.get("converged") or {}).get("value")
    column = PAPER_COLUMN.get(method)
    paper = "-" if row is None or column is None else f"{row.paper[column]:g}"
    paper_random = "-" if row is None else f"{row.paper['random']:g}"
    date = datetime.date.today().isoformat()
    return (f"| {date} | {table_label} | {record['pretrain_dataset']} -> {record['dataset']} "
            f"| {method} | {steps} | {metric} | {_scaled(record['value'], metric)} "
            f"| {_scaled(record.get('value_best_val'), metric)} | {_scaled(converged, metric)} "
            f"| {_scaled(record.get('baseline_random'), metric)} "
            f"| {_scaled(record.get('knn_accuracy'), 'accuracy')} | {paper} | {paper_random} |\n")


def append_result(path: str, line: str) -> None:
    """Appends one row to results.md (header on first use), replacing the file atomically."""
    filesystem.makedirs(os.path.dirname(path) or ".")
    old = filesystem.read_text(path) if filesystem.exists(path) else RESULTS_HEADER
    write_text_atomically(path, old + line)


def resolve_row(domain: str, transfer: str | None):
    """(pretraining dataset, the paper row or None, probe dataset) of `--domain [--transfer]`;
    ValueError naming the flag when the paper has no such row."""
    if domain not in paper_rows.DOMAINS:
        raise ValueError(f"--domain: got {domain!r}, expected one of {sorted(paper_rows.DOMAINS)}")
    pretrain = paper_rows.DOMAINS[domain]
    if transfer is not None and transfer not in paper_rows.transfers_of(domain):
        raise ValueError(f"--transfer: the paper has no row {domain} -> {transfer!r}; its rows "
                         f"for {domain}: {paper_rows.transfers_of(domain) or 'none'}")
    row = paper_rows.find_row(domain, transfer)
    if row is None and domain != "digits":
        raise ValueError(f"--domain {domain}: the paper reports it only through transfer rows; "
                         f"add --transfer, one of {paper_rows.transfers_of(domain)}")
    return pretrain, row, (row.probe if row else pretrain)


def reproduce_comparison(domain: str, methods: list[str], seeds: list[int],
                         transfer: str | None = None, steps: int | None = None,
                         epochs: int = 100, probe: str = "both",
                         workdir_root: str = os.path.join("workdirs", "reproduce"),
                         data_dir: str | None = None, raw_root: str | None = None,
                         overrides: dict | None = None):
    """A paper row as a comparison: every method × seed, the paper's columns beside ours;
    (results, {json, markdown, plot} paths)."""
    from keras_metamae.comparison.study import compare_methods
    from keras_metamae.training.run import default_data_dir

    pretrain, row, probe_dataset = resolve_row(domain, transfer)
    data_dir = data_dir or default_data_dir()
    ensure_processed(pretrain, data_dir, raw_root)
    if probe_dataset != pretrain:
        ensure_processed(probe_dataset, data_dir, raw_root)
    name = pretrain if probe_dataset == pretrain else f"{pretrain}-{probe_dataset}"
    return compare_methods(pretrain, methods, seeds, steps,
                           os.path.join(workdir_root, f"compare-{name}"), data_dir, epochs,
                           probe, overrides, probe_dataset=probe_dataset, paper_row=row,
                           verbose=1)


def describe_row(domain: str, transfer: str | None, method: str, methods: str | None,
                 seeds: str, steps: int | None, workdir_root: str) -> str:
    """What `--domain [--transfer] [--method | --methods --seeds]` would run (--dry_run): the
    row, its datasets and splits, the budget, the paper's values and where it writes."""
    from keras_metamae import config as config_lib
    from keras_metamae.comparison.runner import parse_methods, parse_seeds
    from preprocessing import registry

    pretrain, row, probe_dataset = resolve_row(domain, transfer)
    chosen = parse_methods(methods) if methods else [method]

    spec = registry.get_reader(pretrain).spec_template()
    budget = steps or config_lib.resolve(pretrain, {}, spec.pretrain_dataset).steps
    probe = planned_splits(probe_dataset)
    splits = " / ".join("+".join(probe[r]) or "-" for r in ("probe_train", "probe_val",
                                                             "probe_test"))
    metric = registry.get_reader(probe_dataset).spec_template().metric
    def column(m):  # --methods names columns directly; --method mae has none (not Table 4's)
        return m if methods or m == "random" else PAPER_COLUMN.get(m)

    values = {m: None if row is None or column(m) is None else row.paper.get(column(m))
              for m in dict.fromkeys(["random", *chosen])}
    paper = ("not a paper row" if row is None else
             ", ".join(f"{m} {'-' if v is None else f'{v:g}'}" for m, v in values.items()))
    if methods:
        name = pretrain if probe_dataset == pretrain else f"{pretrain}-{probe_dataset}"
        writes = (f"{os.path.join(workdir_root, f'compare-{name}')} (runs <method>/seed-<s>, "
                  f"results.md, results.json, comparison.png)")
        runs = f"{', '.join(chosen)} x seeds {', '.join(map(str, parse_seeds(seeds)))}"
    else:
        writes = (f"{os.path.join(workdir_root, f'{pretrain}-{method}')}, a row of "
                  f"{os.path.join(workdir_root, 'results.md')}")
        runs = method
    label = f"Table {row.table}, {row.label}" if row else "(not in the paper)"
    return "\n".join([
        f"row          {label}: pretrain on {pretrain} "
        f"[{'+'.join(planned_splits(pretrain)['pretrain'])}], probe on {probe_dataset}",
        f"runs         {runs}, {budget:,} pretraining steps each",
        f"probe        {probe_dataset}: {splits}; metric {metric}",
        f"paper        {paper}",
        f"writes       {writes}",
        "nothing was written (--dry_run)",
    ])


def reproduce(domain: str, method: str = "metamae", transfer: str | None = None,
              steps: int | None = None, epochs: int = 100, probe: str = "both",
              workdir_root: str = os.path.join("workdirs", "reproduce"),
              data_dir: str | None = None, raw_root: str | None = None,
              overrides: dict | None = None) -> dict:
    """Preprocess (if needed) -> pretrain with the paper preset -> probe -> append to results.md."""
    from keras_metamae.evaluation.run import run_evaluation
    from keras_metamae.training.run import default_data_dir, run_training

    pretrain, row, probe_dataset = resolve_row(domain, transfer)
    data_dir = data_dir or default_data_dir()
    ensure_processed(pretrain, data_dir, raw_root)
    if probe_dataset != pretrain:
        ensure_processed(probe_dataset, data_dir, raw_root)

    workdir = os.path.join(workdir_root, f"{pretrain}-{method}")
    run_overrides = dict(overrides or {}, **method_overrides(method))
    if steps is not None:
        run_overrides["steps"] = steps
    summary = run_training(pretrain, run_overrides, data_dir, workdir)
    record = run_evaluation(workdir, dataset=probe_dataset, data_dir=data_dir,
                                     epochs=epochs, probe=probe,
                                     transfer=probe_dataset != pretrain)
    label = f"Table {row.table}" if row else "(not in the paper)"
    append_result(os.path.join(workdir_root, "results.md"),
                  results_row(record, row, method, int(summary["final_step"]), label))
    record["paper"] = row.paper[PAPER_COLUMN[method]] if row and method in PAPER_COLUMN else None
    return record


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    def define(kind, name, default, help_text, *args):
        getattr(flags, f"DEFINE_{kind}")(name, default, *args, help_text, flag_values=flag_values)

    define("string", "domain", None, f"Pretraining domain: {', '.join(paper_rows.DOMAINS)}.")
    define("enum", "method", "metamae", "metamae; dabs-mae (the paper's MAE column: DABS "
           "2.0's MAE); or mae (our MAE with a linear head, not DABS 2.0's: no paper value).",
           list(METHODS))
    define("string", "methods", None, "Run the row as a comparison of these methods "
           "(comma-separated: random and any --model of train, e.g. "
           "random,emix,shed,capri,dabs-mae,mae,metamae), each with every --seeds.")
    define("string", "seeds", "0", "Seeds of a --methods comparison (comma-separated).")
    define("string", "transfer", None, "A Table 2/3 transfer set of the domain (default: its "
           "Table 1 row).")
    define("integer", "steps", None, "Pretraining steps (default: the preset's; 100k for the "
           "paper's domains).")
    define("integer", "epochs", 100, "Epochs of the paper's probe (DABS: 100).")
    define("enum", "probe", "both", "Which linear probe(s).", ["paper", "converged", "both"])
    define("string", "workdir_root", os.path.join("workdirs", "reproduce"),
           "Runs go to <workdir_root>/<pretrain>-<method>; results.md here.")
    define("string", "data_dir", None, "Root of processed datasets (default $KERAS_METAMAE_DATA "
           "or data/processed).")
    define("string", "raw_root", None, "Root of the raw folders (default data/raw; each dataset "
           "reads <raw_root>/<its folder>).")
    define("bool", "plan", False, "Print every row (command, splits, metric, paper values, "
           "estimated cost) and exit.")


def main(invocation: cli.Invocation):
    """The command (absl): `cli.run_program` parses the flags into FLAGS first."""
    cli.quiet_tensorflow_logs()
    if FLAGS.plan or (FLAGS.dry_run and not FLAGS.domain):
        print(plan(FLAGS.steps), end="")
        return
    if not FLAGS.domain:
        raise cli.UserError("no domain given", "--domain",
                            f"pass --domain, one of {', '.join(paper_rows.DOMAINS)} (or --plan "
                            f"to list every row)")
    if FLAGS.dry_run:
        try:
            print(describe_row(FLAGS.domain, FLAGS.transfer, FLAGS.method, FLAGS.methods,
                               FLAGS.seeds, FLAGS.steps,
                               cli.storage_path(FLAGS.workdir_root, "--workdir_root")))
        except ValueError as e:
            raise cli.UserError.wrap(e, f"--domain {FLAGS.domain}",
                                     "see `python -m keras_metamae.reproduce --plan`") from e
        return 0
    if FLAGS.methods:
        return _main_comparison()
    try:
        record = reproduce(FLAGS.domain, FLAGS.method, FLAGS.transfer, FLAGS.steps, FLAGS.epochs,
                           FLAGS.probe, cli.storage_path(FLAGS.workdir_root, "--workdir_root"),
                           cli.storage_path(FLAGS.data_dir, "--data_dir"),
                           cli.local_path(FLAGS.raw_root, "--raw_root"))
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError.wrap(e, f"--domain {FLAGS.domain}",
                                 "see `python -m keras_metamae.reproduce --plan`") from e
    ours = _scaled(record["value"], record["metric"])
    if record["paper"] is not None:
        paper = f"paper {record['paper']:g}"
    elif FLAGS.method not in PAPER_COLUMN:
        paper = "no paper column: the paper's MAE column is --method dabs-mae"
    else:
        paper = "not in the paper"
    print(f"{record['pretrain_dataset']} -> {record['dataset']} ({FLAGS.method}): "
          f"{record['metric']} {ours} ({paper}); appended to "
          f"{os.path.join(FLAGS.workdir_root, 'results.md')}")


def _main_comparison():
    from keras_metamae.comparison.runner import parse_methods, parse_seeds

    try:
        methods, seeds = parse_methods(FLAGS.methods), parse_seeds(FLAGS.seeds)
        _, paths = reproduce_comparison(
            FLAGS.domain, methods, seeds, FLAGS.transfer, FLAGS.steps, FLAGS.epochs, FLAGS.probe,
            cli.storage_path(FLAGS.workdir_root, "--workdir_root"),
            cli.storage_path(FLAGS.data_dir, "--data_dir"),
            cli.local_path(FLAGS.raw_root, "--raw_root"))
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError.wrap(e, f"--domain {FLAGS.domain}",
                                 "see `python -m keras_metamae.reproduce --plan`") from e
    from keras_metamae.comparison.report import closing_text

    print()
    print(closing_text(paths))


if __name__ == "__main__":
    cli.run_program(sys.modules[__name__])
