"""The codebase's shape: short modules and functions, arrows that run one way."""

import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = sorted(glob.glob(os.path.join(ROOT, 'vgg_jax', '**', '*.py'), recursive=True))
SCRIPTS = [os.path.join(ROOT, 'launch.py')] + sorted(
    glob.glob(os.path.join(ROOT, 'experiments', '**', '*.py'), recursive=True))


def parse(path):
  with open(path) as f:
    return ast.parse(f.read(), path)


def imported_modules(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f'{node.module}.{alias.name}' for alias in node.names)


def module_name(path):
  return os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')


def test_library_modules_are_under_400_lines():
  long = {module_name(p): n for p in LIBRARY if (n := len(open(p).readlines())) > 400}
  assert not long


@pytest.mark.parametrize('path', LIBRARY + SCRIPTS, ids=module_name)
def test_functions_are_under_80_lines(path):
  long = [f'{node.name}: {node.end_lineno - node.lineno + 1} lines'
          for node in ast.walk(parse(path))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 80]
  assert not long


def test_library_never_imports_experiments_and_has_no_cycles():
  graph = {}
  for path in LIBRARY:
    name = module_name(path)
    imports = set(imported_modules(parse(path)))
    assert not [m for m in imports if m.split('.')[0] == 'experiments'], name
    graph[name] = {m for m in imports if m in {module_name(p) for p in LIBRARY}} - {name}

  def visit(name, stack):
    assert name not in stack, ' -> '.join(stack + [name])
    for dep in graph[name]:
      visit(dep, stack + [name])

  for name in graph:
    visit(name, [])


def test_data_modules_never_import_the_model():
  for path in glob.glob(os.path.join(ROOT, 'vgg_jax', 'data', '*.py')):
    imports = set(imported_modules(parse(path)))
    assert not imports & {'vgg_jax.models', 'vgg_jax.train', 'vgg_jax.evaluate'}, path
