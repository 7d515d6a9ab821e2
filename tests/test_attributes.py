"""The population head and the attribute-conditioned policy: joint categories and their tags,
IB-Tune's population term, the rollout that draws each agent's category from the head and
writes given its tag, the data's category labels, and the agreement the evaluation reports."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_setup import PAD, make_batch, make_model
from mfjax import configs
from mfjax.categories import CLASSES, DIMENSIONS, class_dimensions, class_of
from mfjax.configs import ConfigError
from mfjax.data import make_step_batch, synthetic
from mfjax.data.batching import BatchConfig
from mfjax.data.prompts import attribute_tag
from mfjax.evaluation.report import (CachedLabeler, attribute_agreement, attribute_confusion, attribute_counts,
                                    make_labeler)
from mfjax.ibtune import ib_tune_loss
from mfjax.meanfield import MeanFieldConfig, MeanFieldEncoder, init_encoder
from mfjax.pipeline.data import _tokenizer_texts, label_categories
from mfjax.pipeline_config import check_config
from mfjax.policy import AttributeTags, action_logprobs, prompt_state, with_tags
from mfjax.rollout import simulate

C = len(CLASSES)
# hand-made tags over the tiny vocabulary: class c is 1 to 3 tokens, left-padded to 3
TAGS = AttributeTags(ids=tuple(tuple([PAD] * (2 - c % 3) + [3 + (c + j) % 50 for j in range(1 + c % 3)])
                               for c in range(C)),
                     mask=tuple(tuple([0] * (2 - c % 3) + [1] * (1 + c % 3)) for c in range(C)))


def _with_head(seed=0):
  model, _, params = make_model(seed)
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=2, width=32, feature_size=16, hidden_size=24, attention_queries=2,
                                             init_logvar=-3.0, classes=C, head_hidden=16))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(seed + 2), 32)
  # a head that is not uniform (its output layer starts at zero)
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 0.5
  return model, encoder, params


def _categorised(batch, seed=0):
  rng = np.random.default_rng(seed)
  cat = rng.integers(0, C, batch["agent_mask"].shape).astype(np.int32)
  return {**batch, "category": np.where(batch["agent_mask"], cat, -1).astype(np.int32)}


def test_every_class_is_one_labelling_with_its_own_tag():
  ids = {d: np.array([DIMENSIONS[d].index(c[d]) for c in CLASSES]) for d in DIMENSIONS}
  np.testing.assert_array_equal(class_of(ids), np.arange(C))
  for d, of_class in class_dimensions().items():
    assert [DIMENSIONS[d][i] for i in of_class] == [c[d] for c in CLASSES]
  assert len({attribute_tag(c) for c in CLASSES}) == C
  # a share is class 0 whatever a labeler says of its other dimensions
  share_doubting = {d: np.array([0 if d == "behaviour" else 1]) for d in DIMENSIONS}
  assert class_of(share_doubting)[0] == 0


def test_tags_are_left_padded_tokens_of_each_class(tmp_path):
  from mfjax.data import train_tokenizer
  events, _ = synthetic.generate(8, seed=0)
  tok = train_tokenizer(_tokenizer_texts(events, None, tags=True), 400, str(tmp_path / "tok"))
  tags = AttributeTags.from_tokenizer(tok)
  for c, (ids, mask) in enumerate(zip(tags.ids, tags.mask)):
    assert len(ids) == tags.length and list(mask) == sorted(mask)  # real tokens at the end
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == attribute_tag(CLASSES[c])
  # the tokenizer learned them: a tag is a few tokens, fewer than from a tokenizer that never saw them
  plain = train_tokenizer(_tokenizer_texts(events, None, tags=False), 400, str(tmp_path / "plain"))
  assert tags.length <= 6 < AttributeTags.from_tokenizer(plain).length


def test_population_term_is_the_heads_cross_entropy_and_trains_the_mean_field():
  model, encoder, params = _with_head()
  batch = _categorised(make_batch())
  batch["category"][0, 1, 0] = -1  # an unlabelled agent is not scored
  key = jax.random.PRNGKey(3)
  loss0, aux0 = ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch, rng=key, beta=1e-3)
  loss, aux = ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch, rng=key, beta=1e-3,
                           population_weight=0.5)
  np.testing.assert_allclose(loss, loss0 + 0.5 * aux0["population"], rtol=1e-6)
  # by hand: the head at every (event, step) of the mean field the policy reads, on each agent's prompt
  from mfjax.ibtune.objective import mean_field_path
  m = mean_field_path(model=model, encoder=encoder, params=params, batch=batch, rng=jax.random.split(key)[0])[0]
  state = prompt_state(model, params["lm"], batch["prompt_ids"], batch["prompt_mask"])
  logits = encoder.apply({"params": params["mf"]}, np.broadcast_to(m[:, :, None], state.shape[:3] + m.shape[2:]),
                         state, method=MeanFieldEncoder.class_logits)
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  keep = batch["agent_mask"] & (batch["category"] >= 0)
  want = -np.mean([logp[i][c] for i, c in zip(zip(*np.nonzero(keep)), batch["category"][keep])])
  np.testing.assert_allclose(aux["population"], want, rtol=1e-5)
  # each dimension's marginal cross-entropy is at most the joint's
  for d in DIMENSIONS:
    assert 0 < aux[f"population_{d}"] <= aux["population"] + 1e-6
  # the term's gradient reaches the encoder's posterior (through m), not only the head
  grads = jax.grad(lambda p: ib_tune_loss(model=model, encoder=encoder, params=p, batch=batch, rng=key, beta=0.0,
                                          population_weight=1.0)[1]["population"])(params)
  assert float(jnp.abs(grads["mf"]["mu_out"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["mf"]["class_hidden"]["kernel"]).sum()) > 0


def test_a_tagged_policy_scores_each_action_after_its_own_categorys_tag():
  model, encoder, params = _with_head()
  batch = _categorised(make_batch())
  key = jax.random.PRNGKey(4)
  _, aux = ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch, rng=key, beta=0.0, tags=TAGS,
                        population_weight=1.0, sample=False)
  # by hand: the tag tokens written after every prompt, the same mean field as prefix
  from mfjax.ibtune.objective import mean_field_path
  m = mean_field_path(model=model, encoder=encoder, params=params, batch=batch, rng=key, sample=False)[0]
  E, T, B = batch["agent_mask"].shape
  flat = lambda x: x.reshape(E * T * B, *x.shape[3:])
  ids, mask = with_tags(flat(batch["prompt_ids"]), flat(batch["prompt_mask"]), TAGS, flat(batch["category"]))
  assert ids.shape[-1] == batch["prompt_ids"].shape[-1] + TAGS.length
  prefix = np.repeat(np.asarray(m).reshape(E * T, *m.shape[2:]), B, axis=0)
  logp = action_logprobs(model, params["lm"], ids, mask, flat(batch["action_ids"]), flat(batch["action_mask"]),
                         prefix_NxKxD=prefix)
  w = flat(batch["action_mask"]) * flat(batch["agent_mask"])[:, None]
  np.testing.assert_allclose(aux["relevance"], -(np.asarray(logp) * w).sum() / w.sum(), rtol=1e-5)
  _, untagged = ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch, rng=key, beta=0.0,
                             population_weight=1.0, sample=False)
  assert abs(float(untagged["relevance"]) - float(aux["relevance"])) > 1e-4  # the tags are read


def test_without_a_head_a_population_term_or_tags_is_an_error():
  model, encoder, params = make_model()
  batch = _categorised(make_batch())
  with pytest.raises(ValueError, match="population head"):
    ib_tune_loss(model=model, encoder=encoder, params=params, batch=batch, rng=jax.random.PRNGKey(0), beta=0.0,
                 population_weight=1.0)
  with pytest.raises(ValueError, match="population head"):
    simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(0), warmup=1, tags=TAGS)


def _forcing(params, c, logit=60.0):
  """The params with a head that gives class c (nearly) all its mass."""
  out = jax.tree.map(lambda x: x, params)
  out["mf"]["class_out"] = {"kernel": jnp.zeros_like(params["mf"]["class_out"]["kernel"]),
                            "bias": jnp.zeros(C).at[c].set(logit)}
  return out


def test_a_tagged_rollout_draws_from_the_head_writes_after_the_tag_and_scores_both():
  model, encoder, params = _with_head()
  batch = _categorised(make_batch())
  run = lambda p, **kw: simulate(model, p, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5),
                                 warmup=1, tags=TAGS, **kw)
  out = run(params)
  valid = batch["agent_mask"]
  assert out.category.shape == valid.shape and ((out.category >= 0) & (out.category < C)).all()
  forced3, forced7 = run(_forcing(params, 3)), run(_forcing(params, 7))
  assert (forced3.category == 3).all() and (forced7.category == 7).all()
  # the same keys, another category: the policy reads the tag, so its samples differ
  assert (np.asarray(forced3.tokens) != np.asarray(forced7.tokens)).any()
  # the real actions: the head's log-probability of their category is added once per action; the
  # policy's part is the same whatever the head says while the mean field is (same keys): up to the
  # step after the warm-up, whose m was written from real actions alone
  uniform = _forcing(params, 0, logit=0.0)
  lp_u, lp_3 = (np.asarray(run(p).real_logprobs).sum(-1)[:, :2] for p in (uniform, _forcing(params, 3)))
  head_3 = np.asarray(jax.nn.log_softmax(jnp.zeros(C).at[3].set(60.0)))
  want = head_3[np.maximum(batch["category"], 0)] + np.log(C)
  np.testing.assert_allclose((lp_3 - lp_u)[valid[:, :2]], want[:, :2][valid[:, :2]], rtol=1e-5)
  # without the real categories the real actions cannot be scored
  with pytest.raises(ValueError, match="category"):
    simulate(model, params, {k: v for k, v in batch.items() if k != "category"}, method="mf", encoder=encoder,
             rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  # other methods ignore the tags and the categories
  plain = simulate(model, params, batch, method="state", rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  assert (np.asarray(plain.category) == -1).all()


def test_the_categories_of_synthetic_actions_are_the_worlds():
  events, truth = synthetic.generate(6, seed=1)
  tok = load_tokenizer_for(events)
  b = make_step_batch(events, tok, BatchConfig(steps=12, agents_per_step=16, prompt_len=16, action_len=8))
  cat = label_categories(CachedLabeler(make_labeler("rules")), b)
  np.testing.assert_array_equal(cat, class_of(truth.attributes))


def load_tokenizer_for(events, _cache={}):
  import tempfile

  from mfjax.data import train_tokenizer
  if "tok" not in _cache:
    _cache["tok"] = train_tokenizer(_tokenizer_texts(events, None, tags=False), 300, tempfile.mkdtemp())
  return _cache["tok"]


def test_attribute_agreement_counts_the_scored_agents_only():
  # drawn: a share (class 0), a doubting negative question (10), a believing negative question (1)
  drawn = np.array([[[0, 10, 1]]])
  # the labeler reads: a share, a doubting negative question, a doubting negative opinion (class 12)
  sim = {"behaviour": np.array([[[0, 1, 1]]]), "belief": np.array([[[0, 1, 1]]]),
         "sentiment": np.array([[[1, 0, 0]]]), "intent": np.array([[[1, 0, 2]]])}
  assert class_of(sim).tolist() == [[[0, 10, 12]]]
  a = attribute_agreement(drawn, sim, np.ones((1, 1, 3), bool))
  assert a["joint"] == pytest.approx(2 / 3) and a["belief"] == pytest.approx(2 / 3)
  assert a["intent"] == pytest.approx(2 / 3) and a["behaviour"] == 1.0 and a["sentiment"] == 1.0
  a = attribute_agreement(drawn, sim, np.array([[[True, True, False]]]))
  assert all(v == 1.0 for v in a.values())
  # P(labelled | drawn) per dimension: the doubting draw read as doubt, the believing one as doubt too
  counts = attribute_counts(drawn, sim, np.ones((1, 1, 3), bool))
  np.testing.assert_array_equal(counts["belief"], [[1, 1], [0, 1]])
  conf = attribute_confusion({d: 2 * c for d, c in counts.items()})  # summed over two seeds
  assert conf["belief"] == [[0.5, 0.5], [0.0, 1.0]]
  assert conf["intent"] == [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], None]  # a share reads as promotion; no opinion drawn
  for d, rows in conf.items():  # every drawn row's agreement weighs back to the agreement
    diag = sum(counts[d][i, i] for i in range(len(rows)))
    assert diag / counts[d].sum() == pytest.approx(attribute_agreement(drawn, sim, np.ones((1, 1, 3), bool))[d])


def test_attributes_without_a_population_weight_is_a_config_error():
  quick = "experiments/quickstart.py"
  with pytest.raises(ConfigError, match="mf.attributes: an attribute-conditioned policy draws from the population"):
    check_config(configs.load_config(quick, ["mf.attributes=True", "ib.population_weight=0.0"]))
  with pytest.raises(ConfigError, match="ib.population_weight: must be >= 0"):
    check_config(configs.load_config(quick, ["ib.population_weight=-1.0"]))
  check_config(configs.load_config(quick, ["mf.attributes=True", "ib.population_weight=1.0"]))


def _reading_categories(seed=0):
  model, _, params = make_model(seed)
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=2, width=32, feature_size=16, hidden_size=24, init_logvar=-3.0,
                                             classes=C, head_hidden=16, category_features=True))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(seed + 2), 32)
  return model, encoder, params


def test_category_features_add_one_learned_vector_per_class_and_none_for_unlabelled():
  _, encoder, params = _reading_categories()
  pooled = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 32))
  category = jnp.array([[0, 5, -1], [18, 5, 2]])
  plain = MeanFieldEncoder(dataclasses.replace(encoder.cfg, category_features=False))
  base = plain.apply({"params": params["mf"]}, pooled, method=MeanFieldEncoder.features)
  feats = encoder.apply({"params": params["mf"]}, pooled, category, method=MeanFieldEncoder.features)
  embed = np.asarray(params["mf"]["class_embed"])
  want = np.asarray(base) + np.where((np.asarray(category) >= 0)[..., None], embed[np.maximum(category, 0)], 0.0)
  np.testing.assert_allclose(feats, want, rtol=1e-6)
  # host (numpy) parameters, as a checkpoint restores them, under jit with traced categories
  host = jax.device_get(params["mf"])
  jitted = jax.jit(lambda c: encoder.apply({"params": host}, pooled, c, method=MeanFieldEncoder.features))
  np.testing.assert_allclose(jitted(category), feats, rtol=1e-5, atol=1e-7)  # jit fuses: float32 ulps
  with pytest.raises(ValueError, match="category_features"):
    encoder.apply({"params": params["mf"]}, pooled, method=MeanFieldEncoder.features)
  with pytest.raises(ValueError, match="classes"):
    init_encoder(MeanFieldEncoder(MeanFieldConfig(width=32, category_features=True)), jax.random.PRNGKey(0), 32)


def test_the_mean_field_reads_the_real_categories_in_warm_up_and_the_drawn_classes_after():
  from mfjax.ibtune.objective import mean_field_path
  model, encoder, params = _reading_categories()
  batch = _categorised(make_batch())
  W, c = 2, 7
  params = _forcing(params, c)  # every agent draws class c
  out = simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=W, tags=TAGS)
  assert (np.asarray(out.category)[batch["agent_mask"]] == c).all()
  # teacher-forced along what the rollout took: the real steps < W, then the sampled actions with their class
  taken = {k: np.array(v) for k, v in batch.items()}
  taken["action_ids"][:, W:] = np.asarray(out.tokens)[:, W:]
  taken["action_mask"][:, W:] = np.asarray(out.mask)[:, W:]
  taken["category"][:, W:] = np.where(batch["agent_mask"][:, W:], c, -1)
  path = lambda b: mean_field_path(model=model, encoder=encoder, params=params, batch=b, rng=jax.random.PRNGKey(0))
  _, mu, _ = path(taken)
  np.testing.assert_allclose(out.mf_mu, mu, rtol=1e-4, atol=1e-5)
  # the categories are read: other real labels, another mean field from the first step they enter
  other = {**batch, "category": np.where(batch["agent_mask"], (batch["category"] + 1) % C, -1).astype(np.int32)}
  _, mu_other, _ = path(other)
  _, mu_real, _ = path(batch)
  np.testing.assert_allclose(mu_other[:, 0], mu_real[:, 0], rtol=1e-6)
  assert not np.allclose(mu_other[:, 1:], mu_real[:, 1:], atol=1e-4)
  with pytest.raises(ValueError, match="category_features"):  # the untagged mf draws no class to read
    simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=W)
  with pytest.raises(ValueError, match="category"):
    simulate(model, params, {k: v for k, v in batch.items() if k != "category"}, method="mf", encoder=encoder,
             rng=jax.random.PRNGKey(5), warmup=W, tags=TAGS, score_real=False)


@pytest.mark.parametrize("anchor_steps", [0, 1])
def test_scheduled_sampling_reads_the_heads_draws_from_drawn_after_on(anchor_steps):
  """ib.drawn_categories: the teacher-forced mean field reads, from step drawn_after on, the classes
  the head draws (every agent here draws class c) in place of the real labels, as a rollout does."""
  from mfjax.ibtune.objective import mean_field_path
  model, encoder, params = _reading_categories()
  if anchor_steps:
    encoder = MeanFieldEncoder(dataclasses.replace(encoder.cfg, anchor_steps=anchor_steps))
    params["mf"] = init_encoder(encoder, jax.random.PRNGKey(2), 32)
  batch = _categorised(make_batch())
  W, c = 2, 7
  params = _forcing(params, c)
  path = lambda b, **kw: mean_field_path(model=model, encoder=encoder, params=params, batch=b,
                                         rng=jax.random.PRNGKey(0), **kw)
  taken = {**batch, "category": np.where((np.arange(batch["agent_mask"].shape[1]) >= W)[None, :, None],
                                         np.int32(c), batch["category"])}
  drawn = path(batch, drawn=1.0, drawn_after=W)
  for got, want in zip(drawn, path(taken)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  real = path(batch)
  assert not np.allclose(drawn[1][:, W + 1:], real[1][:, W + 1:], atol=1e-4)
  np.testing.assert_allclose(drawn[1][:, :W + 1], real[1][:, :W + 1], rtol=1e-5, atol=1e-6)
  for same in (path(batch, drawn=0.0, drawn_after=W), path(batch, drawn=1.0, drawn_after=batch["category"].shape[1])):
    np.testing.assert_allclose(same[1], real[1], rtol=1e-5, atol=1e-6)
  half = path(batch, drawn=0.5, drawn_after=W)[1][:, W + 1:]  # some agents' real labels, some draws
  assert not np.allclose(half, real[1][:, W + 1:], atol=1e-4) and not np.allclose(half, drawn[1][:, W + 1:], atol=1e-4)
  plain = dataclasses.replace(encoder, cfg=dataclasses.replace(encoder.cfg, category_features=False))
  with pytest.raises(ValueError, match="category_features"):
    mean_field_path(model=model, encoder=plain, params=params, batch=batch, rng=jax.random.PRNGKey(0), drawn=1.0)


def test_the_heads_state_can_read_the_prompts_last_tokens_in_order():
  """mf.state_tail: the head's state is the prompt's mean embedding and the embeddings of its last tokens
  (the agent's state line; zero where padded); the head trains on it and a rollout draws from it."""
  from mfjax.ibtune.objective import population_terms
  from mfjax.model import Decoder
  model, encoder, params = _reading_categories()
  tail = 3
  encoder = MeanFieldEncoder(dataclasses.replace(encoder.cfg, state_tail=tail))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(2), 32)
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 0.5  # not uniform
  batch = _categorised(make_batch())
  ids, mask = batch["prompt_ids"], batch["prompt_mask"]
  state = np.asarray(prompt_state(model, params["lm"], ids, mask, tail))
  emb = np.asarray(model.apply({"params": params["lm"]}, ids.reshape(-1, ids.shape[-1]), method=Decoder.embed))
  emb = emb.reshape(ids.shape + (-1,)) * mask[..., None]
  D = emb.shape[-1]
  assert state.shape == ids.shape[:-1] + ((1 + tail) * D,)
  np.testing.assert_allclose(state[..., :D], np.asarray(prompt_state(model, params["lm"], ids, mask)), rtol=1e-6)
  np.testing.assert_allclose(state[..., D:], emb[..., -tail:, :].reshape(ids.shape[:-1] + (-1,)), rtol=1e-6)
  with pytest.raises(ValueError, match="last 99 tokens"):
    prompt_state(model, params["lm"], ids, mask, 99)
  m = jnp.zeros(batch["agent_mask"].shape[:2] + (2, 32))
  grads = jax.grad(lambda mf: population_terms(model=model, encoder=encoder, params={**params, "mf": mf}, batch=batch,
                                               m_ExTxKxD=m)["population"])(params["mf"])
  assert grads["class_hidden"]["kernel"].shape[0] == 2 * 32 + (1 + tail) * 32  # m's K x D and the state
  assert np.abs(grads["class_hidden"]["kernel"][-D:]).max() > 0  # the last token reaches the head
  out = simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  assert ((np.asarray(out.category) >= 0) | ~np.asarray(batch["agent_mask"])).all()
  with pytest.raises(ConfigError, match="mf.state_tail: 999: the head reads the prompt's last tokens"):
    check_config(configs.load_config("experiments/quickstart.py", ["mf.state_tail=999"]))


