"""The latent mean-field encoder: q(m_t | history) over K vectors of the LM width.

Per step, each agent's (state, action) is embedded by the LM (hidden states of
the action tokens, mean-pooled; `agent_embeddings`), projected to a feature,
and aggregated over the step's valid agents permutation-invariantly: the
masked mean (the mean field proper) and, optionally, attention pooling with Q
learned queries. The recurrent state (`MFState`, an explicit pytree carried
through `lax.scan`) keeps a gated (GRU) summary and the exact running mean of
every agent feature seen so far; the posterior head maps it to a diagonal
Gaussian N(mu, diag exp(logvar)) over K x D. The prior is N(0, I).

All methods take arbitrary leading axes (events, ...): feats [..., B, F],
mask [..., B], state fields [..., H] / [..., F] / [...].

With `classes` > 0 the encoder also has a population head (`class_logits`):
from the mean field m read at a step (K x D) and an agent's state (the mean of
its prompt's token embeddings, `mfjax.policy.prompt_state`), the logits of the
agent's joint category (`mfjax.categories.CLASSES`). Its mean over a step's
agents is the step's predicted category distribution.

With `category_features` the encoder also reads each action's joint category:
a learned vector per class is added to the agent's feature (none for an
unlabelled action, category -1), so the step's mean, and the running mean of
every step so far, hold the population's category proportions exactly (a
linear function of them) rather than whatever of them the pooled LM states keep.
Teacher-forced the categories are the real actions' labels; in a rollout, the
warm-up's labels and then the classes the agents drew from the head.

With `anchor_steps` > 0 the head starts from the model-free `shrunk` forecast
(`mfjax.evaluation.bounds`): its logits are log((c + k pi) / (n + k)) plus what
the head's layers add, where c counts the joint classes of the real actions of
the event's first `anchor_steps` steps (`anchor_counts`: those a rollout's
warm-up shows; fewer before them), n is their sum, and the prior pi and the
pseudo-count k are learned. The layers' output starts at zero, so an untrained
head is that estimator with a uniform prior; training learns the prior, k, and
what the mean field and the agent's state add to it. With `anchor_given` the
anchor is given per agent instead, as log-probabilities (the batch's `anchor`:
`mfjax.evaluation.bounds.AgentAnchor`, a logistic regression on the same counts,
the step and the agent's state as numbers, fitted on the training events before
any stage), and the head has no prior or k of its own.

Letters: B agents, F feature width, H recurrent width, K slots, D LM width,
Q attention-pooling queries, C classes.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mfjax.model.transformer import Decoder, shared_extend
from mfjax.parallel import axes

LOGVAR_MIN, LOGVAR_MAX = -12.0, 4.0
# The population head's parameters (`class_logits`): what a head-only stage trains (trainable "head")
HEAD_PARAMS = ("class_norm", "class_hidden", "class_out", "anchor_prior", "anchor_k")


@dataclasses.dataclass(frozen=True)
class MeanFieldConfig:
  """Shapes of the latent mean field (frozen; built from the `mf` config block)."""

  slots: int = 4  # K: prefix vectors the policy reads; more = more capacity
  width: int = 64  # D: must equal the LM width (the prefix lives in embedding space)
  feature_size: int = 64  # F: per-agent feature after projecting the pooled LM hidden state
  hidden_size: int = 128  # H: the gated recurrent summary
  attention_queries: int = 0  # Q: attention pooling over agents in addition to the mean (0 = mean only)
  init_logvar: float = -4.0  # initial posterior log-variance (bias of the logvar head)
  # C: the population head's classes (`mfjax.categories.CLASSES`), 0 = no head. The head gives each agent's
  # joint category given the mean field it reads and its state (`class_logits`); IB-Tune scores it against
  # the real actions' labels (its population term), and an attribute-conditioned policy draws from it.
  classes: int = 0
  head_hidden: int = 128  # the population head's hidden width
  # Each action's joint category (an index of the C classes; -1: none) enters its feature as a learned
  # vector (needs classes > 0): the mean field then counts the categories rather than guessing them.
  category_features: bool = False
  # The head's anchor (module docstring): the real classes of the first `anchor_steps` steps, shrunk towards a
  # learned prior (needs classes > 0; 0 = none). A rollout's warm-up must cover them.
  anchor_steps: int = 0
  # The head's agent state also reads the prompt's last `state_tail` token embeddings in order (the agent's own
  # state line; `mfjax.policy.prompt_state`), besides the whole prompt's mean, where the topic dominates.
  state_tail: int = 0
  # The head's agent state ends with this many numbers (`mfjax.data.prompts.NUMBER_FEATURES`: the state line's
  # depth, hours and activity as numbers; `mfjax.policy.head_state`), which enter after the head's LayerNorm.
  state_numbers: int = 0
  # The anchor is given per agent as log-probabilities (the batch's `anchor` [E, T, B, C]) rather than counted
  # here from the first anchor_steps steps' classes (module docstring)
  anchor_given: bool = False


@flax.struct.dataclass
class MFState:
  """Mean-field state after the steps seen so far (the scan carry)."""

  h: jax.Array  # [..., H] gated recurrent summary
  mean: jax.Array  # [..., F] running mean of every valid agent feature so far
  count: jax.Array  # [...] float32: agents seen so far

  @classmethod
  def zeros(cls, cfg: MeanFieldConfig, batch_shape=()) -> "MFState":
    return cls(jnp.zeros((*batch_shape, cfg.hidden_size), jnp.float32),
               jnp.zeros((*batch_shape, cfg.feature_size), jnp.float32), jnp.zeros(batch_shape, jnp.float32))


@flax.struct.dataclass
class Posterior:
  """q(m) = N(mu, diag exp(logvar)) over K x D."""

  mu: jax.Array  # [..., K, D]
  logvar: jax.Array  # [..., K, D]

  def sample(self, rng):
    """Reparameterised draw (differentiable in mu and logvar)."""
    return self.mu + jnp.exp(0.5 * self.logvar) * jax.random.normal(rng, self.mu.shape, self.mu.dtype)

  def kl_to_standard_normal(self):
    """KL(q || N(0, I)) in nats, summed over K x D: [...]."""
    return 0.5 * jnp.sum(self.mu ** 2 + jnp.exp(self.logvar) - 1.0 - self.logvar, axis=(-2, -1))


def agent_embeddings(model: Decoder, lm_params, prompt_ids, prompt_mask, action_ids, action_mask, shared: int = 0):
  """Mean of the LM's final hidden states over each agent's action tokens,
  reading its prompt (topic + state) first: [..., D] float32 for [..., P] / [..., A].
  `shared` > 0: the prompts' first `shared` tokens are alike along the last lead axis (a step's
  agents: an event's topic), computed once for them (`shared_extend`; the same embeddings)."""
  lead = prompt_ids.shape[:-1]
  P, A = prompt_ids.shape[-1], action_ids.shape[-1]
  tokens = jnp.concatenate([prompt_ids, action_ids], -1).reshape(-1, P + A)
  mask = jnp.concatenate([prompt_mask, action_mask], -1).reshape(-1, P + A)
  # The last layer's queries and MLP run for the action positions only (queries_from).
  if shared:
    _, hidden, _ = shared_extend(model, lm_params, tokens, mask, shared=shared, group=lead[-1], slots=P + A,
                                 queries_from=P - shared)
  else:
    _, hidden = model.apply({"params": lm_params}, tokens, mask, return_hidden=True, queries_from=P)
  pool = action_mask.reshape(-1, A).astype(jnp.float32)
  pooled = jnp.einsum("nad,na->nd", hidden.astype(jnp.float32), pool) / jnp.maximum(pool.sum(-1), 1.0)[:, None]
  return pooled.reshape(*lead, -1)


