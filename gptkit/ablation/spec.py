"""What an ablation runs: a base recipe, the fields to vary and the seeds, expanded into arms.

The baseline arm is the recipe as given (with any `--set`). By default the arms are the grid of the
varied values; one-at-a-time changes a single field per arm and leaves the rest at the baseline.
Arms that resolve to the same recipe are one arm (varying `model.norm=rmsnorm,layernorm` against an
rmsnorm recipe gives two arms, not three).

Fair by construction: every arm of a seed reads the same data in the same batch order (the order is a
function of the seed and epoch only) and is evaluated on the same validation windows, with the same
token budget. Fields that would break that are refused unless `allow_unfair` says otherwise.
"""

import collections
import fnmatch
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from ..errors import UserError, did_you_mean, listing, problems
from ..io import missing, read_text
from ..recipe import Recipe, flatten, load_recipe, yaml
from ..recipe.components import ComponentSpec
from ..recipe.load import absolute_paths, is_path, names_component
from ..sampling import SEEDS
from ..training.resume import MAY_CHANGE

# Varying one of these changes what the arms are trained or judged on, not just the model.
UNFAIR = {
    "data": "the text and split",
    "model.block_size": "the tokens per step",
    "train.batch_size": "the tokens per step and the batch order",
    "train.epochs": "the token budget",
    "train.max_steps": "the token budget",
    "train.eval_every": "when validation loss is measured",
    "train.eval_batches": "the validation windows",
}
FILE_KEYS = {  # each key of an ablation file, and what it takes (said when it gets another type)
    "name": "a folder name, for the ablation's folder",
    "recipe": "the base recipe's path, relative to this file",
    "set": "overrides applied to every arm, {dotted.key: value}",
    "vary": "{dotted.key: [value, ...]}",
    "seeds": "a count, or a list of seeds",
    "mode": "grid or one-at-a-time",
    "param_margin": "a fraction such as 0.1 (arms whose parameter count differs from the baseline's by more are "
                    "flagged)",
    "allow_unfair": "true or false (true allows varying data, budget or evaluation fields)",
}
MODES = ("grid", "one-at-a-time")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a recipe name's rule: one folder, inside runs/ablations/


