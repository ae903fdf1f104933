"""Recipes: whole training runs that compose the training loop with a world, e.g. the built-in model."""

from lienzo.recipes.shapes import RECIPES, ShapesRecipe, run_recipe

__all__ = ["RECIPES", "ShapesRecipe", "run_recipe"]
