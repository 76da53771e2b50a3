"""Recipes: YAML files that pick components by name and set data, model and training."""

from .components import ComponentSpec
from .load import RecipeError, apply_override, flatten, load_recipe, validate
from .schema import DataSection, ModelSection, Recipe, SampleSection, TrainSection

__all__ = ["ComponentSpec", "DataSection", "ModelSection", "Recipe", "RecipeError", "SampleSection",
           "TrainSection", "apply_override", "flatten", "load_recipe", "validate"]
