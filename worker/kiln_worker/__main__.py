"""`python -m kiln_worker` / `kiln-worker`: start the worker.

    KILN_WORKER_SECRET=whsec_… python -m kiln_worker [--host H] [--port P] [--port-file F]

`--port 0` lets the system choose a free port. Either way, once the server accepts
connections the worker prints exactly one line on stdout:

    kiln-worker listening on http://127.0.0.1:43817

(and, with `--port-file`, writes the bare port number to that file, atomically), so a
process that started it — kiln's conformance suite and integration tests — can read the
address. Logs go to stderr. The model loads after that line, while `GET /health`
answers 503 `loading`.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 2 for a configuration problem or a
pipeline that cannot run here (named on stderr), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from . import __version__
from .config import ConfigError, Settings, setup_logging
from .pipelines import PipelineUnavailable, load_pipeline

log = logging.getLogger("kiln_worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kiln-worker",
        description="kiln's GPU worker (worker protocol 1). Configured by KILN_WORKER_* "
        "environment variables; these options override them.",
    )
    parser.add_argument("--host", help="address to listen on (KILN_WORKER_HOST, default 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=int,
        help="port to listen on; 0 picks a free one (KILN_WORKER_PORT, default 8000)",
    )
    parser.add_argument(
        "--port-file", type=Path, help="write the bound port number to this file once listening"
    )
    parser.add_argument(
        "--pipeline", help="trellis2, module:Class or file.py:Class (KILN_WORKER_PIPELINE)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING… (KILN_WORKER_LOG_LEVEL)")
    parser.add_argument("--version", action="version", version=f"kiln-worker {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(
            host=args.host, port=args.port, pipeline=args.pipeline, log_level=args.log_level
        )
    except ConfigError as err:
        print(f"kiln-worker: {err}", file=sys.stderr)
        return 2
    setup_logging(settings)
    log.info("kiln-worker %s starting: %r", __version__, settings)

    try:
        pipeline = load_pipeline(settings.pipeline, settings)
        pipeline.preflight()
    except PipelineUnavailable as err:
        log.error("the pipeline `%s` cannot run here: %s", settings.pipeline, err)
        return 2
    log.info("pipeline %s (%s), %d slot(s)", pipeline.name, pipeline.version, settings.slots)

    try:
        sock = _bind(settings.host, settings.port)
    except OSError as err:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, err)
        return 2

    from .app import create_app  # after the checks: a failed start stays fast

    app = create_app(settings, pipeline)
    try:
        asyncio.run(_serve(app, sock, settings, args.port_file))
    except KeyboardInterrupt:
        pass
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so that the port chosen for `--port 0` is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # whose proto says TCP, and accepted connections inherit the listener's. With proto 0
    # every answer whose headers and body go out in two writes waits ~40 ms for the
    # peer's delayed ACK, which would show in kiln's dispatch latency.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping on SIGINT/SIGTERM and then exiting with status 0.

        uvicorn re-raises a captured SIGTERM once it has shut down, so the process would
        end "killed by SIGTERM"; a stop that went cleanly should say so. A second signal
        forces the exit without waiting for open connections.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()

            def handle() -> None:
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

            handled = []
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, handle)
                    handled.append(sig)
                except (NotImplementedError, RuntimeError):  # not the main thread
                    pass
            try:
                yield
            finally:
                for sig in handled:
                    loop.remove_signal_handler(sig)

        def install_signal_handlers(self) -> None:  # the name in uvicorn < 0.29
            pass

    return Server


async def _serve(
    app: object, sock: socket.socket, settings: Settings, port_file: Path | None
) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,  # keep our logging setup
        access_log=False,  # one line per dispatch, from the app, says more
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _server_class()(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            await serving  # it failed to start: raise its error
            return
        await asyncio.sleep(0.01)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if port_file is not None:
        temporary = port_file.with_name(port_file.name + ".tmp")
        temporary.write_text(f"{port}\n")
        os.replace(temporary, port_file)
    print(f"kiln-worker listening on http://{shown}:{port}", flush=True)
    await serving


if __name__ == "__main__":
    sys.exit(main())
