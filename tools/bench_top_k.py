"""How fast the sampler's top-k is on this device, against the other ways to take it.

  python tools/bench_top_k.py                          # rows 1024, 128, 16 of 8192 logits, k 50
  python tools/bench_top_k.py --rows 1024 --vocab 151936 --chunks 256,512,1024   # Qwen2's vocabulary

The sampler draws each token among the top k of a row of logits (top-k 50, as the MF-LLM
paper). XLA's GPU top-k kernel only takes k <= 16; a larger k becomes a sort of every whole
row. `mfjax.sampling.top_k_chunked` takes the top k of each chunk of a row, then of what is
left, so that a GPU sorts short rows; `select_top_k` is what the sampler runs on this
platform (`lax.top_k` except on GPUs). Rows are float32 logits with some ties.

Variants: `lax_top_k` (k), `lax_top_k16` (the GPU kernel's largest k, for scale: the first 16
of the result), `chunked_<C>` for each chunk C, `select_top_k`. Each is timed inside one
jitted `fori_loop` of `--calls` calls (no dispatch cost between calls), the median of
`--repeats`. Prints one JSON line per rows x variant: rows, vocab, k, variant, ms_per_call,
compile_s, equal (values and ids equal `lax.top_k`'s), device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import timed  # noqa: E402
from mfjax import sampling  # noqa: E402
from mfjax.errors import positive_int  # noqa: E402
from mfjax.parallel import distributed  # noqa: E402


def _ints(text: str) -> list[int]:
  return [int(t) for t in text.split(",") if t]


def time_per_call(f, x, calls: int, repeats: int) -> tuple[float, float]:
  """(ms per call of f(x) inside one jitted loop, seconds of the first run with its compile)."""

  @jax.jit
  def loop(x):
    def body(t, acc):
      # a new input each call (barrier: XLA may not hoist or fuse it into the top-k); every
      # output read, since XLA turns a top-k read only through slices into a sort of the row
      v, i = f(jax.lax.optimization_barrier(x + t.astype(x.dtype) * 1e-3))
      return acc + v.sum(-1) + i.sum(-1).astype(x.dtype)
    return jax.lax.fori_loop(0, calls, body, jnp.zeros(x.shape[0], x.dtype))

  run = lambda: loop(x).block_until_ready()
  compile_s = timed(run)
  times = sorted(timed(run) for _ in range(repeats))
  return times[len(times) // 2] / calls * 1e3, compile_s


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rows", default="1024,128,16", help="rows of logits per call, comma-separated "
                  "(1024 = 64 events x 16 agents, the bfloat16 MFU case; 16 = one event)")
  ap.add_argument("--vocab", type=positive_int, default=8192)
  ap.add_argument("--k", type=positive_int, default=50)
  ap.add_argument("--chunks", default="256,512,1024,2048", help="chunk sizes of top_k_chunked to time")
  ap.add_argument("--calls", type=positive_int, default=50)
  ap.add_argument("--repeats", type=positive_int, default=5)
  args = ap.parse_args(argv)
  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts
  k = args.k
  variants = {"lax_top_k": lambda x: jax.lax.top_k(x, k), "lax_top_k16": lambda x: jax.lax.top_k(x, 16)}
  for c in _ints(args.chunks):
    variants[f"chunked_{c}"] = lambda x, c=c: sampling.top_k_chunked(x, k, chunk=c)
  variants["select_top_k"] = lambda x: sampling.select_top_k(x, k)
  device = str(jax.devices()[0].device_kind)
  for rows in _ints(args.rows):
    x = jax.random.normal(jax.random.key(rows), (rows, args.vocab), jnp.float32) * 3
    x = x.at[:, : 4 * k].set(jnp.round(x[:, : 4 * k]))  # ties
    want_v, want_i = jax.jit(variants["lax_top_k"])(x)
    for name, f in variants.items():
      v, i = jax.jit(f)(x)
      equal = bool((v == want_v[:, : v.shape[1]]).all() & (i == want_i[:, : i.shape[1]]).all())
      ms, compile_s = time_per_call(f, x, args.calls, args.repeats)
      print(json.dumps(dict(rows=rows, vocab=args.vocab, k=k, variant=name, ms_per_call=round(ms, 4),
                            compile_s=round(compile_s, 2), equal=equal, device=device)), flush=True)


if __name__ == "__main__":
  main()
