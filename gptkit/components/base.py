"""What every component shares: its typed parameters and the model sizes it is built with."""

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn


class Params(BaseModel):
    """A component's own parameters, as written in a recipe. Unknown keys are rejected, and types are
    strict (no `"1e-3"` string or `true` where a number belongs)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    def __setattr__(self, name: str, value) -> None:  # pydantic's own says only "Instance is frozen"
        caller = sys._getframe(1).f_locals.get("self")
        if isinstance(caller, nn.Module):  # a component's own code (its forward, say), not a notebook's
            raise TypeError(f"cannot set self.params.{name} = {value!r} in {type(caller).__name__}: a component's "
                            "parameters are fixed once validated (the run's recipe.yaml holds them); keep what "
                            f"changes as the module's own state (self.{name}_now = ..., a buffer if a checkpoint "
                            "must hold it)")
        owner = self._owner()
        key, given, set_ = (owner[0], {"name": owner[1], **self.model_dump(mode="json"), name: value}, f"{name}={value}") \
            if owner else ("model.positional", {"name": "rope", "base": 500.0}, "base=500")  # (not one component's)
        raise TypeError(f"cannot set {name} = {value!r}: a component's parameters are fixed once validated (the "
                        "recipe checked the component with them); give the component anew, its name with its "
                        f"parameters, e.g. recipe.{key} = {given!r}, or load the recipe with "
                        f"overrides=['{key}.{set_}']")

    def _owner(self) -> tuple[str, str] | None:
        """(its recipe key, its name) of the one registered component these are the parameters of, if one:
        ("model.feedforward", "swiglu")."""
        from ..recipe.components import recipe_key  # (it imports the components)
        from ..registry import kinds, registry

        owners = [(kind, entry.name) for kind in kinds() for entry in registry(kind)._entries.values()
                  if getattr(entry.obj, "Params", None) is type(self)]
        if len(owners) != 1:
            return None
        kind, name = owners[0]
        return recipe_key(kind), name


# pydantic/annotated_types constraint attributes, as a reader would write them
_CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of"),
                ("min_length", "length >="), ("max_length", "length <="), ("pattern", "matches"))


def constraints(metadata: Iterable) -> list[str]:
    """A field's constraints (its FieldInfo.metadata) as a reader writes them: ['> 0', '<= 65536']."""
    return [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in _CONSTRAINTS
            if getattr(m, attr, None) is not None]


@dataclass(frozen=True)
class GPTConfig:
    """The sizes every component of a model is built with (nanoGPT's names)."""

    vocab_size: int
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Component:
    """Mixin for registered classes: a `Params` model and an optional compatibility check.

    A model's component (an nn.Module) may also define `init_weights(self)`: the model calls it after
    giving every nn.Linear and nn.Embedding GPT-2's initialisation, to set weights of its own choosing."""

    Params: ClassVar[type[Params]] = Params

    @classmethod
    def check(cls, config: GPTConfig, params: Params) -> None:
        """Raise ValueError when this component cannot work with `config`. Called when a recipe is
        validated, so a bad combination fails there and not inside a forward pass; the text is not read
        yet, so `config.vocab_size` is 1 then. Called again with the real vocab_size when the model is
        built, before training."""


def dropout_layer(p: float) -> nn.Module:
    """nn.Dropout(p), or nn.Identity when p is 0: one cheap call less per use, which shows when
    small models generate token by token."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
