"""Image captioning: the prefix-conditioning VLM (frozen ViT + projection + LoRA decoder), the
cross-attention baseline, caption data and the trainer task."""
