"""Which Beam runner the preprocessing job gets, and a pre-flight check of a Dask cluster.

- No `--runner`, `DirectRunner`, `FnApiRunner`: Beam's in-process FnApiRunner (the DirectRunner
  would first try to download the Prism runner, which fails offline).
- `DaskRunner` (or its class path `apache_beam.runners.dask.dask_runner.DaskRunner`, which is all
  Beam itself accepts): Beam's DaskRunner on the `dask.distributed` scheduler at
  `--dask_client_address tcp://HOST:PORT` (or `--dask_scheduler_file`; neither: a LocalCluster).
  Before the job starts, the scheduler and every worker must import this project (they unpickle
  its DoFns); a cluster that cannot is reported up front instead of failing or hanging later
  (workers that fail to unpickle a task shut down, and the job then waits forever).
- Anything else (DataflowRunner, FlinkRunner, SparkRunner, PrismRunner, ...) goes to Beam as is.

The options come after `--` on the preprocess command line (`python -m pipeline.preprocess
--dataset eurosat -- --runner DaskRunner ...`); `check_beam_options` refuses one Beam does not
know, which Beam itself would only log and ignore.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import time
from typing import Any, Callable

LOCAL_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner")
DASK_RUNNER_CLASS = "apache_beam.runners.dask.dask_runner.DaskRunner"
DASK_RUNNERS = ("DaskRunner", DASK_RUNNER_CLASS)
# Seconds for the scheduler to have a worker, and for every worker to run the import check
# (a first `import pipeline.transforms` loads Beam and NumPy: seconds on a busy machine).
DASK_CHECK_TIMEOUT_S = 120.0
DASK_CONNECT_TIMEOUT_S = 30
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIP_THE_CODE = (
    "make this repository importable there: start the scheduler and every worker with "
    f"PYTHONPATH=<a checkout of this commit> (here {REPO_ROOT}), or pip install it (or a wheel "
    "built by `pip wheel --no-deps -w dist .`) into their environment (Beam's --setup_file is "
    "not used by the DaskRunner); see BUILD.md, 'Running the Beam job elsewhere'")


class RunnerError(ValueError):
    """A runner flag the job cannot run with; the message says which and what to do."""


# Beam registers a runner's own options when its module is imported (the others are defined
# with PipelineOptions itself).
_RUNNER_OPTION_MODULES = {"dask": "apache_beam.runners.dask.dask_runner"}


def _beam_option_parser(with_dask: bool):
    """An argument parser knowing every Beam pipeline option (Beam builds the same one to read
    them, in `PipelineOptions.get_all_options`)."""
    # Importing Beam logs a warning about optional GCP client libraries: noise in an error line.
    logging.disable(logging.WARNING)
    try:
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
    finally:
        logging.disable(logging.NOTSET)
    if with_dask:
        try:
            importlib.import_module(_RUNNER_OPTION_MODULES["dask"])
        except ImportError:
            pass  # reported by `_require_dask` when the runner is built
    parser = _BeamArgumentParser(allow_abbrev=False)
    option_classes = {}
    for cls in PipelineOptions.__subclasses__():
        option_classes.setdefault(str(cls), cls)
    for cls in option_classes.values():
        cls._add_argparse_args(parser)  # the hook each PipelineOptions subclass defines
    return parser


def _option_names(parser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings]


def is_beam_option(name: str) -> bool:
    """Whether `--name` is a Beam pipeline option (e.g. `runner`, `dask_client_address`)."""
    return f"--{name}" in _option_names(_beam_option_parser(with_dask="dask" in name))


def beam_option_takes_value(name: str) -> bool:
    """Whether Beam's option `--name` reads a value (`--runner X`), not a switch
    (`--save_main_session`)."""
    parser = _beam_option_parser(with_dask="dask" in name)
    action = parser._option_string_actions.get(f"--{name}")
    return action is not None and action.nargs != 0


def check_beam_options(beam_args: list[str]) -> None:
    """Raises RunnerError naming the first argument Beam's PipelineOptions would ignore (a
    misspelt `--runer DataflowRunner` would otherwise run the job locally)."""
    if not beam_args:
        return
    # Dask's options (and its import) only when the arguments mention it.
    parser = _beam_option_parser(with_dask=any("dask" in arg.lower() for arg in beam_args))
    _, unknown = parser.parse_known_args(beam_args)
    if not unknown:
        return
    first = next((arg for arg in unknown if arg.startswith("-")), unknown[0])
    name = first.split("=", 1)[0]
    close = difflib.get_close_matches(name, _option_names(parser), n=1) if name.startswith("--") else []
    hint = f"did you mean {close[0]}? " if close else ""
    raise RunnerError(f"unknown Beam pipeline option after `--` ({first}): {hint}everything "
                      f"after `--` goes to Beam's PipelineOptions, which would ignore it")


def runner_name(beam_args: list[str]) -> str | None:
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    return PipelineOptions(beam_args).view_as(StandardOptions).runner


def is_dask(beam_args: list[str]) -> bool:
    return runner_name(beam_args) in DASK_RUNNERS


def with_dask_defaults(beam_args: list[str], num_sources: int) -> list[str]:
    """`beam_args` plus `--dask_npartitions=<num_sources>` unless a partitioning is given: the
    DaskRunner turns a Reshuffle into nothing and puts up to 128 elements of a Create in one
    partition (= one task), so without this all sources would be read by a single worker."""
    if any(a.split("=")[0] in ("--dask_npartitions", "--dask_partition_size") for a in beam_args):
        return list(beam_args)
    return list(beam_args) + [f"--dask_npartitions={max(1, num_sources)}"]


def _prepend_pythonpath(path: str) -> None:
    """Subprocess workers started from here (multi_processing, a Dask LocalCluster) must be able
    to import this repository's packages."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if path not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([path] + [p for p in paths if p])


