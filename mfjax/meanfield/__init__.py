"""The mean-field model: the latent encoder q(m_t | history) that the policy
reads as K prefix vectors (`encoder`), and the paper's text mean field, a
summary an LM writes after every step that the policy reads in its prompt (`text`)."""

from mfjax.meanfield.encoder import (MeanFieldConfig, MeanFieldEncoder, MFState, Posterior, agent_embeddings,
                                     encoder_specs, init_encoder)
from mfjax.meanfield.text import TextMFSpec

__all__ = ["MeanFieldConfig", "MeanFieldEncoder", "MFState", "Posterior", "agent_embeddings", "encoder_specs",
           "init_encoder", "TextMFSpec"]
