"""Latent diffusion stage: autoencoder, SSL- and class-conditioned LDMs, guided DDIM sampling of
synthetic patches, and their fidelity (FID, FD-DINO, KID).

Submodules: :mod:`.vae` (AutoencoderKL, latent cache), :mod:`.conditioning` (context tokens),
:mod:`.train` (the training loop), :mod:`.sample` (CFG DDIM, synthetic folder),
:mod:`.fidelity` (metrics, summary table), :mod:`.figures` (comparison figure).
Heavy imports (torch, diffusers) happen in the submodules, not here.
"""

__all__ = ["conditioning", "config", "data", "fidelity", "figures", "sample", "train", "vae"]
