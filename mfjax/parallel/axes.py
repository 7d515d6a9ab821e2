"""The vocabulary of logical axis names that parameters and activations carry.

Every parameter of the mfjax models is created with one logical name per
dimension (``flax.linen.with_logical_partitioning``). A rules table (see the
``mfjax.parallel.mesh.RULES``) maps each name to a mesh axis (``data``,
``fsdp``, ``tensor``), to a tuple of them, or to ``None`` (replicated). Keep
this list small: a name that no rule covers is an error, not a silent
replication.

Activations have names of their own (``act_*``): a parameter's ``embed`` dim is
split over fsdp, while an activation's model width stays whole and its batch
(rows of events) is what fsdp and data split. The model pins its activations to
these names with ``mfjax.parallel.mesh.constrain`` inside a jitted step run
under ``activation_sharding``; elsewhere that is a no-op.
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

PARAMS = (EMBED, HEADS, KV_HEADS, KV, MLP, VOCAB, LAYERS, NORM, LORA_RANK, MF)

ACT_BATCH = "act_batch"  # rows: events (x steps x agents), split like a batch's events
ACT_LENGTH = "act_length"  # tokens (or key/value slots)
ACT_EMBED = "act_embed"  # the model width of hidden states
ACT_HEADS = "act_heads"  # query heads
ACT_KV_HEADS = "act_kv_heads"  # key/value heads
ACT_KV = "act_kv"  # per-head width
ACT_MLP = "act_mlp"  # the feed-forward width
ACT_VOCAB = "act_vocab"  # logits' vocabulary

ACTIVATIONS = (ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_KV, ACT_MLP, ACT_VOCAB)

AT_USE = {EMBED: ACT_EMBED, HEADS: ACT_HEADS, KV_HEADS: ACT_KV_HEADS, KV: ACT_KV, MLP: ACT_MLP, VOCAB: ACT_VOCAB,
          LORA_RANK: LORA_RANK}
"""A weight's dims as its matmul reads them (FSDP's gathered layout: width whole)."""

ALL = PARAMS + ACTIVATIONS
