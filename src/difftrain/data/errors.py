"""The data layer's one exception type."""


class DataError(ValueError):
    """The data cannot be read as configured; the message says what to fix."""
