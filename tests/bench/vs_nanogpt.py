"""gptkit against nanoGPT on the same machine, both run as their users run them (whole processes), and
against a plain hand-written model: every comparison of the Performance section in one command.

    PYTHONPATH=. python tests/bench/vs_nanogpt.py --nanogpt ~/src/nanoGPT            # all three comparisons
    PYTHONPATH=. python tests/bench/vs_nanogpt.py --nanogpt ~/src/nanoGPT --only speed --rounds 3

`speed`: the user's reference model (n_embd 256, 8 heads, 6 layers, block 256) at batch 128 on the
CPU: nanoGPT's train.py against `gptkit run recipes/shakespeare.yaml`, same dropout, a few steps
each; tokens/s is the median over steps after the first two, memory the process's peak RSS.
`loss`: nanoGPT's README CPU recipe on tiny Shakespeare against `recipes/tinyshakespeare-fast.yaml`
with `--text` as its data.path: wall time from process start to exit, final validation loss, peak RSS.
Then, without --only: framework_tax.py --compiled, gptkit's trainer step against the plain model of
the same weights (tests/bench/plain_gpt.py) at batch 16, eager and compiled, in its own process.
Rounds alternate between the two programs, so drift on a shared machine hits both; figures are
medians; each verdict is printed when measured, and all together at the end. nanoGPT is not shipped:
pass a checkout of https://github.com/karpathy/nanoGPT. Its shakespeare_char data is prepared from
`--text` (no download) when missing.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_args import at_least

ROOT = Path(__file__).parents[2]
TEXT = ROOT.parent / "shared/data/tinyshakespeare.txt"
REFERENCE = dict(n_layer=6, n_head=8, n_embd=256, block_size=256, batch_size=128)
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
               "--lr_decay_iters=2000", "--dropout=0.0"]


def run(cmd: list[str], cwd: Path, check: bool = True) -> tuple[str, float, float]:
    """stdout+stderr, wall seconds and peak RSS in MiB of a whole process; exits if it fails and `check`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if check and os.waitstatus_to_exitcode(status):
        sys.exit(f"failed: {' '.join(cmd)}\n{out[-3000:]}")
    return out, wall, usage.ru_maxrss / 1024


def prepare_nanogpt(nanogpt: Path, text: Path):
    data = nanogpt / "data/shakespeare_char"
    if not (data / "train.bin").exists():
        if not (data / "input.txt").exists():
            shutil.copyfile(text, data / "input.txt")  # prepare.py then skips its download
        # prepare.py imports requests for that download, which needs it no more: a stand-in if it is not installed
        run([sys.executable, "-c", "import runpy, sys, types; sys.modules.setdefault('requests', "
             "types.ModuleType('requests')); runpy.run_path('prepare.py', run_name='__main__')"], data)


def nanogpt_speed(nanogpt: Path, steps: int, dropout: float) -> dict:
    r = REFERENCE
    out, _, rss = run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
                       "--compile=False", f"--n_layer={r['n_layer']}", f"--n_head={r['n_head']}",
                       f"--n_embd={r['n_embd']}", f"--block_size={r['block_size']}", f"--batch_size={r['batch_size']}",
                       f"--dropout={dropout}", f"--max_iters={steps}", "--eval_interval=1000000", "--eval_iters=1",
                       "--log_interval=1", "--learning_rate=1e-3", "--weight_decay=0.01",
                       "--always_save_checkpoint=False"], nanogpt)
    ms = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", out, re.M)]
    tokens = r["batch_size"] * r["block_size"]
    return {"tokens_per_s": statistics.median(tokens / (t / 1000) for t in ms[2:]), "peak_rss_mib": rss}


def gptkit_speed(steps: int, dropout: float, runs: Path) -> dict:
    out, _, rss = run([sys.executable, "-m", "gptkit", "run", str(ROOT / "recipes/shakespeare.yaml"),
                       "--runs-dir", str(runs), "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
                       "--set", f"model.dropout={dropout}", "--set", "train.device=cpu",
                       "--set", "sample.tokens=0"], ROOT)
    run_dir = re.search(r"^Run folder: (\S+)", out, re.M).group(1)
    records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    tps = [r["tokens_per_s"] for r in records if "train_loss" in r and r["step"] > 2]
    return {"tokens_per_s": statistics.median(tps), "peak_rss_mib": rss}


