"""The recipe: what a YAML file may say, with defaults, types and limits.

Paths in a recipe file are relative to the folder of that file.
"""

import os
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .. import plugins
from ..components.base import GPTConfig
from ..device import DEVICE_PATTERN
from ..errors import UserError
from ..io import expand_home
from ..registry import RegistryError, registry
from ..sampling import MAX_TOKENS, SEEDS, one_newline
from .components import MODEL_KINDS, ComponentSpec, RecipeIssue, component


def _resolve(value, info: ValidationInfo) -> Path:
    """Absolute, so that the copy of a recipe saved in a run folder still names the same files
    wherever it is read from (`gptkit run --resume RUN`, `gptkit sample RUN`, an ablation rerun)."""
    if value is None or isinstance(value, str) and not value.strip():  # "" would be the current folder
        raise ValueError("is empty; give a file path")
    if not isinstance(value, (str, Path)):  # string_type: `path: 2024` gets the hint to quote it
        raise PydanticCustomError("string_type", "Input should be a file path")
    path = expand_home(value)  # a ValueError, reported as this field's error, where ~ has no home to expand to
    base = (info.context or {}).get("base_dir")
    return Path(os.path.abspath(path if base is None else Path(base) / path))  # an absolute `path` stays itself


RecipePath = Annotated[Path, BeforeValidator(_resolve)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, dict) and isinstance(getattr(self, name, None), Section):  # as --set train={...} is
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("whole_section", "a mapping would replace the whole {name} section, its "
                                         "other keys back to their defaults; set keys one by one, e.g. "
                                         "recipe.{name}.{key} = ...", {"name": name, "key": next(iter(value), "KEY")}),
                loc=(name,), input=value)])
        # pydantic stores an assigned field before it runs the model's own validator (ModelSection's
        # _compatible), and keeps it when that validator refuses (pydantic#7105): a refused assignment
        # would leave a section no recipe could hold. So it is undone here.
        before, fields_set = dict(self.__dict__), set(self.__pydantic_fields_set__)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            object.__setattr__(self, "__dict__", before)
            object.__setattr__(self, "__pydantic_fields_set__", fields_set)
            raise


class DataSection(Section):
    path: RecipePath = Field(description="UTF-8 text file to train on; relative to the recipe file")
    corpus: component("corpus", None) = Field(None, description="creates `path` on first use if it does not exist")
    max_lines: PositiveInt | None = Field(None, description="use only the first N lines")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="the last fraction of the text is held out")
    stride: PositiveInt | None = Field(None, le=2**40, description="chars between window starts in an epoch; "
                                       "default block_size")


CONFIG_KEYS = ("block_size", "n_layer", "n_head", "n_embd", "dropout")  # what a component's check is given
SHAPE_KEYS = ("block_size", "n_head", "n_embd")  # sizes components' checks refuse: an override of one may be the cause


class ModelSection(Section):
    # Upper bounds far past any model trained with this toolkit: a typo's extra digits are an error here,
    # not minutes of building layers or a failed allocation.
    n_embd: PositiveInt = Field(256, le=65536)
    n_head: PositiveInt = Field(8, le=1024)
    n_layer: PositiveInt = Field(6, le=1000)
    block_size: PositiveInt = Field(256, le=2**20)
    dropout: float = Field(0.0, ge=0, lt=1)
    tie_embeddings: bool = Field(True, description="share the token embedding with the LM head (GPT-2)")
    attention: component("attention", "flash")
    feedforward: component("feedforward", "swiglu")
    norm: component("norm", "rmsnorm")
    positional: component("positional", "sinusoidal")

    def config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **{key: getattr(self, key) for key in CONFIG_KEYS})

    @model_validator(mode="after")
    def _compatible(self):
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]
            raise RecipeIssue([(("n_head",), f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                                f"n_head must divide n_embd, e.g. one of {divisors[-6:]}")], causes=(("n_embd",),))
        issues = self.component_issues(self.config(vocab_size=1))  # the vocabulary is unknown until the text is read
        if issues:
            raise RecipeIssue([((kind,), message) for kind, message in issues],
                              causes=tuple((key,) for key in SHAPE_KEYS))
        return self

    def component_issues(self, config: GPTConfig) -> list[tuple[str, str]]:
        """(kind, why) for each component whose `check` refuses `config`: "name: its message", or the
        registry's error naming it when the check itself is broken."""
        issues = []
        for kind in MODEL_KINDS:
            spec = getattr(self, kind)
            try:
                registry(kind).check(spec.name, config, spec.params)
            except ValueError as e:
                issues.append((kind, f"{spec.name}: {e}"))
            except RegistryError as e:  # a bug in the component's check, which names it
                issues.append((kind, str(e)))
        return issues


CompileModes = Literal[True, False, "auto", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]


def _bool_or_name(value):
    if not isinstance(value, bool | str):  # a Literal alone would take 1 for true
        names = ", ".join(repr(m) for m in get_args(CompileModes) if isinstance(m, str))
        raise ValueError(f"should be true, false or one of {names}")
    return value


def _device(value: str) -> str:
    if not re.fullmatch(DEVICE_PATTERN, value):  # pydantic's own message would show the pattern
        raise ValueError("unknown device; use auto, cpu, cuda, cuda:N or mps")
    return value


def _rows_or_auto(value):
    if value is None or value == "auto" or (type(value) is int and value > 0):
        return value
    raise ValueError("should be a positive number of rows, auto, or null")  # one message, not one per union member


