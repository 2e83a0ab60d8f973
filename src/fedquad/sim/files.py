"""Writing run files safely: the atomic JSON writer and the writability probe every output
(run folders, checkpoints, profiles, comparisons) goes through. Imports nothing from fedquad, so
any module of the simulator or the CLI can use it without an import cycle."""

from __future__ import annotations

import json
import os
import tempfile


def probe_writable(folder: str) -> None:
    """Create and remove a file in `folder`, raising OSError if that fails. A real probe: permission
    bits say nothing to root, nor about read-only or /proc mounts."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".fedquad-probe-")
    os.close(fd)
    os.remove(probe)


def write_json_atomic(path: str, data) -> None:
    """Write JSON to a temporary sibling and rename it: readers never see half a file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
