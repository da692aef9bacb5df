"""`coldstart discover`: the classes the rounds proposed, and adopting, renaming or removing one."""

from __future__ import annotations

import shlex

from coldstart.tasks.adopt import adopt, remove_class, rename_class
from coldstart.tasks.commands import command
from coldstart.tasks.discover import read_proposals
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.heads import current_human_labels
from coldstart.tasks.ontology import orphan_note
from coldstart.tasks.workspace import Workspace


def cmd_discover(a) -> int:
    ws = Workspace.open(a.workspace)
    where = shlex.quote(str(ws.root))
    changes = [x for x in (a.adopt, a.rename, a.remove) if x is not None]
    if len(changes) > 1:
        raise WorkspaceError("give one of --adopt, --rename, --remove at a time")
    if (a.adopt is not None or a.rename is not None) and not a.name:
        raise WorkspaceError("--adopt and --rename need --name NAME (the class's name)")
    with ws.lock():
        if a.adopt is not None:
            done = adopt(ws, a.adopt, a.name, a.description or [])
            what = "added to params.yaml" if done.new_class else "(a class already) gets the proposal's images"
            print(f"class {done.name!r} {what}: {done.reasked} 'none of these' answer(s) among its {done.members} "
                  f"images will be asked again in the next batch (data/labels/reask.csv)"
                  + (f"; {done.proposed_answers} answer(s) new:{done.name} now count as {done.name!r}"
                     if done.proposed_answers else ""))
        elif a.rename is not None:
            n = rename_class(ws, a.rename, a.name, ws.next_round())
            print(f"class {a.rename!r} renamed {a.name!r} in params.yaml; {n} answer(s) restated as {a.name!r} "
                  f"(the earlier ones stay in data/labels/events.jsonl)")
        elif a.remove is not None:
            n = remove_class(ws, a.remove)
            print(f"class {a.remove!r} removed from params.yaml; its {n} answer(s) stay in data/labels/events.jsonl "
                  f"and count as 'none of these' (the report lists them)")
        else:
            _list(ws)
            return 0
    print(f"next: {command('coldstart')} round -w {where}  (re-labels every image with the new ontology)")
    return 0


def _list(ws: Workspace) -> None:
    """The latest round's proposals, as a person chooses among them."""
    proposed_in, found = read_proposals(ws)
    answers = current_human_labels(ws, ws.params().ontology.labels)
    if note := orphan_note(answers.orphaned):
        print(f"note: {note}\n")
    if not found:
        print("no proposals yet: a round proposes classes once some images look unlike every class (people answer "
              "'unknown', or the model labels them so)")
        return
    print(f"round {proposed_in} proposed {len(found)} class(es) (thumbnails: data/reports/round-{proposed_in:03d}.html):")
    for p in found:
        names = ", ".join(f"{n} ({s:.2f})" for n, s in p.names) or "-"
        people = ", ".join(f"new:{n} x{k}" for n, k in sorted(p.proposed_names.items())) or "-"
        what = "regions (SAM masks)" if p.kind == "regions" else "images"
        print(f"  {p.id}. {p.size} {what}, cohesion {p.cohesion:.2f}, {p.unknown_answers} answered 'none of these', "
              f"{p.predicted_unknown} labeled unknown; nearest class {p.nearest_class or '-'}; suggested names: {names}; "
              f"proposed by people: {people}")
        for path in p.paths[:3]:
            print(f"       {path}")
    first = found[0]
    print(f"\nadopt one: {command('coldstart')} discover -w {shlex.quote(str(ws.root))} --adopt {first.id} "
          f"--name {shlex.quote(first.suggested or 'NAME')} --description \"a photo of ...\"")
