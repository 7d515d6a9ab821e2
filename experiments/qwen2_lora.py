r"""MF-LLM with the paper's backbone: a local Qwen2-1.5B checkpoint, LoRA
adapters + the latent mean field trained by IB-Tune, on the CED Weibo events,
sharded over every device (one multi-GPU host, or a TPU pod slice with
`tools/tpu_pod.py`).

  python -m mfjax run --config experiments/qwen2_lora.py \
      --set model.checkpoint=/path/to/Qwen2-1.5B --set data.path=data/ced --workdir runs/qwen2_lora

Check per-device memory for a mesh before booking hardware (no checkpoint needed):

  python tools/aot_memory.py --config experiments/qwen2_lora.py --preset qwen2-1.5b --mesh 1,4,2

`model.checkpoint` is a local Hugging Face folder (config.json + safetensors
+ tokenizer); nothing is downloaded. The tokenizer is the checkpoint's.
Defaults: bfloat16 compute, full LM rematerialisation, events split over
data x fsdp (-1: all devices on data), 8 events per step (raise with the
device count: it must divide by data x fsdp).
"""

import os

from mfjax.configs import load_module


def get_config(arg: str = ""):
  c = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ced_weibo.py")).get_config("")
  c.model.checkpoint_required = True  # --set model.checkpoint=/path/to/Qwen2-1.5B
  c.model.dtype = "bfloat16"
  # train step: 25.1 GiB per device on a (1, 4, 2) mesh by the CPU estimate (tools/aot_memory.py --preset
  # qwen2-1.5b); 28.0 GiB by an earlier commit's estimate, whose events per device measured 16.15 GiB on
  # one H200 (docs/scale.md)
  c.model.remat = "full"
  # 28 layers in one lax.scan (ced_weibo.py unrolls its two): unrolled, the same
  # train step took 131.5 GiB per device by the same estimate, remat or not
  c.model.scan_layers = True
  c.data.train_events = 2000
  c.data.prompt_len = 128
  c.data.action_len = 32
  c.lora.rank, c.lora.alpha, c.lora.targets = 16, 32.0, "q,k,v,o,gate,up,down"
  c.mf.slots, c.mf.feature_size, c.mf.hidden_size = 4, 256, 512
  c.mf.init_logvar = -4.0
  # LoRA adapters on the 1.5B backbone (ced_weibo.py fine-tunes its tiny from-scratch policy in full)
  c.sft.trainable, c.mf_train.trainable = "lora", "lora+mf"
  c.sft.steps, c.sft.lr, c.sft.batch_events = 500, 2e-4, 8
  c.mf_train.steps, c.mf_train.lr, c.mf_train.batch_events = 1000, 2e-4, 8
  c.mf_train.agents = 8
  c.rollout.batch_events = 16
  c.rollout.top_p = 0.95
  c.parallel.data = -1
  if arg:
    raise ValueError(f"unknown argument {arg!r} for qwen2_lora (it takes none)")
  return c