@dataclass
class Ablation:
    """An ablation before expansion. `vary` values and `overrides` are YAML text, as `--set` takes."""

    recipe: Path
    vary: dict[str, list[str]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    seeds: int | list[int] = 3
    mode: str = "grid"
    name: str | None = None
    param_margin: float = 0.1
    allow_unfair: bool = False
    # How errors name what a file gave: an override "KEY=VALUE", or "--vary KEY" -> "abl.yaml: vary.KEY"
    origin: dict[str, str] = field(default_factory=dict)

    def named(self, flag: str) -> str:
        return self.origin.get(flag, flag)


@dataclass
class Arm:
    label: str                         # "positional=rope norm=layernorm", or "baseline"
    slug: str                          # its folder name
    changes: list[tuple[str, str]]     # (dotted key, YAML text) on top of the baseline
    recipe: Recipe                     # resolved, with the base recipe's seed
    baseline: bool = False
    values: str = ""                   # the baseline's: its values of the varied keys, "positional=learned"
    factors: dict[str, str] = field(default_factory=dict)  # every varied key's value (YAML text) in this arm

    @property
    def title(self) -> str:
        """The label, saying so when it is the baseline's, whose values of the varied keys it gives."""
        if self.label == "baseline":
            return f"baseline ({self.values})" if self.values else "baseline"
        return self.label + (" (baseline)" if self.baseline else "")

    def for_seed(self, seed: int) -> Recipe:
        return self.recipe.model_copy(update={"seed": seed})


@dataclass
class Plan:
    name: str
    arms: list[Arm]                    # the baseline first
    seeds: list[int]
    digest: str                        # names the default folder; independent of the seeds
    ablation: Ablation
    older_digest: str = ""             # the name gptkit gave it before `digest` left MAY_DIFFER out
    notes: list[str] = field(default_factory=list)  # said with the plan: kept parameters, keys training ignores

    @property
    def baseline(self) -> Arm:
        return self.arms[0]


def parse_seeds(text: str) -> int | list[int]:
    """"3" -> 3 seeds; "0,1,2" -> those seeds; "7," -> the one seed 7."""
    try:
        seeds = [int(s) for s in text.strip().removesuffix(",").split(",")]
    except ValueError:
        raise UserError(f"--seeds {text}: expected a count (--seeds 3) or a list (--seeds 0,1,2; one seed: "
                        "--seeds 7,)") from None
    return seeds[0] if len(seeds) == 1 and "," not in text else seeds


MAX_SEEDS = 1000  # per arm; more is a typo, and the list of seeds is built up front


def check_seeds(seeds: int | list[int], where: str) -> None:
    if isinstance(seeds, int) and seeds < 1:  # a single number is a count
        raise UserError(f"{where}: expected a count of at least 1 (3: the recipe's seed and the next two) or a "
                        f"list of seeds (0,1,2); got {seeds}")
    if isinstance(seeds, list) and (not seeds or len(set(seeds)) != len(seeds)):
        raise UserError(f"{where}: expected at least one seed, each once; got {seeds}")
    count = seeds if isinstance(seeds, int) else len(seeds)
    if count > MAX_SEEDS:
        one = f"; for the one seed {seeds}, give a list of one ({seeds}, on the command line, [{seeds}] in a file)" \
            if isinstance(seeds, int) else ""
        raise UserError(f"{where}: {count:,} seeds per arm; at most {MAX_SEEDS:,}{one}")
    outside = [s for s in ([] if isinstance(seeds, int) else seeds) if s not in SEEDS]
    if outside:
        raise UserError(f"{where}: seed {outside[0]} is out of range; seeds are from {SEEDS.start} to {SEEDS.stop - 1}")
    alike = [(a, b) for i, a in enumerate(seeds if isinstance(seeds, list) else []) for b in seeds[i + 1:]
             if (a - b) % 2**64 == 0]
    if alike:  # paired as two seeds, their identical runs would make a zero-width interval
        raise UserError(f"{where}: seeds {alike[0][0]} and {alike[0][1]} are one seed to torch, which takes them modulo "
                        "2**64; give seeds that differ")


def check_name(name: str, where: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError(f"{where}: {name!r} cannot name the ablation folder: use letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit, at most 100 characters (e.g. norm-sweep)")
    return name


def value_of(recipe: Recipe, key: str):
    """The recipe's value at dotted `key`: a component's name, or {name, parameters it sets} when it sets any
    (`{name: rope, base: 500}`)."""
    node = at_key(recipe, key)
    if isinstance(node, ComponentSpec):
        changed = node.params.model_dump(mode="json", exclude_defaults=True)
        return {"name": node.name, **changed} if changed else node.name
    return flatten(recipe.to_dict()).get(key, node)  # as the recipe writes it: a path as a str


def at_key(node: Recipe | dict, key: str):
    """What a recipe (or its dict) holds at dotted `key`; None where a part is missing."""
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None) \
            if isinstance(node, BaseModel | ComponentSpec) else None  # not a str's methods
    return node


def yaml_text(value) -> str:
    """`value` as one line of YAML that `--set` reads back as exactly `value` (mappings in order: `set`
    overrides apply in turn)."""
    return yaml.dump(value, flow=True)


def _not_a_recipe(target: Path, path: Path) -> str | None:
    """What is wrong with `target` as the recipe the ablation file `path` varies, or None."""
    where = os.path.realpath(target)
    relative = " (recipe: is a path relative to the ablation file)"
    if target.is_dir():
        return f"{where} is a folder; give the recipe file"
    if not target.is_file():
        return f"recipe file {where} {missing(target, 'a recipe')}{relative}"
    if os.path.samefile(target, path):
        return "names this ablation file itself; give the recipe it varies"
    try:
        data, _ = yaml.load(read_text(target, "recipe"), str(target))
    except UserError:  # said when the recipe is read
        return None
    if isinstance(data, dict) and "recipe" in data:
        return f"{where} is another ablation file, not a recipe; give the recipe it varies"
    return None


def load_ablation(path: Path) -> Ablation:
    """The ablation a YAML file in recipes/ablations/ describes; every problem of the file in one error."""
    data, lines = yaml.load(read_text(path, "ablation"), str(path))
    if not isinstance(data, dict) or "recipe" not in data:
        raise UserError(f"{path}: an ablation file is a mapping with at least `recipe:` and `vary:`")
    found: list[tuple[int, str]] = []  # (line, problem): said in the file's order

    def line(*key) -> int:
        return lines.get(key) or lines.get(key[:1]) or 0

    def at(*key) -> str:  # "abl.yaml:7: vary.model.norm", as a recipe's errors name their lines
        return f"{path}{f':{line(*key)}' if line(*key) else ''}: {'.'.join(map(str, key))}"

    def problem(key: tuple, text: str) -> None:
        found.append((line(*key), f"{at(*key)}: {text}"))

    for key in data:
        if key not in FILE_KEYS:
            problem((key,), f"unknown key{did_you_mean(str(key), FILE_KEYS)}. Valid keys: {listing(FILE_KEYS)}")

    def typed(key, kind, default):  # the value, or (a problem found) the default
        value = data.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            problem((key,), f"expected {FILE_KEYS[key]}, got {value!r}")
            return default
        return value

    def checked(key, check, value):  # check(value, at(key))'s result, or (a problem found) None
        try:
            return check(value, at(key))
        except UserError as e:
            found.append((line(key), str(e)))

    recipe = typed("recipe", str, None)
    if recipe is not None:
        wrong = _not_a_recipe(path.parent / recipe, path)
        if wrong:
            problem(("recipe",), wrong)
    vary, sets, seeds = typed("vary", dict, {}), typed("set", dict, {}), typed("seeds", (int, list), 3)
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            problem(("vary", key), "expected a list of values, e.g. [sinusoidal, rope]")
    vary = {k: v for k, v in vary.items() if isinstance(v, list)}
    if isinstance(seeds, list) and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        problem(("seeds",), f"expected a count or a list of integers, got {seeds!r}")
    else:
        checked("seeds", check_seeds, seeds)
    mode = typed("mode", str, "grid")
    if mode not in MODES:
        problem(("mode",), f"expected one of {', '.join(MODES)}, got {mode!r}")
    margin = float(typed("param_margin", (int, float), 0.1))
    if not margin >= 0:
        problem(("param_margin",), f"expected a fraction of at least 0, e.g. 0.1, got {margin!r}")
    name = typed("name", str, None) if "name" in data else path.stem
    if "name" in data and name is not None:
        name = checked("name", check_name, name)
    allow_unfair = typed("allow_unfair", bool, False)
    if found:
        raise UserError(problems(str(path), [text for _, text in sorted(found, key=lambda p: p[0])]))

    def written(key, value) -> str:  # paths relative to the file, as `recipe:` is (--set's: to the current directory)
        return yaml_text(absolute_paths(tuple(str(key).split(".")), value, path.parent))

    texts = {str(k): [written(k, v) for v in values] for k, values in vary.items()}
    overrides = {f"{k}={written(k, v)}": k for k, v in sets.items()}
    origin = {text: at("set", k) for text, k in overrides.items()}
    for k, values in texts.items():
        origin[f"--vary {k}"] = at("vary", k)
        origin |= {f"{k}={v}": at("vary", k) for v in values}  # an arm's value, as the recipe applies it
    return Ablation(recipe=path.parent / recipe, vary=texts, overrides=list(overrides), seeds=seeds, mode=mode,
                    name=name, param_margin=margin, allow_unfair=allow_unfair, origin=origin)


def holds(wanted, value) -> bool:
    """Whether a resolved recipe's `value` is what an arm says, `wanted`: a component named by a bare
    string has that name, one given as a mapping has each parameter the mapping lists."""
    if isinstance(value, dict) and isinstance(wanted, str):
        return value.get("name") == wanted
    if isinstance(value, dict) and isinstance(wanted, dict):
        return all(k in value and holds(v, value[k]) for k, v in wanted.items())
    return wanted == value


def unfair_field(key: str) -> str | None:
    """The UNFAIR entry a dotted key falls under ("data" for data.path), or None."""
    return next((k for k in UNFAIR if key == k or key.startswith(k + ".")), None)


# What an ended run may differ in from its arm and still be reused: what --resume lets change, except
# what shapes the figures the run reports (its budget, evaluation and data: the fields that, varied,
# would make arms unfair; and train.log_every, the steps final_train_loss is the mean of). The
# ablation folder's name leaves them out, unless varied: rerun with smaller micro-batches, say, an
# ablation goes on in its folder.
MAY_DIFFER = tuple(p for p in MAY_CHANGE if not unfair_field(p) and p != "train.log_every")


def unequal_terms(recipe: Recipe, baseline: Recipe) -> list[str]:
    """The fields that make `recipe` unfair to compare with `baseline` (UNFAIR) in which the two differ."""
    a, b = flatten(recipe.to_dict()), flatten(baseline.to_dict())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and unfair_field(k))


