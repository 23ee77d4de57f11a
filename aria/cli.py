"""The `aria` command: run, chat, doctor, digest, eval, mcp, knowledge, version."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from aria import __version__
from aria.config import Settings, load_settings, require_owner
from aria.errors import ConfigError
from aria.knowledge.cli import app as knowledge_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Aria, a personal ops agent on Telegram.")
app.add_typer(knowledge_app, name="knowledge")

NO_TOKEN = """Telegram is not set up yet. To run the bot:
  1. In Telegram, talk to @BotFather, send /newbot, and copy the token it gives you.
  2. Talk to @userinfobot to learn your numeric user ID.
  3. Put both in .env (see .env.example):
       TELEGRAM_BOT_TOKEN=123456:ABC...
       ARIA_OWNER_IDS=<your user id>
Until then, `aria chat` talks to the same agent in this terminal."""


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"config error: {problem}", err=True)
        raise typer.Exit(2) from None


def _build(settings: Settings):  # type: ignore[no-untyped-def]
    from aria.app import Aria
    from aria.logs import configure_logging

    configure_logging(settings.log_level, settings.secrets())
    try:
        return Aria.build(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"config error: {problem}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    chat_if_unconfigured: bool = typer.Option(
        False, "--chat-if-unconfigured", help="Without a Telegram token, explain the set-up and start `aria chat`."
    ),
    webhook: bool | None = typer.Option(
        None, "--webhook/--polling",
        help="Receive updates by webhook (default when ARIA_WEBHOOK_URL is set) or by long polling.",
    ),
) -> None:
    """Run the Telegram bot until SIGINT/SIGTERM: webhook mode where a public URL exists, else long polling."""
    settings = _settings()
    if settings.telegram_bot_token is None:
        typer.echo(NO_TOKEN, err=True)
        if chat_if_unconfigured:
            _chat(settings)
            return
        raise typer.Exit(2)
    try:
        require_owner(settings)
    except ConfigError as exc:
        typer.echo(f"config error: {exc.problems[0]}", err=True)
        raise typer.Exit(2) from None
    from aria.telegram.serve import serve, webhook_config

    use_webhook = bool(settings.webhook_url) if webhook is None else webhook
    try:
        if use_webhook:
            webhook_config(settings)  # a missing URL or secret is a clear error before anything starts
        aria = _build(settings)
        # SIGINT/SIGTERM stop it gracefully: running handlers finish, then everything closes in reverse order.
        asyncio.run(serve(aria, webhook=use_webhook))
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"config error: {problem}", err=True)
        raise typer.Exit(2) from None


@app.command()
def chat() -> None:
    """Talk to Aria in this terminal: the same agent loop, no Telegram needed."""
    _chat(_settings())


def _chat(settings: Settings) -> None:
    from aria.terminal import chat as chat_loop

    aria = _build(settings)

    async def main() -> None:
        try:
            await chat_loop(aria)
        finally:
            await aria.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        typer.echo("")


@app.command()
def doctor() -> None:
    """Check settings, database, skills, the Bot API and the model endpoint."""
    from aria.doctor import render, run_checks

    aria = _build(_settings())

    async def main() -> list:  # type: ignore[type-arg]
        try:
            return await run_checks(aria)
        finally:
            await aria.aclose()

    checks = asyncio.run(main())
    typer.echo(render(checks))
    if any(c.verdict == "fail" for c in checks):
        raise typer.Exit(1)


@app.command()
def digest(
    out: Annotated[Path, typer.Option("--out", help="Where to write the chart (PNG).")],
    day: Annotated[str | None, typer.Option("--day", help="The local day, YYYY-MM-DD (default: today).")] = None,
) -> None:
    """Render the daily digest for a day to a PNG and print its text (no Telegram needed)."""
    try:
        chosen = dt.date.fromisoformat(day) if day else None
    except ValueError:
        typer.echo(f"--day: {day!r} is not a date like 2026-03-01", err=True)
        raise typer.Exit(2) from None
    aria = _build(_settings())
    try:
        rendered = aria.digests.render_to_file(chosen or aria.digests.today(), out)
        typer.echo(rendered.text)
        typer.echo(f"Chart written to {out}." if rendered.png is not None
                   else f"No chart written: nothing to chart on {rendered.day:%Y-%m-%d}.", err=True)
    finally:
        asyncio.run(aria.aclose())


mcp_app = typer.Typer(add_completion=False, no_args_is_help=True, help="MCP servers: their state, and manual calls.")
app.add_typer(mcp_app, name="mcp")


@mcp_app.command("list")
def mcp_list() -> None:
    """Connect to every server in ARIA_MCP_CONFIG and show its state, its tools and their risk."""
    from aria.mcp.cli import listing

    aria = _build(_settings())

    async def main() -> str:
        try:
            return await listing(aria)
        finally:
            await aria.aclose()

    typer.echo(asyncio.run(main()))


@mcp_app.command("call")
def mcp_call(
    server: Annotated[str, typer.Argument(help="The server's name in ARIA_MCP_CONFIG.")],
    tool: Annotated[str, typer.Argument(help="The tool's name on that server.")],
    arguments: Annotated[str, typer.Argument(help="The arguments, a JSON object.")] = "{}",
    yes: Annotated[bool, typer.Option("--yes", help="Run a tool that needs approval without asking.")] = False,
) -> None:
    """Call one MCP tool through Aria's tool layer (schema check, gate, timeout, breaker), recorded as a run."""
    from aria.agent.toolrun import ToolRun
    from aria.mcp.cli import manual_call

    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        typer.echo(f"arguments: not valid JSON ({exc.msg})", err=True)
        raise typer.Exit(2) from None
    if not isinstance(parsed, dict):
        typer.echo("arguments: must be a JSON object", err=True)
        raise typer.Exit(2)
    aria = _build(_settings())
    if server not in aria.mcp.servers:
        typer.echo(f"no MCP server named {server!r}; configured: {', '.join(aria.mcp.servers) or 'none'}", err=True)
        asyncio.run(aria.aclose())
        raise typer.Exit(2)

    def confirm(why: str) -> bool:
        typer.echo(why)
        return yes or typer.confirm("Run it?", default=False)

    async def main() -> ToolRun:
        try:
            return await manual_call(aria, server, tool, json.dumps(parsed), confirm=confirm)
        finally:
            await aria.aclose()

    ran = asyncio.run(main())
    typer.echo(f"{ran.status}: {ran.summary}")
    if ran.content:
        typer.echo(ran.content)
    if ran.status != "ok":
        raise typer.Exit(1)


@app.command(name="eval")
def eval_(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Scenario files or folders (default: the shipped suite in evals/).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only a JSON array of results on stdout.")] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="Send the owner's messages to the configured model; check only the invariants.")] = False,
) -> None:
    """Run adversarial scenarios against the real agent loop, gate and ledger in a temporary data folder."""
    from aria.evals.cli import run_eval

    raise typer.Exit(run_eval(_settings(), paths or [], as_json=as_json, live=live))


@app.command()
def version() -> None:
    """Print Aria's version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="aria")


if __name__ == "__main__":
    main()
