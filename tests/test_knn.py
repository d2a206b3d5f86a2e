"""dense_ssl/knn.py against hand-built clusters and a float64 numpy re-derivation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dense_ssl import knn


def reference_votes(bank, bank_labels, queries, num_classes, k, temperature):
  """votes_ic from the full [Q, N] similarity matrix, in float64."""
  b = bank.astype(np.float64)
  b /= np.linalg.norm(b, axis=1, keepdims=True)
  q = queries.astype(np.float64)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  sims = q @ b.T
  # Stable: equal similarities go to the earlier bank entry, as in knn.py.
  order = np.argsort(-sims, axis=1, kind='stable')[:, :k]
  weights = np.exp(np.take_along_axis(sims, order, 1) / temperature)
  votes = np.zeros((len(q), num_classes))
  rows = np.repeat(np.arange(len(q)), order.shape[1])
  np.add.at(votes, (rows, bank_labels[order].ravel()), weights.ravel())
  return votes


def random_problem(seed, num_bank, num_queries, dim, num_classes):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(num_bank, dim)).astype(np.float32),
          rng.integers(0, num_classes, num_bank),
          rng.normal(size=(num_queries, dim)).astype(np.float32))


def test_separated_clusters_are_classified_exactly():
  rng = np.random.default_rng(0)
  centres = 10.0 * np.eye(8)[:3]                              # 3 classes
  bank_labels = np.repeat(np.arange(3), 30)
  bank = centres[bank_labels] + rng.normal(scale=0.3, size=(90, 8))
  query_labels = np.repeat(np.arange(3), 10)
  queries = centres[query_labels] + rng.normal(scale=0.3, size=(30, 8))
  result = knn.knn_accuracy(bank, bank_labels, queries, query_labels,
                            num_classes=3, query_chunk=7, bank_chunk=16)
  assert result == {'top1': 1.0}
  votes = np.asarray(knn.knn_predict(bank, bank_labels, queries, num_classes=3))
  # All 20 neighbours come from the query's own cluster.
  assert np.all(votes[np.arange(30), query_labels] == votes.sum(1))


@pytest.mark.parametrize('query_chunk,bank_chunk,k', [
    (37, 101, 20),   # one chunk each
    (8, 16, 20),     # k larger than a bank chunk; neither divides its size
    (5, 7, 3),
    (1, 1, 4),       # one entry at a time
    (64, 512, 20),   # chunks larger than the data
])
def test_votes_match_float64_reference(query_chunk, bank_chunk, k):
  bank, bank_labels, queries = random_problem(1, 101, 37, 16, 10)
  votes = knn.knn_predict(bank, bank_labels, queries, num_classes=10, k=k,
                          query_chunk=query_chunk, bank_chunk=bank_chunk)
  assert votes.shape == (37, 10) and votes.dtype == jnp.float32
  np.testing.assert_allclose(
      votes, reference_votes(bank, bank_labels, queries, 10, k, 0.07),
      rtol=1e-5)


def test_k_larger_than_bank_uses_the_whole_bank():
  bank, bank_labels, queries = random_problem(2, 6, 9, 5, 4)
  votes = knn.knn_predict(bank, bank_labels, queries, num_classes=4, k=20,
                          temperature=0.5, bank_chunk=4)
  expected = reference_votes(bank, bank_labels, queries, 4, 6, 0.5)
  np.testing.assert_allclose(votes, expected, rtol=1e-5)
  # Every bank entry voted: each class got the sum over its entries.
  for c in range(4):
    np.testing.assert_allclose(
        votes[:, c], reference_votes(bank[bank_labels == c],
                                     bank_labels[bank_labels == c],
                                     queries, 4, 6, 0.5)[:, c], rtol=1e-5)


@pytest.mark.parametrize('bank_chunk', [1, 2, 3])
def test_equal_similarities_go_to_the_earlier_bank_entry(bank_chunk):
  e = np.eye(4, dtype=np.float32)
  # Entries 1 and 2 are both exactly the query's direction (entry 2 longer).
  bank = np.stack([e[1], e[0], 2 * e[0]])
  votes = knn.knn_predict(bank, np.array([0, 1, 2]), e[:1], num_classes=3,
                          k=1, bank_chunk=bank_chunk)
  np.testing.assert_allclose(votes, [[0.0, np.exp(1 / 0.07), 0.0]], rtol=1e-6)


def test_top5():
  # One query; 6 bank entries of 6 distinct classes at decreasing similarity.
  angles = np.linspace(0.1, 1.2, 6)
  bank = np.stack([np.cos(angles), np.sin(angles), 0 * angles], 1)
  classes = np.array([3, 0, 6, 1, 5, 2])                   # by rank
  query = np.array([[1.0, 0.0, 0.0]])
  def accuracy(label):
    return knn.knn_accuracy(bank, classes, query, [label], num_classes=7, k=6)
  assert accuracy(3) == {'top1': 1.0, 'top5': 1.0}
  assert accuracy(1) == {'top1': 0.0, 'top5': 1.0}       # 4th
  assert accuracy(5) == {'top1': 0.0, 'top5': 1.0}       # 5th
  assert accuracy(2) == {'top1': 0.0, 'top5': 0.0}       # 6th
  assert accuracy(4) == {'top1': 0.0, 'top5': 0.0}       # no vote


def test_accuracy_matches_reference_ranking():
  bank, bank_labels, queries = random_problem(3, 300, 80, 8, 12)
  query_labels = np.random.default_rng(4).integers(0, 12, 80)
  # Structure so that accuracy is neither 0 nor 1: queries near bank entries.
  queries[:40] = bank[:40] + 0.3 * queries[:40]
  query_labels[:40] = bank_labels[:40]
  result = knn.knn_accuracy(bank, bank_labels, queries, query_labels,
                            num_classes=12, query_chunk=32, bank_chunk=64)
  ranked = np.argsort(
      -reference_votes(bank, bank_labels, queries, 12, 20, 0.07), 1,
      kind='stable')
  assert result['top1'] == pytest.approx(np.mean(ranked[:, 0] == query_labels))
  assert result['top5'] == pytest.approx(
      np.mean(np.any(ranked[:, :5] == query_labels[:, None], 1)))
  assert 0.0 < result['top1'] < 1.0


def test_random_labels_score_near_chance():
  bank, bank_labels, queries = random_problem(5, 2000, 500, 32, 10)
  query_labels = np.random.default_rng(6).integers(0, 10, 500)
  result = knn.knn_accuracy(bank, bank_labels, queries, query_labels,
                            num_classes=10, query_chunk=128, bank_chunk=512)
  assert 0.03 < result['top1'] < 0.2          # chance 0.1
  assert 0.35 < result['top5'] < 0.65         # chance 0.5


def test_numpy_and_jax_inputs_give_identical_votes():
  bank, bank_labels, queries = random_problem(7, 50, 20, 6, 5)
  predict = functools.partial(knn.knn_predict, num_classes=5, query_chunk=6,
                              bank_chunk=16)
  a = np.asarray(predict(bank, bank_labels, queries))
  b = np.asarray(predict(jnp.asarray(bank), jnp.asarray(bank_labels),
                         jnp.asarray(queries)))
  np.testing.assert_array_equal(a, b)


def _all_shapes(jaxpr):
  """Shapes of every variable of a jaxpr and of the jaxprs nested in it."""
  shapes = [v.aval.shape for v in jaxpr.invars + jaxpr.constvars]
  for eqn in jaxpr.eqns:
    shapes += [v.aval.shape for v in eqn.outvars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          shapes += _all_shapes(sub)
  return shapes


def test_similarity_block_stays_chunk_sized():
  num_queries, num_bank, query_chunk, bank_chunk, k = 37, 101, 8, 16, 5
  bank, bank_labels, queries = random_problem(8, num_bank, num_queries, 6, 3)
  predict = functools.partial(knn.knn_predict, num_classes=3, k=k,
                              query_chunk=query_chunk, bank_chunk=bank_chunk)
  shapes = _all_shapes(
      jax.make_jaxpr(predict)(bank, bank_labels, queries).jaxpr)
  query_dims = {num_queries, query_chunk}
  for shape in shapes:
    # No array spans queries and the bank: never [Q, N] nor [chunk, N].
    assert not (query_dims & set(shape) and num_bank in shape), shape
  assert (query_chunk, bank_chunk) in shapes            # the similarity block
  assert (query_chunk, k + bank_chunk) in shapes        # the merge candidates
  # The traced program is the one that runs.
  np.testing.assert_allclose(
      predict(bank, bank_labels, queries),
      reference_votes(bank, bank_labels, queries, 3, k, 0.07), rtol=1e-5)


def test_bad_inputs_are_reported():
  bank, bank_labels, queries = random_problem(9, 10, 4, 6, 3)
  with pytest.raises(ValueError, match='channels'):
    knn.knn_predict(bank, bank_labels, queries[:, :5], num_classes=3)
  with pytest.raises(ValueError, match='bank_labels'):
    knn.knn_predict(bank, bank_labels[:9], queries, num_classes=3)
  assert knn.knn_predict(bank, bank_labels, queries[:0],
                         num_classes=3).shape == (0, 3)
