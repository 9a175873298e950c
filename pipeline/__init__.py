"""The Beam job (pipeline/preprocess.py)."""

import logging


class _NoBigQueryNotice(logging.Filter):
    """With google-cloud-storage installed (Beam's gs://), importing Beam logs a warning on the
    root logger that BigQuery's client is missing; this job uses no BigQuery."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found, and bigquery client")


logging.getLogger().addFilter(_NoBigQueryNotice())
