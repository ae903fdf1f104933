"""Networks: CLIP text encoders, UNet, VAE; one class each with a frozen dataclass config."""
