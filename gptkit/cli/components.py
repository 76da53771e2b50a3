"""`gptkit list` and `gptkit show`: what components exist, where they come from, what they take."""

import enum
import json

import click
from pydantic_core import to_json

from ..components.attention import why_not_cached
from ..components.base import constraints
from ..errors import UserError, a, did_you_mean, listing
from ..registry import Entry, clashes_listed, kinds, misplaced_entry_points, registry
from . import imports_option, main


def describe_params(entry: Entry) -> list[dict]:
    """Each parameter of a component: name, type, default, constraints and description."""
    out, defaults = [], {}
    for name, f in entry.obj.Params.model_fields.items():
        # A default_factory's value (f.default is a placeholder then), made as pydantic does: it may read earlier fields
        defaults[name] = f.get_default(call_default_factory=True, validated_data=defaults)
        default = json.loads(to_json(defaults[name], inf_nan_mode="strings", fallback=repr))  # valid JSON: inf as "Infinity"
        out.append({"name": f.alias or name, "type": _type_name(f.annotation), "default": default,  # as recipes write it
                    "constraints": constraints(f.metadata), "description": f.description or ""})
    return out


def describe(entry: Entry, full: bool = False) -> dict:
    record = {"kind": entry.kind, "name": entry.name, "source": entry.source,
              "status": "broken" if entry.error else "ok"}
    if entry.error:
        return {**record, "error": entry.error, **({"object": entry.value} if entry.value else {})}
    record.update(description=entry.summary, params=describe_params(entry))
    if full:
        obj = entry.obj
        record.update(object=f"{obj.__module__}:{obj.__qualname__}", defined_at=entry.where, doc=entry.doc)
        if entry.kind == "attention":  # the flag and a forward that takes the cache, as generation asks
            why = why_not_cached(obj)
            record.update(supports_kv_cache=why is None, **({"kv_cache_note": why} if why else {}))
    return record


def _type_name(annotation) -> str:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):  # what a recipe may write
        return " | ".join(repr(m.value) for m in annotation)
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _param_line(p: dict) -> str:
    limits = f" ({', '.join(p['constraints'])})" if p["constraints"] else ""
    description = f"  {p['description']}" if p["description"] else ""
    return f"{p['name']}: {p['type']} = {json.dumps(p['default'])}{limits}{description}"


class Listing(click.Command):
    """`list` and `show`: a local file (--import) that registers a name taken already is listed with that
    name BROKEN, as a plugin's clash is, and its other components with it; run, validate and check,
    which need the components, refuse it."""

    def parse_args(self, ctx, args):
        ctx.with_resource(clashes_listed())  # from --import, which runs its files while parsing, to the end
        return super().parse_args(ctx, args)


@main.command("list", cls=Listing)
@click.argument("kind", required=False)
@imports_option
@click.option("--json", "as_json", is_flag=True, help="Print the same as a JSON list.")
def list_(kind, as_json):
    """Show every component (or every one of KIND): source, description and parameters.

    A plugin that cannot be loaded is listed as broken, with the reason; the rest still work.

    \b
    gptkit list
    gptkit list attention --json
    """
    regs = [registry(kind)] if kind else [registry(k) for k in sorted(kinds())]
    records = [describe(reg.entry(name)) for reg in regs for name in reg.names()]
    # An entry point group that is no kind, with the rest; with KIND, a near miss of it (gptkit.optimiser)
    records += [r for r in _misplaced() if not kind or did_you_mean(r["kind"], [kind])]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for reg in regs:
        click.echo(f"{reg.kind}: {reg.description}")
        mine = [r for r in records if r["kind"] == reg.kind]
        width = max((len(f"{r['name']}  [{r['source']}]") for r in mine), default=0)
        for r in mine:
            head = f"{r['name']}  [{r['source']}]"
            if r["status"] == "broken":
                click.echo(f"  {head:<{width}}  BROKEN: {r['error']}")
                continue
            click.echo(f"  {head:<{width}}  {r['description']}")
            for p in r["params"]:
                click.echo(f"      {_param_line(p)}")
        click.echo()
    for r in records:  # the listing is whole: a warning (on stderr), as a BROKEN line is no failure either
        if r["kind"] not in kinds():
            click.echo(f"warning: {r['error']}", err=True)


def _misplaced() -> list[dict]:
    """Entry points in a `gptkit.*` group that is no kind: a typo a plugin author should hear about."""
    return [{"kind": k, "name": name, "source": p.source, "status": "broken", "object": p.value, "error": error}
            for k, name, p, error in misplaced_entry_points()]


def kind_of(name: str) -> str:
    """The kind a component named `name` is of, for `gptkit show NAME`: the one kind with that name."""
    if name in kinds():
        raise UserError(f"give the {name}'s name too: gptkit show {name} NAME, NAME one of: "
                        f"{listing(registry(name).names())}")
    found = [k for k in kinds() if name in registry(k)]
    if len(found) > 1:
        raise UserError(f"{name!r} names {' and '.join(a(k) for k in found)}; give the kind too, e.g. gptkit show "
                        f"{found[0]} {name}")
    if not found:
        guess = did_you_mean(name, [n for k in kinds() for n in registry(k).names()])
        raise UserError(f"no component is named {name!r}{guess}; gptkit list lists them all")
    return found[0]


@main.command(cls=Listing)
@click.argument("kind")
@click.argument("name", required=False)
@imports_option
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON.")
def show(kind, name, as_json):
    """Show one component in full: source, where it is defined, its docstring and parameters. The kind
    may be left out where one kind alone has a component of that name.

    \b
    gptkit show positional rope
    gptkit show rope
    """
    if name is None:
        kind, name = kind_of(kind), kind
    r = describe(registry(kind).find(name), full=True)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"{kind} '{name}'\n  source:     {r['source']}\n  defined at: {r['defined_at']}  ({r['object']})")
    if "supports_kv_cache" in r:
        click.echo("  kv cache:   " + ("yes (sampling feeds it one token at a time)" if r["supports_kv_cache"]
                                      else f"no (sampling recomputes the whole context for every token; {r['kv_cache_note']})"))
    if r["doc"]:
        click.echo("\n" + "\n".join(f"  {line}" for line in r["doc"].splitlines()))
    click.echo("\n  parameters:" if r["params"] else "\n  parameters: none")
    for p in r["params"]:
        click.echo(f"    {_param_line(p)}")
