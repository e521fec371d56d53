"""The one exception type users see as a short message instead of a traceback."""


class MedweaveError(Exception):
    """Bad input or configuration: the message names what is wrong and what was expected."""
