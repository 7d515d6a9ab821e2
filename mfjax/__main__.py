"""Command line: `python -m mfjax <command> --help`."""

from __future__ import annotations

import argparse
import os
import sys

from mfjax.errors import checked, one_line_errors, positive_int

# transformers is used for tokenizers only here; its "PyTorch was not found" advisory is noise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lm_demo(args) -> None:
  from mfjax import configs, lm_demo
  from mfjax.runs import use_compile_cache
  cfg = configs.load_config(args.config, args.set)
  use_compile_cache()  # before anything compiles
  lm_demo.run(cfg, args.workdir)


def _pipeline(args) -> None:
  from mfjax import configs, pipeline
  from mfjax.runs import use_compile_cache
  cfg = configs.load_config(args.config, args.set)
  use_compile_cache()  # before anything compiles
  workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0])
  commands = {"run": ("train", "simulate", "evaluate")}.get(args.command, (args.command,))
  pipeline.run(cfg, workdir, commands, trained_from=getattr(args, "trained_from", None))


def _forecast(args) -> None:
  from mfjax.pipeline.forecast import ForecastRequest, forecast
  from mfjax.runs import use_compile_cache
  use_compile_cache()
  forecast(ForecastRequest(trained_from=args.trained_from, events=args.events, out=args.out, horizon=args.horizon,
                           seeds=args.seeds, eid=args.eid, observed=args.observed, methods=tuple(args.methods or ()),
                           future_states=args.future_states, seed=args.seed))


def _generate(args) -> None:
  import jax

  from mfjax import sampling
  from mfjax.data import load_tokenizer
  from mfjax.model import hf
  from mfjax.runs import use_compile_cache
  use_compile_cache()
  model_cfg = hf.load_config(args.model)
  tok = load_tokenizer(args.tokenizer or args.model)
  hf.check_tokenizer(tok, model_cfg, args.tokenizer or args.model, args.model)  # before the weights are read
  model, params = hf.load_pretrained(args.model, dtype=args.dtype)
  batch = tok(args.prompt, padding=True, return_tensors="np")
  eos = tok.eos_token_id if tok.eos_token_id is not None else model.cfg.eos_token_id
  out = sampling.generate(model, params, batch["input_ids"], batch["attention_mask"],
                          rng=jax.random.PRNGKey(args.seed), max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_id=eos)
  for prompt, row, mask in zip(args.prompt, out.tokens.tolist(), out.mask.tolist()):
    text = tok.decode([t for t, m in zip(row, mask) if m], skip_special_tokens=True)
    print(f"{prompt}{text}")


