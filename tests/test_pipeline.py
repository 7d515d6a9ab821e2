"""The MF-LLM pipeline end to end through the CLI (smoke sizes): outputs,
results.json schema, resume, refusals; the same on real CED events, sharded
over a mesh of 8 CPU devices."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from mf_setup import crash_at_step
from mfjax.__main__ import main
from mfjax import configs
from mfjax.categories import DIMENSIONS
from mfjax.evaluation import bounds
from mfjax.configs import ConfigError
from mfjax.data import load_events, load_tokenizer
from mfjax.evaluation.report import decode_actions
from mfjax.pipeline.data import split_events
from mfjax.pipeline.rollouts import read_channel
from mfjax.pipeline_config import check_config, layer_fields, plan, scratch_model_config
from mfjax.runs import RunFolderError
from mfjax.workdir import ROLLOUT_ARRAYS, load_rollout, rollout_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import probe_policy  # noqa: E402
import report_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT
QUICK = os.path.join(ROOT, "experiments", "quickstart.py") + ":smoke"
TINY = ["data.train_events=8", "data.eval_events=4", "data.val_events=2", "data.steps=4", "data.agents_per_step=4",
        "model.hidden_size=32", "model.intermediate_size=64", "mf.feature_size=16", "mf.hidden_size=32",
        "base.steps=6", "sft.steps=2", "mf_train.steps=4", "base.batch_events=2", "sft.batch_events=2",
        "mf_train.batch_events=2", "train.ckpt_every=2", "train.log_every=2", "rollout.warmup=1",
        "rollout.batch_events=4", "rollout.methods=state,recent,popular,sft,mf,mf_text", "mf_text_train.steps=4",
        "mf_text_train.batch_events=2", "mf_text.summary_len=4"]
METHODS = {"state", "recent", "popular", "sft", "mf"}
SCHEMA = {"kl_mean", "kl_mean_std", "kl", "js_mean", "dtw_mean", "nll", "seeds"}


def _cli(command, workdir, config=QUICK, extra=(), trained_from=None):
  args = [command, "--config", config, "--workdir", str(workdir)]
  for s in list(TINY if config == QUICK else []) + list(extra):
    args += ["--set", s]
  main(args + (["--trained-from", str(trained_from)] if trained_from else []))


def _snapshot(folder):
  """path -> (size, mtime) of every file below `folder`."""
  return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
          for d, _, files in os.walk(folder) for f in files}


def _check_results(workdir, seeds, methods=METHODS):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert set(results["methods"]) == methods
  for name, r in results["methods"].items():
    assert SCHEMA <= set(r), name
    assert set(r["kl"]) == {"behaviour", "belief", "sentiment", "intent"}
    assert r["seeds"] == seeds and r["kl_mean"] >= 0 and r["nll"] > 0
    assert len(r["kl_per_step"]) == results["data"]["steps"] and set(r["kl_dim_per_step"]) == set(DIMENSIONS)
  sims = results["simulators"]  # the no-model reference simulators, one draw per seed
  world = ["world"] if "reference" in results else []  # synthetic data: the world run free from the warm-up too
  assert list(sims["methods"]) == [*bounds.PREDICTORS, *world] and sims["draws"] == seeds
  assert sims["scored_steps"] == results["data"]["scored_steps"]
  assert all(np.isfinite(r["kl_mean"]) and set(r["kl"]) == set(DIMENSIONS) for r in sims["methods"].values())
  # each method against shrunk and the best method without a mean field, over the same events
  blind = min((m for m in ("state", "recent", "popular", "sft") if m in methods),
              key=lambda m: results["methods"][m]["kl_mean"])
  # an attribute-conditioned method's drawn categories (the head's forecast before the text) are rows of their own
  drawn = {f"{m} (drawn)": r["drawn"] for m, r in results["methods"].items() if "drawn" in r}
  per_event = {**{m: r["kl_per_event"] for m, r in results["methods"].items()},
               **{m: r["kl_per_event"] for m, r in drawn.items()}}
  assert set(results["paired"]) == set(per_event)
  for m, row in results["paired"].items():
    assert set(row) == {"shrunk", blind}
    assert all(r["ci95"][0] <= r["diff"] <= r["ci95"][1] and r["events"] == results["data"]["events"]
               for r in row.values())
    np.testing.assert_allclose(row["shrunk"]["diff"], np.mean(per_event[m])
                               - np.mean(sims["methods"]["shrunk"]["kl_per_event"]), rtol=1e-6)
  for r in drawn.values():  # one KL per event, as the methods'
    assert len(r["kl_per_event"]) == results["data"]["events"] and np.all(np.isfinite(r["kl_per_event"]))
  # forecast skill against persistence at every step after the warm-up: each method's and reference's KL there
  # is the mean over events of its per-step KL (the same cells as kl_per_step)
  hz = results["horizon"]
  warmup, steps = results["data"]["warmup"], results["data"]["steps"]
  assert hz["h"] == list(range(1, steps - warmup + 1))
  assert set(hz["methods"]) == set(methods) | set(drawn) | {"warmup", "shrunk", "global"}
  assert hz["methods"]["warmup"]["skill"] == [0.0] * len(hz["h"])
  for m in methods:
    np.testing.assert_allclose(hz["methods"][m]["kl"], results["methods"][m]["kl_per_step"][warmup:], rtol=1e-5)
  np.testing.assert_allclose(hz["methods"]["shrunk"]["kl"], sims["methods"]["shrunk"]["kl_per_step"][warmup:],
                             rtol=1e-5)
  # each category's share after the warm-up, per method, against the training events' (is a method calibrated?)
  rates = results["rates"]
  assert set(rates["methods"]) == set(methods) and set(rates["calibrated"]) == set(methods)
  for per in [rates["real"], *rates["methods"].values()]:
    for d, names in DIMENSIONS.items():
      assert list(per[d]) == list(names) and abs(sum(r["rate"] for r in per[d].values()) - 1.0) < 1e-9
      assert all(r["ci_family"][0] <= r["ci95"][0] <= r["ci95"][1] <= r["ci_family"][1] for r in per[d].values())
  for plot in ("trajectories_mean.png", "kl_per_step.png", "training.png", "horizon.png"):
    assert os.path.getsize(os.path.join(workdir, "plots", plot)) > 0
  return results


def test_quickstart_smoke_runs_resumes_and_refuses(tmp_path, capsys):
  wd = tmp_path / "run"
  _cli("run", wd)
  out = capsys.readouterr().out
  results = _check_results(wd, seeds=2, methods=METHODS | {"mf_text"})
  assert "method" in out and "KL mean" in out and "reference simulators" in out  # the table is printed
  # the quickstart's mf: the actions' categories labelled once, the population term in the mf stage's log and
  # validation, each agent's drawn category read back by the labeler; the mean field reads the categories too
  assert "actions' categories for the population head" in out and "[data] attribute tags: " in out
  assert "(mf: the labeler reads the category each agent drew in " in out
  assert json.load(open(wd / "config.json"))["mf"]["category_features"] is True
  rows = [json.loads(line) for line in open(wd / "mf" / "metrics.jsonl")]
  assert "population" in rows[0] and any("val_population_belief" in r for r in rows)
  assert "paired over the events: KL(method) - KL(reference)" in out
  assert "[base] training " in out and "[mf] training " in out  # what each stage trains, when it trains
  assert "[mf_text] training " in out and "[simulate] mf_text seed 0: event 0's last summary: " in out
  with np.load(rollout_path(str(wd), "mf_text", 0)) as saved:  # the text mean field's summaries are kept
    assert saved["summary"].shape == (4, 4, 4) and saved["summary_mask"].any()
  assert "reference" in results  # synthetic: the sampling-noise floor against the exact truth
  assert results["seconds"] > 0  # the whole job's wall time, in the one write of results.json
  assert results["jobs"] == [{"commands": ["train", "simulate", "evaluate"], "seconds": results["seconds"],
                              "finished": results["jobs"][0]["finished"]}]
  for stage in ("base", "sft", "mf", "mf_text"):
    assert os.path.exists(wd / stage / "metrics.jsonl")
  # where it ran: the scoring process, and each stage's one training session (a resumed stage would have more)
  env = results["environment"]
  assert env["evaluate"]["jax"] == jax.__version__ and env["evaluate"]["devices"] == jax.device_count() == 8
  assert env["evaluate"]["xla_flags"] == os.environ["XLA_FLAGS"] and env["evaluate"]["cpu"]
  assert {k: [(r["from_step"], r["to_step"]) for r in v] for k, v in env["stages"].items()} == {
    "base": [(0, 6)], "sft": [(0, 2)], "mf": [(0, 4)], "mf_text": [(0, 4)]}
  stamp = os.path.getmtime(rollout_path(str(wd), "mf", 0))

  _cli("run", wd)  # a rerun resumes: nothing retrained or re-simulated
  out = capsys.readouterr().out
  assert "already trained" in out and "[simulate]" not in out and "] training " not in out
  assert os.path.getmtime(rollout_path(str(wd), "mf", 0)) == stamp
  rerun = json.load(open(wd / "results.json"))
  assert rerun["methods"]["mf"]["kl_mean"] == results["methods"]["mf"]["kl_mean"]
  assert rerun["environment"]["stages"] == env["stages"]  # nothing trained: no session recorded
  # the first job's time is kept beside the rerun's own
  assert rerun["jobs"][0] == results["jobs"][0] and len(rerun["jobs"]) == 2
  assert rerun["seconds"] == rerun["jobs"][1]["seconds"] < results["seconds"]

  # another workdir rolls out wd's trained stages with other rollout settings, reading wd only
  before = _snapshot(wd)
  again = tmp_path / "again"
  # ... and with an intervention (as experiments/intervention.py): 2 agents of step 2 write a counter-rumor comment
  iv = ["intervention.text=别信谣言，扩散", "intervention.step=2", "intervention.agents=2",
        "intervention.methods=state,mf"]
  # ... over a longer horizon than the stages trained on (6 steps, not 4), KL's drift from steps 3-4 to 5-6 reported
  _cli("run", again, extra=["rollout.warmup=2", "rollout.valid_utf8=True", "rollout.steps=6", "eval.drift=3-4,5-6"]
       + iv, trained_from=wd)
  assert f"[train] the trained stages of {wd} (read only)" in capsys.readouterr().out
  assert _snapshot(wd) == before
  assert not any(os.path.exists(again / stage) for stage in ("base", "sft", "mf", "tokenizer"))
  moved = _check_results(again, seeds=2, methods=METHODS | {"mf_text"})
  assert moved["data"]["warmup"] == 2 and results["data"]["warmup"] == 1
  assert moved["data"]["steps"] == 6 and results["data"]["steps"] == 4
  assert moved["simulators"]["methods"]["global"]["kl_per_step"][5] is not None  # past the training layout's steps
  dr = moved["drift"]
  assert dr["windows"] == [[3, 4], [5, 6]] and dr["events"] == 4 and "drift" not in results
  assert set(dr["methods"]) == METHODS | {"mf_text", *bounds.PREDICTORS, "world"}
  for m in METHODS:  # a window's KL: the mean of the per-step KL over its steps (every event has every step)
    np.testing.assert_allclose(dr["methods"][m]["kl"][1], np.mean(moved["methods"][m]["kl_per_step"][4:6]), rtol=1e-6)
  assert os.path.getsize(again / "plots" / "drift.png") > 0 and not os.path.exists(wd / "plots" / "drift.png")
  assert moved["methods"]["mf"]["kl_mean"] != results["methods"]["mf"]["kl_mean"]
  assert json.load(open(again / "trained_from.json")) == {"trained_from": os.path.abspath(wd)}
  assert moved["environment"]["stages"] == env["stages"]  # the stages' own, read from wd
  section = moved["intervention"]
  assert section["step"] == 2 and section["agents"] == 2 and section["scored_steps"] == [3, 4, 5] and section["events"] == 4
  assert section["labels"] == {"behaviour": "comment", "belief": "doubt", "sentiment": "neutral", "intent": "promotion"}
  assert set(section["methods"]) == {"state", "mf"} and set(moved["methods"]) == set(results["methods"])
  # state reads no population: with the same keys its rollout is the same, token for token
  assert all(v == 0 for d in section["methods"]["state"]["effect"].values() for v in d.values())
  for effect in [section["methods"]["mf"]["effect"], section["world"]["effect"]]:  # proportions: changes sum to 0
    assert all(abs(sum(d.values())) < 1e-9 for d in effect.values())
  assert section["world"]["effect"]["belief"]["doubt"] > 0  # the world's own answer (herding)
  assert os.path.getsize(again / "plots" / "intervention.png") > 0
  tables = report_table.render(moved)  # the docs' tables, made from a real results.json
  assert f"| mf | {moved['methods']['mf']['kl_mean']:.3f} | " in tables
  assert [line for line in tables.splitlines() if line.startswith("### ")] == [
      "### methods", "### simulators", "### paired", "### horizon", "### drift", "### rates", "### intervention"]
  assert os.path.exists(rollout_path(str(again), "mf_intervened", 1))
  # rollout.valid_utf8: no sampled action of any method holds a broken character
  tok = load_tokenizer(str(wd / "tokenizer"))
  for method in sorted(METHODS | {"mf_text"}):
    r = load_rollout(str(again), method, 0)
    assert not any("\ufffd" in t for t in decode_actions(tok, r["tokens"], r["mask"])), method
  drawn = load_rollout(str(again), "mf", 0)["category"]  # each agent's drawn category, saved with the rollout
  assert drawn.min() >= -1 and drawn.max() < 19 and (drawn >= 0).any()
  assert "category" not in load_rollout(str(again), "state", 0)
  agreement = moved["methods"]["mf"]["attribute_agreement"]
  assert set(agreement) == {"joint", *DIMENSIONS} and all(0 <= v <= 1 for v in agreement.values())
  assert "attribute_agreement" not in moved["methods"]["state"]
  # the probe of the run: P(share) from the head, which reads m; the tagged policy's NLL under each variant
  probe_policy.main(["--run", str(wd), "--json", str(tmp_path / "probe.json")])
  probe = json.load(open(tmp_path / "probe.json"))
  v = probe["variants"]
  assert list(v) == ["sampled", "mean", "swapped", "shuffled", "zero", "warmup"] and probe["events"] == 2
  assert v["sampled"]["p_share_change"] == 0 and v["zero"]["p_share_change"] > 0
  assert all(np.isfinite(x["population"]) and x["nll"] > 0 for x in v.values())
  assert set(probe["readout_r2"]) == {"share", "doubt", "negative"}
  assert set(probe["forecast"]["h1"]) == {"head", "head_warmup_m", "shrunk", "global"}  # the head's forecasts beside the no-model ones
  assert all(np.isfinite(r["mean"]) for span in probe["forecast"].values() for r in span.values())
  assert "linear read-out of q's mean" in capsys.readouterr().out
  # the events a --trained-from run's rollouts are scored on, in its longer layout (6 steps, training's 4)
  probe_policy.main(["--run", str(again), "--split", "eval", "--json", str(tmp_path / "probe_eval.json")])
  probe = json.load(open(tmp_path / "probe_eval.json"))
  assert probe["split"] == "eval" and probe["events"] == results["data"]["events"]
  assert all(np.isfinite(r["mean"]) for span in probe["forecast"].values() for r in span.values())
  assert "scored events" in capsys.readouterr().out
  with pytest.raises(SystemExit, match=r"other values of \['ib.beta'\]; only data.eval_split, .*, rollout\.\*, "):
    _cli("run", tmp_path / "other_beta", extra=["ib.beta=0.5"], trained_from=wd)
  assert not os.path.exists(tmp_path / "other_beta")
  with pytest.raises(SystemExit, match="reads its trained stages from"):
    _cli("run", again, extra=["rollout.warmup=2"])  # its rollouts are wd's stages': never mixed with its own
  with pytest.raises(SystemExit, match="holds a run with its own trained stages"):
    _cli("simulate", wd, trained_from=again)
  assert _snapshot(wd) == before
  with pytest.raises(SystemExit, match=f"{again} has no trained tokenizer"):  # again holds no stages of its own
    _cli("run", tmp_path / "chained", trained_from=again)
  assert not os.path.exists(tmp_path / "chained")

  with pytest.raises(SystemExit, match="different config"):
    _cli("run", wd, extra=["ib.beta=0.5"])
  with pytest.raises(SystemExit, match="unknown config key 'ib.bta'"):
    _cli("run", tmp_path / "other", extra=["ib.bta=0.5"])
  # simulate or evaluate alone need a run: a fresh workdir is refused before anything is written in it
  for command in ("simulate", "evaluate"):
    with pytest.raises(SystemExit, match=f"fresh holds no run to {command}"):
      _cli(command, tmp_path / "fresh")
  assert not os.path.exists(tmp_path / "fresh")
  # a run with the same config but nothing trained or simulated yet
  os.makedirs(tmp_path / "half")
  shutil.copy(wd / "config.json", tmp_path / "half" / "config.json")
  with pytest.raises(SystemExit, match="state_seed0.npz is missing"):
    _cli("evaluate", tmp_path / "half")
  with pytest.raises(SystemExit, match="not trained"):
    _cli("simulate", tmp_path / "half")
  (tmp_path / "torn").mkdir()  # a config.json that is not JSON (written atomically, so a hand's doing)
  (tmp_path / "torn" / "config.json").write_text((wd / "config.json").read_text()[:50])
  with pytest.raises(SystemExit, match="torn/config.json:.*: not valid JSON"):
    _cli("evaluate", tmp_path / "torn")
  shutil.copytree(wd, tmp_path / "torn_results")  # a results.json that is not JSON: named before any work, kept
  (tmp_path / "torn_results" / "results.json").write_text("{")
  with pytest.raises(SystemExit, match="torn_results/results.json:.*: not valid JSON"):
    _cli("evaluate", tmp_path / "torn_results")
  assert (tmp_path / "torn_results" / "results.json").read_text() == "{"
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(SystemExit, match="a_file is a file, not a folder"):
    _cli("run", tmp_path / "a_file")


def test_ced_smoke_on_real_events_on_a_mesh(ced_dir, tmp_path, capsys):
  # on a (2, 2, 2) mesh of the 8 forced CPU devices: every stage and rollout sharded
  cfg = os.path.join(ROOT, "experiments", "ced_weibo.py") + ":smoke"
  # (with the head-only stage: the mean field computed over the mesh, the head fitted on it; and the head
  # starting from the per-agent anchor fitted on the training events, which the forecast below fits again)
  # (and mf's tags drawn through the writer's channel, estimated on 8 of the training events)
  extra = [f"data.path={ced_dir}", "parallel.data=2", "parallel.fsdp=2", "parallel.tensor=2", "mf_head.steps=2",
           "mf_head.batch_events=8", "mf_head.events=16", "mf.anchor=agents", "rollout.writer_channel=8",
           "rollout.methods=state,recent,popular,sft,mf,blind"]
  _cli("run", tmp_path / "ced", config=cfg, extra=extra)
  out = capsys.readouterr().out
  channel = json.loads((tmp_path / "ced" / "writer_channel.json").read_text())
  # the agents of the 8 events after the warm-up (1 of 4 steps; 8 agents a step)
  assert channel["events"] == 8 and 0 < channel["actions"] <= 8 * 3 * 8 and len(channel["train_events"]) == 8
  assert np.allclose(np.sum(channel["channel"], 1), 1.0) and np.sum(channel["counts"]) == channel["actions"]
  assert f"[simulate] the writer's channel from {channel['actions']} actions" in out
  with pytest.raises(ConfigError, match="writer_channel.json was estimated on 8 training events"):
    read_channel(plan(configs.load_config(cfg, extra[:1] + ["rollout.writer_channel=4"])),
                 str(tmp_path / "ced"))
  assert "[data] the head's agents anchor fitted on the training agents" in out
  assert "[mesh] {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 cpu device(s)" in out
  assert "[mf_head] the mf stage's mean field along 16 training and 4 validation events" in out  # of 24
  assert "[mf_head] training" in out and (tmp_path / "ced" / "mf_head" / "checkpoints").is_dir()
  results = _check_results(tmp_path / "ced", seeds=2, methods=METHODS | {"blind"})
  assert results["data"]["events"] == 4 and "reference" not in results
  # through the channel the tags are not the population: agreement is reported, the tags are not scored
  assert results["writer_channel"] == {k: channel[k] for k in ("events", "actions", "agreement")}
  assert "attribute_agreement" in results["methods"]["mf"] and "drawn" not in results["methods"]["mf"]
  # blind: mf's stages with the population taken away (the anchor that knows nothing of the event), through the
  # same channel; a method without a mean field, so among those the paired reference is chosen from
  assert "attribute_agreement" in results["methods"]["blind"] and "drawn" not in results["methods"]["blind"]
  no_mf = min(("state", "recent", "popular", "sft", "blind"), key=lambda m: results["methods"][m]["kl_mean"])
  assert set(results["paired"]["mf"]) == {"shrunk", no_mf}
  assert "mf drew its tags through the writer's channel, estimated on" in out
  # the experiment's labeler is the one learned from the hand labels, and the distributions corrected for
  # its errors are scored beside the raw ones, for every method and reference simulator
  assert results["data"]["labeler"] == "trained" and "trained: 5-fold" in results["corrected"]["source"]
  assert results["data"]["labeler_version"].startswith("trained-2:")  # which fit of it labelled this run
  assert set(results["corrected"]["methods"]) == set(results["methods"])
  assert set(results["corrected"]["simulators"]) == set(results["simulators"]["methods"])
  # the same rollouts scored under the rule labeler, into a file of its own; the run's results.json untouched
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import rescore
  before = (tmp_path / "ced" / "results.json").read_text()
  rescore.main(["--run", str(tmp_path / "ced"), "--labeler", "rules"])
  rules = json.loads((tmp_path / "ced" / "rescored" / "rules.json").read_text())
  assert rules["data"]["labeler"] == "rules" and set(rules["corrected"]["methods"]) == set(results["methods"])
  assert (tmp_path / "ced" / "results.json").read_text() == before
  with pytest.raises(SystemExit):  # never over an existing file
    rescore.main(["--run", str(tmp_path / "ced"), "--labeler", "rules"])
  assert "rules.json exists" in capsys.readouterr().err
  # what the sampled actions look like to the labeler (tools/probe_text.py): the same actions as the scoring's
  import probe_text
  probe_text.main(["--run", str(tmp_path / "ced"), "--json", str(tmp_path / "probe_text.json")])
  profiles = json.loads((tmp_path / "probe_text.json").read_text())["profiles"]
  assert set(profiles) == {"real"} | set(results["methods"])
  assert "| labeler's entropy, sentiment |" in capsys.readouterr().out
  rates = results["rates"]
  assert profiles["real"]["share"] == pytest.approx(rates["real"]["behaviour"]["share"]["rate"], abs=1e-12)
  for m in results["methods"]:
    assert profiles[m]["share"] == pytest.approx(rates["methods"][m]["behaviour"]["share"]["rate"], abs=1e-12)
  # a CED val event forecast from its first 2 steps, by eid, on the run's mesh (2 seeds: rows padded to its 4
  # event shards), the agents' states counting their actions in the run's training events
  event = next(load_events(os.path.join(ced_dir, "val.jsonl.gz")))
  main(["forecast", "--trained-from", str(tmp_path / "ced"), "--events", os.path.join(ced_dir, "val.jsonl.gz"),
        "--eid", event.eid, "--observed", "2", "--horizon", "2", "--seeds", "2", "--methods", "state", "mf", "blind",
        "--out", str(tmp_path / "forecast")])
  fc = json.loads((tmp_path / "forecast" / "forecast.json").read_text())
  assert fc["event"]["eid"] == event.eid and fc["event"]["observed_actions"] == 16 and fc["labeler"] == "trained"
  # the file holds what came next
  assert set(fc["kl_to_real"]) == {"state", "mf", "blind", "persistence", "shrunk", "global"}
  assert all(len(v) == 2 and None not in v for v in fc["kl_to_real"].values())


def test_a_rollout_that_cannot_be_read_is_an_error_naming_it(tmp_path):
  path = rollout_path(str(tmp_path), "mf", 1)
  os.makedirs(os.path.dirname(path))
  with open(path, "wb") as f:
    f.write(b"PK\x03\x04 cut short")
  with pytest.raises(RunFolderError, match=f"{path}: not a readable rollout .*mfjax simulate"):
    load_rollout(str(tmp_path), "mf", 1)
  arrays = {k: np.zeros((1, 2)) for k in ROLLOUT_ARRAYS}
  np.savez(path, **arrays)
  assert set(load_rollout(str(tmp_path), "mf", 1)) == set(ROLLOUT_ARRAYS)
  np.savez(path, **{k: v for k, v in arrays.items() if k != "mf_kl"})  # an array missing
  with pytest.raises(RunFolderError, match="mf_kl"):
    load_rollout(str(tmp_path), "mf", 1)


def test_model_scan_layers_reaches_the_model():
  """`model.scan_layers` decides the LM's form (the CED experiment unrolls its two
  layers; the Qwen2-1.5B one, built on it, scans its 28 again: unrolled, its
  train step's memory estimate went from 25.6 to 131.5 GiB per device)."""
  ced = configs.load_config(os.path.join(ROOT, "experiments", "ced_weibo.py"), [])
  quick = configs.load_config(QUICK, [])
  assert not scratch_model_config(ced, 64).scan_layers and scratch_model_config(quick, 64).scan_layers
  assert configs.load_config(os.path.join(ROOT, "experiments", "qwen2_lora.py"), []).model.scan_layers
  assert scratch_model_config(configs.load_config(QUICK, ["model.scan_layers=False"]), 64).scan_layers is False


