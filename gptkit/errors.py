"""Errors that are the user's to fix: the CLI prints them as one message and exits with code 2."""

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in a recipe, a file or a command line; never shown with a traceback."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'flash'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def listing(choices: Iterable[str]) -> str:
    choices = sorted(choices)
    return ", ".join(choices) if choices else "(none)"
