"""A run on disk: checkpoints, the one restore, progress, exported files and plots, caches."""
