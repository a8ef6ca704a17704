"""The challenge pipeline: lists, images, feature cache, training, the cascade, submission,
evaluation and the demo dataset."""