def check_fair(ablation: Ablation) -> None:
    for key in ablation.vary:
        where = ablation.named(f"--vary {key}")
        if key in ("seed", "name"):
            raise UserError(f"{where}: {'seeds are set with --seeds' if key == 'seed' else 'every arm is named for you'}")
        hit = unfair_field(key)
        if hit and not ablation.allow_unfair:
            raise UserError(f"{where} changes {UNFAIR[hit]}, so the arms would not be compared on equal "
                            "terms; pass --allow-unfair (allow_unfair: true in a file) if that is what you want")


def refusal(found: dict[str, list[str]], arms: int) -> UserError:
    """One error for the mistakes found checking the arms, {message: labels of the arms it is about}: a
    message of every arm (a --set's) or of the baseline alone said as it is, others after their arms'."""
    if len(found) == 1:
        (message, about), = found.items()
        if len(about) == arms or about == ["baseline"]:
            return UserError(message)
    return UserError(problems("the ablation", [f"arm{'s' if len(about) > 1 else ''} {', '.join(about)}: {message}"
                                               for message, about in found.items()]))


def short_names(keys: list[str]) -> dict[str, str]:
    """{dotted key: how arm labels name it}: its last part (`positional` for model.positional), or the
    whole key where two keys share one; train.optimizer.name=lion is train.optimizer=lion's arm."""
    shown = {k: names_component(k) or k for k in keys}
    last = {k: shown[k].rsplit(".", 1)[-1] for k in keys}
    return {k: last[k] if list(last.values()).count(last[k]) == 1 else shown[k] for k in keys}


