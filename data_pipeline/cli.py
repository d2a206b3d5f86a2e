"""What the data tools' command lines share: --help and flag errors on a private FlagValues.

The tools (precompute_masks, make_demo_dataset, mask_quality) parse their own
`flags.FlagValues()` so that importing them never touches absl's global flags,
and return an exit status instead of calling sys.exit (tests call main()).
"""

import sys

from absl import flags

HELP = ('-h', '--help', '-help', '--helpfull')


def parse(flag_values, argv, prog, doc, *, known_only=False):
  """Parses argv into flag_values: (remaining args, None) or (None, exit status).

  --help prints `doc` and the flags (status 0); a flag error prints one line
  `<prog>: error: ...` (status 2). known_only leaves unknown flags in the
  remaining args (precompute_masks passes them to Beam).
  """
  argv = list(sys.argv if argv is None else argv)
  if any(a in HELP for a in argv[1:]):
    print(doc)
    print(flag_values.get_help())
    return None, 0
  flag_values.unparse_flags()
  try:
    return flag_values(argv, known_only=known_only), None
  except flags.Error as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return None, 2
