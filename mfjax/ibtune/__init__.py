"""IB-Tune: the information-bottleneck objective and the training around it."""

from mfjax.ibtune.objective import (head_loss, ib_tune_loss, mean_field_path, policy_loss, teacher_forced_posteriors,
                                   text_ib_tune_loss)
from mfjax.ibtune.train import (TRAINABLE, TrainState, batch_at, beta_schedule, fit, jit_train_step, make_optimizer,
                                sharded_state, state_shardings, train_step, trainable_labels, trained_params,
                                trained_steps)

__all__ = ["head_loss", "ib_tune_loss", "mean_field_path", "policy_loss", "TRAINABLE", "TrainState", "batch_at",
           "beta_schedule", "fit", "jit_train_step", "make_optimizer", "sharded_state", "state_shardings",
           "teacher_forced_posteriors", "text_ib_tune_loss", "train_step", "trainable_labels", "trained_params",
           "trained_steps"]
