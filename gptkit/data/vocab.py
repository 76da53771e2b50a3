"""Character vocabulary: ids are positions in the sorted list of the text's characters."""

import torch

from ..errors import UserError


class Vocab:
    def __init__(self, itos: list[str]):
        self.itos = list(itos)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def of(cls, text: str) -> "Vocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        """(len(text),) int64 ids, looked up without a Python loop over the text."""
        if not text:
            return torch.zeros(0, dtype=torch.long)
        codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
        known = torch.tensor([ord(c) for c in self.itos])
        lut = torch.full((max(int(codes.max()), int(known.max())) + 1,), -1, dtype=torch.long)
        lut[known] = torch.arange(len(known))
        ids = lut[codes]
        if (ids < 0).any():
            missing = sorted({text[i] for i in (ids < 0).nonzero().flatten().tolist()})
            raise UserError(f"characters not in the vocabulary: {''.join(missing)!r}; the model only knows "
                            f"the {len(self)} characters of its training text")
        return ids

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in ids)
