"""Serve a built site on 127.0.0.1 (for remote machines: forward the port with ``ssh -L``)."""

from __future__ import annotations

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from hvrt_dask import ownership
from hvrt_dask.sae.site.build import CSP


class _Handler(SimpleHTTPRequestHandler):
    """Static files with the site's Content-Security-Policy and no MIME sniffing."""

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass


def start_server(site_dir: str | os.PathLike, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start serving ``site_dir`` on 127.0.0.1 in a daemon thread; returns the server and its URL.

    Raises
    ------
    FileNotFoundError, hvrt_dask.ownership.IncompleteOutputError
        When ``site_dir`` is not a complete site.
    """
    d = ownership.require_complete(site_dir, "site")
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), functools.partial(_Handler, directory=d))
    threading.Thread(target=server.serve_forever, daemon=True, name="hvrt-site-server").start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/index.html"


def serve(site_dir: str | os.PathLike, port: int = 0, echo=print) -> None:
    """Serve ``site_dir`` on 127.0.0.1 until interrupted (Ctrl-C); prints the address."""
    server, url = start_server(site_dir, port)
    echo(f"serving {os.fspath(site_dir)} at {url} (127.0.0.1 only; Ctrl-C to stop)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