def plan(ablation: Ablation) -> Plan:
    """Expand `ablation` into arms, each validated like a recipe before anything trains."""
    check_fair(ablation)
    check_seeds(ablation.seeds, "--seeds")
    keys = list(ablation.vary)
    short = short_names(keys)
    if ablation.mode == "grid":
        combos = [list(zip(keys, values)) for values in itertools.product(*ablation.vary.values())] if keys else []
    else:
        combos = [[(k, v)] for k in keys for v in ablation.vary[k]]

    def resolve(changes) -> Recipe:
        try:
            recipe = load_recipe(ablation.recipe, [*ablation.overrides, *(f"{k}={v}" for k, v in changes)],
                                 origins=ablation.origin)
            if recipe.data.val_fraction == 0:  # every arm's: a varied one too
                raise UserError("data.val_fraction is 0: an ablation compares validation losses, so it needs a "
                                "validation split; set data.val_fraction, e.g. --set data.val_fraction=0.1")
            return recipe
        except UserError as e:
            raise UserError(str(e)) from None

    arms: list[Arm] = [Arm("baseline", "baseline", [], resolve([]), baseline=True)]
    seen = {canonical(arms[0].recipe): arms[0]}
    refused: dict[str, list[str]] = {}  # every arm's mistake at once, not one per run of the command
    notes = dict.fromkeys(f"{k} does not change training: its arms train alike, and differ only in their final "
                          f"sample (gptkit sample RUN_DIR samples any run with other settings)"
                          for k in keys if k.split(".")[0] == "sample")
    notes |= dict.fromkeys(filter(None, (kept_parameters(ablation, k, v, arms[0].recipe)
                                         for k, values in ablation.vary.items() for v in values)))
    for changes in combos:
        try:
            recipe = resolve(changes)
            check_claims(ablation, recipe, changes)
        except UserError as e:  # the arm named as given: its value may not read back
            refused.setdefault(str(e), []).append(" ".join(f"{short[k]}={v}" for k, v in changes))
            continue
        label = " ".join(f"{short[k]}={label_value(k, v, recipe)}" for k, v in changes)
        same = seen.get(canonical(recipe))
        if same is not None:  # e.g. the recipe's own value among the varied ones
            if same.baseline and ablation.mode == "grid" and same.label == "baseline":
                same.label, same.changes = label, changes  # the baseline is this grid cell
            continue
        # The folder's name lists the changes in key order, the label in the command's, and spells each
        # value one way (1e-3 and 0.001 alike, see spelling): --vary flags given in another order or
        # spelling, an ablation file, and the ablation.yaml written for them, find the same folders.
        slug = "_".join(sorted(slugify(f"{short[k]}={yaml_text(spelling(k, v, recipe))}") for k, v in changes)) or "arm"
        arm = Arm(label, slug, changes, recipe)
        arms.append(arm)
        seen[canonical(recipe)] = arm
    if refused:
        raise refusal(refused, len(combos) + 1)  # the baseline had none
    arms[0].values = " ".join(f"{short[k]}={yaml_text(value_of(arms[0].recipe, k))}" for k in keys)
    for arm in arms:  # as its recipe holds them, so that one value reads one way (1e-3 given, 0.001 in the recipe)
        arm.factors = {k: yaml_text(value_of(arm.recipe, k)) for k in keys}
    if len(arms) == 1:
        raise UserError(nothing_to_compare(ablation) + "".join(f"\n({note})" for note in notes))
    unique_slugs(arms[1:], keys)
    base_seed = arms[0].recipe.seed
    seeds = list(range(base_seed, base_seed + ablation.seeds)) if isinstance(ablation.seeds, int) else ablation.seeds
    if seeds[-1] not in SEEDS:
        raise UserError(f"--seeds {ablation.seeds}: the seeds from the recipe's seed {base_seed} on run past "
                        f"{SEEDS.stop - 1}; give a list of seeds instead")

    def digest(*leave_out: str) -> str:  # which arm is the baseline matters; the others' order does not
        key = [canonical(arms[0].recipe, leave_out, keys),
               sorted(canonical(a.recipe, leave_out, keys) for a in arms[1:])]
        return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:8]

    return Plan(ablation.name or arms[0].recipe.name, arms, seeds, digest(*MAY_DIFFER), ablation, digest(), list(notes))