def nanogpt_loss(nanogpt: Path) -> dict:
    out, wall, rss = run([sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_CPU,
                          "--always_save_checkpoint=False"], nanogpt)
    val = float(re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", out, re.M)[-1])
    return {"val_loss": val, "wall_s": wall, "peak_rss_mib": rss}


def gptkit_loss(runs: Path, text: Path) -> dict:
    out, wall, rss = run([sys.executable, "-m", "gptkit", "run", str(ROOT / "recipes/tinyshakespeare-fast.yaml"),
                          "--runs-dir", str(runs), "--set", f"data.path={json.dumps(str(text.absolute()))}"], ROOT)
    val = float(re.search(r"^Finished: val loss ([\d.]+)", out, re.M).group(1))
    return {"val_loss": val, "wall_s": wall, "peak_rss_mib": rss}


def versus_plain(rounds: int) -> str:
    """framework_tax.py's verdict lines (it exits 1 below its 0.97x goal: a result here, not a failure)."""
    out, _, _ = run([sys.executable, str(Path(__file__).with_name("framework_tax.py")), "--compiled",
                     "--rounds", str(rounds)], ROOT, check=False)
    print("\n".join(f"  plain {line}" for line in out.splitlines()), flush=True)
    verdict = [line for line in out.splitlines() if "tokens/s" in line or "same loss: False" in line]
    if not any("tokens/s" in line for line in verdict):
        sys.exit(f"failed: framework_tax.py\n{out[-3000:]}")
    return "against the plain model, reference model, " + "; ".join(verdict)


def compare(title: str, programs: dict, rounds: int) -> dict:
    results = {name: [] for name in programs}
    for r in range(rounds):
        for name, measure in programs.items():
            results[name].append(measure())
            print(f"  {title} round {r + 1}/{rounds} {name}: {results[name][-1]}", flush=True)
    return {name: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for name, ms in results.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--text", type=Path, default=TEXT, help="tiny Shakespeare, for nanoGPT's data")
    ap.add_argument("--only", choices=["speed", "loss"], help="one nanoGPT comparison, without the plain model")
    ap.add_argument("--rounds", type=at_least(1), default=3, help="rounds, alternating the programs (default: 3)")
    ap.add_argument("--steps", type=at_least(3), default=6, help="training steps per speed measurement")
    ap.add_argument("--dropout", type=float, default=0.0, help="both models' dropout in the speed comparison")
    args = ap.parse_args(argv)
    if not (args.nanogpt / "train.py").exists() or not (args.nanogpt / "model.py").exists():
        ap.error(f"--nanogpt {args.nanogpt}: not a nanoGPT checkout (no train.py and model.py there)")
    if not (args.nanogpt / "data/shakespeare_char/prepare.py").exists():
        ap.error(f"--nanogpt {args.nanogpt}: no data/shakespeare_char/prepare.py there, which prepares its data")
    if not args.text.is_file() and (args.only != "speed" or not (args.nanogpt / "data/shakespeare_char/train.bin").exists()):
        ap.error(f"--text {args.text}: not found; nanoGPT's data is prepared from it, and gptkit's loss run reads it")
    prepare_nanogpt(args.nanogpt, args.text)
    runs = Path(tempfile.mkdtemp(prefix="vs-nanogpt-"))
    verdicts = []

    def say(verdict: str):  # now, in case a later comparison fails, and again with the others at the end
        verdicts.append(verdict)
        print(verdict, flush=True)

    try:
        if args.only in (None, "speed"):
            m = compare("speed", {"nanoGPT": lambda: nanogpt_speed(args.nanogpt, args.steps, args.dropout),
                                  "gptkit": lambda: gptkit_speed(args.steps, args.dropout, runs)}, args.rounds)
            n, g = m["nanoGPT"], m["gptkit"]
            say(f"speed, reference model, batch 128, dropout {args.dropout}: nanoGPT {n['tokens_per_s']:,.0f} "
                f"tokens/s, {n['peak_rss_mib']:,.0f} MiB; gptkit {g['tokens_per_s']:,.0f} tokens/s, "
                f"{g['peak_rss_mib']:,.0f} MiB: {g['tokens_per_s'] / n['tokens_per_s']:.2f}x the tokens/s "
                f"(goal >= 1.4x), {g['peak_rss_mib'] / n['peak_rss_mib']:.2f}x the memory (goal <= 0.5x)")
        if args.only in (None, "loss"):
            m = compare("loss", {"nanoGPT": lambda: nanogpt_loss(args.nanogpt),
                                 "gptkit": lambda: gptkit_loss(runs, args.text)}, args.rounds)
            n, g = m["nanoGPT"], m["gptkit"]
            say(f"loss per minute: nanoGPT val {n['val_loss']:.3f} in {n['wall_s']:.1f} s, "
                f"{n['peak_rss_mib']:,.0f} MiB; "
                f"gptkit val {g['val_loss']:.3f} in {g['wall_s']:.1f} s, {g['peak_rss_mib']:,.0f} MiB "
                f"(goal: val <= 1.70 within nanoGPT's time and memory)")
        if args.only is None:
            say(versus_plain(args.rounds))
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    print("\n" + "\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
