"""`coldstart labelstudio config|check`: the Label Studio helpers (light: no model, no Prefect)."""

from __future__ import annotations

import sys

from coldstart.tasks import labelstudio
from coldstart.tasks.workspace import Workspace


def cmd_labelstudio(a) -> int:
    """`labelstudio config`: the project's labeling XML; `labelstudio check`: what `round --wait` checks first."""
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
