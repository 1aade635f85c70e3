"""``wholeimage serve``: the three functions in one process, for local use and small VMs.

Each function is the very app functions-framework makes for it from ``functions/main.py`` (what
``functions-framework --source functions/main.py --target create`` serves when deployed), so
the answers are the deployed ones; werkzeug's ``DispatcherMiddleware`` mounts them at
``/create``, ``/check`` and ``/notify``. A function sees its mount point as its script root, so
``create``'s ``status_url`` and ``Location`` carry ``/create/``. Any other path answers 404 with
the usual error body.

gunicorn (installed with functions-framework) serves it with threads, as functions-framework
does; where gunicorn cannot run (Windows) werkzeug's threaded server does.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from functions_framework import create_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server

from wholeimage.errors import ConfigurationError

try:
    import gunicorn.app.base

    HAVE_GUNICORN = True
except ImportError:  # gunicorn needs fcntl: not on Windows, where werkzeug's server serves
    HAVE_GUNICORN = False

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from wholeimage.cli.output import Output

FUNCTIONS = ("create", "check", "notify")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def default_source() -> Path:
    """``main.py`` of the functions: beside the package (a checkout, an editable install, the
    deployed ``functions/`` folder), or the copy a wheel carries inside the package."""
    for candidate in (PACKAGE_DIR.parent / "main.py", PACKAGE_DIR / "_functions" / "main.py"):
        if candidate.is_file():
            return candidate
    raise ConfigurationError(
        f"functions/main.py was not found beside the wholeimage package ({PACKAGE_DIR}); "
        "pass --source PATH/TO/functions/main.py"
    )


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Any path but the three functions: 404 with the error body the functions use."""
    body = json.dumps(
        {
            "error": {
                "code": "not_found",
                "message": "no function at this path; the functions are /create, /check and /notify",
                "details": [{"path": "path", "message": str(environ.get("PATH_INFO", ""))[:200]}],
            }
        }
    ).encode("utf-8")
    start_response(
        "404 Not Found",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def at_root(app: WSGIApplication) -> WSGIApplication:
    """``app`` answering its mount point itself: ``/create`` as ``/create/``.

    Mounted, a function sees ``/create`` as an empty path, which Flask would answer with a
    redirect to ``/create/``; callers POSTing to ``/create`` should not have to follow it.
    """

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return app(environ, start_response)

    return wsgi


def build_app(source: Path | None = None) -> WSGIApplication:
    """The three functions, each as functions-framework serves it, under one WSGI app.

    Raises:
        ConfigurationError: ``source`` (or the default ``main.py``) does not exist.
    """
    main_py = source or default_source()
    if not main_py.is_file():
        raise ConfigurationError(
            f"--source {main_py} does not exist; point it at functions/main.py"
        )
    package_log = logging.getLogger("wholeimage")
    was_disabled = package_log.disabled
    mounts: dict[str, WSGIApplication] = {}
    for index, target in enumerate(FUNCTIONS):
        # functions-framework runs main.py once per app, and main.py warns when no API token is
        # set: once is enough to say it.
        package_log.disabled = was_disabled or index > 0
        try:
            # functions-framework's create_app has no annotations: the call is typed here.
            app: WSGIApplication = create_app(target, str(main_py))  # type: ignore[no-untyped-call]
            mounts[f"/{target}"] = at_root(app)
        finally:
            package_log.disabled = was_disabled
    return DispatcherMiddleware(not_found, mounts)


def _announce(url: str, output: Output) -> None:
    paths = {target: f"{url}/{target}" for target in FUNCTIONS}
    if output.json:
        print(json.dumps({"serving": url, "functions": paths}), file=output.out, flush=True)
    else:
        lines = [f"wholeimage serving on {url} (Ctrl-C stops)"]
        lines += [f"  {target:<7} {path}" for target, path in paths.items()]
        print("\n".join(lines), file=output.out, flush=True)


def serve(
    *,
    host: str,
    port: int,
    workers: int | None,
    threads: int | None,
    server: str,
    source: Path | None,
    output: Output,
) -> int:
    """Serve until interrupted; prints where once it listens. Returns the exit code.

    ``workers`` and ``threads`` (gunicorn's; 1 and 8 when None) are what the command line gave:
    werkzeug has no use for them, so they are named when it serves in gunicorn's stead.
    """
    app = build_app(source)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    use_gunicorn = server == "gunicorn" or (server == "auto" and HAVE_GUNICORN)
    if use_gunicorn:
        _run_gunicorn(
            app,
            host=host,
            port=port,
            workers=workers or 1,
            threads=threads or 8,
            ready=lambda: _announce(url, output),
        )
        return 0
    given = [f"--{name}" for name, value in (("workers", workers), ("threads", threads)) if value]
    if given:
        print(
            f"gunicorn cannot run here: werkzeug serves with one threaded process, and "
            f"{' and '.join(given)} do not apply",
            file=output.err,
        )
    httpd = make_server(host, port, app, threaded=True)
    _announce(url, output)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def _run_gunicorn(
    app: WSGIApplication,
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    ready: Any,
) -> None:
    if not HAVE_GUNICORN:
        raise ConfigurationError("gunicorn cannot be imported here: use --server werkzeug")

    class Application(gunicorn.app.base.BaseApplication):  # type: ignore[misc]  # untyped base
        def load_config(self) -> None:
            options = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                # A check tick may take its whole budget (120 s by default): no worker timeout,
                # as functions-framework sets it (the platform's request timeout bounds a call).
                "timeout": 0,
                "loglevel": "warning",
                "when_ready": lambda _server: ready(),
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> WSGIApplication:
            return app

    # gunicorn parses sys.argv for its own options unless told otherwise: ours are not its.
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        Application().run()
    finally:
        sys.argv = saved