def test_drawn_categories_need_category_features_and_are_a_probability():
  quick = "experiments/quickstart.py"
  with pytest.raises(ConfigError, match="ib.drawn_categories: the drawn categories are what the mean field reads"):
    check_config(configs.load_config(quick, ["ib.drawn_categories=1.0", "mf.category_features=False"]))
  with pytest.raises(ConfigError, match="ib.drawn_categories: 1.5: a probability"):
    check_config(configs.load_config(quick, ["ib.drawn_categories=1.5"]))
  check_config(configs.load_config(quick, ["ib.drawn_categories=1.0", "mf.category_features=True",
                                           "mf.attributes=True", "ib.population_weight=1.0"]))


def test_category_features_without_attributes_is_a_config_error():
  quick = "experiments/quickstart.py"
  with pytest.raises(ConfigError, match="mf.category_features: the mean field reads a sampled action's category"):
    check_config(configs.load_config(quick, ["mf.category_features=True", "mf.attributes=False"]))
  check_config(configs.load_config(quick, ["mf.category_features=True", "mf.attributes=True",
                                           "ib.population_weight=1.0"]))
  check_config(configs.load_config(quick, ["mf.category_features=False", "mf.attributes=False"]))


def test_a_rollout_scored_on_its_drawn_categories_is_scored_as_their_labels_would_be():
  from mfjax.evaluation.report import drawn_ids, drawn_scores, score
  rng = np.random.default_rng(3)
  E, T, B = 3, 4, 6
  agent_mask = rng.random((E, T, B)) < 0.9
  weights = (np.arange(T)[None, :] >= 1) & agent_mask.any(-1)
  drawn = np.where(agent_mask, rng.integers(0, C, (E, T, B)), -1)
  real = drawn_ids(np.where(agent_mask, rng.integers(0, C, (E, T, B)), -1))
  ids = drawn_ids(drawn)
  # each dimension's id is the class's own category (a share is behaviour 0 whatever else)
  assert (ids["behaviour"][drawn == 0] == 0).all() and (ids["behaviour"][drawn > 0] == 1).all()
  np.testing.assert_array_equal(class_of(ids)[agent_mask], drawn[agent_mask])
  # a labeler that reads every drawn category back scores the rollout exactly as the drawn categories do
  want = score(real, ids, agent_mask, weights, np.zeros((E, T, B, 2)), np.ones((E, T, B, 2)))
  got = drawn_scores(real, drawn, agent_mask, weights)
  assert got["kl_mean"] == pytest.approx(want["kl_mean"], rel=1e-12) and got["kl"] == pytest.approx(want["kl"])
  np.testing.assert_allclose(got["kl_per_event"], want["kl_per_event"], rtol=1e-12)
  np.testing.assert_allclose(got["kl_cells"], want["kl_cells"], rtol=1e-12)
  other = drawn_scores(real, np.where(agent_mask, (drawn + 1) % C, -1), agent_mask, weights)
  assert other["kl_mean"] != pytest.approx(got["kl_mean"])