def test_model_layer_loop_reaches_the_model():
  """`model.layer_loop`: auto runs the stacked layers as a loop on GPUs unless a remat
  policy asks for memory over speed, scans elsewhere; unroll and scan hold on any
  backend; the model built from a config gets the choice."""
  def unroll(backend, *sets):
    return layer_fields(configs.load_config(QUICK, list(sets)), backend)["unroll_stacked"]

  assert configs.load_config(QUICK, []).model.layer_loop == "auto"
  assert unroll("gpu") and not unroll("cpu") and not unroll("tpu")
  assert not unroll("gpu", "model.remat=full") and not unroll("gpu", "model.layer_loop=scan")
  assert unroll("cpu", "model.layer_loop=unroll") and unroll("gpu", "model.layer_loop=unroll", "model.remat=full")
  # Qwen2-1.5B with remat full keeps the scan on a GPU: looped, XLA's CPU estimate of its train step on (1,4,2)
  # is 84.0 GiB per device against 12.9 GiB
  qwen2 = configs.load_config(os.path.join(ROOT, "experiments", "qwen2_lora.py"), [])
  assert layer_fields(qwen2, "gpu") == {"remat_policy": "full", "scan_layers": True, "unroll_stacked": False}
  cfg = configs.load_config(QUICK, ["model.layer_loop=unroll", "model.remat=dots"])
  m = scratch_model_config(cfg, 64)
  assert (m.unroll_stacked, m.scan_layers, m.remat_policy) == (True, True, "dots")


