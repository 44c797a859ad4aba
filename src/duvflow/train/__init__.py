"""The training harness every stage trains on: seeding, distributed context, checkpoints."""
