"""Latent diffusion stage: autoencoder, SSL- and class-conditioned LDMs, guided DDIM sampling of
synthetic patches, and their fidelity (FID, FD-DINO, KID).

Submodules: :mod:`.config` (settings), :mod:`.data` (patches, latent store), :mod:`.vae`
(AutoencoderKL: build, load, encode, the latent cache), :mod:`.conditioning` (context tokens),
:mod:`.model` (UNet build/save/load, CFG DDIM), :mod:`.train` (the VAE and LDM training loops),
:mod:`.sample` (synthetic folder),
:mod:`.fidelity` (metrics, summary table), :mod:`.figures` (comparison figure).
Heavy imports (torch, diffusers) happen in the submodules, not here.
"""

__all__ = ["conditioning", "config", "data", "fidelity", "figures", "model", "sample", "train", "vae"]