def test_anchor_counts_are_the_classes_of_the_first_steps_before_each_step():
  from mfjax.meanfield.encoder import anchor_counts
  batch = _categorised(make_batch())
  cat, valid = batch["category"], batch["agent_mask"]
  counts = np.asarray(anchor_counts(jnp.asarray(cat), jnp.asarray(valid), 2, C))
  E, T_ = valid.shape[:2]
  for e in range(E):
    for t in range(T_):
      want = np.zeros(C)
      for s in range(min(t, 2)):
        np.add.at(want, cat[e, s][valid[e, s]], 1)
      np.testing.assert_array_equal(counts[e, t], want)


def test_an_untrained_anchored_head_is_the_shrunk_estimator_and_learns_its_prior():
  """Its layers start at zero: the head's distribution is (c + k / C) / (n + k), the warm-up's class
  counts shrunk towards a uniform prior by k = softplus(2.7) pseudo-agents; the population term's
  gradient reaches the prior and k. A rollout draws from it and needs the real classes."""
  from mfjax.ibtune.objective import population_terms
  model, _, params = make_model()
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=2, width=32, feature_size=16, hidden_size=24, init_logvar=-3.0,
                                             classes=C, head_hidden=16, anchor_steps=1))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(2), 32)
  counts = jnp.asarray(np.random.default_rng(0).integers(0, 5, (3, C)), jnp.float32)
  m, state = jnp.ones((3, 2, 32)), jnp.ones((3, 32))
  p = jax.nn.softmax(encoder.apply({"params": params["mf"]}, m, state, counts, method=MeanFieldEncoder.class_logits))
  k = np.log1p(np.exp(2.7))
  np.testing.assert_allclose(p, (counts + k / C) / (counts.sum(-1, keepdims=True) + k), rtol=1e-5)
  with pytest.raises(ValueError, match="pass the anchor class counts"):
    encoder.apply({"params": params["mf"]}, m, state, method=MeanFieldEncoder.class_logits)
  batch = {k_: jnp.asarray(v) for k_, v in _categorised(make_batch()).items()}
  mu = jnp.zeros(batch["agent_mask"].shape[:2] + (2, 32))
  grads = jax.grad(lambda mf: population_terms(model=model, encoder=encoder, params={**params, "mf": mf}, batch=batch,
                                               m_ExTxKxD=mu)["population"])(params["mf"])
  assert np.abs(grads["anchor_prior"]).max() > 0 and np.abs(grads["anchor_k"]).max() > 0
  out = simulate(model, params, {k_: np.asarray(v) for k_, v in batch.items()}, method="mf", encoder=encoder,
                 rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  assert ((np.asarray(out.category) >= 0) | ~np.asarray(batch["agent_mask"])).all()
  with pytest.raises(ValueError, match="anchored head counts"):
    simulate(model, params, {k_: np.asarray(v) for k_, v in batch.items() if k_ != "category"}, method="mf",
             encoder=encoder, rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS, score_real=False)


def test_an_anchor_the_warm_up_does_not_cover_is_a_config_error():
  quick = "experiments/quickstart.py"
  with pytest.raises(ConfigError, match="mf.anchor_steps: 4: the anchor counts the real classes of the first steps"):
    check_config(configs.load_config(quick, ["mf.anchor_steps=4"]))
  with pytest.raises(ConfigError, match="mf.anchor_steps: the anchored head is the one an attribute-conditioned"):
    check_config(configs.load_config(quick, ["mf.anchor_steps=2", "mf.attributes=False", "mf.category_features=False"]))
  check_config(configs.load_config(quick, ["mf.anchor_steps=3"]))


def test_a_head_reading_the_warm_ups_mean_field_draws_the_same_whatever_enters_the_mean_field_after_it():
  """rollout.head_warmup_m: from the first step after the warm-up on, the head reads that step's m.
  Forced agents' real actions enter the mean field after the warm-up: changing them (and their
  categories) moves the head's later draws when it reads each step's m, and leaves them when it
  reads the warm-up's (the same keys)."""
  model, encoder, params = _reading_categories()
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 3.0  # reads m
  batch = _categorised(make_batch())
  W = 1
  forced = np.zeros(batch["agent_mask"].shape, bool)
  forced[:, W:, 0] = True  # one agent a step after the warm-up takes its batch action
  a = {**batch, "forced": forced}
  b = {k: np.array(v) for k, v in a.items()}
  b["action_ids"][:, W:, 0] = np.roll(b["action_ids"][:, W:, 0], 1, axis=0)  # another event's actions
  b["category"][:, W:, 0] = np.where(b["agent_mask"][:, W:, 0], (b["category"][:, W:, 0] + 5) % C, -1)
  run = lambda batch, frozen: np.asarray(simulate(
      model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=W, tags=TAGS,
      head_warmup_m=frozen).category)
  frozen_a, frozen_b, live_a, live_b = run(a, True), run(b, True), run(a, False), run(b, False)
  np.testing.assert_array_equal(frozen_a, frozen_b)
  # up to the first step after the warm-up both read the same m, so they draw alike there
  np.testing.assert_array_equal(frozen_a[:, :W + 1], live_a[:, :W + 1])
  assert (live_a[:, W + 1:] != live_b[:, W + 1:]).any()  # the head that reads each step's m moves
  with pytest.raises(ConfigError, match="rollout.head_warmup_m"):
    check_config(configs.load_config("experiments/quickstart.py", ["rollout.head_warmup_m=True", "mf.attributes=False",
                                                                   "mf.category_features=False"]))
  check_config(configs.load_config("experiments/quickstart.py", ["rollout.head_warmup_m=True"]))


def test_the_writer_temperature_moves_the_text_and_leaves_the_heads_draws():
  """rollout.writer_temperature: the head draws at the rollout's temperature, the text is written at
  the writer's. At the first step after the warm-up (the m read is the warm-up's in every run), a
  cool writer draws the categories of a plain rollout at a warm temperature, and, wherever its draw
  equals that of a rollout whose head and text both run cool, writes the same action (same keys)."""
  model, encoder, params = _reading_categories()
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 3.0  # spread draws
  batch = _categorised(make_batch())
  W = 1
  run = lambda temperature, writer: simulate(model, params, batch, method="mf", encoder=encoder,
                                             rng=jax.random.PRNGKey(5), warmup=W, tags=TAGS,
                                             temperature=temperature, writer_temperature=writer)
  plain, writer, cool = run(2.0, None), run(2.0, 0.2), run(0.2, None)
  agents = np.asarray(batch["agent_mask"][:, W])
  np.testing.assert_array_equal(np.asarray(writer.category[:, W]), np.asarray(plain.category[:, W]))
  same = agents & (np.asarray(writer.category[:, W]) == np.asarray(cool.category[:, W]))
  assert same.any() and not same[agents].all()  # both cases occur: the head's temperature matters
  np.testing.assert_array_equal(np.asarray(writer.tokens[:, W])[same], np.asarray(cool.tokens[:, W])[same])
  assert (np.asarray(writer.tokens[:, W]) != np.asarray(plain.tokens[:, W]))[agents].any()  # the text moved
  with pytest.raises(ConfigError, match="rollout.writer_temperature"):
    check_config(configs.load_config("experiments/quickstart.py", [
        "rollout.writer_temperature=0.5", "mf.attributes=False", "mf.category_features=False"]))
  check_config(configs.load_config("experiments/quickstart.py", ["rollout.writer_temperature=0.5"]))


def test_the_head_can_read_the_agents_state_as_numbers():
  """mf.state_numbers: the head's state ends with the agent's numbers (`step_numbers`), which enter after
  its LayerNorm; the population term trains on them, and a rollout's draws follow them (the same keys)."""
  from mfjax.ibtune.objective import batch_head_state, population_terms
  from mfjax.policy import head_state
  model, encoder, params = _reading_categories()
  F = 4
  encoder = MeanFieldEncoder(dataclasses.replace(encoder.cfg, state_numbers=F))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(2), 32)
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 3.0  # not uniform
  params["mf"]["class_hidden"]["kernel"] = params["mf"]["class_hidden"]["kernel"].at[-F:].multiply(5.0)
  batch = _categorised(make_batch())
  numbers = np.random.default_rng(0).normal(size=batch["agent_mask"].shape + (F,)).astype(np.float32)
  plain = prompt_state(model, params["lm"], batch["prompt_ids"], batch["prompt_mask"])
  state = np.asarray(batch_head_state(model, encoder, params["lm"], {**batch, "numbers": numbers}))
  np.testing.assert_allclose(state[..., :-F], plain, rtol=1e-6)
  np.testing.assert_array_equal(state[..., -F:], numbers)
  np.testing.assert_array_equal(state, head_state(model, params["lm"], batch["prompt_ids"], batch["prompt_mask"],
                                                  0, numbers))
  with pytest.raises(ValueError, match="needs `numbers`"):
    batch_head_state(model, encoder, params["lm"], batch)
  with pytest.raises(ValueError, match="state_numbers=4 numbers"):  # a state without them
    m = jnp.zeros(plain.shape[:-1] + (2, 32))
    encoder.apply({"params": params["mf"]}, m, plain, method=MeanFieldEncoder.class_logits)
  m = jnp.zeros(batch["agent_mask"].shape[:2] + (2, 32))
  with_numbers = {**batch, "numbers": numbers}
  grads = jax.grad(lambda mf: population_terms(model=model, encoder=encoder, params={**params, "mf": mf},
                                               batch=with_numbers, m_ExTxKxD=m)["population"])(params["mf"])
  assert grads["class_hidden"]["kernel"].shape[0] == 2 * 32 + 32 + F
  assert np.abs(grads["class_hidden"]["kernel"][-F:]).max() > 0  # the numbers reach the head
  run = lambda x: np.asarray(simulate(model, params, {**batch, "numbers": x}, method="mf", encoder=encoder,
                                      rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS).category)
  a, b = run(numbers), run(numbers + 3.0)
  assert (a[:, 1] != b[:, 1]).any()  # the first step after the warm-up draws from numbers that moved
  with pytest.raises(ValueError, match="state_numbers"):
    simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  with pytest.raises(ConfigError, match="mf.state_numbers"):
    check_config(configs.load_config("experiments/quickstart.py", ["mf.state_numbers=True", "mf.attributes=False",
                                                                   "mf.category_features=False",
                                                                   "ib.population_weight=0.0"]))


