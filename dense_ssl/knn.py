"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of DINO (Caron et al. 2021, its eval_knn.py) and solo-learn:
given a bank of N labelled training features b_j (labels y_j) and Q query
features q_i, all L2-normalised,

  s_ij = <q_i, b_j> / (|q_i| |b_j|)                (cosine similarity)
  NN_k(i) = the k bank entries with the largest s_ij
  votes_ic = sum_{j in NN_k(i)} exp(s_ij / T) [y_j = c]
  prediction_i = argmax_c votes_ic

top-1 accuracy is the fraction of queries whose prediction is their label,
top-5 the fraction whose label is among the 5 classes with most votes.
Defaults k = 20 and T = 0.07 are DINO's (solo-learn uses the same).

Memory: the full [Q, N] similarity matrix (50k x 1.28M floats = 256 GB for
ImageNet) must never exist. Queries are taken `query_chunk` at a time; for each
query chunk a loop over `bank_chunk`-sized slices of the bank keeps a running
top-k of (similarity, label), merged with each slice's similarities by one
`jax.lax.top_k` over their concatenation. The largest intermediate is thus
[query_chunk, bank_chunk + k], whatever N is; the bank itself is held once on
the device in its own dtype and normalised slice by slice.

Ties: equal similarities go to the earlier bank entry (lax.top_k keeps the
lower position, and the running top-k always precedes the new slice); equal
votes go to the lower class index. k larger than the bank uses the whole bank.
"""

import functools

import jax
import jax.numpy as jnp

from dense_ssl.losses.detcon import l2_normalize

K = 20
TEMPERATURE = 0.07
# Peak similarity block 1024 x (16384 + 20) floats = 64 MiB.
QUERY_CHUNK = 1024
BANK_CHUNK = 16384


def _nearest_in_bank(queries, bank_feats, bank_labels, *, k, bank_chunk):
  """The k most similar bank entries of each query, merged slice by slice.

  queries: [q, D]; bank_feats: [N, D] (any float dtype, unnormalised);
  bank_labels: [N] int32; k <= N, bank_chunk <= N.
  Returns (similarities [q, k] float32, descending; their labels [q, k]).
  """
  n = bank_feats.shape[0]
  num_slices = -(-n // bank_chunk)
  q = l2_normalize(queries)

  def merge(i, carry):
    top_sims, top_labels = carry
    # The last slice ends at the bank's end and overlaps the one before it:
    # its entries seen already are masked to -inf, so nothing is counted
    # twice, every slice has one shape and the bank is never copied to pad it.
    start = jnp.minimum(i * bank_chunk, n - bank_chunk)
    feats = jax.lax.dynamic_slice_in_dim(bank_feats, start, bank_chunk)
    labels = jax.lax.dynamic_slice_in_dim(bank_labels, start, bank_chunk)
    sims = jnp.dot(q, l2_normalize(feats).T,
                   precision=jax.lax.Precision.HIGHEST)      # [q, bank_chunk]
    seen = start + jnp.arange(bank_chunk) < i * bank_chunk
    sims = jnp.where(seen[None, :], -jnp.inf, sims)
    cand_sims = jnp.concatenate([top_sims, sims], 1)         # [q, k + chunk]
    cand_labels = jnp.concatenate(
        [top_labels, jnp.broadcast_to(labels[None, :], sims.shape)], 1)
    top_sims, idx = jax.lax.top_k(cand_sims, k)
    return top_sims, jnp.take_along_axis(cand_labels, idx, 1)

  # -inf placeholders lose to every real (finite) similarity, and k <= N
  # real entries are seen, so none survives.
  init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32),
          jnp.zeros((q.shape[0], k), jnp.int32))
  return jax.lax.fori_loop(0, num_slices, merge, init)


@functools.partial(jax.jit, static_argnames=('num_classes', 'k', 'bank_chunk'))
def _query_chunk_votes(queries, bank_feats, bank_labels, temperature, *,
                       num_classes, k, bank_chunk):
  """votes [q, num_classes] float32 of one chunk of queries [q, D]."""
  sims, labels = _nearest_in_bank(queries, bank_feats, bank_labels, k=k,
                                  bank_chunk=bank_chunk)
  weights = jnp.exp(sims / temperature)                      # [q, k]
  # Broadcast-multiply-sum fuses into one reduction, and unlike a scatter-add
  # its summation order is fixed (deterministic on GPU too).
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return jnp.sum(weights[..., None] * one_hot, axis=1)


def knn_predict(bank_feats, bank_labels, query_feats, *, num_classes, k=K,
                temperature=TEMPERATURE, query_chunk=QUERY_CHUNK,
                bank_chunk=BANK_CHUNK):
  """Per-class kNN votes of the queries (module docstring's equation).

  bank_feats: [N, D], bank_labels: [N] ints in [0, num_classes) (others cast
  no vote), query_feats: [Q, D]; numpy or jax arrays, features of any float
  dtype and not necessarily normalised. k is clipped to N; query_chunk and
  bank_chunk bound the similarity block to [query_chunk, bank_chunk + k].
  exp(s / T) overflows float32 for T < 1/88.
  Returns votes [Q, num_classes] float32,
    votes_ic = sum_{j in NN_k(i)} exp(cos(q_i, b_j) / T) [y_j = c].
  """
  bank_feats = jnp.asarray(bank_feats)
  bank_labels = jnp.asarray(bank_labels, jnp.int32)
  query_feats = jnp.asarray(query_feats)
  if bank_feats.ndim != 2 or query_feats.ndim != 2:
    raise ValueError(
        f'knn_predict: features must be [N, D] and [Q, D], got bank '
        f'{bank_feats.shape} and queries {query_feats.shape}.')
  n, dim = bank_feats.shape
  if query_feats.shape[1] != dim:
    raise ValueError(
        f'knn_predict: queries have {query_feats.shape[1]} channels, the bank '
        f'{dim}: pool both from the same encoder output.')
  if bank_labels.shape != (n,):
    raise ValueError(f'knn_predict: bank_labels must be [{n}], got '
                     f'{bank_labels.shape}.')
  if n == 0:
    raise ValueError('knn_predict: the bank is empty.')
  if min(k, query_chunk, bank_chunk, num_classes) < 1 or temperature <= 0:
    raise ValueError(
        f'knn_predict: k, query_chunk, bank_chunk, num_classes must be >= 1 '
        f'and temperature > 0, got k={k}, query_chunk={query_chunk}, '
        f'bank_chunk={bank_chunk}, num_classes={num_classes}, '
        f'temperature={temperature}.')
  num_queries = query_feats.shape[0]
  if num_queries == 0:
    return jnp.zeros((0, num_classes), jnp.float32)
  query_chunk = min(query_chunk, num_queries)
  votes_fn = functools.partial(
      _query_chunk_votes, bank_feats=bank_feats, bank_labels=bank_labels,
      temperature=jnp.float32(temperature), num_classes=num_classes,
      k=min(k, n), bank_chunk=min(bank_chunk, n))
  votes = []
  for begin in range(0, num_queries, query_chunk):
    # As for the bank: the last chunk overlaps the previous one, so every
    # call has one shape (one compilation) and only its new rows are kept.
    start = min(begin, num_queries - query_chunk)
    chunk_votes = votes_fn(query_feats[start:start + query_chunk])
    votes.append(chunk_votes[begin - start:])
  return jnp.concatenate(votes) if len(votes) > 1 else votes[0]


def knn_accuracy(bank_feats, bank_labels, query_feats, query_labels, *,
                 num_classes, k=K, temperature=TEMPERATURE,
                 query_chunk=QUERY_CHUNK, bank_chunk=BANK_CHUNK):
  """kNN top-1 (and top-5 if num_classes >= 5) accuracy of labelled queries.

  Arguments as knn_predict's, plus query_labels [Q] ints. Equal votes rank
  the lower class index first (so a query whose class got no vote can still
  count in top-5 when fewer than 5 classes got votes, as in DINO).
  Returns {'top1': float, 'top5': float} fractions in [0, 1].
  """
  query_labels = jnp.asarray(query_labels, jnp.int32)
  if query_labels.shape != (jnp.shape(query_feats)[0],):
    raise ValueError(
        f'knn_accuracy: query_labels must be [{jnp.shape(query_feats)[0]}], '
        f'got {query_labels.shape}.')
  if query_labels.shape[0] == 0:
    raise ValueError('knn_accuracy: no queries to score.')
  votes = knn_predict(bank_feats, bank_labels, query_feats,
                      num_classes=num_classes, k=k, temperature=temperature,
                      query_chunk=query_chunk, bank_chunk=bank_chunk)
  _, ranked = jax.lax.top_k(votes, min(5, num_classes))      # [Q, <=5]
  hits = ranked == query_labels[:, None]
  result = {'top1': float(jnp.mean(hits[:, 0]))}
  if num_classes >= 5:
    result['top5'] = float(jnp.mean(jnp.any(hits, axis=1)))
  return result
