"""The one error type of the data layer (its own module: both readers raise it)."""


class DataError(ValueError):
    """Processed data that is missing, incomplete, corrupt or does not match its spec."""