def test_a_head_only_stage_trains_the_head_alone_on_the_cached_mean_field():
  """`teacher_forced_posteriors` is q along the real history (mean_field_path's mu and logvar); `head_loss` is
  the population term on a draw of that q; trainable "head" moves the head's parameters and nothing else,
  and a few steps lower the loss."""
  from mfjax.ibtune import (TrainState, head_loss, make_optimizer, teacher_forced_posteriors, train_step,
                            trainable_labels)
  from mfjax.ibtune.objective import mean_field_path, population_terms
  from mfjax.meanfield.encoder import HEAD_PARAMS, Posterior
  model, encoder, params = _with_head()
  batch = {k: jnp.asarray(v) for k, v in _categorised(make_batch()).items()}
  cached = teacher_forced_posteriors(model=model, encoder=encoder, params=params, batch=batch)
  _, mu, logvar = mean_field_path(model=model, encoder=encoder, params=params, batch=batch,
                                  rng=jax.random.PRNGKey(7), sample=False)
  np.testing.assert_allclose(cached["mf_mu"], mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cached["mf_logvar"], logvar, rtol=1e-5, atol=1e-6)
  batch = {**batch, **cached}
  key = jax.random.PRNGKey(3)
  loss, aux = head_loss(model=model, encoder=encoder, params=params, batch=batch, rng=key)
  m = Posterior(mu=cached["mf_mu"], logvar=cached["mf_logvar"]).sample(key)
  want = population_terms(model=model, encoder=encoder, params=params, batch=batch, m_ExTxKxD=m)["population"]
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(aux["tokens"]) == float((batch["agent_mask"] & (batch["category"] >= 0)).sum())
  with pytest.raises(ValueError, match="needs 'mf_mu'"):
    head_loss(model=model, encoder=encoder, params=params, batch={k: v for k, v in batch.items() if k != "mf_mu"},
              rng=key)

  labels = trainable_labels(params, "head")
  trained = {path[1].key for path, label in jax.tree_util.tree_leaves_with_path(labels) if label == "train"}
  assert trained == set(HEAD_PARAMS) & set(params["mf"])
  with pytest.raises(ValueError, match="selects no parameter"):
    trainable_labels({"lm": params["lm"]}, "head")
  tx = make_optimizer(params, trainable="head", lr=1e-2, steps=20)
  loss_fn = lambda params, batch, rng, step: head_loss(model=model, encoder=encoder, params=params, batch=batch,
                                                       rng=rng)
  step = jax.jit(lambda s, b, r: train_step(s, b, r, loss_fn=loss_fn, tx=tx, labels=labels))
  state = TrainState(jnp.int32(0), params, tx.init(params))
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.05
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, state.params)
  for path, changed in jax.tree_util.tree_leaves_with_path(moved):
    assert changed == (path[0].key == "mf" and path[1].key in HEAD_PARAMS), path


