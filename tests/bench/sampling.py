"""Time `generate` with and without the key/value cache on a recipe's model (untrained weights:
the speed does not depend on them). Not collected by pytest; run from the repository root:

    PYTHONPATH=. python tests/bench/sampling.py recipes/shakespeare-cpu.yaml --threads 2
    PYTHONPATH=. python tests/bench/sampling.py recipes/shakespeare.yaml --set model.attention=naive
    PYTHONPATH=. python tests/bench/sampling.py recipes/shakespeare.yaml --device cuda
"""

import argparse
import statistics
import sys
import time

import torch
from bench_args import at_least

from gptkit.device import resolve_device
from gptkit.errors import UserError
from gptkit.model import build_model
from gptkit.recipe import load_recipe
from gptkit.sampling import generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="the recipe whose model to time")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="change the recipe, as gptkit run's --set")
    ap.add_argument("--tokens", type=at_least(1), default=500, help="new tokens per sample (default: 500)")
    ap.add_argument("--rounds", type=at_least(1), default=3, help="rounds, alternating the two (default: 3)")
    ap.add_argument("--threads", type=at_least(1), default=torch.get_num_threads(),
                    help="torch's threads on a CPU (default: torch's own)")
    ap.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, "--device")
        recipe = load_recipe(args.recipe, args.overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = build_model(recipe.model, vocab_size=65).to(device).eval()
    prompt = torch.randint(0, 65, (1, 9), device=device)
    for use_cache in (True, False):  # untimed: kernels, allocator and thread pools start here
        generate(model, prompt, 8, use_cache=use_cache)
    seconds = {True: [], False: []}
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
        for use_cache in (True, False):
            t0 = time.perf_counter()
            out = generate(model, prompt, args.tokens, 0.8, 40, torch.Generator(device).manual_seed(0), use_cache=use_cache)
            out[0, -1].item()  # waits for a GPU's work
            seconds[use_cache].append(time.perf_counter() - t0)
    cached, recomputed = statistics.median(seconds[True]), statistics.median(seconds[False])
    ratios = sorted(r / c for c, r in zip(seconds[True], seconds[False]))  # each round's own ratio
    where = f"{args.threads} thread{'s' if args.threads > 1 else ''}" if device.type == "cpu" else str(device)
    print(f"{args.tokens} tokens, {where}, median of {args.rounds}: cached {cached:.3f} s, "
          f"recomputed {recomputed:.3f} s, speed-up {statistics.median(ratios):.2f}x "
          f"(rounds {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
