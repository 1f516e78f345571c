"""The exception types the command line turns into exit codes, in a module that imports nothing
heavy: `difftrain` reports a bad argument or a missing file without loading torch or diffusers.

Each is re-exported where it belongs (difftrain.data, difftrain.pipeline.checkpoint,
difftrain.train.loop); ConfigError lives in difftrain.config, which is light too.
"""


class DataError(ValueError):
    """The data cannot be read as configured; the message says what to fix."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt."""


class TrainingDiverged(RuntimeError):
    """Too many rollbacks; forensics.json in the run directory says where it went wrong."""
