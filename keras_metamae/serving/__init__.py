"""Serving the frozen encoder: SavedModel signatures on raw inputs and tokens for TensorFlow
Serving, `encoder.keras` for fine-tuning (`saved_model.py`), written as versions into a run
directory (`export.py`)."""
