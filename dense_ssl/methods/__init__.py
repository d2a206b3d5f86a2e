"""Method registry: config.method -> the class that computes its loss."""

from dense_ssl.methods import byol
from dense_ssl.methods import compose
from dense_ssl.methods import detcon_b
from dense_ssl.methods import detcon_s
from dense_ssl.methods import lc_byol
from dense_ssl.methods import scrl
from dense_ssl.methods import simclr

METHODS = {
    'byol': byol.BYOL,
    'simclr': simclr.SimCLR,
    'detcon_b': detcon_b.DetConB,
    'detcon_s': detcon_s.DetConS,
    'scrl': scrl.SCRL,
    'lc_byol': lc_byol.LCBYOL,
    # Composed from config.objectives (methods/compose.py):
    'moco': compose.Composed,
    'resim': compose.Composed,
    'clove': compose.Composed,
    'compose': compose.Composed,
}


def get_method(config):
  """Instantiates config.method; unknown names are a clear error."""
  name = config.method
  if name not in METHODS:
    raise ValueError(f'config.method={name!r} is not a known method; '
                     f'choose one of {sorted(METHODS)}.')
  return METHODS[name](config)
