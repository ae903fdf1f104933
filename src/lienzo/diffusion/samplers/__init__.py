"""diffusion/samplers."""