def _named(init, ndim: int):
  """`init` with the logical name `mf` on every dim (see mfjax.parallel.mesh.RULES)."""
  return nn.with_logical_partitioning(init, (axes.MF,) * ndim)


class MeanFieldEncoder(nn.Module):
  """mu: (m_{t-1}, {(s_i, a_i)}) -> m_t as a Gaussian (see module docstring)."""

  cfg: MeanFieldConfig

  def setup(self):
    c = self.cfg
    dense = lambda features, name, kernel=nn.initializers.lecun_normal(), bias=nn.initializers.zeros: nn.Dense(
        features, name=name, kernel_init=_named(kernel, 2), bias_init=_named(bias, 1))
    self.feature_in = dense(c.feature_size, "feature_in")
    self.feature_out = dense(c.feature_size, "feature_out")
    if c.attention_queries:
      self.queries = self.param("queries", _named(nn.initializers.normal(0.02), 2),
                                (c.attention_queries, c.feature_size))
    self.cell = nn.GRUCell(c.hidden_size, name="cell", kernel_init=_named(nn.initializers.lecun_normal(), 2),
                           recurrent_kernel_init=_named(nn.initializers.orthogonal(), 2),
                           bias_init=_named(nn.initializers.zeros_init(), 1))
    self.head = dense(c.hidden_size, "head")
    self.mu_out = dense(c.slots * c.width, "mu_out", kernel=nn.initializers.normal(0.02))
    self.logvar_out = dense(c.slots * c.width, "logvar_out", kernel=nn.initializers.zeros,
                            bias=nn.initializers.constant(c.init_logvar))
    if c.classes:
      self.class_norm = nn.LayerNorm(name="class_norm", scale_init=_named(nn.initializers.ones, 1),
                                     bias_init=_named(nn.initializers.zeros, 1))
      self.class_hidden = dense(c.head_hidden, "class_hidden")
      self.class_out = dense(c.classes, "class_out", kernel=nn.initializers.zeros)
    if c.anchor_steps and not c.classes:
      raise ValueError("anchor_steps needs the population head's classes (MeanFieldConfig.classes > 0)")
    if c.anchor_given and not c.anchor_steps:
      raise ValueError("anchor_given: a given anchor reads the first anchor_steps steps' classes; set anchor_steps")
    if c.anchor_steps and not c.anchor_given:
      self.anchor_prior = self.param("anchor_prior", _named(nn.initializers.zeros, 1), (c.classes,))
      # softplus(2.7) ~ 2.77 pseudo-agents to start (the `shrunk` fits on CED chose 2-16)
      self.anchor_k = self.param("anchor_k", _named(nn.initializers.constant(2.7), 1), (1,))
    if c.category_features:
      if not c.classes:
        raise ValueError("category_features needs the population head's classes (MeanFieldConfig.classes > 0)")
      self.class_embed = self.param("class_embed", _named(nn.initializers.normal(1.0), 2), (c.classes, c.feature_size))

  def features(self, pooled_BxD, category_B=None):
    """Per-agent features [..., B, F] from pooled LM hidden states and, with `category_features`, the
    actions' joint categories ([..., B] int32, -1: none; required then)."""
    feats = self.feature_out(nn.gelu(self.feature_in(pooled_BxD)))
    if not self.cfg.category_features:
      return feats
    if category_B is None:
      raise ValueError("this encoder reads each action's category (category_features): pass category_B")
    return feats + self.category_vectors(category_B)

  def category_vectors(self, category_B):
    """What each action's joint category adds to its feature with `category_features`: [..., B, F]
    (zero for -1, an unlabelled action)."""
    known = (category_B >= 0)[..., None]
    return jnp.where(known, jnp.take(self.class_embed, jnp.maximum(category_B, 0), axis=0), 0.0)

  def aggregate(self, feats_BxF, mask_B):
    """Permutation-invariant summary of one step: masked mean [..., F] (and
    attention pooling [..., Q * F] when configured), and the agent count [...]."""
    w = mask_B.astype(jnp.float32)
    n = w.sum(-1)
    mean = jnp.einsum("...bf,...b->...f", feats_BxF, w) / jnp.maximum(n, 1.0)[..., None]
    parts = [mean]
    if self.cfg.attention_queries:
      scores = jnp.einsum("qf,...bf->...qb", self.queries, feats_BxF) / jnp.sqrt(self.cfg.feature_size)
      scores = jnp.where(mask_B[..., None, :] > 0, scores, -1e30)
      attn = jax.nn.softmax(scores, axis=-1) * (n > 0)[..., None, None]
      parts.append(jnp.einsum("...qb,...bf->...qf", attn, feats_BxF).reshape(*feats_BxF.shape[:-2], -1))
    return jnp.concatenate(parts, -1), n

  def update(self, state: MFState, feats_BxF, mask_B) -> MFState:
    """The state after one more step; a step with no valid agent leaves it unchanged."""
    summary, n = self.aggregate(feats_BxF, mask_B)
    total = state.count + n
    mean = (state.mean * state.count[..., None] + summary[..., :self.cfg.feature_size] * n[..., None]) \
        / jnp.maximum(total, 1.0)[..., None]
    h, _ = self.cell(state.h, jnp.concatenate([summary, mean], -1))
    keep = (n > 0)[..., None]
    return MFState(h=jnp.where(keep, h, state.h), mean=jnp.where(keep, mean, state.mean), count=total)

  def posterior(self, state: MFState) -> Posterior:
    """q(m | history summarised by `state`) over K x D."""
    c = self.cfg
    x = jnp.concatenate([state.h, state.mean, jnp.log1p(state.count)[..., None]], -1)
    x = nn.gelu(self.head(x))
    lead = x.shape[:-1]
    mu = self.mu_out(x).reshape(*lead, c.slots, c.width)
    logvar = jnp.clip(self.logvar_out(x).reshape(*lead, c.slots, c.width), LOGVAR_MIN, LOGVAR_MAX)
    return Posterior(mu=mu, logvar=logvar)

  def class_logits(self, m_KxD, state_D, anchor_C=None):
    """The population head: logits [..., C] of an agent's joint category given the mean field it
    reads (m [..., K, D]) and its state ([..., (1 + state_tail) D + state_numbers]: `mfjax.policy.head_state`);
    float32. With `anchor_steps`, `anchor_C` [..., C]: the event's anchor class counts (`anchor_counts`;
    required then), or with `anchor_given` the agent's anchor log-probabilities."""
    c = self.cfg
    want = (1 + c.state_tail) * c.width + c.state_numbers
    if state_D.shape[-1] != want:
      raise ValueError(f"the head's agent state has width {state_D.shape[-1]}, not {want}: (1 + state_tail) x the "
                       f"LM width, then state_numbers={c.state_numbers} numbers (mfjax.policy.head_state; a head "
                       f"with state_numbers needs the batch's `numbers`)")
    embedded = state_D[..., :want - c.state_numbers]
    x = jnp.concatenate([m_KxD.reshape(*m_KxD.shape[:-2], -1), embedded], -1).astype(jnp.float32)
    x = self.class_norm(x)
    if c.state_numbers:
      x = jnp.concatenate([x, state_D[..., want - c.state_numbers:].astype(jnp.float32)], -1)
    logits = self.class_out(nn.gelu(self.class_hidden(x)))
    if not self.cfg.anchor_steps:
      return logits
    if anchor_C is None:
      raise ValueError("this head starts from its anchor (anchor_steps): pass the anchor class counts")
    if c.anchor_given:
      return logits + jax.nn.log_softmax(anchor_C.astype(jnp.float32), -1)
    k = jax.nn.softplus(self.anchor_k[0])
    shrunk = (anchor_C + k * jax.nn.softmax(self.anchor_prior)) / (anchor_C.sum(-1, keepdims=True) + k)
    return logits + jnp.log(shrunk)

  def __call__(self, pooled_BxD, mask_B):
    """Init / smoke path: one update from the empty state and its posterior (and, with a
    population head, its logits for the first agent's embedding as the state)."""
    state = MFState.zeros(self.cfg, pooled_BxD.shape[:-2])
    category = jnp.zeros(mask_B.shape, jnp.int32) if self.cfg.category_features else None
    state = self.update(state, self.features(pooled_BxD, category), mask_B)
    q = self.posterior(state)
    if self.cfg.classes:
      anchor = jnp.zeros((*pooled_BxD.shape[:-2], self.cfg.classes)) if self.cfg.anchor_steps else None
      state = pooled_BxD[..., 0, :]
      numbers = jnp.zeros((*state.shape[:-1], self.cfg.state_numbers), state.dtype)
      self.class_logits(q.mu, jnp.concatenate([jnp.tile(state, 1 + self.cfg.state_tail), numbers], -1), anchor)
    return q


