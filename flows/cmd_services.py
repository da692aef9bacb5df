"""`coldstart serve`, `api` and `labelstudio`: the long-running services and the Label Studio helpers."""

from __future__ import annotations

import sys

from coldstart.flows.api import serve as serve_api
from coldstart.flows.serve import serve as serve_rounds
from coldstart.tasks import labelstudio
from coldstart.tasks.tokens import TOKEN_FILE, api_token
from coldstart.tasks.workspace import Workspace


def cmd_serve(a) -> int:
    serve_rounds(a.workspace, cron=a.cron, interval=a.interval, port=a.port)
    return 0


def cmd_api(a) -> int:
    ws = Workspace.open(a.workspace)
    api_token(ws)  # made now, so the message below can point at it
    print(f"coldstart api on http://{a.host}:{a.port} for {ws.root}\n  token: {ws.state_dir / TOKEN_FILE} "
          f"(send 'Authorization: Bearer <token>'; Label Studio: basic auth, any user, the token as password)",
          flush=True)
    serve_api(str(ws.root), host=a.host, port=a.port, max_body_mb=a.max_body_mb)
    return 0


def cmd_labelstudio(a) -> int:
    ws = Workspace.open(a.workspace)
    params = ws.params()
    if a.labelstudio == "check":  # what `round --wait` checks first: title, server, token
        found = labelstudio.preflight(ws, params)
        if found is None:
            print("labelstudio.url is not set: rounds hand their batch over as files (data/review/)")
            return 0
        found.client.close()
        print(f"Label Studio at {found.url}: the token of {found.user} is accepted\n  project {found.title!r}: "
              + (f"id {found.project}" if found.project is not None else "not there yet; the first `round --wait` "
                 "creates it"))
        return 0
    sys.stdout.write(labelstudio.project_config(params.ontology, regions=params.regions.enabled))
    return 0