def test_scratch_model_has_only_its_family_switches():
  """A from-scratch LM takes its family's architecture and nothing the test model
  `tiny` adds: llama no llama3 rope scaling (nor its rope_theta), mistral no sliding
  window; qwen2 its q/k/v bias, qwen3 its q/k norm."""
  def model(family):
    return scratch_model_config(configs.load_config(QUICK, [f"model.family={family}"]), 64)

  for family in ("llama", "mistral"):
    m = model(family)
    assert (m.rope_scaling, m.sliding_window, m.rope_theta) == (None, None, 10000.0), m
    assert not (m.qkv_bias or m.o_bias or m.qk_norm), m
  assert model("qwen2").qkv_bias and not model("qwen2").qk_norm
  assert model("qwen3").qk_norm and not model("qwen3").qkv_bias


def test_ced_eval_events_can_be_the_long_ones_in_a_longer_layout(ced_dir):
  cfg = configs.load_config(os.path.join(ROOT, "experiments", "ced_weibo.py") + ":smoke",
                            [f"data.path={ced_dir}", "data.eval_min_actions=400", "rollout.steps=16",
                             "rollout.agents_per_step=4", "eval.drift=3-6,13-16"])
  check_config(cfg)
  p = plan(cfg)
  assert (p.data.batch.steps, p.data.batch.agents_per_step) == (4, 8)  # the training layout stays
  assert (p.data.eval_batch.steps, p.data.eval_batch.agents_per_step) == (16, 4) and p.data.drift == ((3, 6), (13, 16))
  train, _, test, _, _ = split_events(p.data)
  assert len(test) == 4 and all(len(e.actions) >= 400 for e in test)
  assert min(len(e.actions) for e in train) < 400  # the filter is the eval split's alone


