"""Token ids -> text deltas for streaming, with OpenAI `stop` sequences.

The whole answer is decoded again at every token (answers are short) and only the new suffix is
handed out, so multi-byte characters split across tokens never come out half-written (a trailing
U+FFFD is held back until the next token completes it). Text that could be the start of a stop
sequence is held back too; when a stop sequence appears, the text before it is final.
"""
from typing import Callable, Sequence


class TextStream:
  def __init__(self, decode: Callable[[list], str], stops: Sequence[str] = ()):
    self.decode, self.stops = decode, [s for s in stops if s]
    self.ids: list = []
    self.text = ""        # handed out so far
    self.stopped = False

  def _hold(self, text: str) -> int:
    """Length of the longest tail of `text` that begins some stop sequence."""
    for k in range(min(len(text), max((len(s) for s in self.stops), default=0)), 0, -1):
      tail = text[-k:]
      if any(s.startswith(tail) for s in self.stops):
        return k
    return 0

  def push(self, token: int) -> str:
    """The text newly safe to show after `token` ("" when held back or already stopped)."""
    if self.stopped:
      return ""
    self.ids.append(int(token))
    full = self.decode(self.ids)
    cut = [i for i in (full.find(s) for s in self.stops) if i >= 0]
    if cut:
      self.stopped = True
      return self._advance(full[:min(cut)])
    if full.endswith("\ufffd"):
      return ""
    return self._advance(full[:len(full) - self._hold(full)])

  def flush(self) -> str:
    """At the end: whatever was held back (an unfinished stop-sequence prefix is plain text)."""
    if self.stopped or not self.ids:
      return ""
    return self._advance(self.decode(self.ids))

  def _advance(self, upto: str) -> str:
    """Hand out what `upto` adds to the text so far (byte-level decoding never revises a prefix)."""
    if len(upto) <= len(self.text):
      return ""
    delta, self.text = upto[len(self.text):], upto
    return delta
