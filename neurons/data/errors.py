"""The one exception type of `neurons.data`: a one-line, user-facing message.

It says which file or config key is wrong and how; it is not used for programming errors.
"""


class DatasetError(ValueError):
    """A dataset cannot be located, read or configured; the one-line message names the cause."""