def test_ced_missing_path_is_a_clear_error(tmp_path):
  cfg = os.path.join(ROOT, "experiments", "ced_weibo.py") + ":smoke"
  with pytest.raises(SystemExit, match="train.jsonl.gz not found"):
    _cli("train", tmp_path / "x", config=cfg, extra=[f"data.path={tmp_path / 'nowhere'}"])
  assert not os.path.exists(tmp_path / "x")  # the corrected data.path then runs in the same workdir
  (tmp_path / "events.jsonl").write_text("{}\n")
  with pytest.raises(SystemExit, match="events.jsonl is a file; give the folder that holds train.jsonl.gz"):
    _cli("train", tmp_path / "y", config=cfg, extra=[f"data.path={tmp_path / 'events.jsonl'}"])
  assert not os.path.exists(tmp_path / "y")


EXPERIMENTS = ["quickstart.py", "quickstart.py:smoke", "ced_weibo.py", "ced_weibo.py:smoke", "ib_beta_sweep.py",
               "ib_beta_sweep.py:smoke", "qwen2_lora.py", "intervention.py", "intervention.py:smoke",
               "text_mean_field.py", "text_mean_field.py:smoke", "ced_long.py", "ced_long.py:smoke",
               "synthetic_long.py", "synthetic_long.py:40k", "synthetic_long.py:smoke"]


