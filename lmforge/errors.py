"""The error users see. Every message says what is wrong, where, and how to fix it."""


class LmforgeError(Exception):
    """Base for errors caused by user input; the CLI prints them without a traceback."""


class ConfigError(LmforgeError):
    pass


class DataError(LmforgeError):
    pass


class CheckpointError(LmforgeError):
    pass
