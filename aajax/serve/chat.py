"""POST /v1/chat/completions: OpenAI messages -> a Moondream task -> the engine -> JSON or SSE chunks.

Moondream answers one question about one image, so a conversation is read as: the image is the
image part of the user messages (at most `max_images`), the question is the text of the last user
message; system and assistant turns are ignored. The task is "query", "caption" when the user sent
an image without text, or the `task` extension field ("detect" / "point" answer with JSON text).

Events cross from the engine thread to the event loop through `call_soon_threadsafe`. A streaming
client that disconnects cancels the response task, whose `finally` cancels the request: its batch
row is free at the next decode step. A non-streaming request polls for the disconnect while waiting.
"""
import asyncio
import dataclasses
import json
import time
import uuid
from typing import Optional

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from aajax.errors import AajaxError
from aajax.serve import engine as E
from aajax.serve.errors import ApiError, bad_request
from aajax.serve.images import load_image_url
from aajax.serve.protocol import ChatCompletionRequest, ImagePart, TextPart
from aajax.serve.text import TextStream
from aajax.vlm import generate as G

POLL_S = 0.25


@dataclasses.dataclass
class ChatPlan:
  task: str
  text: str
  image_url: Optional[str]
  stops: list
  max_tokens: int


def _url(part: ImagePart) -> str:
  return part.image_url if isinstance(part.image_url, str) else part.image_url.url


def plan_chat(req: ChatCompletionRequest, service) -> ChatPlan:
  settings = service.settings
  if req.n > settings.max_n:
    raise bad_request(f"n={req.n}: at most {settings.max_n} choices per request", "unsupported_parameter", "n")
  if req.top_logprobs and not req.logprobs:
    raise bad_request("top_logprobs needs logprobs=true", "invalid_parameter", "top_logprobs")
  users = [m for m in req.messages if m.role == "user"]
  if not users:
    raise bad_request("the messages hold no user message", "missing_user_message", "messages")
  images = [_url(p) for m in users if isinstance(m.content, list) for p in m.content if isinstance(p, ImagePart)]
  if len(images) > settings.max_images:
    raise bad_request(f"{len(images)} images sent; this model takes at most {settings.max_images} per request",
                      "too_many_images", "messages")
  last = users[-1].content
  if last is None:
    text = ""
  elif isinstance(last, str):
    text = last
  else:
    text = "\n".join(p.text for p in last if isinstance(p, TextPart))
  task = req.task or ("caption" if images and not text.strip() else "query")
  if task in ("detect", "point") and not images:
    raise bad_request(f"{task} needs an image", "missing_image", "messages")
  if task in ("detect", "point") and req.n != 1:
    raise bad_request(f"{task} is deterministic: n must be 1", "unsupported_parameter", "n")
  stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
  if len(stops) > settings.max_stop_sequences:
    raise bad_request(f"at most {settings.max_stop_sequences} stop sequences", "too_many_stop_sequences", "stop")
  asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
  return ChatPlan(task, text, images[0] if images else None, stops, service.max_tokens(asked))


class EventBridge:
  """Engine-thread callbacks -> one asyncio queue of (choice index, event) for a whole completion."""

  def __init__(self):
    self.loop = asyncio.get_running_loop()
    self.queue: asyncio.Queue = asyncio.Queue()

  def for_choice(self, index: int):
    return lambda event: self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))


def failure_to_api_error(error: Exception) -> ApiError:
  if isinstance(error, ApiError):
    return error
  if isinstance(error, E.RequestTimeout):
    return ApiError(504, f"request timed out: {error}", "timeout")
  if isinstance(error, E.ShuttingDown):
    return ApiError(503, str(error), "shutting_down")
  if isinstance(error, E.Overloaded):
    return ApiError(429, f"server busy: {error}", "queue_full", headers={"Retry-After": "1"})
  if isinstance(error, AajaxError):
    return bad_request(str(error))
  return ApiError(500, "internal error while generating", "internal_error")


async def next_event(bridge: EventBridge, reqs, deadline: float, http_request=None):
  """The next (choice index, engine event); cancels every request and raises on a deadline or a
  disconnected client."""
  while True:
    try:
      return await asyncio.wait_for(bridge.queue.get(), POLL_S)
    except asyncio.TimeoutError:
      if http_request is not None and await http_request.is_disconnected():
        for req in reqs:
          req.cancel()
        raise ApiError(499, "client disconnected", "client_closed") from None
      if time.monotonic() > deadline + 1.0:  # the engine frees the rows itself; this is the backstop
        for req in reqs:
          req.cancel()
        raise ApiError(504, "request timed out", "timeout") from None