@pytest.mark.parametrize("spec, base", [("ced_long.py", "ced_weibo.py"), ("ced_long.py:smoke", "ced_weibo.py:smoke"),
                                        ("synthetic_long.py", "quickstart.py"), ("synthetic_long.py:40k", "quickstart.py"),
                                        ("synthetic_long.py:smoke", "quickstart.py:smoke")])
def test_the_long_experiments_change_only_what_a_trained_run_may_roll_out_with(spec, base):
  """They read --trained-from the run they extend: their configs differ in rollout and scoring keys only."""
  from mfjax.pipeline_config import EVAL_ONLY_KEYS
  from mfjax.workdir import differing_keys
  long, trained = (configs.load_config(os.path.join(ROOT, "experiments", x), []).to_dict() for x in (spec, base))
  differ = differing_keys(long, trained)
  assert differ and all(k.startswith(EVAL_ONLY_KEYS) for k in differ), differ


@pytest.mark.parametrize("spec", EXPERIMENTS)
def test_every_pipeline_experiment_passes_the_config_check(spec):
  check_config(configs.load_config(os.path.join(ROOT, "experiments", spec), []))


def test_the_run_plan_lists_stages_and_rollouts_in_order():
  """plan(cfg): the stages a run trains, in order, each with its loss, schedule and beta, and the
  rollouts it makes: the methods', the sweep's, then the intervention's (only the methods it names)."""
  cfg = configs.load_config(QUICK, ["ib.sweep=0,1e-2@3", "rollout.methods=state,recent,sft,mf,mf_text",
                                    "intervention.text=别信", "intervention.methods=state,mf", "mf_train.steps=7"])
  check_config(cfg)
  p = plan(cfg)
  assert [(s.name, s.loss, s.section, s.trainable, s.beta) for s in p.stages] == [
      ("base", "base", "base", "full", None), ("sft", "policy", "sft", cfg.sft.trainable, None),
      ("mf", "ib", "mf_train", cfg.mf_train.trainable, cfg.ib.beta), ("mf_beta0", "ib", "mf_train", "full", 0.0),
      ("mf_beta0.01_pop3", "ib", "mf_train", "full", 0.01), ("mf_text", "text_ib", "mf_text_train", "lora", None)]
  # each ib stage's population weight: ib.population_weight, or its sweep entry's @w
  assert [s.population_weight for s in p.stages if s.loss == "ib"] == [cfg.ib.population_weight] * 2 + [3.0]
  assert p.stage("mf").steps == 7 and [s.name for s in p.sweep] == ["mf_beta0", "mf_beta0.01_pop3"]
  assert [(r.tag, r.method, r.params) for r in p.plain] == [
      ("state", "state", "base"), ("recent", "recent", "base"), ("sft", "sft", "sft"), ("mf", "mf", "mf"),
      ("mf_text", "mf_text", "mf_text"), ("mf_beta0", "mf", "mf_beta0"), ("mf_beta0.01_pop3", "mf", "mf_beta0.01_pop3")]
  assert [(r.tag, r.params) for r in p.intervened] == [("state_intervened", "base"), ("mf_intervened", "mf")]
  assert p.intervention.text == "别信" and p.lora.targets == tuple(cfg.lora.targets.split(","))
  # every value the pipeline reads, typed: nothing downstream reads the ConfigDict
  assert (p.data.batch.steps, p.data.batch.agents_per_step, p.data.world.herding) == (
      cfg.data.steps, cfg.data.agents_per_step, cfg.world.herding)
  assert (p.sampling.seeds, p.sampling.warmup, p.training.log_every, p.seed) == (
      cfg.rollout.seeds, cfg.rollout.warmup, cfg.train.log_every, cfg.seed)
  assert p.model.scratch_config(64) == scratch_model_config(cfg, 64)
  assert p.model.encoder(cfg.model.hidden_size).slots == cfg.mf.slots
  with_checkpoint = plan(configs.load_config(QUICK, ["model.checkpoint=/some/folder", "rollout.methods=state,mf"]))
  assert [s.name for s in with_checkpoint.stages] == ["mf"]  # no base stage: the checkpoint is the base policy