def test_a_head_with_a_given_anchor_starts_from_it_and_a_rollout_draws_from_it():
  """mf.anchor='agents' (`anchor_given`): the head has no prior or k of its own; untrained (its layers
  start at zero) its distribution is the batch's per-agent anchor; the population term and a rollout read
  the batch's `anchor`, and a batch without one is an error naming it."""
  from mfjax.ibtune.objective import population_terms
  model, _, params = make_model()
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=2, width=32, feature_size=16, hidden_size=24, init_logvar=-3.0,
                                             classes=C, head_hidden=16, anchor_steps=1, anchor_given=True))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(2), 32)
  assert "anchor_prior" not in params["mf"] and "anchor_k" not in params["mf"]
  batch = _categorised(make_batch())
  shape = batch["agent_mask"].shape
  rng = np.random.default_rng(3)
  anchor = np.log(rng.dirichlet(np.ones(C), shape)).astype(np.float32)
  m, state = jnp.ones(shape + (2, 32)), jnp.ones(shape + (32,))
  p = jax.nn.softmax(encoder.apply({"params": params["mf"]}, m, state, anchor, method=MeanFieldEncoder.class_logits))
  np.testing.assert_allclose(p, np.exp(anchor), rtol=1e-5, atol=1e-7)
  with_anchor = {**batch, "anchor": anchor}
  mu = jnp.zeros(shape[:2] + (2, 32))
  got = population_terms(model=model, encoder=encoder, params=params, batch=with_anchor, m_ExTxKxD=mu)["population"]
  w = batch["agent_mask"]
  want = -np.take_along_axis(anchor, np.maximum(batch["category"], 0)[..., None], -1)[..., 0][w].mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match="the batch needs `anchor`"):
    population_terms(model=model, encoder=encoder, params=params, batch=batch, m_ExTxKxD=mu)
  # an anchor sure of one class per agent: after the warm-up every agent draws it
  sure = rng.integers(0, C, shape)
  certain = np.where(np.eye(C, dtype=bool)[sure], 0.0, -50.0).astype(np.float32)
  out = simulate(model, params, {**batch, "anchor": certain}, method="mf", encoder=encoder,
                 rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  drawn = np.asarray(out.category)
  np.testing.assert_array_equal(drawn[:, 1:][w[:, 1:]], sure[:, 1:][w[:, 1:]])
  with pytest.raises(ValueError, match="the batch needs `anchor`"):
    simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)


