"""Evaluators the trainer calls: validation ELBO, early stopping, TensorBoard events,
restart choice and clustering evaluation."""