def anchor_counts(category_ExTxB, agent_mask_ExTxB, steps: int, classes: int):
  """[E, T, C] float32: at each step t, how many of the event's valid agents of steps
  s < min(t, steps) had each joint class (category -1: none); the head's anchor (`anchor_steps`)."""
  T = category_ExTxB.shape[1]
  known = agent_mask_ExTxB & (category_ExTxB >= 0) & (jnp.arange(T) < steps)[None, :, None]
  per_step = (jax.nn.one_hot(jnp.maximum(category_ExTxB, 0), classes) * known[..., None]).sum(2)  # [E, T, C]
  return jnp.cumsum(per_step, 1) - per_step  # the steps before t


def agent_anchors(cfg, batch):
  """[E, T, B, C]: the anchor each agent's head reads (its step's `anchor_counts` of the batch's `category`, or
  with `cfg.anchor_given` the batch's `anchor`), or None for a head without one (`cfg.anchor_steps` 0)."""
  if not cfg.anchor_steps:
    return None
  if cfg.anchor_given:
    return given_anchor(batch)
  category = batch["category"]
  counts = anchor_counts(category, batch["agent_mask"], cfg.anchor_steps, cfg.classes)
  return jnp.broadcast_to(counts[:, :, None], category.shape + counts.shape[-1:])


