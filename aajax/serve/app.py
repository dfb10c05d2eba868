"""The FastAPI app: OpenAI-compatible routes over a `Service`.

    GET  /health                  liveness and statistics (never waits behind generation)
    GET  /ready                   200 once the model is loaded and compiled, 503 before
    GET  /v1/models, /v1/models/{id}
    POST /v1/chat/completions     text + image_url messages; stream=true gives SSE chunks
    POST /v1/detect, /v1/point    boxes / points as JSON
    POST /v1/anomaly              AA anomaly score, threshold decision, heatmap PNG (base64)
    GET  /openapi.json, /docs     the schema

Every error is an OpenAI-style body: malformed JSON 400, a field of the wrong type or a missing
field 422, a body / image too large 413, an unknown model 404 (as OpenAI answers it), a full queue
429, a timeout 504. Handlers never run model code on the event loop: images are decoded in the
thread pool, the model runs on the engine thread.
"""
import asyncio
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aajax.errors import AajaxError
from aajax.serve import chat
from aajax.serve.errors import ApiError, error_body, error_type
from aajax.serve.images import load_image_url
from aajax.serve.protocol import (AnomalyRequest, AnomalyResponse, ChatCompletion, ChatCompletionRequest,
                                  DetectResponse, ErrorResponse, PointResponse, RegionRequest)

log = logging.getLogger("aajax.serve")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 503, 504)}


def _doc(model) -> dict:
  """Schema of a route's answers for /openapi.json (the handlers return plain dicts, unvalidated)."""
  return {200: {"model": model}, **ERRORS}


class BodyLimit:
  """ASGI middleware: refuse a request body over `max_bytes` with 413 before the app parses it.

  The body is read here (at most max_bytes are kept) and replayed to the app; later `receive`
  calls go to the server, so the app still sees a client's disconnect."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
      return await self.app(scope, receive, send)
    declared = dict(scope.get("headers") or []).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
      return await self._too_large(int(declared), send)
    chunks, size = [], 0
    while True:
      message = await receive()
      if message["type"] == "http.disconnect":
        return
      size += len(message.get("body", b""))
      if size > self.max_bytes:
        return await self._too_large(size, send)
      chunks.append(message.get("body", b""))
      if not message.get("more_body", False):
        break
    replayed = False

    async def replay():
      nonlocal replayed
      if not replayed:
        replayed = True
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
      return await receive()
    await self.app(scope, replay, send)

  async def _too_large(self, size: int, send):
    response = JSONResponse(error_body(f"request body of {size}+ bytes exceeds the limit of {self.max_bytes}",
                                       "invalid_request_error", "request_too_large"), status_code=413,
                            headers={"Connection": "close"})
    await response({"type": "http"}, None, send)


def _validation_message(errors) -> tuple[int, str, str]:
  if any(e.get("type") == "json_invalid" for e in errors):
    e = next(e for e in errors if e.get("type") == "json_invalid")
    return 400, f"malformed JSON body: {e.get('ctx', {}).get('error', 'decode error')}", "invalid_json"
  parts = []
  for e in errors[:3]:
    loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
    parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
  return 422, "; ".join(parts), "invalid_request_body"


def _content_type_error(request: Request) -> ApiError:
  ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
  return ApiError(415, f"send the body as JSON with Content-Type: application/json (got {ctype or 'none'})",
                  "unsupported_media_type")


def _require_json(request: Request):
  ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if ctype != "application/json" and not ctype.endswith("+json"):
    raise _content_type_error(request)


def create_app(service) -> FastAPI:
  app = FastAPI(title="aajax serving", version="1", description=__doc__.split("\n\n")[0])
  app.state.service = service
  app.add_middleware(BodyLimit, max_bytes=service.settings.max_body_bytes)

  @app.exception_handler(ApiError)
  async def api_error(request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

  @app.exception_handler(AajaxError)
  async def aajax_error(request, exc: AajaxError):
    return JSONResponse(error_body(str(exc), "invalid_request_error", "invalid_input"), status_code=400)

  @app.exception_handler(RequestValidationError)
  async def validation_error(request, exc: RequestValidationError):
    unparsed = isinstance(exc.body, (bytes, str)) and not any(e.get("type") == "json_invalid" for e in exc.errors())
    if unparsed:  # FastAPI did not parse the body: no or a non-JSON content type
      if request.headers.get("content-type"):
        return JSONResponse(_content_type_error(request).body(), status_code=415)
      try:
        json.loads(exc.body)
      except ValueError as e:
        return JSONResponse(error_body(f"malformed JSON body: {e}", "invalid_request_error", "invalid_json"),
                            status_code=400)
      return JSONResponse(_content_type_error(request).body(), status_code=415)
    status, message, code = _validation_message(exc.errors())
    return JSONResponse(error_body(message, "invalid_request_error", code), status_code=status)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, exc: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(str(exc.detail), error_type(exc.status_code), code), status_code=exc.status_code)

  @app.exception_handler(Exception)
  async def internal_error(request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse(error_body("internal server error", "server_error", "internal_error"), status_code=500)

  @app.get("/health")
  async def health():
    body = service.health()
    return JSONResponse(body, status_code=200 if service.engine.alive else 503)

  @app.get("/ready")
  async def ready():
    ok = service.ready and service.engine.alive
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

  def model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": int(service.started), "owned_by": "aajax"}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [model_card(m) for m in service.model_ids()]}

  @app.get("/v1/models/{model_id}", responses=ERRORS)
  async def model(model_id: str):
    if model_id not in service.model_ids():
      raise ApiError(404, f"the model {model_id!r} does not exist", "model_not_found", "model")
    return model_card(model_id)

  @app.post("/v1/chat/completions", responses=_doc(ChatCompletion))
  async def chat_completions(body: ChatCompletionRequest, request: Request):
    _require_json(request)
    return await chat.chat_completion(service, body, request)

  async def region(body: RegionRequest, request: Request, task: str) -> dict:
    _require_json(request)
    service.check_model(body.model)
    url = body.image_url if isinstance(body.image_url, str) else body.image_url.url
    prompt = service.object_prompt(task, body.object)
    image = await run_in_threadpool(load_image_url, url, service.settings, "image_url")
    found = await chat.region_result(service, image, prompt, task, service.max_objects(body.max_objects), request)
    return {"model": service.model_id, ("objects" if task == "detect" else "points"): found}

  @app.post("/v1/detect", responses=_doc(DetectResponse))
  async def detect(body: RegionRequest, request: Request):
    return await region(body, request, "detect")

  @app.post("/v1/point", responses=_doc(PointResponse))
  async def point(body: RegionRequest, request: Request):
    return await region(body, request, "point")

  @app.post("/v1/anomaly", responses=_doc(AnomalyResponse))
  async def anomaly(body: AnomalyRequest, request: Request):
    _require_json(request)
    service.check_model(body.model, "anomaly")
    url = body.image_url if isinstance(body.image_url, str) else body.image_url.url
    image = await run_in_threadpool(load_image_url, url, service.settings, "image_url")
    fut = service.engine.run_job(lambda: service.anomaly.score(image.pixels, body.class_name, body.threshold,
                                                               body.heatmap))
    try:
      return await asyncio.wait_for(asyncio.wrap_future(fut), service.settings.request_timeout_s)
    except asyncio.TimeoutError:
      fut.cancel()
      raise ApiError(504, "request timed out", "timeout") from None
    except AajaxError as e:
      raise ApiError(400, str(e), "invalid_input", "class_name") from None

  app.state.created = time.time()
  return app