def test_an_agents_anchor_needs_anchor_steps_and_a_known_name():
  quick = "experiments/quickstart.py"
  with pytest.raises(ConfigError, match="mf.anchor: 'agent': choose from"):
    check_config(configs.load_config(quick, ["mf.anchor=agent", "mf.anchor_steps=3"]))
  with pytest.raises(ConfigError, match="mf.anchor: 'agents' is what the anchored head starts from"):
    check_config(configs.load_config(quick, ["mf.anchor=agents", "mf.anchor_steps=0"]))
  check_config(configs.load_config(quick, ["mf.anchor=agents", "mf.anchor_steps=3"]))
  with pytest.raises(ValueError, match="anchor_given"):
    MeanFieldEncoder(MeanFieldConfig(slots=2, width=32, classes=C, anchor_given=True)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 3, 32)), jnp.ones((1, 3)))


def test_an_identity_writers_channel_is_the_plain_rollout():
  """rollout.writer_channel with a writer that always writes what its tag says: the same draws, text and mean
  field as the rollout without a channel (same keys)."""
  model, encoder, params = _reading_categories()
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 3.0  # spread draws
  batch = _categorised(make_batch())
  run = lambda **kw: simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5),
                              warmup=1, tags=TAGS, temperature=1.3, **kw)
  plain, identity = run(), run(channel=np.eye(C))
  agents = np.asarray(batch["agent_mask"])
  assert len(np.unique(np.asarray(plain.category)[agents])) > 3
  for f in ("category", "tokens", "mask"):
    np.testing.assert_array_equal(getattr(identity, f), getattr(plain, f))
  np.testing.assert_allclose(identity.mf_mu, plain.mf_mu, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="channel is 3 x 3"):
    run(channel=np.eye(3))


