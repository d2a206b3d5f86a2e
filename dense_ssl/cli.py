"""What the entry points that take --config share: config mistakes as one line.

  parse_flags = cli.config_flags_parser('dense_ssl.main', _CONFIG)
  app.run(main, flags_parser=parse_flags)

The convention (data_pipeline/cli.py): `<prog>: ERROR: <one line>` on
stderr, exit 1 for user errors, exit 2 for flag errors (a misspelt
--config.* key, a config file that does not load, an unknown flag); the
traceback only with --verbose.
"""

import re
import sys

from absl import flags

from data_pipeline import cli as _convention

# The convention's functions, for the dense_ssl tools.
fail = _convention.fail
flags_parser = _convention.flags_parser
usage_error = _convention.usage_error
wants_help = _convention.wants_help
USAGE = _convention.USAGE


def last_line(error):
  """The last non-empty line of an error's text (or its type's name)."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return lines[-1] if lines else type(error).__name__


def _override_naming(key, argv):
  """The --config.* argument that names config key part `key`, if any."""
  for arg in argv:
    if arg.startswith('--config.'):
      path = arg[len('--'):].split('=', 1)[0]
      if key in path.split('.'):
        return arg.split('=', 1)[0]
  return None


def config_flags_parser(prog, config_flag, flag_values=None):
  """absl's flag parsing with config mistakes as one line (for app.run).

  ml_collections raises a bare AttributeError/KeyError for a misspelt
  --config.* key (a 46-line traceback); this names the key instead.
  config_flag: the FlagHolder of config_flags.DEFINE_config_file.
  flag_values: the tool's own FlagValues (so that importing it defines
  nothing on absl's global FLAGS, where another module's --out may be);
  absl's own flags (logging) are then parsed from what is left.
  """
  own = flag_values is not None and flag_values is not flags.FLAGS

  def parse_flags(argv):
    verbose = any(a in ('--verbose', '--verbose=true', '--verbose=True', '--verbose=1')
                  for a in argv)
    if _convention.wants_help(argv):   # absl's own --help exits 1.
      print((flag_values if own else flags.FLAGS).main_module_help())
      sys.exit(0)
    try:
      if own:
        rest = flags.FLAGS(flag_values(argv, known_only=True))
      else:
        rest = flags.FLAGS(argv)
      try:  # A config file that fails to load is only reported on first use.
        config_flag.value.get('name')
      except (OSError, AttributeError) as e:
        if verbose:
          raise
        config_arg = next((a for a in argv if a.startswith('--config=')), '--config')
        fail(prog, f'{config_arg}: cannot load the config file: {last_line(e)}', USAGE)
      return rest
    except flags.Error as e:
      if verbose:
        raise
      text = str(e)
      if 'Traceback (most recent call last)' in text:  # The config file raised.
        text = f'{text.splitlines()[0].rstrip(":")}: {last_line(text)}'
      usage_error(prog, text)
    except (AttributeError, KeyError) as e:
      if verbose:
        raise
      inner = e   # AttributeError(KeyError("'key'\nDid you mean ...")) -> the text
      while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
      text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
      match = re.match(r"^'([^']+)'", text)
      key = match[1] if match else None
      suggestion = re.search(r'Did you mean "([^"]+)"', text)
      flag = _override_naming(key, argv[1:]) if key else None
      hint = f' (did you mean {suggestion[1]!r}?)' if suggestion else ''
      if flag:
        fail(prog, f'{flag}: config.{flag[len("--config."):]} is not a config key{hint}; '
             'see the config file for the keys there are.', USAGE)
      fail(prog, f'a --config.* override names no config key: {text.splitlines()[0]}{hint}',
           USAGE)
    except Exception as e:  # pylint: disable=broad-except
      # The config file itself (--config=FILE:PRESET) failed to load, e.g. an
      # unknown preset.
      if verbose:
        raise
      fail(prog, f'--config: {type(e).__name__}: {e} (--verbose shows the traceback)', USAGE)

  return parse_flags
