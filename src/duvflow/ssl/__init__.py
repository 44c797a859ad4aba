"""Self-supervised stage: DINO fine-tuning of a timm ViT, patch embeddings and embedding probes.

Modules: ``config`` (settings), ``head`` (projection head, multi-crop model), ``loss`` (DINO loss
with centring), ``augment`` (batched multi-crop), ``train``
(the loop), ``model`` (backbone building, :func:`~duvflow.ssl.model.load_teacher`), ``embed``
(embedding tables), ``tables`` (:func:`~duvflow.ssl.tables.read_embeddings`, torch-free), ``probe``
(before/after probes).
"""
