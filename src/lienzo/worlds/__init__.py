"""Synthetic worlds with exactly known content: the shapes world and its scorer."""

from .shapes import Scene, SceneObject, caption, render, sample_scene

__all__ = ["Scene", "SceneObject", "caption", "render", "sample_scene"]
