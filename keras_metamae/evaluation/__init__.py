"""Judging a frozen encoder: the paper's probe and a converged probe (`probes.py`), the one
kNN (`knn.py`), the DABS metrics (`metrics.py`), the online evaluation during pretraining
(`online.py`), a run directory's evaluation (`run.py`) and the paper's published figures
(`paper_rows.py`)."""
