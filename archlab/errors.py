"""User-facing errors.

Anything the *user* got wrong (a bad recipe, an unknown model, a missing file, a run directory that
is not one) raises :class:`ArchlabError`. The command line prints its message on one line and exits
with code 2; library users catch it like any other exception. Bugs stay ordinary exceptions so that
they keep their traceback.
"""

from __future__ import annotations


class ArchlabError(Exception):
    """A mistake in the user's input, reported as one line (exit code 2 on the command line)."""


class DataUnavailable(ArchlabError):
    """A dataset file is missing and could not be downloaded."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf; the message names the step."""
