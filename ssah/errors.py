"""User-facing errors. The CLI prints these as one clear line, never as a traceback."""


class SSAHError(Exception):
    """An error caused by user input (a path, a file, a flag, a config value)."""


class DataError(SSAHError):
    """A dataset path, layout, image or label file is missing or malformed."""


class ConfigError(SSAHError):
    """A config file or a ``--set`` override is invalid."""


class CheckpointError(SSAHError):
    """A checkpoint is missing, corrupt, or does not match the requested model."""


class IndexFileError(SSAHError):
    """A saved Hamming index is missing, truncated, corrupt, foreign or does not match."""