def make_pipeline(beam_args: list[str]):
    """A beam.Pipeline from pass-through flags (see the module docstring for the runner)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    options = PipelineOptions(beam_args)
    name = runner_name(beam_args)
    if name in LOCAL_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        if options.view_as(DirectOptions).direct_running_mode != "in_memory":
            _prepend_pythonpath(REPO_ROOT)
        return beam.Pipeline(runner=fn_runner.FnApiRunner(), options=options)
    if name in DASK_RUNNERS:
        _require_dask(name)
        from apache_beam.runners.dask.dask_runner import DaskRunner

        _prepend_pythonpath(REPO_ROOT)
        return beam.Pipeline(runner=DaskRunner(), options=options)
    return beam.Pipeline(options=options)


def run_graph(beam_args: list[str], build: Callable[[Any], None]) -> None:
    """Builds the graph with `build(pipeline)`, runs it to the end, and closes the Dask client
    the DaskRunner opened (it leaves it open, with its connections and threads)."""
    pipeline = make_pipeline(beam_args)
    try:
        with pipeline as p:
            build(p)
    finally:
        client = getattr(getattr(pipeline, "result", None), "client", None)
        if client is not None:
            client.close()


def _require_dask(name: str) -> None:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as e:
        raise RunnerError(f"{e.name} is not installed (--runner {name}): install the pinned "
                          f"dask and distributed from requirements.txt (pip install -r "
                          f"requirements.txt)") from e


def _flag_of(address: str | None, scheduler_file: str | None) -> str:
    if address:
        return f"--dask_client_address {address}"
    return f"--dask_scheduler_file {scheduler_file}"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def check_dask_cluster(beam_args: list[str], modules: list[str],
                       timeout_s: float = DASK_CHECK_TIMEOUT_S) -> None:
    """Raises RunnerError unless the Dask scheduler named by `beam_args` is reachable, has a
    worker, and it and every worker can import `modules`. A LocalCluster (no address) is
    started by the DaskRunner from this process's environment and is not checked."""
    from apache_beam.options.pipeline_options import PipelineOptions

    name = runner_name(beam_args)
    _require_dask(name)
    import distributed
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = PipelineOptions(beam_args).view_as(DaskOptions)
    address, scheduler_file = dask_options.address, dask_options.scheduler_file
    if not address and not scheduler_file:
        return
    flag = _flag_of(address, scheduler_file)
    connect_s = dask_options.timeout if isinstance(dask_options.timeout, int) else DASK_CONNECT_TIMEOUT_S
    try:
        client = distributed.Client(address=address, scheduler_file=scheduler_file,
                                    timeout=connect_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise RunnerError(f"cannot reach the Dask scheduler ({flag}): {_one_line(e)}; start one "
                          f"with `dask scheduler` and pass the address it prints") from e
    try:
        _check_connected_cluster(client, flag, "import " + ", ".join(modules), timeout_s)
    finally:
        client.close()


def _check_connected_cluster(client, flag: str, code: str, timeout_s: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError as e:
        raise RunnerError(f"the Dask scheduler has no worker after {timeout_s:.0f} s ({flag}): "
                          f"start workers with `dask worker <scheduler address>`") from e
    # `exec` is a builtin, so the check itself needs nothing of this project to unpickle.
    try:
        client.run_on_scheduler(exec, code)
    except Exception as e:
        raise RunnerError(f"the Dask scheduler cannot import this project ({flag}): "
                          f"{_one_line(e)}; {SHIP_THE_CODE}") from e
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    futures = [client.submit(exec, code, workers=[w], allow_other_workers=False, pure=False)
               for w in workers]
    deadline = time.monotonic() + timeout_s
    try:
        for worker, future in zip(workers, futures):
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError as e:
                raise RunnerError(f"Dask worker {worker} did not run a one-line import check "
                                  f"within {timeout_s:.0f} s ({flag}): see that worker's log; "
                                  f"restart it, or remove it from the cluster") from e
            except Exception as e:
                raise RunnerError(f"Dask worker {worker} cannot import this project ({flag}): "
                                  f"{_one_line(e)}; {SHIP_THE_CODE}") from e
    finally:
        client.cancel(futures)
