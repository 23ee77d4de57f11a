"""Crash test: `aria run` killed with SIGKILL at random points, restarted on the same database, then checked.

The real `aria run` (long polling) runs as a subprocess against FakeTelegram and FakeOpenAI, both served by this
process on 127.0.0.1, with an extra skills folder holding the probe skill (`write_mark`, a risky tool appending its
label to data_dir/marks.txt) and `slow_mark` (the same, slow enough to be killed while it runs). Each cycle sends
one owner request, kills the process at a random point of one scenario, restarts it on the same database and waits
(bounded) until nothing is running, nothing waits in the outbox and no approval is half-way:

- turn:            a plain request; the model is sometimes slow (a held response), so kills land mid-call
- approval-ask:    the model asks for `write_mark`; killed before the press (while asking, or with the buttons
                   shown); pressed Approve after the restart
- approval-press:  killed just after the Approve press
- approval-ack429: answerCallbackQuery answers 429 (retry after 5 s); killed during that wait
- approval-action: the model asks for `slow_mark`; killed while the approved action runs
- outbox:          sendMessage fails (429 or 5xx); killed while the answer waits to be retried

At the end Aria is stopped gracefully and the SQLite database is read directly. Every figure's target is 0
(integrity "ok"); each unmet one is a broken promise (DESIGN.md promises 3, 4 and 5).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import OWNER, aria_command, bench_env, stop_process, table
from tests.conftest import PROBE_SKILL
from tests.fakes import FakeOpenAI, FakeTelegram

SCENARIOS = ("turn", "approval-ask", "approval-press", "approval-ack429", "approval-action", "outbox")
SETTLE_SECONDS = 20.0
READY_SECONDS = 30.0
QUIET = 1.0  # the settled state must hold this long (an update just fetched is not a run yet)
RAN = ("executed", "unknown", "executing")

SLOW_SKILL = '''"""Crash-bench probe: a risky action slow enough to be killed while it runs."""
import asyncio

from aria.skills import ToolContext, tool

KEYWORDS = ("probe",)


@tool(risk="risky", timeout=10.0)
async def slow_mark(ctx: ToolContext, label: str) -> str:
    """Wait, append a label to the marks file, wait again."""
    await asyncio.sleep(0.6)
    with (ctx.settings.data_dir / "marks.txt").open("a") as marks:
        marks.write(label + "\\n")
    await asyncio.sleep(0.6)
    return f"marked {label}"
'''


@dataclass
class Ask:
    """One owner request of one cycle."""

    token: str
    scenario: str
    text: str
    label: str | None = None  # the action's label when the model asks for one
    pressed: set[int] = field(default_factory=set)  # approvals pressed Approve
    settled: bool = True
    kill_at: str = ""


@dataclass
class Harness:
    """The fakes, the data folder and the current `aria run`."""

    folder: Path
    model: FakeOpenAI
    telegram: FakeTelegram
    rng: random.Random
    settle_seconds: float
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    kills: int = 0
    starts: int = 0
    start_seconds: list[float] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.folder / "aria.db"

    # the process ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start `aria run` and wait until it polls the fake Bot API."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ARIA_", "OPENAI_", "TELEGRAM_"))}
        # The editor's model review of drafts is off: this bench is about durability, and a review call in the script
        # would shift every scripted reply after a kill.
        env = {**inherited, **bench_env(self.folder, self.model, self.telegram),
               "ARIA_SKILLS_DIR": str(self.folder / "skills"), "ARIA_DRAFT_REVIEW": "false"}
        began = time.time()
        self.proc = subprocess.Popen(aria_command("run"), cwd=self.folder, env=env, stdout=self.log,
                                     stderr=self.log)
        self.starts += 1
        _wait(lambda: any(c.at >= began for c in self.telegram.calls_to("getUpdates")) or self.proc.poll(),
              READY_SECONDS, "aria run to poll")
        if self.proc.poll() is not None:
            raise RuntimeError(f"aria run exited with {self.proc.returncode}; see {self.folder / 'run.log'}")
        self.start_seconds.append(time.time() - began)

    def kill(self) -> None:
        """SIGKILL: no handler runs, no transaction finishes, nothing is flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.telegram.clear_faults()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    # the database ---------------------------------------------------------------------------------------------

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=10) as conn:
            return list(conn.execute(sql, args))

    def approvals(self, label: str) -> list[dict[str, Any]]:
        """Approvals whose arguments carry `label`, newest first (a request handled twice asks twice)."""
        found = self.rows("SELECT id, status, message_id, args_hash, run_id FROM approval WHERE args_json LIKE ? "
                          "ORDER BY id DESC", f'%"{label}"%')
        keys = ("id", "status", "message_id", "args_hash", "run_id")
        return [dict(zip(keys, row, strict=True)) for row in found]

    def approval(self, label: str) -> dict[str, Any] | None:
        found = self.approvals(label)
        return found[0] if found else None

    def unsettled(self) -> str | None:
        """What is still in flight, or None when everything is at rest."""
        if self.rows("SELECT 1 FROM run WHERE status = 'running' LIMIT 1"):
            return "a run is running"
        if self.rows("SELECT 1 FROM outbox WHERE status = 'pending' LIMIT 1"):
            return "an outbox row is pending"
        if self.rows("SELECT 1 FROM approval WHERE status IN ('approved', 'executing') LIMIT 1"):
            return "an approval is approved or executing"
        if self.telegram.pending_updates:
            return "an update is not confirmed"
        return None

    def settle(self) -> bool:
        """Wait (bounded) until nothing is in flight for QUIET seconds; False when the bound was reached."""
        deadline = time.monotonic() + self.settle_seconds
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.unsettled() is None:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= QUIET:
                    return True
            else:
                quiet_since = None
            time.sleep(0.1)
        return False

    # the owner ------------------------------------------------------------------------------------------------

    def shown(self, label: str, timeout: float) -> dict[str, Any] | None:
        """The approval for `label` once its message (with the buttons) went out; None if not within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.approval(label)
            if row is not None and row["message_id"] is not None:
                return row
            time.sleep(0.02)
        return None

    def press(self, ask: Ask, row: dict[str, Any]) -> None:
        self.telegram.press_button(f"ap:{row['id']}:a:{row['args_hash'][:12]}", user_id=OWNER,
                                   message_id=row["message_id"])
        ask.pressed.add(row["id"])

    def buttons_visible(self, message_id: int | None) -> bool:
        message = self.telegram.message(OWNER, message_id) if message_id is not None else None
        return bool(message and message.get("reply_markup"))

    def after(self, since: float, method: str, failed: bool, timeout: float) -> bool:
        """Wait until the fake saw a call of `method` (a failed one if `failed`) at or after `since`."""
        def seen() -> bool:
            return any(c.at >= since and c.ok != failed for c in self.telegram.calls_to(method))
        return _wait(seen, timeout, method, strict=False)

    def pause(self, low: float, high: float) -> str:
        seconds = self.rng.uniform(low, high)
        time.sleep(seconds)
        return f"{seconds:.2f}s"


def _wait(condition: Callable[[], object], timeout: float, what: str, *, strict: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if strict:
                raise TimeoutError(f"timed out waiting for {what}")
            return False
        time.sleep(0.01)
    return True


# scenarios: each sends one request and kills the process somewhere in it ------------------------------------------

def turn(h: Harness, ask: Ask) -> None:
    if h.rng.random() < 0.6:
        h.model.enqueue_hang(h.rng.uniform(0.5, 3.0))
    h.telegram.add_message(ask.text, user_id=OWNER)
    # A third of the kills land in the first 150 ms: the update fetched, the run barely (or not yet) recorded.
    ask.kill_at = "after the message +" + (h.pause(0.0, 0.15) if h.rng.random() < 0.35 else h.pause(0.0, 2.5))
    h.kill()


def approval_ask(h: Harness, ask: Ask) -> None:
    _ask_for(h, ask, "write_mark")
    if h.rng.random() < 0.5:
        ask.kill_at = "while asking +" + (h.pause(0.0, 0.12) if h.rng.random() < 0.4 else h.pause(0.0, 1.2))
    else:
        shown = h.shown(ask.label or "", 10.0) is not None
        ask.kill_at = f"buttons {'shown' if shown else 'not shown in 10 s'} +" + h.pause(0.0, 0.3)
    h.kill()


def approval_press(h: Harness, ask: Ask) -> None:
    row = _ask_for(h, ask, "write_mark", wait=True)
    if row is None:
        ask.kill_at = "no approval shown"
    else:
        h.press(ask, row)
        ask.kill_at = "after the press +" + h.pause(0.0, 0.4)
    h.kill()


def approval_ack429(h: Harness, ask: Ask) -> None:
    row = _ask_for(h, ask, "write_mark", wait=True)
    if row is None:
        ask.kill_at = "no approval shown"
    else:
        h.telegram.fail_next("answerCallbackQuery", status=429, retry_after=5)
        pressed_at = time.time()
        h.press(ask, row)
        seen = h.after(pressed_at, "answerCallbackQuery", True, 5.0)
        ask.kill_at = f"429 on the answer {'seen' if seen else 'not seen'} +" + h.pause(0.0, 2.5)
    h.kill()


def approval_action(h: Harness, ask: Ask) -> None:
    row = _ask_for(h, ask, "slow_mark", wait=True)
    if row is None:
        ask.kill_at = "no approval shown"
    else:
        h.press(ask, row)
        ask.kill_at = "while the action runs +" + h.pause(0.1, 1.6)
    h.kill()


def outbox(h: Harness, ask: Ask) -> None:
    status = h.rng.choice((429, 429, 500, 502, 503))
    h.telegram.fail_next("sendMessage", status=status, retry_after=3 if status == 429 else None,
                         times=h.rng.randint(1, 3))
    sent_at = time.time()
    h.telegram.add_message(ask.text, user_id=OWNER)
    seen = h.after(sent_at, "sendMessage", True, 8.0)
    ask.kill_at = f"sendMessage {status} {'seen' if seen else 'not seen'} +" + h.pause(0.0, 3.0)
    h.kill()


def _ask_for(h: Harness, ask: Ask, tool: str, *, wait: bool = False) -> dict[str, Any] | None:
    ask.label = f"m{ask.token}"
    h.model.enqueue_tool_call(tool, {"label": ask.label})
    h.model.enqueue_text(f"Done: marked {ask.label}.")
    h.telegram.add_message(ask.text, user_id=OWNER)
    return h.shown(ask.label, 10.0) if wait else None


RUNNERS: dict[str, Callable[[Harness, Ask], None]] = {
    "turn": turn, "approval-ask": approval_ask, "approval-press": approval_press,
    "approval-ack429": approval_ack429, "approval-action": approval_action, "outbox": outbox,
}


def cycle(h: Harness, number: int, scenario: str) -> Ask:
    token = f"c{number:03d}"
    h.model.clear_script()
    h.model.default_text = f"Answer {token}."
    # Words of both marking tools, so the run offers them (only offered tools run; the pick is by keywords).
    text = f"{token} probe: write a mark, or a slow mark" if scenario.startswith("approval") else \
        f"{token} how are things?"
    ask = Ask(token, scenario, text)
    RUNNERS[scenario](h, ask)
    h.start()
    ask.settled = h.settle()
    if scenario == "approval-ask" and ask.label is not None:
        shown = [row for row in h.approvals(ask.label)
                 if row["status"] == "pending" and h.buttons_visible(row["message_id"])]
        for row in shown:  # the owner presses Approve on what the restarted Aria shows (every copy of it)
            h.press(ask, row)
        if shown:
            ask.settled = h.settle() and ask.settled
    return ask


# the checks ---------------------------------------------------------------------------------------------------------

@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    doubles: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)
    repeated: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    reserved: int = 0
    integrity: str = ""


def check(h: Harness, asks: list[Ask]) -> Findings:
    """Read the database (Aria stopped) and the fake's record; every finding names the cycle it came from."""
    found = Findings()
    marks_path = h.folder / "marks.txt"
    marks = Counter(marks_path.read_text().splitlines() if marks_path.exists() else [])
    texts = h.telegram.sent_texts(OWNER)
    for ask in asks:
        where = f"{ask.token} ({ask.scenario}, killed {ask.kill_at})"
        rows = h.approvals(ask.label) if ask.label else []
        row = rows[0] if rows else None
        ran = marks[ask.label] if ask.label else 0
        for each in rows:
            found.statuses[each["status"]] += 1
            pending_shown = each["status"] == "pending" and h.buttons_visible(each["message_id"])
            if each["id"] in ask.pressed and each["status"] not in ("executed", "unknown") and not pending_shown:
                found.lost.append(f"{where}: approval {each['id']} is {each['status']}, marks {ran}")
            if each["id"] in ask.pressed and pending_shown:
                found.still_pending.append(f"{where}: approval {each['id']}")
        if ran and not any(each["status"] in RAN for each in rows):
            found.not_run.append(f"{where}: approvals {[(e['id'], e['status']) for e in rows]}, marks {ran}")
        if ran > max(1, sum(each["status"] in RAN for each in rows)):
            found.doubles.append(f"{where}: {ran} marks, approvals {[(e['id'], e['status']) for e in rows]}")
        elif ran > 1:
            found.twice.append(f"{where}: {ran} marks from approvals {[(e['id'], e['status']) for e in rows]}")
        runs = h.rows("SELECT id, status FROM run WHERE request LIKE ? ORDER BY id", f"{ask.token} %")
        if len(runs) > 1:
            found.duplicated.append(f"{ask.token} ({ask.scenario}, killed {ask.kill_at}): runs {runs}")
        answers = sum(f"Answer {ask.token}" in t or f"Done: marked m{ask.token}" in t for t in texts)
        if answers > 1:
            found.repeated.append(f"{ask.token} ×{answers}")
        if not _answered(h, ask, texts, row):
            runs = h.rows("SELECT id, status, stop_reason FROM run WHERE request LIKE ?", f"{ask.token} %")
            found.unanswered.append(f"{where}: runs {runs or 'none'}")
    for status, reason, count in h.rows("SELECT status, coalesce(stop_reason, '-'), count(*) FROM run "
                                        "GROUP BY 1, 2"):
        found.runs[f"{status}/{reason}"] = count
    found.reserved = h.rows("SELECT count(*) FROM spend WHERE status = 'reserved'")[0][0]
    found.integrity = "; ".join(r[0] for r in h.rows("PRAGMA integrity_check"))
    return found


