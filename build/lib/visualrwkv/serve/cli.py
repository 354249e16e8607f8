"""`visualrwkv serve` (the OpenAI-compatible HTTP API) and `visualrwkv webui` (the Gradio demo)."""

from __future__ import annotations

import os

DEFAULT_MAX_IMAGES = 8  # serve/requests.py's Limits default (not imported here: --help stays light)


def _add_engine_arguments(p) -> None:
    from visualrwkv.engine.model_args import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model's name in the API (GET /v1/models, the requests' `model`); default: a readable "
                        "name from --model, e.g. visualrwkv-tiny, org/name, or a run's folder for runs/NAME/final")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--max-batch-size", type=int, default=32, help="requests decoded together (default 32)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096,
                   help="prompt limit in positions: text tokens plus image vectors (default 4096)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="limit on max_tokens per request (default 1024)")
    p.add_argument("--cache-mb", type=int, default=512, help="prefix-state cache size in MiB (default 512)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models",
        description="OpenAI-compatible API. Images go in the first user message as base64 data: URIs, in "
                    "order (as many as the model takes: one for a v6 model; at most --max-images); system messages are refused (the model has no system prompt); omitted "
                    "sampling fields take the RWKV defaults (top_p 0.85, penalties 0.2).")
    _add_engine_arguments(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("VISUALRWKV_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $VISUALRWKV_API_KEY, else no key)")
    p.add_argument("--max-body-mb", type=float, default=16, help="request body limit in MiB (default 16)")
    p.add_argument("--max-image-mb", type=float, default=10, help="decoded image limit in MiB (default 10)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="images with more pixels are refused from their header (default 4096*4096)")
    p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help=f"images per request (default {DEFAULT_MAX_IMAGES}; a model that takes fewer refuses more "
                        "anyway, e.g. one for a v6 model)")
    p.set_defaults(func=run_serve)

    p = subparsers.add_parser("webui", help="browser demo: image upload, streaming multi-turn chat (Gradio)")
    _add_engine_arguments(p)
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also a public gradio.live link (needs the internet)")
    p.add_argument("--api-key", default=os.environ.get("VISUALRWKV_API_KEY"),
                   help="a login page: any user name, KEY as the password (default: $VISUALRWKV_API_KEY, else none)")
    p.add_argument("--temperature", type=float, default=None,
                   help="the default temperature (default: 0, greedy, for a model trained on short answers such "
                        "as the shipped one; else 1)")
    p.set_defaults(func=run_webui)


def build_engine(args):
    from visualrwkv.engine.defaults import model_name
    from visualrwkv.engine.model_args import load_model_from_args
    from visualrwkv.engine.engine import Engine

    for name in ("max_batch_size", "max_prompt_tokens", "max_new_tokens", "cache_mb", "port"):
        if getattr(args, name) < (0 if name == "cache_mb" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.served_model_name is not None and not args.served_model_name.strip():
        raise ValueError("--served-model-name must not be empty")
    model = load_model_from_args(args)
    return Engine(model, model_id=args.served_model_name or model_name(args.model), max_batch_size=args.max_batch_size,
                  cache_bytes=args.cache_mb * 1024 * 1024, max_prompt_tokens=args.max_prompt_tokens,
                  max_new_tokens=args.max_new_tokens)


def run_serve(args) -> int:
    import uvicorn

    from visualrwkv.serve.app import ServerSettings, create_app
    from visualrwkv.serve.requests import Limits

    if args.max_body_mb <= 0 or args.max_image_mb <= 0 or args.max_image_pixels <= 0 or args.max_images <= 0:
        raise ValueError("--max-body-mb, --max-image-mb, --max-image-pixels and --max-images must be positive")
    engine = build_engine(args)
    limits = Limits(max_image_bytes=int(args.max_image_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
                    max_images=args.max_images)
    settings = ServerSettings(engine.model_id, api_key=args.api_key or None,
                              max_body_bytes=int(args.max_body_mb * 1024 * 1024), limits=limits)
    app = create_app(engine, settings)
    _log_access_to_stderr()
    print(f"serving {engine.model_id} on http://{args.host}:{args.port}/v1 "
          f"({'API key required' if settings.api_key else 'no API key'})", flush=True)
    # on Ctrl-C uvicorn stops accepting, lets in-flight requests finish (up to the timeout), then
    # runs the app's shutdown, which closes the engine
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0


def _log_access_to_stderr() -> None:
    """One line per request (visualrwkv.serve.metrics), beside uvicorn's own log."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s access: %(message)s"))
    log = logging.getLogger("visualrwkv.access")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


SHORT_ANSWER_NOTE = ("This model was trained to answer in a word or phrase (a VQA classifier, in effect): decoding "
                     "is greedy (temperature 0) by default; raise the temperature under Sampling for variety.")


def webui_defaults(model: str | None, temperature: float | None):
    """The web UI's sampling defaults and the note saying why: greedy for a model trained on short
    answers (engine.defaults.trained_for_short_answers) unless --temperature says otherwise."""
    from visualrwkv.engine.defaults import trained_for_short_answers
    from visualrwkv.engine.params import SamplingParams

    if temperature is not None:
        return SamplingParams(temperature=temperature), None  # validates it
    if trained_for_short_answers(model):
        return SamplingParams(temperature=0.0), SHORT_ANSWER_NOTE
    return SamplingParams(), None


def run_webui(args) -> int:
    defaults, note = webui_defaults(args.model, args.temperature)
    engine = build_engine(args)

    from visualrwkv.serve.webui import launch  # gradio: after the arguments are checked

    with engine:
        launch(engine, host=args.host, port=args.port, block=True, defaults=defaults, note=note, share=args.share,
               api_key=args.api_key or None)
    return 0
