"""The layout stays as simple as the math: one method, no import cycles, and
documentation that names only files that exist."""

import ast
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('dense_ssl', 'data_pipeline', 'configs', 'benchmarks')


def _modules():
  mods = {}
  for pkg in PACKAGES:
    for root, _, files in os.walk(os.path.join(REPO, pkg)):
      for f in files:
        if f.endswith('.py'):
          path = os.path.join(root, f)
          name = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
          mods[name.removesuffix('.__init__')] = path
  return mods


def _import_graph(mods):
  graph = {}
  for name, path in mods.items():
    deps = set()
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          sub = f'{node.module}.{a.name}'
          deps.add(sub if sub in mods else node.module)
    # A module runs its parent packages' __init__ first: not a design edge.
    graph[name] = {d for d in deps if d in mods and d != name
                   and not name.startswith(d + '.')}
  return graph


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  assert _cycles(_import_graph(_modules())) == []


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


# The layers, lowest first: a module may import its own layer and those below.
LAYERS = ('data_pipeline', 'dense_ssl', 'configs', 'benchmarks')


def _upward_imports(graph):
  rank = lambda m: LAYERS.index(m.split('.')[0])
  return sorted((a, b) for a, deps in graph.items() for b in deps if rank(b) > rank(a))


def test_no_import_from_a_lower_layer_to_a_higher_one():
  """data_pipeline (records, masks, tf.data) imports nothing of dense_ssl
  (the model, the trainer, the tools on top); lazy imports count too."""
  assert _upward_imports(_import_graph(_modules())) == []


def test_the_layer_check_finds_an_upward_import():
  graph = {'data_pipeline.visualize': {'dense_ssl.ops.color'}, 'dense_ssl.train':
           {'data_pipeline.input_pipeline'}, 'configs.byol': {'dense_ssl.objectives'}}
  assert _upward_imports(graph) == [('data_pipeline.visualize', 'dense_ssl.ops.color')]


