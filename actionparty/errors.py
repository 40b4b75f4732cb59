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


def validation_error_text(err) -> tuple[tuple, str]:
    """A pydantic ``ValidationError`` -> (location of its first error, ``"dotted.key: what"``
    with "unknown key" / "missing key" for those two and "(+N more)" when there are more): the
    part after the file name of every one-line parameter error."""
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"] if not str(p).startswith(("function-after", "tagged-union")))
    what = {"extra_forbidden": "unknown key", "missing": "missing key"}.get(first["type"], first["msg"])
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return loc, f"{'.'.join(str(p) for p in loc) or '<root>'}: {what}{more}"


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
