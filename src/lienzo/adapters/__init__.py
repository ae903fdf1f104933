"""Adapters: the patcher that owns clones and changes weights; LoRA, LyCORIS and more build on it."""

from lienzo.adapters.patcher import Delta, ModelPatcher, module_view

__all__ = ["Delta", "ModelPatcher", "module_view"]
