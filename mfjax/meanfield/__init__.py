"""The mean-field model: the latent encoder q(m_t | history) that the policy
reads as K prefix vectors."""

from mfjax.meanfield.encoder import (MeanFieldConfig, MeanFieldEncoder, MFState, Posterior, agent_embeddings,
                                     encoder_specs, init_encoder)

__all__ = ["MeanFieldConfig", "MeanFieldEncoder", "MFState", "Posterior", "agent_embeddings", "encoder_specs",
           "init_encoder"]
