"""The one exception type of `neurons.data`: a one-line, user-facing message.

It says which file or config key is wrong and how; it is not used for programming errors.
"""


class DatasetError(ValueError):
    """A dataset cannot be located, read or configured; the one-line message names the cause."""


def bad_value(key: str, allowed: str, found: object) -> DatasetError:
    """`dataset.<key>: expected <allowed>; got <found>`, the form of every dataset config error."""
    return DatasetError(f"dataset.{key}: expected {allowed}; got {found!r}")
