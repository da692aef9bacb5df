"""Reaching a model hub without hanging on an offline machine: one probe, one clear line."""

from __future__ import annotations

import os
import threading


def hub_offline() -> bool:
    from huggingface_hub import constants

    # the constant is read once at import; the variable may have been set since
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def probe(url: str, timeout: float = 3.0) -> str | None:
    """One HEAD request to ``url``: None when anything answers (any HTTP status), else why not.

    Goes through huggingface_hub's HTTP client so HF_ENDPOINT, proxy variables and a custom client
    factory apply as for the real download; runs in a daemon thread because the timeout does not
    cover DNS resolution, which can hang on a machine without a resolver."""
    from huggingface_hub import get_session

    result: list[str | None] = []

    def head() -> None:
        try:
            get_session().head(url, timeout=timeout)
            result.append(None)
        except Exception as e:  # any failure to get an HTTP answer means: unreachable
            result.append(first_line(e))

    thread = threading.Thread(target=head, name="coldstart-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer within {timeout:g} s"
