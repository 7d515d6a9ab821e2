"""Bad input a user can fix, as one error type the CLI and every tool catch the same way.

Each module raises its own subclass of `UserError` (a config key, a malformed event record, a
checkpoint from another model, a sharding rule, a run folder file), whose message names the
file, line, field or key. `BAD_INPUT` adds a missing file; `one_line_errors` turns any of them
into one `error: ...` line and exit status 1, with no traceback. `checked` is the same for a
command-line number (argparse's usage error). This module imports nothing heavy, so a
command's `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys


class UserError(ValueError):
  """Input mfjax cannot use; the message names the file, line, field or key and what is wrong."""


BAD_INPUT = (UserError, FileNotFoundError)


@contextlib.contextmanager
def one_line_errors(prefix: str = "error: "):
  """Within the block, bad input ends the program with one line on stderr naming it (exit status 1)."""
  try:
    yield
  except BAD_INPUT as e:
    sys.exit(f"{prefix}{e}")


def checked(kind, ok, needs: str):
  """An argparse `type`: a `kind` (int, float) for which ok(value) holds, else a usage error
  naming the flag and saying what it `needs` ("at least 1", "in (0, 1]")."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not ok(value):
      raise argparse.ArgumentTypeError(f"must be {needs}, got {text}")
    return value
  return parse


positive_int = checked(int, lambda v: v >= 1, "at least 1")  # sizes, counts, repeats