class TrainSection(Section):
    batch_size: PositiveInt = 128
    micro_batch_size: Annotated[PositiveInt | Literal["auto"] | None, BeforeValidator(_rows_or_auto)] = Field(
        "auto", description="split each batch into micro-batches whose gradients add up to the whole batch's "
        "(same maths, less memory), rounded down to a divisor of each process's rows (if one is within half) "
        "so they are equal; "
        "auto: whatever is fastest on the device; null: never split")
    epochs: PositiveInt = 10
    max_steps: PositiveInt | None = Field(None, description="stop after this many steps, even mid-epoch")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay (AdamW's, Muon's); never applied to norms and biases")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; null turns clipping off")
    optimizer: component("optimizer", "adamw")
    schedule: component("schedule", "constant")
    log_every: PositiveInt = Field(50, description="batches between progress lines")
    eval_every: PositiveInt | None = Field(None, description="steps between validation runs; default once per epoch")
    eval_batches: PositiveInt | None = Field(None, description="validation batches per run; default the whole split")
    checkpoint_every: PositiveInt | None = Field(None, description="steps between checkpoints; default once per epoch")
    device: Annotated[str, AfterValidator(_device)] = Field("auto", description="auto: CUDA if present, else CPU")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on a CUDA GPU with native bf16 (Ampere on), fp32 elsewhere")
    compile: Annotated[CompileModes, BeforeValidator(_bool_or_name)] = Field(
        "auto", description="torch.compile the training step (true, or one of torch.compile's modes); auto: on "
                            "CUDA only, where it is a measured win (on a CPU, a run of minutes does not repay it)")


def _top_k(value):
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:  # gptkit sample's --top-k 0 is null
        raise ValueError("must be at least 1; null samples from every character")
    return value


class SampleSection(Section):
    prompt: Annotated[str, AfterValidator(one_newline)] = Field(
        "", description="text to continue; empty: a newline, or the text's first character if it has none")
    tokens: int = Field(500, ge=0, le=MAX_TOKENS, description="characters sampled after training (samples.txt) and by "
                        "`gptkit sample` unless --tokens says; 0: none")
    temperature: float = Field(0.8, ge=0, description="softmax temperature; 0: always the likeliest character")
    top_k: Annotated[PositiveInt | None, BeforeValidator(_top_k)] = Field(
        40, description="sample from the k likeliest characters; null: from every character")


def _not_empty(value):
    if value is None:  # a bare `sample:` line; pydantic would name the section's class
        raise RecipeIssue([((), "empty section; give it keys, or remove it")])
    return value


def section(cls: type[Section]):
    return Annotated[cls, BeforeValidator(_not_empty)]


def _run_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):  # pydantic's own message would show the pattern
        fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", value).lstrip("._-").rstrip("-") or "my-run"
        raise ValueError(f"use only letters, digits, '.', '_' and '-', starting with a letter or digit (it names "
                         f"the run folder); e.g. {fixed}")
    return value


def _file_list(value):
    if value is None:  # a bare `imports:` line
        raise ValueError("empty; give a list of files, e.g. [my_components.py], or remove the key")
    if isinstance(value, str):
        raise ValueError(f"expected a list of files, even of one: [{value}]")
    return value


class Recipe(Section):
    """A whole training run."""

    name: Annotated[str, AfterValidator(_run_name)] = Field(max_length=100, description="names the run folder")
    seed: int = Field(1337, ge=SEEDS.start, lt=SEEDS.stop, description="torch's seeds are 64-bit")
    imports: Annotated[list[RecipePath], BeforeValidator(_file_list)] = Field(
        default_factory=list, description="local Python files that register components (with "
                                          "gptkit.components.register); relative to the recipe file")
    data: section(DataSection)
    # Built when a recipe is validated, not at import: a component default may be unusable (a plugin
    # claiming its name), and that must be a recipe error, not a crash of every command.
    model: section(ModelSection) = Field(default_factory=dict, validate_default=True)
    train: section(TrainSection) = Field(default_factory=dict, validate_default=True)
    sample: section(SampleSection) = SampleSection()

    def __setattr__(self, name: str, value) -> None:
        before = self.imports
        super().__setattr__(name, value)
        if name == "imports":  # run, as a recipe file's are when it loads: the rest may name what they register
            try:
                for path in self.imports:
                    plugins.import_file(path)
            except UserError as e:  # refused as any assignment is: a ValidationError, the recipe as it was
                super().__setattr__(name, before)
                raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                    type=PydanticCustomError("import_failed", "{message}", {"message": str(e)}), loc=(name,),
                    input=value)]) from None

    def to_dict(self) -> dict:
        """Plain values only: safe in a weights_only checkpoint and as YAML."""
        return self.model_dump(mode="json")

    def components(self) -> dict[str, ComponentSpec]:
        """The components the recipe picks, by key: {"model.norm": ComponentSpec, ...}."""
        return {f"{s}.{k}": v for s in ("data", "model", "train")
                for k, v in vars(getattr(self, s)).items() if isinstance(v, ComponentSpec)}

    def plugin_sources(self, prefix: str = "") -> dict[str, str]:
        """{"model.norm": "unitnorm from acme-norms 1.2 (sha256 9f8e7d6c5b4a)"} for each component not built
        in (whose key starts with `prefix`): what a run needs installed to be resumed (to be sampled, the
        model.* ones). The hash is of the component's code: a plugin package's source files, or a local
        file's contents ("mynorm from /x/mine.py (sha256 1a2b3c4d5e6f)"), which an edit changes without
        a new version."""
        entries = {key: registry(spec.kind).entry(spec.name) for key, spec in self.components().items()
                   if key.startswith(prefix)}
        return {key: f"{entry.name} from {entry.origin}" for key, entry in entries.items() if entry.source != "built-in"}
