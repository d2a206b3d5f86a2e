"""The two errors of the mask precompute."""


class PrecomputeError(Exception):
  """The command cannot run as given; the message says what to change."""


class ImageFailure(Exception):
  """One input cannot be stored; the message is its reason in the manifest."""
