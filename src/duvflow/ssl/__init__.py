"""Self-supervised stage: DINO fine-tuning of a timm ViT, patch embeddings and embedding probes.

Modules: ``head`` (projection head, multi-crop model), ``loss`` (DINO loss with centring),
``schedules`` (cosine with warm-up and friends), ``augment`` (batched multi-crop), ``train``
(the loop), ``model`` (backbone building, :func:`~duvflow.ssl.model.load_teacher`), ``embed``
(embedding tables), ``tables`` (:func:`~duvflow.ssl.tables.read_embeddings`, torch-free), ``probe``
(before/after probes).
"""
