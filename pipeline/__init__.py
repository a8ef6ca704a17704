"""The challenge pipeline: data, features, training, the cascade, submission and evaluation."""
