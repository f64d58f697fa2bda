"""Pure JAX maths with no config and no I/O: mixture densities and fits, nearest neighbours,
schedules, clustering metrics, batched application."""
