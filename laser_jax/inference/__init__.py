"""Loading trained models and serving them: encoder, export, evaluation, other clients."""
