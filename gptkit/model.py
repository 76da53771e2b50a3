"""A GPT assembled from registered components.

The classes here know no component by name: a block receives already-built norm, attention and
feedforward modules, and the model receives the positional module (which attention shares). Finding
which component is at fault when one fails is `diagnose.py`'s business, but for a component's
`init_weights()`, which only the model's constructor runs (`_init_culprit`).
Axis letters: B batch, T time, C channels (n_embd), V vocabulary.
"""

import hashlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .components.attention import KVCache, caches
from .components.base import GPTConfig, dropout_layer
from .errors import UserError


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, ln_1: nn.Module, attn: nn.Module, ln_2: nn.Module, mlp: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x, cache: KVCache | None = None):
        h = self.ln_1(x)
        x = x + (self.attn(h) if cache is None else self.attn(h, cache))  # attention may not cache
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """Token embedding, the positional module, the blocks, a final norm and the LM head (tied to the
    embedding by default). Returns (logits, loss); loss is None without targets.

    Every nn.Linear and nn.Embedding, components' included, starts with GPT-2's initialisation, so
    ablations compare like with like; then each submodule that defines `init_weights()` runs it (under
    no_grad, parts before the module holding them), so a component has the last word on its weights.
    Each module draws from a generator of its own, seeded by `init_seed` (default: drawn from torch's
    global one) and its name: two models of one seed start every part they share (same name and shape)
    from the same values, whatever their other components drew while they were built."""

    cache_mismatch: str | None = None  # set by diagnose.check_cache: how cached logits differ from a full pass

    def __init__(self, config: GPTConfig, pos: nn.Module, blocks: list[Block], ln_f: nn.Module,
                 tie_embeddings: bool = True, init_seed: int | None = None):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            pos=pos,
            drop=dropout_layer(config.dropout),
            h=nn.ModuleList(blocks),
            ln_f=ln_f,
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        seed = new_init_seed() if init_seed is None else init_seed
        names = {}  # module -> its name (a shared one, the positional, by its first)
        with torch.no_grad():  # so a hook may write its weights in place (`self.gate.bias.fill_(-4.0)`)
            for name, module in self.named_modules():
                names[module] = name
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=_generator(seed, name, module.weight))
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):  # residual projections, scaled as in GPT-2
                    std = 0.02 / math.sqrt(2 * config.n_layer)
                    nn.init.normal_(p, mean=0.0, std=std, generator=_generator(seed, name, p))
            for module in _parts_first(self, set()):  # a component overrides its parts, attention its positional
                if callable(getattr(module, "init_weights", None)):
                    torch.manual_seed(_derived(seed, names[module]))  # a hook draws from the global generator
                    module.init_weights()
        torch.manual_seed(_derived(seed, ""))  # so what is drawn next (dropout) does not depend on the components

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM's estimate (arXiv:2204.02311, App. B):
        6 per weight of every matmul, plus 12 * n_layer * n_embd * block_size for attention scores.
        Embedding lookups are not matmuls, so a tied embedding counts once, as the LM head."""
        c = self.config
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul_weights + 12 * c.n_layer * c.n_embd * c.block_size

    @property
    def supports_kv_cache(self) -> bool:
        """Whether generation may use a key/value cache: every block's attention takes one, and no check
        found the cached logits to differ from a full pass's (`cache_mismatch`). Not without blocks: a
        cache's length is where the next token's position starts."""
        blocks = self.transformer.h
        return self.cache_mismatch is None and len(blocks) > 0 and all(caches(block.attn) for block in blocks)

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache for `forward`, one per block (needs `supports_kv_cache`)."""
        return [KVCache() for _ in self.transformer.h]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None):
        """With a `cache`, `idx` continues the positions it holds, and is added to it. Ids may be of any
        integer type (a dataset holds its tokens as uint8)."""
        B, T = idx.size()
        if cache is not None and len(cache) != len(self.transformer.h):  # zip would skip the blocks past its end
            raise ValueError(f"the cache holds {len(cache)} layers' keys and values, the model has "
                             f"{len(self.transformer.h)} blocks; make one with model.new_cache()")
        start = len(cache[0]) if cache else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(_long(idx))  # (B, T, C)
        x = self.transformer.drop(self.transformer.pos.embed(x, start))
        for block, layer_cache in zip(self.transformer.h, cache or [None] * len(self.transformer.h)):
            x = block(x, layer_cache)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), _long(targets).reshape(-1))
        return logits, loss


