"""Character vocabulary: ids are positions in the sorted list of the text's characters."""

import torch

from ..errors import UserError

ENCODE_SLICE = 1 << 14  # characters encoded at a time


class Vocab:
    """A character-level vocabulary: `itos` (id -> character, in id order) and `stoi` (character -> id);
    `encode(text)` gives a 1-D tensor of ids, `decode(ids)` the text."""

    def __init__(self, itos: list[str]):
        self.itos = list(itos)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def of(cls, text: str) -> "Vocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        shown = "".join(self.itos[:40])
        return f"Vocab({len(self)} characters: {shown!r}{'...' if len(self) > 40 else ''})"

    def encode(self, text: str, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """(len(text),) ids of `dtype`, looked up without a Python loop over the text.

        A long text is encoded a slice at a time, so its temporaries stay small: whole-text ones would
        take 20 bytes per character (its UTF-32 codes and two int64 index tensors), twenty times a uint8
        result, and leave the heap fragmented.
        """
        # Code points in ascending order, as searchsorted needs them, and the id of each.
        known, id_of = torch.tensor([ord(c) for c in self.itos], dtype=torch.int32).sort()
        ids = torch.empty(len(text), dtype=dtype)
        for i in range(0, len(text), ENCODE_SLICE):
            piece = text[i : i + ENCODE_SLICE]
            # surrogatepass: an argument's undecodable bytes arrive as lone surrogates, reported as unknown
            codes = torch.frombuffer(bytearray(piece.encode("utf-32-le", "surrogatepass")), dtype=torch.int32)
            found = torch.searchsorted(known, codes).clamp_(max=len(known) - 1)
            if (known[found] != codes).any():
                missing = sorted(set(text) - set(self.stoi))
                raise UserError(f"characters not in the vocabulary: {', '.join(map(repr, missing))}; the model only knows "
                                f"the {len(self)} characters of its training text")
            ids[i : i + ENCODE_SLICE] = id_of[found]
        return ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]  # (a tensor's ids too)
        wrong = next((i for i in ids if not 0 <= i < len(self.itos)), None)
        if wrong is not None:  # a negative id would index from the end without a word
            raise ValueError(f"id {wrong} is outside the vocabulary (ids 0 to {len(self.itos) - 1})")
        return "".join(self.itos[i] for i in ids)