def label_value(key: str, text: str, recipe: Recipe) -> str:
    """A varied value as an arm's label writes it: as its recipe holds it (value_of), as the main effects
    and ablation.yaml (which the next command reads) do, one value one way however it was given (1e-2
    is 0.01, a component its parameters kept); a path as given, not made absolute."""
    return text if is_path(tuple(key.split("."))) else yaml_text(value_of(recipe, key))


def kept_parameters(ablation: Ablation, key: str, text: str, baseline: Recipe) -> str | None:
    """What a varied bare name of the baseline's own component keeps of its parameters, not at their
    defaults: "model.feedforward=relumlp keeps the baseline's {expansion: 2}; model.feedforward={name:
    relumlp} is relumlp with its defaults". (A name changes the component's name alone; another
    component's parameters are dropped.) None where a --set or another varied key gives them anyway."""
    at = key.removesuffix(".name")  # model.positional.name=rope names model.positional's component
    spec = at_key(baseline, at)
    try:
        value = yaml.load(text, key)[0]
    except UserError:  # said where the arm is refused
        return None
    below = [t.partition("=")[0].strip() for t in ablation.overrides] + list(ablation.vary)
    if not (isinstance(spec, ComponentSpec) and value == spec.name) or \
            any(k.startswith(at + ".") and k != key for k in below):  # given them anyway, by a --set or a --vary
        return None
    kept = spec.params.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return (f"{key}={text} keeps the baseline's {yaml_text(kept)}; {at}={{name: {spec.name}}} is {spec.name} with "
            "its defaults") if kept else None


def nothing_to_compare(ablation: Ablation) -> str:
    """Why an ablation whose only arm is the baseline is refused: its runs would train seeds and compare nothing."""
    if ablation.vary:
        why = f"every value given for {', '.join(ablation.vary)} is the recipe's own, so the baseline is the only arm"
    else:
        why = "nothing is varied, so the baseline is the only arm"
    return (f"{why} and there is nothing to compare it with; vary a field to values other than the recipe's, "
            "e.g. --vary model.norm=rmsnorm,layernorm (or `vary:` in an ablation file)")