def _long(ids: torch.Tensor) -> torch.Tensor:
    """Integer `ids` as int64, which embeddings and cross_entropy take (not a dataset's uint8 or int32);
    other tensors as they are, for torch to refuse."""
    integer = not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)
    return ids.long() if integer and ids.dtype != torch.long else ids


def new_init_seed() -> int:
    """A seed for a model's initial weights, drawn from torch's global generator (on the CPU whatever the
    default device: building on the meta device counts parameters)."""
    return int(torch.randint(2**62, (), device="cpu"))


def _derived(seed: int, name: str) -> int:
    """A seed for the module or parameter called `name`, from the model's `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") % 2**63


def _generator(seed: int, name: str, tensor: torch.Tensor) -> torch.Generator | None:
    """The generator `name`'s weights are drawn from, on their device (none on the meta device: no values)."""
    if tensor.device.type == "meta":
        return None
    return torch.Generator(device=tensor.device).manual_seed(_derived(seed, name))


def _parts_first(module: nn.Module, seen: set):
    """`module`'s submodules, each once and after all of its own: a module shared by several (the
    positional, held by the model and by every attention) comes before the first that holds it."""
    for child in module.children():
        if id(child) not in seen:
            seen.add(id(child))
            yield from _parts_first(child, seen)
            yield child


def build_model(model, vocab_size: int) -> GPT:
    """The GPT described by a recipe's `model` section (a ModelSection)."""
    if not all(hasattr(model, k) for k in ("config", "positional", "attention")):  # a Recipe, a GPTConfig
        raise TypeError(f"build_model takes a recipe's model section, got {type(model).__name__}: "
                        "build_model(recipe.model, vocab_size)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a whole number >= 1 (a dataset's vocab_size), got {vocab_size!r}")
    config = model.config(int(vocab_size))
    check_components(model, config)
    init_seed = new_init_seed()  # before the components' constructors draw, each as many numbers as it likes
    pos = model.positional.build(config)
    blocks = [
        Block(
            ln_1=model.norm.build(config),
            attn=model.attention.build(config, pos),
            ln_2=model.norm.build(config),
            mlp=model.feedforward.build(config),
        )
        for _ in range(config.n_layer)
    ]
    ln_f = model.norm.build(config)
    try:
        return GPT(config, pos, blocks, ln_f=ln_f, tie_embeddings=model.tie_embeddings, init_seed=init_seed)
    except Exception as e:  # a component's init_weights() raised: its bug, named as a constructor's is
        spec = _init_culprit(e, built_from(model, pos, blocks, ln_f))
        if spec is None:
            raise
        with spec.blamed("its init_weights()"):
            raise


def built_from(model, pos: nn.Module, blocks: list[Block], ln_f: nn.Module) -> dict:
    """{component module: the spec in `model` (a ModelSection) it was built from}; the positional first,
    since every attention holds it too."""
    specs = {pos: model.positional, ln_f: model.norm}
    for b in blocks:
        specs |= {b.ln_1: model.norm, b.attn: model.attention, b.ln_2: model.norm, b.mlp: model.feedforward}
    return specs


def check_components(model, config: GPTConfig) -> None:
    """Each component's `check(config, params)` again, now with the real vocab_size (a recipe is
    validated with 1, before the text is read): a refusal is one error naming its recipe key."""
    issues = model.component_issues(config)
    if issues:
        raise UserError("; ".join(f"model.{kind}: {why} (with vocab_size {config.vocab_size})" for kind, why in issues))


def _init_culprit(e: BaseException, specs: dict):
    """The spec in `specs` ({component: spec}) of the component whose `init_weights()`, or one of its
    parts', raised `e` (the first such frame is GPT's call), or None."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != "init_weights":
        tb = tb.tb_next
    owner = tb.tb_frame.f_locals.get("self") if tb is not None else None
    return next((s for m, s in specs.items() if any(owner is sub for sub in m.modules())), None)