def _epilog() -> str:
  """The main commands, and each experiment file with its docstring's title (read, not imported)."""
  import ast
  import glob
  import textwrap
  rows = []
  for path in sorted(glob.glob(os.path.join(_REPO, "experiments", "*.py"))):
    with open(path, encoding="utf-8") as f:
      doc = " ".join((ast.get_docstring(ast.parse(f.read())) or "").split())
    rows.append(f"  {os.path.basename(path):<19} {textwrap.shorten(doc.split('. ')[0], 95, placeholder=' ...')}")
  return "\n".join([
      "examples:",
      "  python -m mfjax run      # the quickstart on its built-in synthetic events, into runs/quickstart",
      "  python -m mfjax run --config experiments/quickstart.py:smoke --workdir runs/smoke   # a one-minute check",
      "  python tools/download_data.py --out data/ced   # real Weibo events (CED), then:",
      "  python -m mfjax run --config experiments/ced_weibo.py --set data.path=data/ced",
      "", "experiments/ (--config experiments/FILE[:arg]; each file's docstring says more):", *rows])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mfjax", description=__doc__, epilog=_epilog(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  quick = os.path.join(_REPO, "experiments", "quickstart.py")
  for name, text in (
      ("run", "train, simulate and evaluate (the whole MF-LLM pipeline)"),
      ("train", "train the stages the config's methods need (base, sft, mf, mf_text, IB sweep)"),
      ("simulate", "roll out every method and seed over the evaluation events (needs train)"),
      ("evaluate", "label the rollouts, compare with the real events, write results.json and plots")):
    p = sub.add_parser(name, help=text, description=text + ". Rerunning resumes from the workdir.")
    p.add_argument("--config", default=quick,
                   help="experiment file[:arg], e.g. experiments/quickstart.py:smoke (default: %(default)s)")
    p.add_argument("--workdir", default=None, help="run folder, reused to resume (default: runs/<experiment>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set ib.beta=0.01 (repeatable)")
    if name != "train":
      p.add_argument("--trained-from", metavar="DIR", default=None,
                     help="roll out and score the trained stages of the run in DIR (read only, no training), "
                          "whose config may differ only in data.eval_split, data.eval_events, data.eval_min_actions, rollout.*, eval.*, "
                          "parallel.* and intervention.*: e.g. --set data.eval_split=holdout for the final "
                          "report of a run selected on val")
    p.set_defaults(fn=_pipeline)

  p = sub.add_parser("forecast", help="forecast an unfolding event from its actions so far with a trained run",
                     description="Roll every method of a trained run out from an event's observed steps for "
                                 "--horizon steps with --seeds seeds, label the actions, and write "
                                 "OUT/forecast.json (each future step's mean proportions and 10-90% band per "
                                 "method, the no-model references persistence/shrunk/global, and the KL to the "
                                 "real continuation where the file has it) and OUT/plots/forecast_<dimension>.png. "
                                 "Docs: docs/forecast.md.",
                     epilog="examples:\n"
                            "  python -m mfjax forecast --trained-from runs/ced_weibo --events data/ced/val.jsonl.gz "
                            "--eid EID --observed 3 --horizon 9 --out runs/forecast_EID\n"
                            "  python -m mfjax forecast --trained-from runs/quickstart --events my_event.jsonl "
                            "--horizon 8 --out runs/forecast_live",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--trained-from", required=True, metavar="DIR", help="a trained run's folder (read only)")
  p.add_argument("--events", required=True, metavar="FILE",
                 help="an event file in any format the loaders read (ced, ced-raw, rumdect, jsonl), or a JSONL "
                      "file of one event's actions so far (the canonical record)")
  p.add_argument("--eid", default=None, help="the event of --events (default: the file's only event)")
  p.add_argument("--horizon", type=positive_int, required=True, help="H: steps to forecast")
  p.add_argument("--observed", type=positive_int, default=None, metavar="K",
                 help="observed steps of the run's agents_per_step actions (default: every full step of the event)")
  p.add_argument("--seeds", type=positive_int, default=8, help="rollouts per method (default: %(default)s)")
  p.add_argument("--methods", nargs="+", default=None, metavar="TAG",
                 help="the run's methods to forecast with (default: all it rolls out)")
  p.add_argument("--future-states", default="last", choices=("last", "real"),
                 help="the future agents' states: the last observed step's, or (a recorded event) the real "
                      "ones, which read future information (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="of the sampling keys (default: %(default)s)")
  p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold a forecast already)")
  p.set_defaults(fn=_forecast)

  p = sub.add_parser("lm-demo", help="train a tiny LM on the built-in corpus and sample from it",
                     description="Train a tokenizer and a tiny LM from scratch on the built-in Weibo-style "
                                 "corpus, sample reactions per topic, write results to the workdir. "
                                 "Rerunning the same command resumes.")
  p.add_argument("--config", default=os.path.join(_REPO, "experiments", "lm_demo.py"),
                 help="experiment file[:arg], e.g. experiments/lm_demo.py:smoke (default: %(default)s)")
  p.add_argument("--workdir", default="runs/lm_demo", help="run folder; reused to resume (default: %(default)s)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set train.steps=100 (repeatable)")
  p.set_defaults(fn=_lm_demo)

  p = sub.add_parser("generate", help="sample continuations from a local Hugging Face model folder")
  p.add_argument("--model", required=True, help="local HF folder (config.json + *.safetensors)")
  p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
  p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable: one batch)")
  p.add_argument("--max-new-tokens", type=positive_int, default=32)
  p.add_argument("--temperature", type=checked(float, lambda v: v >= 0, "at least 0"), default=0.8,
                 help="0 = greedy (default: %(default)s)")
  p.add_argument("--top-k", type=checked(int, lambda v: v >= 0, "at least 0"), default=0,
                 help="0 = off (default: %(default)s)")
  p.add_argument("--top-p", type=checked(float, lambda v: 0 < v <= 1, "in (0, 1]"), default=0.95,
                 help="1 = off (default: %(default)s)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="compute and parameter dtype (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(fn=_generate)

  args = parser.parse_args(argv)
  from mfjax.parallel import distributed
  from mfjax.runs import Preempted
  try:
    with one_line_errors():  # bad input: one line naming the file, line or key
      # a multi-host run ($MFJAX_DISTRIBUTED) joins its hosts before anything asks JAX for a
      # device; a config's parallel.distributed is read by pipeline.run, before its checks
      distributed.initialize()
      args.fn(args)
  except Preempted as e:  # the host is going away; its state is saved
    sys.exit(f"{e}")
  except KeyboardInterrupt:  # Ctrl-C: what is saved stays; the same command picks it up
    resumes = args.fn is not _generate
    print(f"\ninterrupted{': the same command resumes from the last checkpoint' if resumes else ''}",
          file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main()
