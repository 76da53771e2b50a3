"""Does the registry cost speed? gptkit's training step against a plain hand-written GPT.

    PYTHONPATH=. python tests/bench/framework_tax.py                      # reference recipe, batch 16
    PYTHONPATH=. python tests/bench/framework_tax.py --batch-size 32 --rounds 7
    PYTHONPATH=. python tests/bench/framework_tax.py --compiled           # and gptkit's fastest path

Both models have the same architecture and weights (checked first: same loss on the same batch). The
gptkit side is the real trainer step (Trainer.train_step, eager, whole batch); the plain side a
hand-written loop with the same fused AdamW, clipping and batches. Rounds alternate between them
and the medians are compared; exits 1 if gptkit's tokens/s is below 0.97x the plain model's.
`--compiled` adds gptkit's fastest path, the same step with `train.compile: true` (compilation is
part of the warm-up), against the same plain eager model (the goal is 1.1x).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_args import at_least  # noqa: E402
from plain_gpt import PlainGPT  # noqa: E402

from gptkit.data.dataset import load_dataset  # noqa: E402
from gptkit.errors import UserError  # noqa: E402
from gptkit.model import build_model  # noqa: E402
from gptkit.recipe import load_recipe  # noqa: E402
from gptkit.training.optim_setup import param_groups  # noqa: E402
from gptkit.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).parents[2]


# What plain_gpt.py builds, with each component's default parameters: a recipe of other components would
# compare two different models
PLAIN = {"attention": "flash", "feedforward": "swiglu", "norm": "rmsnorm", "positional": "sinusoidal"}


def plain_differs(recipe) -> list[str]:
    """The recipe's model keys that plain_gpt.py's model does not have: ["model.norm: layernorm"]."""
    specs = {kind: getattr(recipe.model, kind) for kind in PLAIN}
    differ = [f"model.{kind}: {spec.name}" + (f" {spec.params.model_dump()}" if spec.name == PLAIN[kind] else "")
              for kind, spec in specs.items()
              if spec.name != PLAIN[kind] or spec.params != type(spec.params)()]
    return differ + ([] if recipe.model.tie_embeddings else ["model.tie_embeddings: false"])


def plain_for(recipe, vocab_size: int) -> PlainGPT:
    m = recipe.model
    return PlainGPT(vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "recipes/shakespeare.yaml"),
                    help="a recipe of the plain model's architecture (default: the reference recipe)")
    ap.add_argument("--batch-size", type=at_least(1), default=16, help="rows per step, whole (default: 16)")
    ap.add_argument("--steps", type=at_least(1), default=5, help="steps per round (default: 5)")
    ap.add_argument("--rounds", type=at_least(1), default=5, help="rounds, alternating the models (default: 5)")
    ap.add_argument("--threads", type=at_least(1), default=None, help="torch's threads (default: torch's own)")
    ap.add_argument("--compiled", action="store_true", help="also time gptkit's compiled step")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"train.batch_size={args.batch_size}", "train.micro_batch_size=null", "train.device=cpu"]
    try:
        recipe = load_recipe(args.recipe, [*overrides, "train.compile=false"])
        dataset = load_dataset(recipe.data, recipe.model.block_size)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    differ = plain_differs(recipe)
    if differ:
        print(f"error: {args.recipe}: the plain model (tests/bench/plain_gpt.py) is flash attention, SwiGLU, RMSNorm "
              f"and sinusoidal positions with their default parameters, tied embeddings; this recipe has "
              f"{', '.join(differ)}: give a recipe of that architecture", file=sys.stderr)
        return 2
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, dataset.vocab_size)
    plain = plain_for(recipe, dataset.vocab_size)
    plain.load_state_dict(model.state_dict())
    trainer = Trainer(recipe, model, dataset, torch.device("cpu"), quiet=True)
    trainers = {"gptkit": trainer}
    if args.compiled:
        fast_recipe = load_recipe(args.recipe, [*overrides, "train.compile=true"])
        fast_model = build_model(fast_recipe.model, dataset.vocab_size)
        fast_model.load_state_dict(model.state_dict())
        trainers["gptkit compiled"] = Trainer(fast_recipe, fast_model, dataset, torch.device("cpu"), quiet=True)
    cfg = recipe.train
    optimizer = torch.optim.AdamW(param_groups(plain, cfg.weight_decay), lr=cfg.lr, fused=True)
    starts = dataset.epoch_starts(recipe.seed, 0)
    B = cfg.batch_size

    x, y = dataset.batch(starts[:B])
    model.eval(), plain.eval()
    with torch.no_grad():
        same = torch.allclose(model(x, y)[1], plain(x, y)[1], rtol=0, atol=1e-5)
    model.train(), plain.train()
    print(f"same weights, same loss: {same}")
    if not same:  # the times of two different models say nothing about the framework
        print("error: the two models compute different losses from the same weights; nothing is timed",
              file=sys.stderr)
        return 1

    def plain_step(batch):
        x, y = dataset.batch(starts[batch * B : (batch + 1) * B])
        _, loss = plain(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def gptkit_step(trainer):
        return lambda batch: trainer.train_step(starts, batch, cfg.lr)[0]

    def timed(step, first):
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = step((first + i) % trainer.steps_per_epoch)
        float(loss)
        return time.perf_counter() - t0

    steps = {"plain": plain_step, **{name: gptkit_step(t) for name, t in trainers.items()}}
    for step in steps.values():  # warm-up, compilation included
        timed(step, 0)
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, (r + 1) * args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()))
    tokens = args.steps * B * recipe.model.block_size
    tps = {name: tokens / statistics.median(t) for name, t in times.items()}
    ratio = tps["gptkit"] / tps["plain"]
    print(f"{torch.get_num_threads()} threads, batch {B}: plain {tps['plain']:,.0f} tokens/s, "
          f"gptkit {tps['gptkit']:,.0f} tokens/s, ratio {ratio:.3f} (must be >= 0.97)")
    if args.compiled:
        print(f"gptkit compiled {tps['gptkit compiled']:,.0f} tokens/s, "
              f"{tps['gptkit compiled'] / tps['plain']:.3f}x the plain eager model (goal >= 1.1)")
    return 0 if ratio >= 0.97 else 1


if __name__ == "__main__":
    sys.exit(main())
