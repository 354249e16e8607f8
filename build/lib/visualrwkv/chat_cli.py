"""`visualrwkv ask` (one question, the answer streamed to stdout) and `visualrwkv chat` (multi-turn on stdin).

`chat` reads one question per line; lines starting with "/" are commands: `/image PATH` (a new
conversation, with this image added after the others where the model takes several, else about this
image instead), `/image` alone (clear the images), `/reset` (forget the conversation, keep the images),
`/help`, `/quit`. `--image` may be repeated (several images, in order).
It works the same with stdin piped from a file. On a terminal: a ">>> " prompt with line editing and
the questions of earlier sessions on the up arrow (readline), Ctrl-C stops the current answer and keeps
the conversation, Ctrl-D leaves.
"""

from __future__ import annotations

import sys

CHAT_HELP = ("commands: /image PATH (new conversation, the image added; one-image models: about it instead), "
             "/image (clear the images), /reset, /help, /quit")
KEYS_HELP = "Ctrl-C stops an answer, Ctrl-D leaves; arrow keys edit and recall earlier questions"
HISTORY_LIMIT = 1000  # questions kept in the history file


def add_sampling_arguments(p) -> None:
    """The sampling flags shared by the commands that generate (defaults: SamplingParams')."""
    from visualrwkv.engine.model_args import add_model_arguments
    from visualrwkv.engine.params import SamplingParams

    d = SamplingParams()
    add_model_arguments(p)
    p.add_argument("--temperature", type=float, default=None,
                   help=f"0 = greedy (default: 0 for a model trained to answer in a word or phrase, such as the "
                        f"shipped one, as in the web UI; else {d.temperature})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"default {d.top_p}")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off (default)")
    p.add_argument("--presence-penalty", type=float, default=d.presence_penalty, help=f"default {d.presence_penalty}")
    p.add_argument("--frequency-penalty", type=float, default=d.frequency_penalty,
                   help=f"default {d.frequency_penalty}")
    p.add_argument("--penalty-decay", type=float, default=d.penalty_decay, help=f"default {d.penalty_decay}")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help=f"default {d.max_tokens}")
    p.add_argument("--seed", type=int, default=None, help="fixes the random draws (default: random)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help='a stop string, repeatable (default: "\\n\\n")')
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images of more pixels, from their header (default 64 Mi: a decompression-bomb guard)")


def sampling_params_from_args(args):
    from visualrwkv.engine.defaults import trained_for_short_answers
    from visualrwkv.engine.params import SamplingParams

    extra = {} if args.stop is None else {"stop": [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]}
    temperature = args.temperature
    if temperature is None:  # the web UI's rule (serve.cli.webui_defaults): greedy for a short-answer model
        temperature = 0.0 if trained_for_short_answers(args.model) else SamplingParams().temperature
    return SamplingParams(temperature=temperature, top_p=args.top_p, top_k=args.top_k,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          penalty_decay=args.penalty_decay, max_tokens=args.max_tokens, seed=args.seed, **extra)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ask", help="answer one question about an image (streamed to stdout)")
    p.add_argument("question")
    p.add_argument("--image", action="append", metavar="PATH",
                   help="image file; repeat for several images, in order (omit for a text-only question)")
    add_sampling_arguments(p)
    p.set_defaults(func=run_ask)

    p = subparsers.add_parser("chat", help="multi-turn chat about an image on stdin (" + CHAT_HELP + ")")
    p.add_argument("--image", action="append", metavar="PATH",
                   help="image file, repeatable (omit for a text-only chat; /image PATH adds one later)")
    add_sampling_arguments(p)
    p.set_defaults(func=run_chat)


def _open_engine(args):
    from visualrwkv.engine.defaults import model_name
    from visualrwkv.engine.engine import Engine
    from visualrwkv.engine.model_args import load_model_from_args

    params = sampling_params_from_args(args)  # before loading: bad flags fail fast
    return Engine(load_model_from_args(args), model_id=model_name(args.model)), params


def _stream(handle, out) -> str:
    for delta in handle:
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()
    return handle.result().text


def _read_image(path: str, args):
    from visualrwkv.engine.engine import ImageInput
    from visualrwkv.vision.image import DEFAULT_MAX_PIXELS

    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    return ImageInput.from_path(path, args.max_pixels or DEFAULT_MAX_PIXELS)


def _read_images(paths, args) -> list:
    """The --image files, in order (none: text only)."""
    return [_read_image(path, args) for path in paths or ()]


def _with_image(images: list, names: list[str], image, name: str, max_images: int | None):
    """The images after `/image PATH`: added after the others, or instead of the one a one-image model
    takes; a ValueError where the model takes no more."""
    if max_images == 1:
        return [image], [name]
    if max_images is not None and len(images) >= max_images:
        raise ValueError(f"this model takes at most {max_images} images per conversation; "
                         "/image alone clears them")
    return images + [image], names + [name]


def run_ask(args) -> int:
    if not args.question.strip():
        raise ValueError("the question is empty")
    images = _read_images(args.image, args)
    engine, params = _open_engine(args)
    with engine:
        _stream(engine.ask(args.question, images, params=params), sys.stdout)
    return 0


def _history_file():
    import os
    from pathlib import Path

    root = os.environ.get("VISUALRWKV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "visualrwkv")
    return Path(root) / "chat_history"


def _line_reader(interactive: bool):
    """() -> the next line, or None at the end: on a terminal through readline (line editing, and the
    questions of earlier sessions on the up arrow), else plain stdin."""
    if not interactive:
        return lambda: sys.stdin.readline() or None
    try:
        import atexit
        import readline
    except ImportError:  # e.g. Windows without pyreadline: input() still works, without history
        readline = None
    if readline is not None:
        path = _history_file()
        try:
            readline.read_history_file(path)
        except OSError:  # none yet
            pass
        readline.set_history_length(HISTORY_LIMIT)

        def save():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(path)
            except OSError:
                pass

        atexit.register(save)

    def read():
        try:
            return input(">>> ")
        except EOFError:  # Ctrl-D
            print()
            return None

    return read


def run_chat(args) -> int:
    images, names = _read_images(args.image, args), list(args.image or ())
    engine, params = _open_engine(args)
    interactive = sys.stdin.isatty()
    history: list[tuple[str, str]] = []
    read_line = _line_reader(interactive)
    if interactive:
        print(f"{CHAT_HELP}\n{KEYS_HELP}")
    with engine:
        engine.build_prompt("?", images)  # more images than the model takes: one line before any question
        while True:
            try:
                line = read_line()
            except KeyboardInterrupt:  # at a terminal's prompt: a new line, as a shell does
                if not interactive:  # piped input: Ctrl-C ends the chat (one line, from the CLI)
                    raise
                print("\n(Ctrl-D or /quit leaves)", flush=True)
                continue
            if line is None:  # end of input
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command, _, argument = line.partition(" ")
                if command in ("/quit", "/exit"):
                    break
                if command == "/reset":
                    history = []
                    print("[new conversation]", flush=True)
                elif command == "/image":
                    path = argument.strip()
                    try:
                        images, names = _with_image(images, names, _read_image(path, args), path,
                                                    engine.model.max_images) if path else ([], [])
                    except ValueError as e:
                        print(f"error: {e}", file=sys.stderr, flush=True)
                        continue
                    history = []
                    print(f"[new conversation about {', '.join(names) or 'no image'}]", flush=True)
                elif command == "/help":
                    print(CHAT_HELP, flush=True)
                else:
                    print(f"error: unknown command {command!r}; {CHAT_HELP}", file=sys.stderr, flush=True)
                continue
            handle = None
            try:
                handle = engine.ask(line, images, history, params)
                answer = _stream(handle, sys.stdout)
            except ValueError as e:  # e.g. the conversation grew past a limit
                print(f"error: {e}", file=sys.stderr, flush=True)
                continue
            except KeyboardInterrupt:  # stop this answer, keep the conversation (without the cut turn)
                if handle is not None:
                    handle.cancel()
                print("\n[answer stopped]", flush=True)
                continue
            if answer:  # an empty answer cannot be part of a rendered history
                history.append((line, answer))
    return 0