def test_a_head_only_stage_follows_mf_and_its_rollouts_draw_from_it():
  """mf_head.steps > 0: stage mf_head (loss head, trainable head, its own schedule) after the mf stage and its
  sweep, and the mf rollouts read its parameters; the sweep's rollouts still read their own stages."""
  cfg = configs.load_config(QUICK, ["ib.sweep=0", "rollout.methods=state,mf", "mf_head.steps=9",
                                    "mf_head.batch_events=8", "mf_head.events=100"])
  check_config(cfg)
  p = plan(cfg)
  assert [(s.name, s.loss, s.section, s.trainable) for s in p.stages][-2:] == [
      ("mf_beta0", "ib", "mf_train", "full"), ("mf_head", "head", "mf_head", "head")]
  head = p.stage("mf_head")
  assert (head.steps, head.batch_events, head.lr, head.events) == (9, 8, cfg.mf_head.lr, 100)
  assert [(r.tag, r.params) for r in p.plain] == [("state", "base"), ("mf", "mf_head"), ("mf_beta0", "mf_beta0")]
  # without the mf method there is nothing to fit the head of
  assert "mf_head" not in [s.name for s in plan(configs.load_config(QUICK, ["rollout.methods=state,sft",
                                                                            "mf_head.steps=9"])).stages]