def test_tensorflow_is_imported_only_through_tf_setup():
  """The first import of TensorFlow is the quiet one wherever it happens
  (data_pipeline/tf_setup.py): no other module imports it itself."""
  found = []
  for name, path in _modules().items():
    if name == 'data_pipeline.tf_setup':
      continue
    with open(path) as f:
      for node in ast.walk(ast.parse(f.read())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        if any(n == 'tensorflow' or n.startswith('tensorflow.') for n in names):
          found.append(name)
  assert found == []


def test_one_method_class():
  found = []
  for path in _modules().values():
    with open(path) as f:
      for node in ast.walk(ast.parse(f.read())):
        if isinstance(node, ast.ClassDef) and node.name.endswith('Method'):
          found.append((os.path.relpath(path, REPO), node.name))
  assert found == [('dense_ssl/method.py', 'Method')]


def test_every_objective_is_one_file_registered_once():
  from dense_ssl import objectives  # pylint: disable=g-import-not-at-top
  folder = os.path.join(REPO, 'dense_ssl', 'objectives')
  files = {f[:-3] for f in os.listdir(folder) if f.endswith('.py')} - {'__init__', 'base'}
  assert files == set(objectives.REGISTRY)
  for name, cls in objectives.REGISTRY.items():
    assert cls.__module__ == f'dense_ssl.objectives.{name}' and cls.name == name


# Paths like dense_ssl/method.py, configs/detcon_b.py, tests/test_x.py,
# benchmarks/results/x.md, launch/demo.sh named in code and docs.
_PATH = re.compile(r'(?<![\w/.-])((?:dense_ssl|data_pipeline|configs|tests|benchmarks|launch|'
                   r'detectron2_configs)/[\w/.-]*\w)')
# Written by the tools (results), placeholders, and Detectron2's own tree.
_SKIP = ('benchmarks/results/', 'tests/test_x.py', 'configs/Base-RCNN-FPN.yaml',
         'configs/nope.py')  # The missing-config-file example of WORKSPACE section 9.


def _documents():
  for top in ('README.md', 'WORKSPACE.md', 'FACTS.md'):
    yield os.path.join(REPO, top)
  for pkg in PACKAGES + ('tests', 'launch'):
    for root, _, files in os.walk(os.path.join(REPO, pkg)):
      for f in files:
        if f.endswith(('.py', '.sh', '.md')):
          yield os.path.join(root, f)


def test_docs_and_docstrings_name_files_that_exist():
  missing = []
  for doc in _documents():
    with open(doc, encoding='utf-8') as f:
      text = f.read()
    for m in _PATH.finditer(text):
      ref = m.group(1).rstrip('.')
      if ref.startswith(_SKIP) or '*' in ref or '<' in ref:
        continue
      # `data_pipeline/augment.grid_label_map`: a module and a name in it.
      module = ref.split('.', 1)[0] + '.py'
      if not (os.path.exists(os.path.join(REPO, ref)) or
              ('.' in ref and not ref.endswith('.py') and
               os.path.exists(os.path.join(REPO, module)))):
        missing.append(f'{os.path.relpath(doc, REPO)}: {ref}')
  assert not missing, '\n'.join(sorted(set(missing)))


@pytest.mark.parametrize('name', ['CONTRACT.md'])
def test_no_reference_to_a_missing_top_level_file(name):
  assert not os.path.exists(os.path.join(REPO, name))
  hits = [os.path.relpath(d, REPO) for d in _documents()
          if name in open(d).read() and not d.endswith('test_layout.py')]
  assert hits == []


def _repository_files():
  """Tracked files and new ones git does not ignore (a clone's contents)."""
  try:
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                         cwd=REPO, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout: the list of tracked files is unknown')
  for rel in sorted(set(out.decode().split('\0')) - {''}):
    path = os.path.join(REPO, rel)
    if os.path.isfile(path) and not rel.startswith(('.venv/', '.git/')):
      yield rel, path


def _text(path):
  with open(path, 'rb') as f:
    data = f.read()
  return None if b'\0' in data else data.decode('utf-8', 'replace')


# What a clone lacks: the notes file beside the checkout and that folder. The
# character classes keep this file from citing them itself.
_OUTSIDE = re.compile(r'NOTE[S]\.md|\.\./shar[e]d/|shar[e]d/NOTE[S]')


def test_nothing_cites_a_file_outside_the_repository():
  """Facts the code relies on live in FACTS.md, not in a folder beside the
  checkout (a clone does not have it)."""
  hits = []
  for rel, path in _repository_files():
    text = _text(path)
    if text is None:
      continue
    for n, line in enumerate(text.splitlines(), 1):
      if _OUTSIDE.search(line):
        hits.append(f'{rel}:{n}: {line.strip()}')
  assert not hits, ('cite FACTS.md and its section instead:\n' + '\n'.join(hits))


_FACTS_SECTION = re.compile(r'^## (\d+)\. (\S.*)$', re.M)
# `FACTS.md §5`, `FACTS.md, section 9`, `FACTS.md §3 "The padding trap"`: a
# quoted title, when it closes on the same line, must begin the section's.
_FACTS_CITATION = re.compile(r'FACTS\.md,?\s*(?:§\s*|section\s+)(\d+)(?:,?\s*\(?"([^"\n]+)")?')


def test_facts_sections_are_numbered_and_citations_name_one():
  with open(os.path.join(REPO, 'FACTS.md'), encoding='utf-8') as f:
    sections = _FACTS_SECTION.findall(f.read())
  numbers = [int(n) for n, _ in sections]
  assert numbers and numbers == list(range(1, len(numbers) + 1)), numbers
  titles = {int(n): t for n, t in sections}
  wrong = []
  for rel, path in _repository_files():
    text = _text(path)
    if text is None:
      continue
    for m in _FACTS_CITATION.finditer(text):
      num, title = int(m.group(1)), m.group(2)
      if num not in titles or (title and not titles[num].startswith(title)):
        wrong.append(f'{rel}: {m.group(0)!r} matches no section number and title of FACTS.md')
  assert not wrong, '\n'.join(wrong)


@pytest.mark.xdist_group('layout')
def test_xdist_groups_are_honoured(request):
  """launch/test.sh's `--dist loadgroup` keeps each xdist_group on one worker
  (the multi-process tests one after another, one shared training run); some
  pytest / pytest-xdist pairs silently do not (pytest 9.2 with xdist 3.8:
  requirements-dev.txt), and the suite then runs, slower and with
  multi-process launches side by side."""
  if not getattr(request.config.option, 'loadgroup', False):
    pytest.skip('not run by pytest-xdist with --dist loadgroup')
  assert request.node.nodeid.endswith('@layout'), (
      f'pytest-xdist did not group {request.node.nodeid}: pytest {pytest.__version__} '
      'and this pytest-xdist do not work together; install requirements-dev.txt')
