r"""Plots training curves from a workdir's TensorBoard event files to a PNG.

  python -m dense_ssl.plot_curves --workdir=out/demo/detcon_b --out=loss.png
  python -m dense_ssl.plot_curves --workdir=DIR --out=lr.png --tags=learning_rate
  python -m dense_ssl.plot_curves --workdir=out/demo/detcon_b --out=learning.png --learning

By default every scalar whose tag contains "loss" gets its own panel.
--learning draws whether the features learn (dense_ssl/online_eval.py): the
self-supervised loss; the online probes on the training batches (probe/miou,
probe/top1: one point per logging window); the held-out probe and kNN
(eval/*: one point per evaluation) beside their random-init floor (dashed).
"""

import glob
import os

from absl import app
from absl import flags

from dense_ssl import cli

PROG = 'dense_ssl.plot_curves'
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (holds event files).')
_OUT = flags.DEFINE_string('out', None, 'PNG to write.')
_LEARNING = flags.DEFINE_bool('learning', False, 'The loss, the online and held-out '
                              'probes and their random-init floor in one figure.')
_TAGS = flags.DEFINE_list('tags', [], 'Scalar tags to plot (substring match); default: tags containing "loss".')


def read_scalars(workdir):
  """Returns {tag: sorted [(step, value)]} from all event files below `workdir`."""
  from data_pipeline import tf_setup
  tf = tf_setup.hide_accelerators()
  files = sorted(glob.glob(os.path.join(workdir, '**', 'events.out.tfevents.*'), recursive=True))
  series = {}
  for path in files:
    # The records parsed as Events (summary_iterator, which did this, is
    # deprecated and says so on stderr).
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      for v in event.summary.value:
        if v.HasField('simple_value'):
          value = v.simple_value
        elif v.HasField('tensor') and not v.tensor.string_val:
          value = float(tf.make_ndarray(v.tensor))
        else:
          continue
        # A resumed run rewrites steps after its checkpoint: keep the latest value.
        series.setdefault(v.tag, {})[event.step] = value
  return {tag: sorted(d.items()) for tag, d in series.items()}


def _save(fig, out):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def _summary(series, tags):
  for tag in tags:
    first, last = series[tag][0], series[tag][-1]
    print(f'{tag}: step {first[0]} = {first[1]:.4f} -> step {last[0]} = {last[1]:.4f}')


def plot(series, tags, out):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.6), squeeze=False)
  for ax, tag in zip(axes[0], tags):
    steps, values = zip(*series[tag])
    ax.plot(steps, values, lw=1.2)
    ax.set_title(tag)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  _save(fig, out)


# (panel title, online tag, held-out tag, floor tag) of --learning.
_LEARNING_PANELS = (
    ('dense probe mIoU (%)', 'probe/miou', 'eval/probe_miou', 'eval/probe_miou_floor'),
    ('classifier / kNN top-1 (%)', 'probe/top1', 'eval/knn_top1', 'eval/knn_top1_floor'),
)


def plot_learning(series, out):
  """The self-supervised loss and every probe the run logged, with their floors."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  panels = [p for p in _LEARNING_PANELS if any(t in series for t in p[1:])]
  fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5 * (1 + len(panels)), 3.6),
                           squeeze=False)
  steps, values = zip(*series['train/loss'])
  axes[0][0].plot(steps, values, lw=1.2)
  axes[0][0].set_title('self-supervised loss')
  for ax, (title, online, held_out, floor) in zip(axes[0][1:], panels):
    if online in series:
      s, v = zip(*series[online])
      ax.plot(s, [100 * x for x in v], lw=1.2, label='online probe (training batches)')
    if held_out in series:
      s, v = zip(*series[held_out])
      ax.plot(s, [100 * x for x in v], 'o-', ms=5, label='held-out')
    if floor in series:
      ax.axhline(100 * series[floor][-1][1], ls='--', c='gray', label='random-init floor')
    ax.set_title(title)
    ax.legend(fontsize=8)
  for ax in axes[0]:
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  _save(fig, out)


def main(argv):
  del argv   # Leftover arguments are refused by cli.flags_parser.
  series = read_scalars(_WORKDIR.value)
  if not series:
    cli.fail(PROG, f'--workdir={_WORKDIR.value}: no TensorBoard scalars there: has '
             'training run there yet?')
  if _LEARNING.value:
    if 'train/loss' not in series:
      cli.fail(PROG, f'--workdir={_WORKDIR.value}: no train/loss scalar there')
    plot_learning(series, _OUT.value)
    _summary(series, [t for t in ('train/loss',) + tuple(t for p in _LEARNING_PANELS
                                                          for t in p[1:]) if t in series])
    print(f'wrote {_OUT.value}')
    return
  wanted = _TAGS.value or ['loss']
  tags = sorted(t for t in series if any(w in t for w in wanted))
  if not tags:
    cli.fail(PROG, f'--tags={",".join(wanted)}: no scalar tag matches; '
             f'available: {", ".join(sorted(series))}')
  plot(series, tags, _OUT.value)
  _summary(series, tags)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main, flags_parser=cli.flags_parser(PROG))
