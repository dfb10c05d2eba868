"""OpenAI-compatible HTTP server for a converted Moondream model (and optionally an AA model).

    python -m launch.serve --model models/md2 --host 127.0.0.1 --port 8080
    python -m launch.serve --model models/md2 --anomaly-model runs/aa_demo --image-dir /data/images
    python -m launch.serve --demo --port 8080          # a tiny random model: no download, nonsense answers

Then any OpenAI client talks to http://HOST:PORT/v1 (chat completions with image_url parts,
streaming); see README "Serving" for the routes. --max-batch 1 turns batching off. The server
compiles its usual paths in the background (/ready answers 200 once done) and stops
cleanly on Ctrl-C / SIGTERM.
"""
import argparse
import logging
import sys
import threading

from aajax.serve.settings import ServeSettings


def parse_args(argv=None) -> argparse.Namespace:
  d = ServeSettings()
  ap = argparse.ArgumentParser(prog="python -m launch.serve", description=__doc__.split("\n\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", help="converted Moondream directory (python -m weights_convert.moondream)")
  src.add_argument("--demo", action="store_true", help="serve a tiny random Moondream (no download)")
  ap.add_argument("--anomaly-model", "--anomaly_model", dest="anomaly_model", default=None,
                  help="a launch.train work directory or an AA model directory: enables POST /v1/anomaly")
  ap.add_argument("--host", default="127.0.0.1")
  ap.add_argument("--port", type=int, default=8080)
  ap.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                  help="the model id clients send (default: the directory name)")
  ap.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16"],
                  help="compute and params dtype (bfloat16 halves memory; the choice on accelerators)")
  ap.add_argument("--image-dir", "--image_dir", dest="image_dir", default=None,
                  help="folder whose files clients may name in file:// image URLs (default: none allowed)")
  ap.add_argument("--max-batch", "--max_batch", dest="max_batch", type=int, default=d.max_batch,
                  help="requests decoded together (1 = no batching)")
  ap.add_argument("--context", type=int, default=d.context, help="KV slots per request (default: model context)")
  ap.add_argument("--cache-mib", "--cache_mib", dest="cache_mib", type=float, default=d.cache_bytes / 2 ** 20,
                  help="image cache (encoded image + its prefill KV) size in MiB; 0 disables it")
  ap.add_argument("--max-queue", "--max_queue", dest="max_queue", type=int, default=d.max_queue)
  ap.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=d.max_tokens_cap,
                  help="largest max_tokens a request may ask (and the default)")
  ap.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int, default=d.max_prompt_tokens)
  ap.add_argument("--max-body-mib", dest="max_body_mib", type=float, default=d.max_body_bytes / 2 ** 20)
  ap.add_argument("--max-image-pixels", dest="max_image_pixels", type=int, default=d.max_image_pixels)
  ap.add_argument("--timeout", type=float, default=d.request_timeout_s, help="per-request timeout in seconds")
  ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip compiling before serving")
  ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
  return ap.parse_args(argv)


def settings_from(args) -> ServeSettings:
  return ServeSettings(
      max_body_bytes=int(args.max_body_mib * 2 ** 20), max_image_pixels=args.max_image_pixels,
      max_prompt_tokens=args.max_prompt_tokens, max_tokens_cap=args.max_tokens, request_timeout_s=args.timeout,
      image_dir=args.image_dir, max_batch=args.max_batch, context=args.context, max_queue=args.max_queue,
      cache_bytes=int(args.cache_mib * 2 ** 20))


def build_service(args):
  from aajax.serve.anomaly import AnomalyScorer
  from aajax.serve.service import Service
  settings = settings_from(args)
  anomaly = AnomalyScorer(args.anomaly_model) if args.anomaly_model else None
  if args.demo:
    return Service.demo(settings, anomaly)
  return Service.from_model_dir(args.model, settings, args.model_name, args.dtype, anomaly)


def _warmup(service, log):
  log.info("compiling (warm-up) ...")
  try:
    service.warmup()
    log.info("ready")
  except Exception:  # noqa: BLE001 - the server stays up (and not ready); the log says why
    log.exception("warm-up failed")


def main(argv=None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  import uvicorn

  from aajax.errors import AajaxError
  from aajax.serve.app import create_app
  try:
    service = build_service(args)
  except AajaxError as e:
    print(f"launch.serve: {e}", file=sys.stderr)
    return 2
  log = logging.getLogger("aajax.serve")
  if args.warmup:  # in the background: /health answers at once, /ready turns 200 when compiled
    threading.Thread(target=_warmup, args=(service, log), name="warmup", daemon=True).start()
  else:
    service.ready = True
  log.info("serving %s on http://%s:%d/v1 (max batch %d)", ", ".join(service.model_ids()), args.host, args.port,
           args.max_batch)
  try:
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
  finally:
    service.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