def _answered(h: Harness, ask: Ask, texts: list[str], approval: dict[str, Any] | None) -> bool:
    """An answer, a "Done", a restart notice naming the request, or an approval still offered with buttons."""
    for text in texts:
        if f"Answer {ask.token}" in text or f"Done: marked m{ask.token}" in text:
            return True
        if "I was restarted" in text and ask.token in text:
            return True
    if approval is not None and approval["status"] == "pending" and h.buttons_visible(approval["message_id"]):
        return True
    finals = h.rows("SELECT final_text FROM run WHERE request LIKE ? AND status NOT IN ('running', "
                    "'awaiting_approval') AND final_text IS NOT NULL", f"{ask.token} %")
    return any(final[:40].strip() and any(final[:40].strip() in text for text in texts) for (final,) in finals)


def report(h: Harness, asks: list[Ask], found: Findings, seconds: float) -> str:
    def figure(items: list[str]) -> str:
        return f"{len(items)}" + (f" ({'; '.join(items)})" if items else "")

    by_scenario = Counter(ask.scenario for ask in asks)
    unsettled = [ask.token for ask in asks if not ask.settled]
    starts = sorted(h.start_seconds)
    rows = [
        ("kills (SIGKILL) / starts of `aria run`", f"{h.kills} / {h.starts}"),
        ("cycles per scenario", ", ".join(f"{name} {by_scenario[name]}" for name in SCENARIOS)),
        ("lost approvals (pressed Approve; not executed, unknown, nor pending with buttons)", figure(found.lost)),
        ("double executions (marks per approval > 1)", figure(found.doubles)),
        ("unanswered owner requests (no answer, nor a restart notice)", figure(found.unanswered)),
        ("\"not run\" records of actions that ran", figure(found.not_run)),
        ("owner requests handled twice (a second run for one message)", figure(found.duplicated)),
        ("actions run twice for one request (once per duplicate approval, each approved)", figure(found.twice)),
        ("leaked reservations (spend rows still `reserved`)", f"{found.reserved}"),
        ("`PRAGMA integrity_check`", found.integrity),
        ("pressed approvals still pending with buttons (press lost in the crash; owner can press again)",
         figure(found.still_pending)),
        ("runs at the end, status/stop reason", ", ".join(f"{k} {v}" for k, v in sorted(found.runs.items()))),
        ("answers sent more than once (allowed: an ambiguous send is retried)", figure(found.repeated)),
        ("approval statuses at the end", ", ".join(f"{k} {v}" for k, v in sorted(found.statuses.items())) or "-"),
        (f"cycles not settled within {h.settle_seconds:.0f} s", figure(unsettled)),
        ("restart until polling, median / max", f"{starts[len(starts) // 2]:.1f} s / {starts[-1]:.1f} s"
         if starts else "-"),
        ("wall time", f"{seconds:.0f} s"),
    ]
    return table(rows)


