"""What every command of the project shares, the Beam job's and the trainer's alike: flags
and one-line user errors (`cli.py`), progress lines (`progress.py`). It imports nothing of
the project, so `pipeline/` and `keras_metamae/` can both stand on it."""
