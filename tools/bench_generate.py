"""Benchmark: tokens/s of `mfjax.sampling.generate` against transformers'
PyTorch `generate` on the same random Qwen2 model, plus model FLOP utilisation
(the whole-simulation benchmarks are in tools/bench.py).

Both sides: the same weights (written by transformers, loaded by mfjax), float32,
greedy, batch 16, prompt 128, 32 new tokens, KV cache, no early stop. MFU counts
only the FLOPs the math needs (prefill: all linear layers for every prompt token,
causal attention, the head for the last position only; decode: one token per row
with attention over its context) and divides by the peak FLOP/s of a large
`jnp.dot` measured in the same process. Prints one JSON line.

  python tools/bench_generate.py            # the issue's configuration
  python tools/bench_generate.py --repeats 5 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mfjax.errors import positive_int  # noqa: E402
from mfjax.parallel import distributed  # noqa: E402

from bench import generate_flops, peak_flops  # noqa: E402  (tools/bench.py: the shared FLOP counts)
from bench import timed as _timed  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=positive_int, default=16)
  ap.add_argument("--prompt", type=positive_int, default=128)
  ap.add_argument("--new", type=positive_int, default=32)
  ap.add_argument("--width", type=positive_int, default=512)
  ap.add_argument("--layers", type=positive_int, default=8)
  ap.add_argument("--vocab", type=positive_int, default=8192)
  ap.add_argument("--repeats", type=positive_int, default=3, help="timed runs per side (median is reported)")
  ap.add_argument("--skip-torch", action="store_true", help="time mfjax only (e.g. where torch is absent)")
  args = ap.parse_args()
  distributed.initialize()  # a multi-host run ($MFJAX_DISTRIBUTED) joins before JAX starts

  from mfjax import sampling
  from mfjax.model import hf

  B, P, N = args.batch, args.prompt, args.new
  heads = args.width // 64
  hf_cfg = dict(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=3 * args.width,
                num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(heads // 4, 1),
                max_position_embeddings=4096, tie_word_embeddings=False)
  prompt = np.random.default_rng(0).integers(3, args.vocab, (B, P))
  mask = np.ones((B, P), np.int64)
  result = {"bench": "generate", "batch": B, "prompt": P, "new_tokens": N, "width": args.width,
            "layers": args.layers, "vocab": args.vocab, "device": str(jax.devices()[0].device_kind),
            "platform": jax.default_backend()}

  with tempfile.TemporaryDirectory() as tmp:
    torch_s = None
    if not args.skip_torch:
      import torch
      import transformers
      torch.manual_seed(0)
      ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_cfg)).eval()
      ref.save_pretrained(tmp)
      dev = "cuda" if torch.cuda.is_available() else "cpu"  # same kind of device as JAX's
      ref.to(dev)
      ids, am = torch.tensor(prompt, device=dev), torch.tensor(mask, device=dev)
      run_torch = lambda: ref.generate(input_ids=ids, attention_mask=am, max_new_tokens=N, min_new_tokens=N,
                                       do_sample=False, pad_token_id=0, eos_token_id=None).cpu()
      with torch.no_grad():
        want = run_torch()[:, P:].numpy()
        torch_s = float(np.median([_timed(run_torch) for _ in range(args.repeats)]))
      result.update(torch_threads=torch.get_num_threads(), torch_version=torch.__version__, torch_device=dev)
    else:
      import transformers
      transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_cfg)).save_pretrained(tmp)
      want = None
    model, params = hf.load_pretrained(tmp)

  gen = lambda: sampling.generate(model, params, prompt, mask, rng=jax.random.PRNGKey(0), max_new_tokens=N,
                                  temperature=0.0).tokens.block_until_ready()
  t_compile = _timed(gen)
  got = np.asarray(gen())
  mfjax_s = float(np.median([_timed(gen) for _ in range(args.repeats)]))
  flops = generate_flops(model.cfg, B, P, N)
  peak = peak_flops()
  result.update(
      mfjax_s=mfjax_s, mfjax_tokens_per_s=B * N / mfjax_s, compile_s=t_compile - mfjax_s,
      model_gflops=flops / 1e9, achieved_gflops_per_s=flops / mfjax_s / 1e9, peak_gflops_per_s=peak / 1e9,
      mfu=flops / mfjax_s / peak)
  if torch_s is not None:
    result.update(torch_s=torch_s, torch_tokens_per_s=B * N / torch_s, speedup=torch_s / mfjax_s,
                  torch_mfu=flops / torch_s / peak, same_tokens_fraction=float((got == want).mean()))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
