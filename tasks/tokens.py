"""The workspace's API token and the signed image URLs made with it (`coldstart api` checks
them; the select stage writes them into Label Studio tasks when ``labelstudio.images: api``)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

from coldstart.tasks.workspace import Workspace

TOKEN_FILE = "api-token"
IMAGE_URL_DAYS = 30  # how long a signed image URL in an exported task stays valid


def api_token(ws: Workspace) -> str:
    """The workspace's API token: read, or made on first use (``.coldstart/api-token``, mode
    0600; .coldstart/ is git-ignored). Never logged."""
    path = ws.state_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token


def sign_image(token: str, image_id: str, expires: int) -> str:
    """HMAC-SHA256 of "<image id>.<expiry>" under the token, 32 hex."""
    return hmac.new(token.encode(), f"{image_id}.{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def image_url(base_url: str, token: str, image_id: str, days: float = IMAGE_URL_DAYS) -> str:
    """A signed URL of a workspace image on the API at ``base_url``, valid for ``days``."""
    exp = int(time.time() + days * 86400)
    return f"{base_url.rstrip('/')}/images/{image_id}?exp={exp}&sig={sign_image(token, image_id, exp)}"


def image_urls(ws: Workspace):
    """How exported tasks point at images: None (Label Studio's local files), or, with
    ``labelstudio.images: api``, a function (image id, path) -> a signed `coldstart api` URL."""
    cfg = ws.params().labelstudio
    if cfg.images != "api":
        return None
    api_url = cfg.api_url
    assert api_url is not None, "LabelStudioConfig refuses images: api without api_url"
    token = api_token(ws)
    return lambda image_id, path: image_url(api_url, token, image_id)
