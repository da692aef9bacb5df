"""`coldstart intake --check FILE...`: answer files validated as a round would, nothing merged. Its
own module: it imports neither torch nor Prefect, so a person checking a file gets the answer at once."""

from __future__ import annotations

from pathlib import Path

from coldstart.tasks.answerfiles import MAX_LISTED, read_answer_file
from coldstart.tasks.errors import LabelFileError
from coldstart.tasks.intake import RowSpool, validate_file
from coldstart.tasks.workspace import Workspace


def cmd_intake(a) -> int:
    """`coldstart intake --check FILE...`: validate answer files as a round would, merge nothing."""

    ws = Workspace.open(a.workspace)
    params = ws.params()
    classes, keep_good = params.ontology.class_names, params.intake.on_error == "keep_good_rows"
    max_bytes = int(params.intake.max_file_mb * 1024 * 1024)
    bad = 0
    for name in a.check:
        path = Path(name)
        bad_rows = RowSpool() if keep_good else None
        try:
            # As a round reads it: no symlink or FIFO is followed, the size cap holds.
            rows, blank = validate_file(path, read_answer_file(path, name, max_bytes), ws, classes, bad_rows=bad_rows)
            if bad_rows:  # keep_good_rows: a round would merge the good rows and set these aside
                listed = [f"  - {why}" for _, (_, why) in zip(range(MAX_LISTED), bad_rows)]
                more = f"\n  ... and {len(bad_rows) - MAX_LISTED} more" if len(bad_rows) > MAX_LISTED else ""
                print(f"{name}: {len(bad_rows)} row(s) would be set aside, {len(rows)} answer(s) merged:\n"
                      + "\n".join(listed) + more)
                bad += 1
            else:
                print(f"{name}: ok, {len(rows)} answer(s), {blank} blank row(s)")
        except LabelFileError as e:
            print(str(e).replace(": rejected, nothing merged", ": would be rejected"))
            bad += 1
        except OSError as e:
            print(f"{name}: cannot read it ({e})")
            bad += 1
        finally:
            if bad_rows is not None:
                bad_rows.close()
    return 1 if bad else 0
