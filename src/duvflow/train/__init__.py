"""The training harness every stage trains on (:mod:`.harness`), with its batch order (:mod:`.batches`),
schedules (:mod:`.schedules`), checkpoints and model files (:mod:`.checkpoint`) and data-parallel
primitives (:mod:`.distributed`)."""
