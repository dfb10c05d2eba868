"""AA-Moondream: anomaly adapters and head on Moondream's frozen vision tower, explanations from its
decoder, LoRA fine-tuning on anomaly QA, and the anomaly-awareness diagnostic."""