def test_through_the_writers_channel_the_head_draws_the_tag_whose_actions_read_as_its_class():
  """A writer whose actions after tag c0 the labeler reads as class c (and after c as c0): the head that wants
  class c draws tag c0 and writes after it, and the mean field reads class c, as it would the labels."""
  from mfjax.ibtune.objective import mean_field_path
  model, encoder, params = _reading_categories()
  batch = _categorised(make_batch())
  W, c, c0 = 2, 7, 12
  params = _forcing(params, c)
  swap = np.eye(C)
  swap[[c, c0]] = swap[[c0, c]]
  out = simulate(model, params, batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=W, tags=TAGS,
                 channel=swap)
  agents = np.asarray(batch["agent_mask"])
  assert (np.asarray(out.category)[:, W:][agents[:, W:]] == c0).all()
  taken = {k: np.array(v) for k, v in batch.items()}
  taken["action_ids"][:, W:] = np.asarray(out.tokens)[:, W:]
  taken["action_mask"][:, W:] = np.asarray(out.mask)[:, W:]
  taken["category"][:, W:] = np.where(agents[:, W:], c, -1)
  _, mu, _ = mean_field_path(model=model, encoder=encoder, params=params, batch=taken, rng=jax.random.PRNGKey(0))
  np.testing.assert_allclose(out.mf_mu, mu, rtol=1e-4, atol=1e-5)
  # the tag's text: the writer given tag c0, as the plain rollout of a head that wants c0 writes it (same keys)
  plain = simulate(model, _forcing(params, c0), batch, method="mf", encoder=encoder, rng=jax.random.PRNGKey(5),
                   warmup=W, tags=TAGS)
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, W], np.asarray(plain.tokens)[:, W])