def spelling(key: str, text: str, recipe: Recipe):
    """The value that names an arm's folder, as `recipe` (the arm's) holds it, however it was given (2 and
    2.0 for a float alike): a component by its name and the parameters given that it does not hold at their
    defaults, in sorted order ({name: rope, base: 10000} is `rope`, as {name: rope} is; {base: 500, name:
    rope} is {name: rope, base: 500.0}), a path (relative to one folder or another, or absolute as in
    ablation.yaml) as its file's name."""
    given, spec = yaml.load(text, key)[0], at_key(recipe, key)
    if isinstance(spec, ComponentSpec):
        changed = spec.params.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        keys = sorted(k for k in given if k != "name" and k in changed) if isinstance(given, dict) else []
        return {"name": spec.name, **{k: changed[k] for k in keys}} if keys else spec.name
    value = value_of(recipe, key)
    if is_path(tuple(key.split("."))):
        name = lambda v: Path(v).name if isinstance(v, str) else v
        return [name(v) for v in value] if isinstance(value, list) else name(value)
    return value


def check_claims(ablation: Ablation, recipe: Recipe, changes: list[tuple[str, str]]) -> None:
    """Every value an arm's label lists holds in its recipe. A key's own fields are set after it (see
    apply_overrides), so one set below a varied key, by the arm or by --set for all, wins over it:
    --set model.positional.base=500 with --vary 'model.positional={name: rope, base: 1000}'."""
    data = recipe.to_dict()
    named = {t: ablation.origin.get(t, f"--set {t}") for t in ablation.overrides}
    named |= {f"{k}={v}": ablation.origin.get(f"{k}={v}", f"--vary {k}={v}") for k, v in changes}
    for key, text in changes:
        have, wanted = at_key(data, key), absolute_paths(tuple(key.split(".")), yaml.load(text, key)[0])
        if not holds(wanted, have):
            below = [name for t, name in named.items() if t.partition("=")[0].strip().startswith(key + ".")]
            verb = "sets" if len(below) == 1 else "set"
            by = f" ({' and '.join(below)} {verb} a field in it)" if below else ""
            raise UserError(f"its {key} would be {yaml_text(have)}, not {text}{by}; "
                            "give each field one value per arm")


def canonical(recipe: Recipe, leave_out: tuple[str, ...] = (), keep: list[str] | tuple[str, ...] = ()) -> str:
    """The recipe as JSON, minus what every arm may differ in (its name and seed) and the keys matching
    `leave_out`'s patterns but for those at or below a key in `keep`; the data path is absolute, so the
    same command from another folder finds the same ablation."""
    data = recipe.to_dict()
    data.pop("name"), data.pop("seed")
    data["data"]["path"] = str(Path(data["data"]["path"]).resolve())
    for key in flatten(data):
        varied = any((key + ".").startswith(k + ".") for k in keep)
        if not varied and any(fnmatch.fnmatchcase(key, p) for p in leave_out):
            *parents, last = key.split(".")
            node = data
            for part in parents:
                node = node[part]
            del node[last]
    return json.dumps(data, sort_keys=True)


def slugify(term: str) -> str:
    """A folder name's part for one change, `key=value`: positional-rope, positional-name-rope-base-500
    for {name: rope, base: 500}. "+" stays: 1e+30 and 1e-30 must not share a folder, nor 1e+30 be named
    as if it were 1e-30."""
    return re.sub(r"[^A-Za-z0-9._+]+", "-", term).strip("-")


def unique_slugs(arms: list[Arm], keys: list[str]) -> None:
    """A name too long for a folder, or shared by two arms, ends in a hash of the arm's recipe: folder
    names must not depend on the order of the arms, as suffixes -2, -3 would; nor on what a rerun may
    change (MAY_DIFFER, as the ablation folder's own hash leaves out, but for the varied `keys`)."""
    counts = collections.Counter(a.slug for a in arms)
    for a in arms:
        if len(a.slug) > 80 or counts[a.slug] > 1 or a.slug == "baseline":
            a.slug = f"{a.slug[:71]}-{hashlib.sha1(canonical(a.recipe, MAY_DIFFER, keys).encode()).hexdigest()[:8]}"
