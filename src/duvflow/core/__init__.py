"""Names every stage shares: file io, config loading, labels, splits, the patch index, figures."""
