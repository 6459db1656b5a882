"""The error users see. Every message says what is wrong, where, and how to fix it."""


class LmforgeError(Exception):
    """Base for errors caused by user input; the CLI prints them without a traceback."""


class ConfigError(LmforgeError):
    pass


class DataError(LmforgeError):
    pass


class MissingColumnError(DataError):
    """A table without the text column asked for. The reader does not know how the column was
    named (a flag, a config key): the caller that does adds the fix (`with_fix`)."""

    def __init__(self, file, column: str, columns):
        self.file, self.column, self.columns = file, column, [str(c) for c in columns]
        super().__init__(
            f"{file} has no column '{column}'. Columns present: "
            f"{', '.join(self.columns) or '(none)'}."
        )

    def with_fix(self, how: str) -> DataError:
        """The same error with how to name the column, e.g. "Set data.text_column to ..."."""
        return DataError(f"{self} {how}")


class CheckpointError(LmforgeError):
    pass
