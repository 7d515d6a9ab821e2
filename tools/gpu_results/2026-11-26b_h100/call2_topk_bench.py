"""Top-k 50 of [rows, 8192] float32 rows on this device: lax.top_k (a sort on GPUs), rounds of 16,
two-stage chunked top-k. Prints one JSON line per (rows, variant): ms per call (in a fori_loop of
50 calls, so no dispatch cost), and whether values/ids equal lax.top_k's."""
import functools, json, sys, time
sys.path.insert(0, '.')
import jax, jax.numpy as jnp
from mfjax.sampling import top_k_in_rounds

def chunked(x, k, chunk):
  B, V = x.shape
  c = V // chunk
  v, i = jax.lax.top_k(x.reshape(B, c, chunk), k)
  i = i + (jnp.arange(c, dtype=jnp.int32) * chunk)[:, None]
  v2, j = jax.lax.top_k(v.reshape(B, c * k), k)
  return v2, jnp.take_along_axis(i.reshape(B, c * k), j, axis=-1)

def chunked3(x, k, chunk, chunk2):
  B, V = x.shape
  c = V // chunk
  v, i = jax.lax.top_k(x.reshape(B, c, chunk), k)
  i = i + (jnp.arange(c, dtype=jnp.int32) * chunk)[:, None]
  v, i = v.reshape(B, c * k), i.reshape(B, c * k)
  c2 = (c * k) // chunk2
  v, j = jax.lax.top_k(v.reshape(B, c2, chunk2), k)
  i = jnp.take_along_axis(i.reshape(B, c2, chunk2), j, axis=-1)
  v2, j = jax.lax.top_k(v.reshape(B, c2 * k), k)
  return v2, jnp.take_along_axis(i.reshape(B, c2 * k), j, axis=-1)

K = 50
variants = {
  'lax_top_k': lambda x: jax.lax.top_k(x, K),
  'rounds16': lambda x: top_k_in_rounds(x, K),
  'top16_only': lambda x: jax.lax.top_k(x, 16),
  'chunk128': functools.partial(chunked, k=K, chunk=128),
  'chunk256': functools.partial(chunked, k=K, chunk=256),
  'chunk512': functools.partial(chunked, k=K, chunk=512),
  'chunk1024': functools.partial(chunked, k=K, chunk=1024),
  'chunk2048': functools.partial(chunked, k=K, chunk=2048),
  'chunk128x200': functools.partial(chunked3, k=K, chunk=128, chunk2=200),
  'chunk256x400': functools.partial(chunked3, k=K, chunk=256, chunk2=400),
}
N = 50
def timed(f, x):
  @jax.jit
  def loop(x):
    def body(t, acc):
      v, i = f(jax.lax.optimization_barrier(x + t.astype(x.dtype) * 1e-3))
      return acc + v[:, 0] + i[:, -1].astype(x.dtype)
    return jax.lax.fori_loop(0, N, body, jnp.zeros(x.shape[0], x.dtype))
  t0 = time.perf_counter(); loop(x).block_until_ready(); comp = time.perf_counter() - t0
  ts = []
  for _ in range(5):
    t0 = time.perf_counter(); loop(x).block_until_ready(); ts.append(time.perf_counter() - t0)
  return sorted(ts)[2] / N * 1e3, comp

dev = str(jax.devices()[0].device_kind)
for rows in [int(r) for r in (sys.argv[1:] or ['1024', '128', '16'])]:
  x = jax.random.normal(jax.random.key(rows), (rows, 8192), jnp.float32) * 3
  x = x.at[:, :40].set(jnp.round(x[:, :40]))  # some ties
  ref = jax.jit(variants['lax_top_k'])(x)
  for name, f in variants.items():
    try:
      v, i = jax.jit(f)(x)
      same = bool((v == ref[0][:, :v.shape[1]]).all() & (i == ref[1][:, :i.shape[1]]).all())
      ms, comp = timed(f, x)
      print(json.dumps(dict(rows=rows, variant=name, ms_per_call=round(ms, 4), compile_s=round(comp, 2), equal=same, device=dev)), flush=True)
    except Exception as e:
      print(json.dumps(dict(rows=rows, variant=name, error=repr(e)[:300])), flush=True)
