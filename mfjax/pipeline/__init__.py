"""The MF-LLM experiment: events -> tokenizer -> step tensors -> training stages ->
rollouts -> evaluation, every part resumable from the run's workdir.

  pipeline_config.plan(cfg)   what a run does (mfjax/pipeline_config.py: every config field)
  data.prepare                events, tokenizer, step tensors
  stages.train                the training stages, one loss each (stages.LOSSES); stages.load_trained
                              their parameters alone, for simulate, evaluate and --trained-from
  rollouts.simulate_all       every method and seed over the eval events
  command.run                 `python -m mfjax run|train|simulate|evaluate`: the parts in order
"""

from mfjax.pipeline.command import run
from mfjax.pipeline.data import Data, prepare, split_events
from mfjax.pipeline.rollouts import simulate_all
from mfjax.pipeline.stages import LOSSES, Trained, load_trained, train

__all__ = ["LOSSES", "Data", "Trained", "load_trained", "prepare", "run", "simulate_all", "split_events", "train"]
