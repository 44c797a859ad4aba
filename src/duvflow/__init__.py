"""duvflow: DINO-guided latent diffusion for slide-level breast cancer classification.

The package holds the method's logic; Snakemake rules and ``workflow/scripts/`` only unpack their
inputs and call one function here.
"""

__version__ = "0.1.0"
