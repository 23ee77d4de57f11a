"""The floor: the smallest useful python-telegram-bot + openai bot, the baseline Aria's turn is compared against.

It has what any Telegram LLM bot needs and nothing Aria adds: no persistence, no history, no budget, no tools, no
owner guard, no typing indicator. Text in, one chat completion, text out.

`python bench/floor_bot.py` runs it as a process, long-polling like `aria run` and configured by the same variables
(TELEGRAM_BOT_TOKEN, TELEGRAM_API_URL, OPENAI_BASE_URL), so the memory benchmark can measure both the same way.
"""

from __future__ import annotations

import openai
from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

MODEL = "gpt-4o-mini"


def build_floor_bot(token: str, bot_api_base: str, openai_base_url: str) -> Application:  # type: ignore[type-arg]
    """An Application that answers every text message with one model call."""
    client = openai.AsyncOpenAI(base_url=openai_base_url, api_key="floor", max_retries=0)

    async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Send the text to the model, send its answer back."""
        message = update.effective_message
        if message is None or not message.text:
            return
        response = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": message.text}], max_tokens=1024,
        )
        await context.bot.send_message(message.chat_id, response.choices[0].message.content or "(empty)")

    async def close_client(_: Application) -> None:  # type: ignore[type-arg]
        await client.close()

    application = Application.builder().token(token).base_url(bot_api_base).post_shutdown(close_client).build()
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, answer))
    return application


def main() -> None:
    """Long-poll the Bot API named by the environment, as `aria run` does: the floor measured as a process."""
    import os

    api_url = os.environ.get("TELEGRAM_API_URL", "https://api.telegram.org")
    application = build_floor_bot(os.environ["TELEGRAM_BOT_TOKEN"], f"{api_url}/bot", os.environ["OPENAI_BASE_URL"])
    # The same long poll as `aria run` (10 s held by the server, no pause between polls); SIGTERM stops it.
    application.run_polling(poll_interval=0.0, timeout=10, allowed_updates=["message"])


if __name__ == "__main__":
    main()
