"""Pretraining a method: the run in named steps (`run.py`), the compiled model (`build.py`),
strategy and XLA (`strategy.py`), multi-worker clusters (`multiworker.py`), callbacks and
TensorBoard (`callbacks.py`), reconstruction panels (`panels.py`), learning-rate schedules
(`schedules.py`) and host memory (`host_memory.py`)."""
