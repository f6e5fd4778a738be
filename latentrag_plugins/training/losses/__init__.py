"""LatentRAG's training losses (paper §4.4), one per file.

- :mod:`.gen`: L_gen, cross-entropy on the action tokens and the answer (§4.1).
- :mod:`.ret_kl`: L_ret, KL(p‖q) between reference and latent retrieval distributions (§4.2, Eq. 8).
- :mod:`.ret_cosine`: the cosine ablation of L_ret (Table 3 (i)).
- :mod:`.ret_infonce`: the InfoNCE ablation of L_ret (Table 3 (ii)).
- :mod:`.ret_first`: L_first, the first step's latent query as a one-step retriever for the
  whole trajectory (an option, off by default; not in the paper).
- :mod:`.dec`: L_dec, cross-entropy of decoding thoughts and subqueries from latents (§4.3).
"""

from __future__ import annotations

from .dec import latent_decoding_loss
from .gen import generation_loss
from .ret_cosine import cosine_retrieval_loss
from .ret_first import first_step_retrieval_loss
from .ret_infonce import infonce_retrieval_loss
from .ret_kl import kl_retrieval_loss

__all__ = [
    "cosine_retrieval_loss",
    "first_step_retrieval_loss",
    "generation_loss",
    "infonce_retrieval_loss",
    "kl_retrieval_loss",
    "latent_decoding_loss",
]
