"""Adapters: the patcher that owns views and changes weights; LoRA and LyCORIS deltas build on it."""

from lienzo.adapters.patcher import Delta, ModelPatcher, WeightPatch, module_view, patch_weights

__all__ = ["Delta", "ModelPatcher", "WeightPatch", "module_view", "patch_weights"]
