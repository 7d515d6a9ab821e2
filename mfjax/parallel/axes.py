"""The vocabulary of logical axis names that parameters and activations carry.

Every parameter of the mfjax models is created with one logical name per
dimension (``flax.linen.with_logical_partitioning``). A rules table (see the
``mfjax.parallel.mesh.RULES``) maps each name to a mesh axis (``data``,
``fsdp``, ``tensor``) or to ``None`` (replicated). Keep this list small: a name
that no rule covers is an error, not a silent replication.
"""

EMBED = "embed"  # model width D
HEADS = "heads"  # query heads H
KV_HEADS = "kv_heads"  # key/value heads (grouped-query attention)
KV = "kv"  # per-head width Dh
MLP = "mlp"  # feed-forward width F
VOCAB = "vocab"  # vocabulary V
LAYERS = "layers"  # the stacked layer axis when layers are scanned
NORM = "norm"  # RMSNorm scales (small; normally replicated)
LORA_RANK = "lora_rank"  # the rank r of LoRA adapters (always replicated)
MF = "mf"  # every dim of the mean-field encoder (small: replicated by default)

ALL = (EMBED, HEADS, KV_HEADS, KV, MLP, VOCAB, LAYERS, NORM, LORA_RANK, MF)
