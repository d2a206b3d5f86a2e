"""The errors of the mask precompute."""


class PrecomputeError(Exception):
  """The command cannot run as given; the message says what to change (exit 1)."""


class FlagError(PrecomputeError):
  """The flags do not parse: an unknown flag or Beam pipeline option (exit 2)."""


class ImageFailure(Exception):
  """One input cannot be stored; the message is its reason in the manifest."""


class Interrupted(Exception):
  """The run was stopped by a signal; complete shards are kept (exit 128 + signum).

  The message says what is complete and how to resume (the same command).
  """

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum
