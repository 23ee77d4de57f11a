"""System: the health of the host Aria runs on (disk, memory, load, uptime, busiest processes)."""

from __future__ import annotations

import datetime as dt
import platform
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from aria.skills import ToolContext, tool

KEYWORDS = (
    "disk", "disks", "memory", "ram", "swap", "cpu", "load", "uptime", "boot", "host", "server", "machine",
    "processes", "process", "health", "space", "full", "slow", "busy",
)
CPU_WINDOW = 0.5  # seconds between the two CPU samples; keeps the tool well under 1.5 s
GB = 1024**3
MB = 1024**2


class Disk(BaseModel):
    """Usage of the file system holding a path."""

    path: str
    total_gb: float
    used_gb: float
    free_gb: float
    percent: float


class Memory(BaseModel):
    """RAM and swap."""

    total_mb: int
    available_mb: int
    percent: float
    swap_total_mb: int
    swap_used_mb: int
    swap_percent: float


class Proc(BaseModel):
    """A process and its share of memory or CPU (100 = one full core)."""

    pid: int
    name: str
    percent: float


class HostHealth(BaseModel):
    """A snapshot of the host."""

    host: str
    disks: list[Disk]
    memory: Memory
    load: tuple[float, float, float]  # 1, 5 and 15 minute averages
    cpu_count: int
    cpu_percent: float
    uptime: str
    boot_time: str  # owner-local
    top_memory: list[Proc]
    top_cpu: list[Proc]


def _existing(path: Path) -> Path:
    # The data directory may not exist yet; its nearest existing parent is on the same file system.
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


# psutil is imported by the functions that use it, not when skills are discovered: importing it costs about 0.75 MB
# of resident memory, and of the skills only this tool needs it.


def _disk(path: Path) -> Disk:
    import psutil

    usage = psutil.disk_usage(str(path))
    return Disk(path=str(path), total_gb=round(usage.total / GB, 1), used_gb=round(usage.used / GB, 1),
                free_gb=round(usage.free / GB, 1), percent=usage.percent)


def _memory() -> Memory:
    import psutil

    ram, swap = psutil.virtual_memory(), psutil.swap_memory()
    return Memory(total_mb=ram.total // MB, available_mb=ram.available // MB, percent=ram.percent,
                  swap_total_mb=swap.total // MB, swap_used_mb=swap.used // MB, swap_percent=swap.percent)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


def _sample(window: float) -> tuple[float, list[tuple[int, str, float, float]]]:
    """System CPU percent and (pid, name, memory %, CPU %) per process, measured over `window` seconds."""
    import psutil

    # cpu_percent(None) compares with the previous call, so one priming pass and one short sleep measure every
    # process over the same window instead of blocking once per process.
    psutil.cpu_percent(None)
    procs: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "name", "memory_percent"]):
        try:
            proc.cpu_percent(None)
        except psutil.Error:  # gone or not ours to inspect: leave it out
            continue
        procs.append(proc)
    time.sleep(window)
    total = psutil.cpu_percent(None)
    rows: list[tuple[int, str, float, float]] = []
    for proc in procs:
        try:
            cpu = proc.cpu_percent(None)
        except psutil.Error:
            continue
        info = proc.info
        rows.append((info["pid"], info["name"] or "?", info["memory_percent"] or 0.0, cpu))
    return total, rows


def _top(rows: list[tuple[int, str, float, float]], index: Literal[2, 3], top: int) -> list[Proc]:  # 2 memory, 3 CPU
    best = sorted(rows, key=lambda r: r[index], reverse=True)[:top]
    return [Proc(pid=r[0], name=r[1], percent=round(r[index], 1)) for r in best]


@tool(timeout=10.0, keywords=("health", "disk", "memory", "cpu", "load", "uptime", "processes"))
def host_health(ctx: ToolContext, top: Annotated[int, Field(ge=1, le=20)] = 5) -> HostHealth:
    """Disk, memory, swap, load, uptime and the `top` processes by memory and by CPU on Aria's host."""
    import psutil

    paths = dict.fromkeys([Path("/").resolve(), _existing(ctx.settings.data_dir)])
    cpu_total, rows = _sample(CPU_WINDOW)
    boot = psutil.boot_time()
    return HostHealth(
        host=platform.node(),
        disks=[_disk(p) for p in paths],
        memory=_memory(),
        load=tuple(round(x, 2) for x in psutil.getloadavg()),
        cpu_count=psutil.cpu_count() or 1,
        cpu_percent=cpu_total,
        uptime=_duration(time.time() - boot),  # the real clock: boot time is a real instant, not ctx.clock's
        boot_time=dt.datetime.fromtimestamp(boot, ctx.settings.tz).strftime("%Y-%m-%d %H:%M"),
        top_memory=_top(rows, 2, top),
        top_cpu=_top(rows, 3, top),
    )
