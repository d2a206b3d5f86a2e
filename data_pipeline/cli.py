"""The command-line convention of every entry point (data_pipeline and dense_ssl).

  <tool>: ERROR: <one line>     on stderr, exit status 1: a user error,
                                anything the tool refuses once its flags
                                are parsed (a value out of range, a missing
                                dataset, a damaged checkpoint, a refused
                                output folder); the traceback only with
                                --verbose where the tool has it.
  <tool>: ERROR: <flag problem> (--help lists the flags)
                                exit status 2: the flags do not parse (an
                                unknown flag, a malformed value, a required
                                flag missing, arguments left over).

<tool> is what follows `python -m`, e.g. dense_ssl.main,
data_pipeline.precompute_masks. The data tools parse their own
`flags.FlagValues()`, so that importing them never touches absl's global
flags, and return an exit status instead of calling sys.exit (tests call
main()); the dense_ssl tools run under absl's app.run with
`flags_parser(...)` or dense_ssl.cli's config parser.
"""

import sys

from absl import flags

HELP = ('-h', '--help', '-help', '--helpfull')
FAILURE = 1   # A user error.
USAGE = 2     # A flag error.


def error(prog, message):
  """Prints `<prog>: ERROR: message` on stderr (for tools that return a status)."""
  print(f'{prog}: ERROR: {message}', file=sys.stderr, flush=True)


def fail(prog, message, code=FAILURE):
  """Prints `<prog>: ERROR: message` on stderr and exits with `code`."""
  error(prog, message)
  sys.exit(code)


def usage_message(message):
  """One line: absl lists several missing required flags on lines of their own."""
  text = '; '.join(l.strip() for l in str(message).splitlines() if l.strip())
  return f'{text} (--help lists the flags)'


def wants_help(argv):
  return any(a in HELP or a == '--helpshort' for a in list(argv)[1:])


def usage_error(prog, message):
  """A flag problem: one line, exit status 2."""
  fail(prog, usage_message(message), USAGE)


def parse(flag_values, argv, prog, doc, *, known_only=False):
  """Parses argv into flag_values: (remaining args, None) or (None, exit status).

  --help prints `doc` and the flags (status 0); a flag error prints one line
  `<prog>: ERROR: ...` (status 2). known_only leaves unknown flags in the
  remaining args (precompute_masks passes them to Beam).
  """
  argv = list(sys.argv if argv is None else argv)
  if wants_help(argv):
    print(doc)
    print(flag_values.get_help())
    return None, 0
  flag_values.unparse_flags()
  try:
    return flag_values(argv, known_only=known_only), None
  except flags.Error as e:
    error(prog, usage_message(e))
    return None, USAGE


def flags_parser(prog, flag_values=None):
  """absl's flag parsing for app.run(main, flags_parser=...), flag errors as one line.

  absl's own parser prints "FATAL Flags parsing error" and exits 1; here a
  bad, unknown or missing required flag (flags.mark_flags_as_required) is
  `<prog>: ERROR: ...` and exit status 2, and arguments left over are one too.
  """
  flag_values = flag_values or flags.FLAGS

  def parse_flags(argv):
    if wants_help(argv):   # absl's own --help exits 1; help is not an error.
      print(flag_values.main_module_help())
      sys.exit(0)
    try:
      rest = flag_values(argv)
    except flags.Error as e:
      usage_error(prog, e)
    if len(rest) > 1:
      usage_error(prog, f'unexpected arguments: {rest[1:]}')
    return rest

  return parse_flags