def _logprob_entry(tok, token) -> dict:
  def one(i, lp):
    s = tok.decode([i])
    return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
  entry = one(token.id, token.logprob)
  entry["top_logprobs"] = [one(i, lp) for i, lp in (token.top or [])]
  return entry


def _usage(done: Optional[E.Finished], completion_tokens: int, prompt_tokens: int, cached: int) -> dict:
  if done is not None:
    prompt_tokens, cached = done.prompt_tokens, done.cached_tokens
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


class Choice:
  """One of the n answers of a completion: its engine request and text stream, and what it has done."""

  def __init__(self, index: int, req: E.GenerationRequest, text: TextStream):
    self.index, self.req, self.text = index, req, text
    self.tokens = 0
    self.entries: list = []
    self.done: Optional[E.Finished] = None
    self.reason = "stop"

  @property
  def finished(self) -> bool:
    return self.done is not None or self.text.stopped

  def finish(self, event: E.Finished) -> str:
    """The engine's last event: the text held back for a possible stop sequence."""
    self.done, self.reason = event, ("length" if event.reason == "length" else "stop")
    return self.text.flush()


class Completion:
  """One chat completion in flight: its n choices (one engine request each, seeds seed, seed + 1, ...,
  decoded side by side in the batch), and the OpenAI framing."""

  def __init__(self, service, body: ChatCompletionRequest, plan: ChatPlan, prompt, image):
    self.service, self.body, self.plan = service, body, plan
    self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    self.created = int(time.time())
    self.bridge = EventBridge()
    settings = service.settings
    self.deadline = time.monotonic() + settings.request_timeout_s
    temperature = G.DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    top_p = G.DEFAULT_TOP_P if body.top_p is None else body.top_p
    seed = body.seed if body.seed is not None else uuid.uuid4().int
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else 0
    self.choices = [
        Choice(i, E.GenerationRequest(prompt, image, self.bridge.for_choice(i), max_tokens=plan.max_tokens,
                                      temperature=temperature, top_p=top_p, seed=(seed + i) % 2 ** 31,
                                      top_logprobs=top_logprobs, deadline=self.deadline),
               TextStream(service.tokenizer.decode, plan.stops))
        for i in range(body.n)]
    self.prompt_tokens = len(prompt) + (service.cfg.prefix_len if image is not None else 0)

  @property
  def reqs(self) -> list:
    return [c.req for c in self.choices]

  def submit(self):
    try:
      for req in self.reqs:
        self.service.engine.submit(req)
    except Exception as e:  # noqa: BLE001 - overload, shutdown, a prompt that does not fit
      self.cancel()
      raise failure_to_api_error(e) from None

  def cancel(self):
    for c in self.choices:
      if c.done is None:
        c.req.cancel()

  def usage(self) -> dict:
    done = next((c.done for c in self.choices if c.done is not None), None)
    return _usage(done, sum(c.tokens for c in self.choices), self.prompt_tokens, 0)

  def _chunk(self, index: int, delta: dict, finish_reason=None, logprobs=None) -> str:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return self._sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                      "model": self.service.model_id, "choices": [choice]})

  @staticmethod
  def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"

  def _on_token(self, choice: Choice, token: E.Token) -> tuple[str, Optional[dict]]:
    choice.tokens += 1
    piece = choice.text.push(token.id)
    entry = _logprob_entry(self.service.tokenizer, token) if self.body.logprobs else None
    if choice.text.stopped:
      choice.req.cancel()  # a stop sequence: free the row now
    return piece, entry

  async def _events(self, http_request=None):
    """(choice, event) until every choice has finished; events of a finished choice are dropped."""
    while not all(c.finished for c in self.choices):
      index, ev = await next_event(self.bridge, self.reqs, self.deadline, http_request)
      choice = self.choices[index]
      if choice.finished:
        continue
      if isinstance(ev, (E.Token, E.Finished)):
        yield choice, ev
      else:
        raise failure_to_api_error(ev.error)

  async def collect(self, http_request) -> dict:
    """Non-streaming: wait for every answer."""
    self.submit()
    try:
      async for choice, ev in self._events(http_request):
        if isinstance(ev, E.Token):
          _, entry = self._on_token(choice, ev)
          if entry is not None:
            choice.entries.append(entry)
        else:
          choice.finish(ev)
    finally:
      self.cancel()
    choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text.text},
                "logprobs": {"content": c.entries} if self.body.logprobs else None, "finish_reason": c.reason}
               for c in self.choices]
    return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.service.model_id,
            "choices": choices, "usage": self.usage()}

  async def stream(self):
    """Streaming: SSE chunks in the OpenAI format (each carries its choice index), ending with
    `data: [DONE]`."""
    try:
      for c in self.choices:
        yield self._chunk(c.index, {"role": "assistant", "content": ""})
      async for choice, ev in self._events():
        if isinstance(ev, E.Token):
          piece, entry = self._on_token(choice, ev)
          if piece or entry is not None:
            yield self._chunk(choice.index, {"content": piece},
                              logprobs={"content": [entry]} if entry is not None else None)
          if choice.text.stopped:
            yield self._chunk(choice.index, {}, finish_reason="stop")
        else:
          tail = choice.finish(ev)
          if tail:
            yield self._chunk(choice.index, {"content": tail})
          yield self._chunk(choice.index, {}, finish_reason=choice.reason)
      if self.body.stream_options is not None and self.body.stream_options.include_usage:
        yield self._sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                         "model": self.service.model_id, "choices": [], "usage": self.usage()})
      yield "data: [DONE]\n\n"
    except ApiError as e:  # a timeout or an engine failure while streaming: tell the client in-band
      yield self._sse(e.body())
    finally:
      self.cancel()  # a disconnected client (task cancelled) or an error: free the rows