def measure(kills: int, seed: int, settle_seconds: float, keep: Path | None = None) -> str:
    rng = random.Random(seed)
    started = time.monotonic()
    with FakeOpenAI() as model, FakeTelegram() as telegram, tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            raise SystemExit(f"{folder} is not empty")
        (folder / "skills").mkdir()
        (folder / "skills" / "probes.py").write_text(PROBE_SKILL)
        (folder / "skills" / "slow_probes.py").write_text(SLOW_SKILL)
        with (folder / "run.log").open("ab") as log:
            h = Harness(folder, model, telegram, rng, settle_seconds, log=log)
            asks: list[Ask] = []
            try:
                h.start()
                for number in range(1, kills + 1):
                    scenario = SCENARIOS[(number - 1) % len(SCENARIOS)] if number <= len(SCENARIOS) \
                        else rng.choice(SCENARIOS)
                    ask = cycle(h, number, scenario)
                    asks.append(ask)
                    print(f"  {ask.token} {scenario:16} killed {ask.kill_at}"
                          f"{'' if ask.settled else '  (not settled)'}", flush=True)
                h.settle()
            finally:
                h.stop()
            found = check(h, asks)
    return report(h, asks, found, time.monotonic() - started) + (
        f"\n\nseed {seed}; each cycle: one owner request, one SIGKILL at a random point, a restart on the same "
        f"database, then up to {settle_seconds:.0f} s for nothing to be running, pending or half-decided.")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs, one per cycle (default 30)")
    parser.add_argument("--seed", type=int, default=11, help="random seed for scenarios and kill points")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                        help=f"seconds to wait after each restart (default {SETTLE_SECONDS:.0f})")
    parser.add_argument("--keep", type=Path, help="an empty folder to keep the database, marks and log in")
    args = parser.parse_args(argv)
    result = measure(args.kills, args.seed, args.settle, args.keep)
    print(result)
    return result


if __name__ == "__main__":
    main()
