"""lienzo: Stable Diffusion, built whole."""
