"""Baseline arms that need no deep classifier: a linear probe on DINO embeddings and a logistic
regression on handcrafted colour and texture features (same folds, aggregation and theta rules)."""