def test_blind_is_mf_with_the_population_taken_away():
  """rollout method 'blind': the attribute-conditioned policy blind to the population. Its draws and text do
  not move when the warm-up's actions and classes (all it could learn of the population) do, where mf's do;
  its anchor counts no class (an untrained head whose prior is sure of one class draws that class for every
  agent, where mf's, reading the warm-up's counts, draws others too); it keeps no mean field; it needs the tags
  and the encoder's head; the pipeline hands it the anchor that knows nothing of the event."""
  from mfjax.pipeline.rollouts import for_method
  model, _, params = make_model()
  encoder = MeanFieldEncoder(MeanFieldConfig(slots=2, width=32, feature_size=16, hidden_size=24, init_logvar=-3.0,
                                             classes=C, head_hidden=16, anchor_steps=1, category_features=True))
  params["mf"] = init_encoder(encoder, jax.random.PRNGKey(2), 32)
  params["mf"]["class_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(9), (16, C)) * 3.0  # reads m, state
  a = _categorised(make_batch())
  b = {k: np.array(v) for k, v in a.items()}  # another warm-up: other actions, other classes
  b["action_ids"][:, 0] = np.roll(b["action_ids"][:, 0], 1, axis=0)
  b["category"][:, 0] = np.where(b["agent_mask"][:, 0], (b["category"][:, 0] + 5) % C, -1)
  run = lambda method, batch, p=params: simulate(model, p, batch, method=method, encoder=encoder,
                                                 rng=jax.random.PRNGKey(5), warmup=1, tags=TAGS)
  blind_a, blind_b, mf_a, mf_b = run("blind", a), run("blind", b), run("mf", a), run("mf", b)
  for f in ("category", "tokens", "mask"):
    np.testing.assert_array_equal(getattr(blind_a, f)[:, 1:], getattr(blind_b, f)[:, 1:])
  assert (np.asarray(mf_a.category)[:, 1:] != np.asarray(mf_b.category)[:, 1:]).any()
  assert not np.asarray(blind_a.mf_kl).any() and np.asarray(mf_a.mf_kl).any()  # no mean field kept
  agents = np.asarray(a["agent_mask"])[:, 1:]
  assert len(np.unique(np.asarray(blind_a.category)[:, 1:][agents])) > 3
  # an untrained head (its output layer at zero) sure of class 5 a priori: blind draws it for every agent
  sure = jax.tree.map(jnp.array, params)
  sure["mf"]["class_out"]["kernel"] = jnp.zeros((16, C))
  sure["mf"]["anchor_prior"] = jnp.where(jnp.arange(C) == 5, 40.0, 0.0)
  np.testing.assert_array_equal(np.asarray(run("blind", a, sure).category)[:, 1:][agents], 5)
  assert (np.asarray(run("mf", a, sure).category)[:, 1:][agents] != 5).any()  # the warm-up's counts weigh in
  with pytest.raises(ValueError, match="'blind' is the attribute-conditioned policy blind to the population"):
    simulate(model, params, a, method="blind", encoder=encoder, rng=jax.random.PRNGKey(5), warmup=1)
  # the pipeline's arrays: 'blind' reads the blind anchor as its anchor, the others the event's; none the other
  arrays = {"agent_mask": a["agent_mask"], "anchor": np.zeros(2), "anchor_blind": np.ones(2)}
  assert set(for_method(arrays, "mf")) == {"agent_mask", "anchor"} and not for_method(arrays, "mf")["anchor"].any()
  assert set(for_method(arrays, "blind")) == {"agent_mask", "anchor"} and for_method(arrays, "blind")["anchor"].all()
  quick = "experiments/quickstart.py"
  with pytest.raises(ConfigError, match="rollout.methods: 'blind' is the attribute-conditioned mf policy"):
    check_config(configs.load_config(quick, ["rollout.methods=state,blind"]))
  check_config(configs.load_config(quick, ["rollout.methods=state,mf,blind"]))
