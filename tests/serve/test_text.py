"""Streaming text assembly: stop sequences (also across tokens), multi-byte characters."""
from aajax.serve.text import TextStream

PIECES = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "\n\n", 6: "END", 7: "\xe2", 8: "\x82\xac"}


def decode(ids):
  raw = "".join(PIECES[i] for i in ids)
  return raw.encode("latin-1").decode("utf-8", errors="replace")


def run(ids, stops=()):
  ts = TextStream(decode, stops)
  out = [ts.push(i) for i in ids]
  return out, ts.flush(), ts


def test_plain_stream_is_the_decoded_text():
  out, tail, ts = run([1, 2, 3, 4])
  assert "".join(out) + tail == "Hello world" and not ts.stopped


def test_stop_sequence_split_across_tokens_is_held_back_then_cut():
  out, tail, ts = run([1, 2, 3, 4], stops=["o wo"])
  assert out == ["Hel", "l", "", ""] and tail == "" and ts.stopped and ts.text == "Hell"


def test_unfinished_stop_prefix_is_released_at_the_end():
  out, tail, _ = run([1, 2], stops=["lo!"])
  assert "".join(out) == "Hel" and tail == "lo"


def test_multibyte_character_is_not_split():
  out, tail, _ = run([1, 7, 8])
  assert out == ["Hel", "", "\u20ac"] and tail == ""
