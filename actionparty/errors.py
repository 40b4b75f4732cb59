"""Errors a user can cause (bad parameters, bad data, missing files).

The CLI turns each into one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input named in one line: the file or field, and what is wrong with it."""


class ProfileError(UserError):
    """A params/ profile that fails validation."""


class DatasetError(UserError):
    """Episodes or LMDB files that are missing, mismatched or corrupt."""


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts (steps, threads, workers, windows): an integer >= 1, else
    argparse's one-line usage error and exit 2."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value
