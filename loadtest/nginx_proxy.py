"""nginx as the `nginx-proxy` bench target: `proxy_pass` to the upstream, with keep-alive to it.

The system's nginx (`apt-get install -y nginx`), not its service: one foreground process tree
(`daemon off`, one worker) run from a config written to a temp dir, every path in that dir, no
access log. Connections to the upstream are kept alive (`keepalive 64`, HTTP/1.1, no
`Connection` header passed on), as are wrk's: neither side's keep-alive ends after 1000
requests (nginx's default `keepalive_requests`), so no connection is reopened during a round.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SYSTEM_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
KEEPALIVE_REQUESTS = 1_000_000

CONFIG = """\
# Written by loadtest/bench.py: nginx-proxy, proxy_pass to 127.0.0.1:{upstream_port}.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests {keepalive_requests};
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests {keepalive_requests};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def find_nginx() -> str:
    """The nginx binary (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or next((p for p in SYSTEM_PATHS if Path(p).is_file()), None)
    if found is None:
        raise RuntimeError("no nginx for the nginx-proxy target: apt-get install -y nginx")
    return found


def prepare(prefix: Path, port: int, upstream_port: int) -> list[str]:
    """Write the config into `prefix` (created); the argv that runs nginx from it in the foreground."""
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(
        CONFIG.format(prefix=prefix, port=port, upstream_port=upstream_port, keepalive_requests=KEEPALIVE_REQUESTS)
    )
    # -e: the error log from the start, before the config is read (else the system's log file).
    return [find_nginx(), "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
