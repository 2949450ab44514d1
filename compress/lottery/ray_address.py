"""A Ray cluster address checked before ``ray.init`` is given it: its form, and that something answers there
within a bounded time (``ray.init`` itself waited minutes on ``127.0.0.1:1`` and raised tracebacks for the rest).

Accepted: ``auto`` (a cluster started on this machine; ``ray.init`` says at once when there is none),
``HOST:PORT`` (the cluster's GCS, default port 6379) and ``ray://HOST:PORT`` (Ray Client, default 10001).
The timeout is ``--connect-timeout`` / ``COMPRESS_RAY_TIMEOUT`` (seconds, default ``DEFAULT_TIMEOUT``).
"""

from __future__ import annotations

import os
import re
import socket
import threading

from compress.errors import UserError, one_line

DEFAULT_TIMEOUT = 10.0
TIMEOUT_ENV = "COMPRESS_RAY_TIMEOUT"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")


def connect_timeout(given: float | None = None) -> float:
    """``given``, else ``$COMPRESS_RAY_TIMEOUT``, else ``DEFAULT_TIMEOUT``; a positive number of seconds."""
    value: object = given if given is not None else os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise UserError(f"ray connect timeout: {value!r} is not a number of seconds in (0, 3600] "
                        f"(--connect-timeout or {TIMEOUT_ENV})")
    return seconds


def parse_ray_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` / ``ray://HOST:PORT``; None for ``auto``; UserError for anything else."""
    text = str(address).strip()
    if text == "auto":
        return None
    scheme, _, rest = text.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if scheme not in ("", "ray") or not colon or not _HOST.match(host) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise UserError(f"ray address {address!r}: not HOST:PORT, ray://HOST:PORT or auto "
                        "(e.g. 10.0.0.5:6379 or ray://head:10001)")
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout: float) -> None:
    """Refuse ``address`` in one line unless it is well formed and accepts a TCP connection within ``timeout``
    seconds (name resolution included, so an unknown host cannot hang either)."""
    target = parse_ray_address(address)
    if target is None:
        return
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=probe, daemon=True, name="compress-ray-probe")
    thread.start()
    thread.join(timeout)
    if not outcome:
        reason = f"no answer within {timeout:g} s"
    elif outcome[0] is not None:
        reason = one_line(outcome[0], limit=100)
    else:
        return
    raise UserError(f"ray address {address!r}: cannot connect ({reason}); start the cluster (ray start --head) "
                    f"or pass the address of a running one (--connect-timeout / {TIMEOUT_ENV} to wait longer)")