async def region_result(service, image, prompt: list, task: str, max_objects: int, http_request=None) -> list:
  """detect / point through the engine's batched region loop."""
  settings = service.settings
  deadline = time.monotonic() + settings.request_timeout_s
  req = E.PointsRequest(image, prompt, task == "detect", max_objects, deadline=deadline)
  try:
    fut = service.engine.submit_points(req)
  except Exception as e:  # noqa: BLE001
    raise failure_to_api_error(e) from None
  wrapped = asyncio.wrap_future(fut)
  while True:
    try:
      return await asyncio.wait_for(asyncio.shield(wrapped), POLL_S)
    except asyncio.TimeoutError:
      if (http_request is not None and await http_request.is_disconnected()) or time.monotonic() > deadline:
        fut.cancel()
        raise ApiError(504, "request timed out", "timeout") from None
    except ApiError:
      raise
    except Exception as e:  # noqa: BLE001
      raise failure_to_api_error(e) from None


async def chat_completion(service, body: ChatCompletionRequest, http_request):
  service.check_model(body.model)
  plan = plan_chat(body, service)
  image = await run_in_threadpool(load_image_url, plan.image_url, service.settings) if plan.image_url else None
  if plan.task in ("detect", "point"):
    prompt = service.object_prompt(plan.task, plan.text)
    found = await region_result(service, image, prompt, plan.task, service.max_objects(body.max_objects), http_request)
    key = "objects" if plan.task == "detect" else "points"
    return _static_completion(service, body, json.dumps({key: found}), len(prompt) + service.cfg.prefix_len)
  prompt = service.text_prompt(plan.task, plan.text, image is not None, body.caption_length)
  completion = Completion(service, body, plan, prompt, image)
  if body.stream:
    completion.submit()  # errors (overload, a prompt too long) become a 4xx before the stream starts
    return StreamingResponse(completion.stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
  return await completion.collect(http_request)


def _static_completion(service, body, content: str, prompt_tokens: int):
  """A finished answer (detect / point) in the completion or stream framing."""
  cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
  usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}
  if not body.stream:
    return {"id": cid, "object": "chat.completion", "created": created, "model": service.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                         "finish_reason": "stop"}], "usage": usage}

  def chunk(delta, finish=None, usage_=None):
    obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": service.model_id,
           "choices": [] if usage_ else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage_:
      obj["usage"] = usage_
    return f"data: {json.dumps(obj)}\n\n"

  async def gen():
    yield chunk({"role": "assistant", "content": content})
    yield chunk({}, "stop")
    if body.stream_options is not None and body.stream_options.include_usage:
      yield chunk(None, usage_=usage)
    yield "data: [DONE]\n\n"
  return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
