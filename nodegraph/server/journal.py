"""The queue's source of truth: one SQLite table (WAL), so pending prompts and history survive restarts.

A prompt is a row from the moment it is accepted. Its state moves pending -> running -> success | error |
interrupted | cancelled; rows left ``running`` by a crash go back to ``pending`` when the journal opens.
Only this module writes SQL; every method is one short transaction, safe from any thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

State = Literal["pending", "running", "success", "error", "interrupted", "cancelled"]
FINISHED: tuple[State, ...] = ("success", "error", "interrupted", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT UNIQUE NOT NULL,
    number REAL NOT NULL,
    state TEXT NOT NULL,
    client_id TEXT,
    prompt TEXT NOT NULL,          -- the prompt as posted (API format), for /queue and /history
    extra_data TEXT NOT NULL,
    targets TEXT NOT NULL,         -- the prompt's output node ids to execute
    graph TEXT NOT NULL,           -- the validated native graph that runs
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    outputs TEXT,                  -- {prompt node id: {"images": [...]}}
    messages TEXT,                 -- [[event, data], ...] as in ComfyUI's history status
    error TEXT
);
CREATE INDEX IF NOT EXISTS prompts_state ON prompts(state, number, seq);
"""


@dataclass
class Row:
    seq: int
    prompt_id: str
    number: float
    state: State
    client_id: str | None
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    targets: list[str]
    graph: dict[str, Any]
    created: float
    started: float | None
    ended: float | None
    outputs: dict[str, Any]
    messages: list[Any]
    error: dict[str, Any] | None


def _row(r: sqlite3.Row) -> Row:
    return Row(r["seq"], r["prompt_id"], r["number"], r["state"], r["client_id"], json.loads(r["prompt"]),
               json.loads(r["extra_data"]), json.loads(r["targets"]), json.loads(r["graph"]), r["created"],
               r["started"], r["ended"], json.loads(r["outputs"] or "{}"), json.loads(r["messages"] or "[]"),
               json.loads(r["error"]) if r["error"] else None)


class Journal:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a process crash
        with self._lock:
            self._db.executescript(_SCHEMA)
            self.recovered = self._db.execute("UPDATE prompts SET state='pending', started=NULL "
                                              "WHERE state='running'").rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            return [_row(r) for r in self._db.execute(sql, args).fetchall()]

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def next_number(self) -> float:
        with self._lock:
            (top,) = self._db.execute("SELECT COALESCE(MAX(ABS(number)), 0) FROM prompts").fetchone()
        return float(int(top) + 1)

    def add(self, prompt_id: str, number: float, client_id: str | None, prompt: dict[str, Any],
            extra_data: dict[str, Any], targets: list[str], graph: dict[str, Any]) -> None:
        self._exec("INSERT INTO prompts (prompt_id, number, state, client_id, prompt, extra_data, targets, graph, "
                   "created) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                   (prompt_id, number, client_id, json.dumps(prompt), json.dumps(extra_data), json.dumps(targets),
                    json.dumps(graph), time.time()))

    def get(self, prompt_id: str) -> Row | None:
        rows = self._query("SELECT * FROM prompts WHERE prompt_id=?", (prompt_id,))
        return rows[0] if rows else None

    def pending(self) -> list[Row]:
        return self._query("SELECT * FROM prompts WHERE state='pending' ORDER BY number, seq")

    def running(self) -> list[Row]:
        return self._query("SELECT * FROM prompts WHERE state='running' ORDER BY seq")

    def count_pending(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM prompts WHERE state='pending'").fetchone()
        return int(n)

    def claim_next(self) -> Row | None:
        """The first pending prompt (lowest number; ``front`` ones are negative), now marked running."""
        with self._lock:
            r = self._db.execute("SELECT * FROM prompts WHERE state='pending' ORDER BY number, seq LIMIT 1").fetchone()
            if r is None:
                return None
            self._db.execute("UPDATE prompts SET state='running', started=? WHERE seq=?", (time.time(), r["seq"]))
        row = _row(r)
        row.state = "running"
        return row

    def finish(self, prompt_id: str, state: State, outputs: dict[str, Any], messages: list[Any],
               error: dict[str, Any] | None) -> None:
        self._exec("UPDATE prompts SET state=?, ended=?, outputs=?, messages=?, error=? WHERE prompt_id=?",
                   (state, time.time(), json.dumps(outputs), json.dumps(messages),
                    json.dumps(error) if error else None, prompt_id))

    def requeue(self, prompt_id: str) -> None:
        self._exec("UPDATE prompts SET state='pending', started=NULL WHERE prompt_id=?", (prompt_id,))

    def cancel_pending(self, prompt_ids: list[str] | None) -> int:
        """Pending prompts (all when ``None``) become ``cancelled``; running ones are not touched."""
        if prompt_ids is None:
            return self._exec("UPDATE prompts SET state='cancelled', ended=? WHERE state='pending'", (time.time(),))
        marks = ",".join("?" * len(prompt_ids))
        return self._exec(f"UPDATE prompts SET state='cancelled', ended=? WHERE state='pending' "
                          f"AND prompt_id IN ({marks})", (time.time(), *prompt_ids))

    def history(self, max_items: int | None = None, offset: int = 0) -> list[Row]:
        """Finished prompts, oldest first (ComfyUI's order), a window from the newest end when limited."""
        done = ",".join(f"'{s}'" for s in FINISHED if s != "cancelled")
        limit = -1 if max_items is None else max_items
        rows = self._query(f"SELECT * FROM prompts WHERE state IN ({done}) ORDER BY ended DESC, seq DESC "
                           "LIMIT ? OFFSET ?", (limit, offset))
        return rows[::-1]

    def delete_history(self, prompt_ids: list[str] | None) -> int:
        done = ",".join(f"'{s}'" for s in FINISHED)
        if prompt_ids is None:
            return self._exec(f"DELETE FROM prompts WHERE state IN ({done})")
        marks = ",".join("?" * len(prompt_ids))
        return self._exec(f"DELETE FROM prompts WHERE state IN ({done}) AND prompt_id IN ({marks})", tuple(prompt_ids))

    def jobs(self, states: tuple[str, ...]) -> list[Row]:
        marks = ",".join("?" * len(states))
        return self._query(f"SELECT * FROM prompts WHERE state IN ({marks}) ORDER BY created DESC, seq DESC", states)
