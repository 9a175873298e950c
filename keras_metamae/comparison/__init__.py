"""Comparing pretraining methods on one dataset: every method × seed pretrained and probed the
same way, resumably (`runner.py`), and the results with intervals over seeds, a verdict and a
plot (`report.py`). `python -m keras_metamae.compare` and `reproduce` run it."""
