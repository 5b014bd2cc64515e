"""``ssah serve``: the image search service and web page (FastAPI + uvicorn).

Run as ``ssah serve --checkpoint runs/digits --index idx/`` (or ``python -m ssah serve ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import SSAHError

DEFAULTS = dict(host="127.0.0.1", port=8000, max_upload_mb=10.0, max_pixels=50_000_000,
                max_k=1000, timeout=30.0, workers=1)


def read_token(path) -> str:
    """The write token: the first line of ``path``, stripped; an empty file is an error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SSAHError(f"--token-file {p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SSAHError(f"--token-file {p}: cannot read it ({e})") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise SSAHError(f"--token-file {p} is empty; write a secret token on its first line")
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise SSAHError(f"--token-file {p}: the token must be one word of printable characters")
    return token


def _limits(args):
    from .app import Limits
    return Limits(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                  max_k=args.max_k, timeout=args.timeout).check()


def serve_command(args) -> int:
    import uvicorn
    from .app import create_app

    if args.workers < 1:
        raise SSAHError(f"--workers must be >= 1, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise SSAHError(f"--port must be in 0..65535, got {args.port}")
    limits = _limits(args)
    token = read_token(args.token_file) if args.token_file else None
    common = dict(host=args.host, port=args.port, log_level=args.log_level,
                  timeout_keep_alive=5, access_log=not args.no_access_log)
    if args.workers == 1:
        app = create_app(args.checkpoint, args.index, token=token, limits=limits,
                         device=args.device, data_path=args.data_path, engine=args.engine)
        print(f"serving {args.index} on http://{args.host}:{args.port}/ "
              f"({'writable' if token else 'read-only'})", file=sys.stderr, flush=True)
        uvicorn.run(app, **common)
        return 0
    # several processes: each loads the model and the index; settings travel as JSON
    from dataclasses import asdict
    from ..train.encode import ImageEncoder
    ImageEncoder(args.checkpoint, args.device)   # a bad checkpoint is reported once, here
    settings = {"checkpoint": str(args.checkpoint), "index": str(args.index),
                "token_file": str(Path(args.token_file).resolve()) if args.token_file else None,
                "limits": asdict(limits), "device": args.device, "data_path": args.data_path,
                "engine": args.engine}
    os.environ["SSAH_SERVE_SETTINGS"] = json.dumps(settings)
    print(f"serving {args.index} on http://{args.host}:{args.port}/ with {args.workers} "
          f"worker processes ({'writable' if token else 'read-only'})", file=sys.stderr, flush=True)
    uvicorn.run("ssah.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    s.add_argument("--index", required=True, help="index folder (or .ssah file) to serve")
    s.add_argument("--host", default=DEFAULTS["host"], help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULTS["port"])
    s.add_argument("--token-file", help="file holding the bearer token that allows POST /items "
                                        "and DELETE /items/{id}; without it the service is read-only")
    s.add_argument("--max-upload-mb", type=float, default=DEFAULTS["max_upload_mb"],
                   help="largest request body in MB (default 10)")
    s.add_argument("--max-pixels", type=int, default=DEFAULTS["max_pixels"],
                   help="largest decoded image in pixels, a decompression-bomb guard "
                        "(default 50,000,000)")
    s.add_argument("--max-k", type=int, default=DEFAULTS["max_k"],
                   help="largest k; also caps radius results (default 1000)")
    s.add_argument("--timeout", type=float, default=DEFAULTS["timeout"],
                   help="seconds per request before a 504 (default 30; 0: none)")
    s.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                   help="server processes (each holds the model and the index; default 1)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--data-path", help="the run's dataset, for thumbnails, when it is not at "
                                       "the config's data.path")
    s.add_argument("--engine", choices=("flat", "ivf", "mih", "milvus"),
                   help="search with another engine than the saved one")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning",
                                                            "info", "debug"))
    s.add_argument("--no-access-log", action="store_true", help="do not log every request")


def register(subparsers) -> None:
    """Add ``serve`` to a sub-parsers object."""
    s = subparsers.add_parser("serve", help="image search service and web page (HTTP)",
                              description=__doc__.splitlines()[0])
    add_arguments(s)
    s.set_defaults(func=serve_command)