def given_anchor(batch):
  """The batch's per-agent anchor log-probabilities [E, T, B, C] (`anchor_given`); ValueError naming the key
  where it has none."""
  if "anchor" not in batch:
    raise ValueError("this population head starts from a given per-agent anchor (mf.anchor='agents'): the batch "
                     "needs `anchor` [E, T, B, C] (mfjax.evaluation.bounds.AgentAnchor.logprobs)")
  return batch["anchor"]


def agent_numbers_of(cfg, batch):
  """The batch's agents' states as numbers [E, T, B, F] (`mfjax.data.step_numbers`) where the head reads
  them (`cfg.state_numbers`), else None; ValueError where it reads them and the batch has none."""
  if not cfg.state_numbers:
    return None
  if "numbers" not in batch:
    raise ValueError("this population head reads the agents' states as numbers (state_numbers): the batch needs "
                     "`numbers` [E, T, B, F] (mfjax.data.step_numbers)")
  return batch["numbers"]


def _boxed_init(encoder: MeanFieldEncoder, rng, lm_width: int):
  dummy = jnp.zeros((1, 2, lm_width), jnp.float32)
  return encoder.init(rng, dummy, jnp.ones((1, 2), bool))["params"]


def init_encoder(encoder: MeanFieldEncoder, rng, lm_width: int):
  """Encoder parameters (plain arrays)."""
  if encoder.cfg.width != lm_width:
    raise ValueError(f"mean-field width {encoder.cfg.width} must equal the LM width {lm_width}")
  return jax.jit(lambda r: nn.meta.unbox(_boxed_init(encoder, r, lm_width)))(rng)


def encoder_specs(encoder: MeanFieldEncoder):
  """Logical axis names of every encoder parameter, from `jax.eval_shape` (no memory)."""
  boxed = jax.eval_shape(lambda: _boxed_init(encoder, jax.random.PRNGKey(0), encoder.cfg.width))
  return nn.get_partition_spec(boxed)
