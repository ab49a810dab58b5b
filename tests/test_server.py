from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from labeval.db.server import _forget_dead_handles, with_database


def test_dead_users_of_the_embedded_server_are_forgotten(tmp_path: Path) -> None:
    # A process that has exited: its pid is free (pids are not reused this quickly).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / ".handle_pids.json").write_text(json.dumps([dead_pid, os.getpid()]))
    _forget_dead_handles(tmp_path, threading.Lock())
    assert json.loads((tmp_path / ".handle_pids.json").read_text()) == [os.getpid()]
    # No list yet: nothing to do, nothing created.
    _forget_dead_handles(tmp_path / "missing", threading.Lock())
    assert not (tmp_path / "missing").exists()


def test_with_database_keeps_socket_directory_and_options() -> None:
    assert with_database("postgresql://postgres:@/postgres?host=/tmp/x/pgdata", "labeval") == (
        "postgresql://postgres:@/labeval?host=/tmp/x/pgdata"
    )
    assert with_database("postgresql://u:p@db:5432/a?sslmode=require", "b") == "postgresql://u:p@db:5432/b?sslmode=require"