@pytest.mark.parametrize("override,message", [
    ("sft.trainable=foo", "sft.trainable: 'foo' is none of"),
    ("mf_train.trainable=lora+", r"mf_train.trainable: 'lora\+'"),
    ("model.family=gpt", "model: family 'gpt' is not supported"),
    ("model.num_heads=3", "model: num_heads=3 is not a multiple"),
    ("model.dtype=float7", "model.dtype: data type 'float7'"),
    ("model.dtype=int32", "model.dtype: 'int32' is not a floating-point dtype"),
    ("model.remat=dotz", "model.remat: unknown remat_policy 'dotz'"),
    ("rollout.methods=state,foo", r"rollout.methods: unknown \['foo'\]"),
    ("rollout.warmup=12", r"rollout.warmup: 12 warm-up steps leave no step of 12 \(rollout.steps or data.steps\)"),
    ("rollout.steps=3", r"rollout.warmup: 3 warm-up steps leave no step of 3 \(rollout.steps"),
    ("rollout.agents_per_step=8 rollout.methods=state,mf_text", "rollout.agents_per_step: 8: the text mean field's"),
    ("data.eval_min_actions=256", "data.eval_min_actions: filters the CED eval split"),
    ("eval.drift=4-12", "eval.drift: give at least two windows"),
    ("eval.drift=4-6,10-13", r"eval.drift: window 10-13: steps 4..12 are scored"),
    ("rollout.agents_per_step=8 intervention.text=x intervention.agents=9",  # of the eval layout's agents
     "intervention: agents 9 must be 1 to the 8 agents"),
    ("rollout.top_p=0", r"rollout.top_p: must be in \(0, 1\]"),
    ("rollout.top_k=-1", "rollout.top_k: must be >= 0"),
    ("ib.schedule=cosine", "ib.schedule: unknown beta schedule 'cosine'"),
    ("ib.sweep=1e-3,x", "ib.sweep: could not convert"),
    ("ib.sweep=0.1,1e-3,1e-1", "ib.sweep: beta 0.1 is given twice"),  # both would be stage mf_beta0.1
    ("ib.sweep=0.1@2,1e-1@2.0", "ib.sweep: beta 0.1 with population weight 2 is given twice"),
    ("ib.sweep=0.1@0", "ib.sweep: '0.1@0': the attribute-conditioned policy draws from the population head"),
    ("ib.sweep=0.1@-1", "ib.sweep: '0.1@-1': beta and the population weight must be >= 0"),
    ("ib.sweep=0.1@1 mf.attributes=False mf.category_features=False ib.population_weight=0.0",
     "ib.sweep: '0.1@1': a population weight needs the population head"),
    ("ib.beta=-1.0", "ib.beta: must be >= 0"),
    ("lora.targets=q,w", r"lora: unknown LoRA target\(s\) \['w'\]"),
    ("data.source=weibo", "data.source: must be 'synthetic' or 'ced'"),
    ("data.eval_split=test", "data.eval_split: must be 'val' or 'holdout'"),
    ("data.path=events.jsonl", "data.path: 'events.jsonl': the synthetic world is built in and reads no files"),
    ("data.steps=0", "data.steps: must be >= 1"),
    ("data.topic_len=16", r"data.topic_len: 16: the topic's block must leave the agent's part a token of "
                          r"data.prompt_len=16"),
    ("data.topic_len=12 mf.state_tail=8", r"mf.state_tail: 8: .* \(data.topic_len=12 of them the topic's\)"),
    ("eval.labeler=gpt4", r"eval.labeler: 'gpt4' is not one of \('rules', 'trained'\)"),
    ("eval.labeler=trained", "eval.labeler: the trained labeler learns from the CED hand labels.*data.source=ced"),
    ("eval.corrected=True", "eval.corrected: the labeler's errors are measured on the CED hand labels"),
    ("base.lr=0.0", "base.lr: must be > 0"),
    ("mf_head.steps=5 mf.attributes=False mf.category_features=False ib.population_weight=0.0",
     "mf_head.steps: a head-only stage needs the population head"),
    ("mf_head.lr=0.0", "mf_head.lr: must be > 0"),
    ("mf.anchor_words=8", "mf.anchor_words: only the agents anchor reads the events' words"),
    ("mf.anchor_words=-1", "mf.anchor_words: must be >= 0"),
    ("mf_head.batch_events=0", "mf_head.batch_events: must be >= 1"),
    ("rollout.writer_channel=-1", "rollout.writer_channel: must be >= 0"),
    ("rollout.writer_channel=8 mf.attributes=False mf.category_features=False",
     "rollout.writer_channel: the writer's channel is how the labeler"),
    ("rollout.writer_channel=8 rollout.temperature=0.0", "rollout.writer_channel: the tags are drawn through"),
    ("mf_head.events=-1", "mf_head.events: must be >= 0"),
    ("sft.batch_events=0", "sft.batch_events: must be >= 1"),
    ("model.num_heads=0", "model.num_heads: must be >= 1"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size: must be >= 259"),
    ("mf.slots=0", "mf.slots: must be >= 1"),
    ("mf_text.summary_len=0", "mf_text.summary_len: must be >= 1"),
    ("mf_text_train.trainable=mf", "mf_text_train.trainable: 'mf': the text mean field trains 'lora'"),
    ("intervention.text=x intervention.step=2", r"intervention: step 2 must be a rollout step \(>= the warm-up, 3\)"),
    ("intervention.text=x intervention.step=11", "intervention: step 11 must be .* before the last of 12 steps"),
    ("intervention.text=x intervention.agents=17", "intervention: agents 17 must be 1 to the 16 agents"),
    ("intervention.text=x intervention.methods=mf,sft rollout.methods=state,mf",
     r"intervention.methods: \['sft'\] are not in rollout.methods \['state', 'mf'\]"),
])
def test_a_bad_config_value_is_an_error_naming_its_key(override, message):
  with pytest.raises(ConfigError, match=message):
    check_config(configs.load_config(QUICK, override.split()))


def test_bad_values_stop_the_cli_before_anything_is_written(tmp_path):
  """A value the stages would reject after minutes of training (a wrong `sft.trainable`
  used to fail after the whole base stage) stops the run first, its workdir not made;
  so does a config that is not a pipeline experiment's."""
  with pytest.raises(SystemExit, match="error: sft.trainable: 'foo'"):
    _cli("run", tmp_path / "run", extra=["sft.trainable=foo"])
  with pytest.raises(SystemExit, match="error: model.layer_loop: 'loop' is none of"):
    _cli("run", tmp_path / "run", extra=["model.layer_loop=loop"])
  with pytest.raises(SystemExit, match="error: config lacks .*mf_llm_config"):
    _cli("run", tmp_path / "demo", config=os.path.join(ROOT, "experiments", "lm_demo.py"))
  assert os.listdir(tmp_path) == []


def _hf_folder(path, texts, vocab_size=None):
  """A local HF folder as a user brings one: a tokenizer and a tiny random Qwen2
  whose vocabulary fits it (or `vocab_size`), written by mfjax's own exporter."""
  import jax

  from mfjax.data import train_tokenizer
  from mfjax.model import Decoder, hf, init_params, tiny
  tok = train_tokenizer(texts, 300, str(path))
  cfg = tiny("qwen2", vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_heads=4,
             num_kv_heads=2, head_dim=8, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  model = Decoder(cfg)
  hf.save_pretrained(model, init_params(model, jax.random.PRNGKey(0)), str(path))


def test_a_run_from_a_local_checkpoint_and_another_models_tokenizer(tmp_path, capsys):
  """model.checkpoint: the LM and its tokenizer come from a local HF folder (no
  `base` stage), then sft and IB-Tune fine-tune it and every method rolls out.
  A folder whose tokenizer has ids past the model's vocabulary is refused."""
  texts = ["转发微博", "真的吗？求真相 [泪]", "辟谣：此消息不实", "支持！", "太可怕了"] * 40
  _hf_folder(tmp_path / "ckpt", texts)
  _cli("run", tmp_path / "run", extra=[f"model.checkpoint={tmp_path / 'ckpt'}"])
  out = capsys.readouterr().out
  assert f"[base] loaded {tmp_path / 'ckpt'}" in out
  _check_results(tmp_path / "run", seeds=2, methods=METHODS | {"mf_text"})  # mf_text's writer from the checkpoint
  assert not os.path.exists(tmp_path / "run" / "base")  # nothing trained from scratch

  _hf_folder(tmp_path / "other", texts, vocab_size=128)
  with pytest.raises(SystemExit, match=r"does not fit the model in .*other: its base vocabulary needs 300 ids, "
                                       r"the model has 128; it belongs to another model"):
    _cli("train", tmp_path / "run2", extra=[f"model.checkpoint={tmp_path / 'other'}"])
  # refused before the workdir is made: no config.json is left to refuse the corrected command
  assert not os.path.exists(tmp_path / "run2")
  with pytest.raises(SystemExit, match=r"nowhere: no config.json \(is this a Hugging Face model folder"):
    _cli("run", tmp_path / "run3", extra=[f"model.checkpoint={tmp_path / 'nowhere'}"])
  assert not os.path.exists(tmp_path / "run3")


def test_help_lists_every_experiment_with_its_title(capsys):
  with pytest.raises(SystemExit) as e:
    main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  names = sorted(f for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py"))
  assert len(names) >= 7
  for name in names:
    assert f"\n  {name:<19} " in out, name
  assert "quickstart.py       Quickstart: MF-LLM on the synthetic world, where the truth is known\n" in out


def test_a_run_resumes_on_another_mesh_and_refuses_a_mesh_that_does_not_fit_before_writing(tmp_path, capsys):
  """A pod job restarted on another slice: the workdir's run goes on with other parallel.* values (its
  checkpoint restored onto the new mesh, every step logged once); a mesh that cannot split a batch is
  refused before the workdir is made. Any other key still refuses the workdir."""
  wd, only_base = tmp_path / "run", ["rollout.methods=state"]
  with pytest.raises(SystemExit, match=r"base.batch_events=2 events do not split over the mesh's data x fsdp = 4"):
    _cli("train", wd, extra=only_base + ["parallel.data=4"])
  assert not os.path.exists(wd)

  with crash_at_step(5), pytest.raises(SystemExit):  # after the step-4 checkpoint; the CLI's Ctrl-C exit
    _cli("train", wd, extra=only_base)
  capsys.readouterr()
  _cli("train", wd, extra=only_base + ["parallel.data=2"])
  out = capsys.readouterr().out
  assert "continues with parallel.data=2 (config.json keeps the first run's parallel.data=1)" in out
  assert "[mesh] {'data': 2, 'fsdp': 1, 'tensor': 1}" in out and "[base] resuming at step 4" in out
  assert [json.loads(x)["step"] for x in open(wd / "base" / "metrics.jsonl")] == [2, 4, 6]
  assert json.load(open(wd / "config.json"))["parallel"]["data"] == 1
  with pytest.raises(SystemExit, match=r"different config \(keys \['base.lr', 'parallel.data'\]\)"):
    _cli("train", wd, extra=only_base + ["parallel.data=2", "base.lr=0.5"])
  with pytest.raises(SystemExit, match=r"\['rollout.warmup'\]\); they change only the rollouts and their scoring: "
                                       f"to roll out its trained stages so, add --trained-from {wd} and give"):
    _cli("run", wd, extra=only_base + ["rollout.warmup=2"])


def test_an_ib_sweep_trains_a_stage_per_beta_and_scores_each(tmp_path, capsys):
  """ib.sweep: one mean-field stage per beta (and `beta@w`: population weight) from the same base, each
  rolled out (`mf_beta<b>`, `mf_beta<b>_pop<w>`) and reported with its last validation terms, in
  results.json, the table and plots/ib_curve.png. The stages share one compiled train step and one
  validation step (beta and the weight are arguments, not constants)."""
  wd = tmp_path / "sweep"
  compiled = []
  listener = lambda event, _, fun_name="", **kw: compiled.append(fun_name) if event == BACKEND_COMPILE else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    _cli("run", wd, extra=["ib.sweep=0,1,1@0.5", "rollout.methods=state", "rollout.seeds=1"])
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # base's, then the sweep's: one each, not one per beta
  assert compiled.count("jit(train_step)") == 2 and compiled.count("jit(validation_terms)") == 2, compiled
  out = capsys.readouterr().out
  assert "[mf_beta0] training " in out and "[mf_beta1] training " in out and "[mf] training" not in out
  tags = ["mf_beta0", "mf_beta1", "mf_beta1_pop0.5"]
  results = _check_results(wd, seeds=1, methods={"state", *tags})
  sweep = results["ib_sweep"]
  weight = configs.load_config(QUICK, []).ib.population_weight  # the entries without @ train at it
  assert [(r["beta"], r["population_weight"]) for r in sweep] == [(0.0, weight), (1.0, weight), (1.0, 0.5)]
  for tag, r in zip(tags, sweep):  # each stage's last validation row, and its rollouts' KL
    rows = map(json.loads, open(wd / tag / "metrics.jsonl"))
    last = [row for row in rows if "val_relevance" in row][-1]
    assert [r[k] for k in ("val_relevance", "val_compression_bits", "val_population")] == [
        last[k] for k in ("val_relevance", "val_compression_bits", "val_population")]
    assert r["kl_mean"] == results["methods"][tag]["kl_mean"]
  # three stages, not one trained thrice: the weight moves the loss (population term 0.5x, not 1x)
  assert len({r["val_relevance"] for r in sweep}) == 3
  last_loss = lambda tag: [json.loads(x) for x in open(wd / tag / "metrics.jsonl")][-1]
  for tag, w in (("mf_beta1", weight), ("mf_beta1_pop0.5", 0.5)):
    row = last_loss(tag)
    np.testing.assert_allclose(row["loss"], row["relevance"] + w * row["population"] + row["beta"] * row["compression"],
                               rtol=1e-4)
  assert f"{'beta':>8}{'pop w':>8}{'val NLL':>10}{'val pop':>10}" in out
  assert os.path.getsize(wd / "plots" / "ib_curve.png") > 0

  # the sweep grown by a beta in the same workdir: only evaluate refuses it (nothing written), run
  # trains and rolls out the new stage alone and reports all four
  config = (wd / "config.json").read_text()
  grow = ["ib.sweep=0,1,1@0.5,2", "rollout.methods=state", "rollout.seeds=1"]
  with pytest.raises(SystemExit, match=r"keys \['ib.sweep'\]\); they change which stages the run trains: use "):
    _cli("evaluate", wd, extra=grow)
  assert (wd / "config.json").read_text() == config
  _cli("run", wd, extra=grow)
  out = capsys.readouterr().out
  assert ("goes on with ib.sweep='0,1,1@0.5,2', its finished stages kept (config.json updated from "
          "ib.sweep='0,1,1@0.5')") in out
  assert "[mf_beta0] already trained" in out and "[mf_beta1_pop0.5] already trained" in out
  assert "[mf_beta2] training " in out and "[simulate] mf_beta2 seed 0" in out and "[simulate] mf_beta1" not in out
  assert json.load(open(wd / "config.json"))["ib"]["sweep"] == "0,1,1@0.5,2"
  grown = json.load(open(wd / "results.json"))["ib_sweep"]
  assert grown[:3] == sweep and grown[3]["beta"] == 2.0
