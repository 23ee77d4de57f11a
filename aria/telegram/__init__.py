"""The Telegram channel: python-telegram-bot application, thin handlers, message formatting."""
