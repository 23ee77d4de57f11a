"""What the owner sends beyond text, made into a request: a photo's caption, a document, a voice note.

Whose words are whose decides everything here:
- a photo's caption is read as untrusted content, fenced and tainting the run (a caption often carries text
  copied from what the photo shows, and nothing marks which); a forwarded one names its sender;
- a document's caption is the owner's question about it (their words, unless forwarded), outside the fence;
- a document's content is never the owner's words: it is fenced as data under its file name, and the run is tainted
  by it (as a page taints one), so what it leads to asks the owner and names the file; such a run's trigger is
  `document` (kept out of the chat's history, whose user turns count as the owner's words);
- a voice note's transcript is the owner's words (it is their voice), unless the note was forwarded.
Files come through the Bot API (getFile, then the file download), never past Telegram's 20 MiB or the size limit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from telegram import Message
from telegram.error import TelegramError

from aria.agent.provenance import caption_request_text, forwarded_request
from aria.agent.provenance import document_request as fenced_document
from aria.documents import (
    Document,
    DocumentRefused,
    check_document,
    document_source,
    oversize,
    read_document,
    size_text,
)
from aria.errors import AriaError
from aria.llm.transcription import Transcriber, TranscriptionRefused
from aria.sanitize import clean_text

BOT_API_DOWNLOAD_BYTES = 20 * 1024 * 1024  # the largest file the Bot API lets a bot download
VOICE_OFF = ("Voice notes are off, so I can't listen to that. To turn them on, set ARIA_TRANSCRIBE_MODEL to a "
             "speech-to-text model your endpoint serves (whisper-1 on OpenAI), and ARIA_TRANSCRIBE_BASE_URL if "
             "another server transcribes. Meanwhile, please type it.")
PHOTO_ONLY = ("I can't look at images. Send the photo again with a caption saying what you want, or type it.")
PHOTO_SOURCE = "a photo caption (Telegram)"
PHOTO_NOTE = "[The owner attached a photo, which is not shown to you: answer from this text alone.]"
UNREADABLE = ("I can read text messages, photo captions, text files (.txt, .log, .md, .json, .csv, .yaml) and "
              "voice notes; not this kind of message.")


Trigger = Literal["message", "forward", "document", "photo"]  # the owner's words, a forward, a document, a caption


class AttachmentRefused(AriaError):
    """An attachment was not read: the message says why, for the owner."""


@dataclass(frozen=True)
class Incoming:
    """A message made into a request: its text for the model, its trigger, and the untrusted sources it carries."""

    text: str
    trigger: Trigger = "message"
    sources: tuple[str, ...] = ()


def forwarded(origin: str | None, words: str) -> Incoming:
    """`words` as the owner's own (origin None), or as a forward from `origin`: fenced, tainting the run."""
    if origin is None:
        return Incoming(words)
    return Incoming(forwarded_request(origin, words), "forward", (forward_source(origin),))


def forward_source(origin: str) -> str:
    """How a forward is named as a source."""
    return f"a message forwarded from {origin} (Telegram)"


def attachment_kind(message: Message) -> str:
    """What a message carries, in a few words: "a voice note", "a document", "a photo"."""
    return "a voice note" if message.voice else "a document" if message.document else "a photo"


def caption_request(message: Message, origin: str | None) -> Incoming:
    """A photo with a caption: the caption, with a note that the image itself is not seen. AttachmentRefused for a
    photo without one (there is nothing to act on)."""
    caption = clean_text(message.caption or "").strip()
    if not caption:
        raise AttachmentRefused(PHOTO_ONLY)
    if origin is not None:
        said = forwarded(origin, caption)
        return Incoming(f"{said.text}\n\n{PHOTO_NOTE}", said.trigger, said.sources)
    return Incoming(caption_request_text(caption), "photo", (PHOTO_SOURCE,))


async def read_telegram_document(message: Message, max_bytes: int) -> Document:
    """A document's file name and text, downloaded through the Bot API: the type and size are judged before the
    download and again on the bytes. DocumentRefused (or AttachmentRefused when the download fails)."""
    document = message.document
    if document is None:
        raise AttachmentRefused(UNREADABLE)
    shown = check_document(document.file_name, document.file_size, max_bytes)
    data = await download(message, document.file_id, max_bytes, too_big=lambda size: oversize(shown, size, max_bytes))
    return read_document(document.file_name, data, max_bytes)


async def document_request(message: Message, origin: str | None, max_bytes: int) -> Incoming:
    """A document, with the caption that came with it (the owner's words, unless forwarded), as a request."""
    document = await read_telegram_document(message, max_bytes)
    return document_incoming(document, message.caption, origin, max_bytes)


def document_incoming(document: Document, caption: str | None, origin: str | None, max_bytes: int) -> Incoming:
    """A document that was read, with its caption, as a request: fenced under its file name, trigger `document`
    (or `forward`), tainting the run with the file (and the sender)."""
    caption = clean_text(caption or "").strip()
    words = forwarded(origin, caption).text if caption else ""
    # Fenced whole: the size limit already bounds it.
    text = fenced_document(words, document.name, document.text, max_tokens=max_bytes // 4 + 1)
    if origin is None:
        return Incoming(text, "document", (document_source(document.name),))
    return Incoming(text, "forward", (forward_source(origin), document_source(document.name)))


async def voice_request(message: Message, origin: str | None, transcriber: Transcriber | None,
                        event_id: int | None) -> Incoming:
    """A voice note, transcribed (priced and capped), as a request: the owner's words unless forwarded.
    AttachmentRefused or TranscriptionRefused (voice notes off, a cap, no price, a failed call)."""
    voice = message.voice
    if voice is None:
        raise AttachmentRefused(UNREADABLE)
    if transcriber is None:
        raise AttachmentRefused(VOICE_OFF)
    transcriber.price()  # no price, no download
    audio = await download(message, voice.file_id, BOT_API_DOWNLOAD_BYTES, size=voice.file_size)
    length = voice.duration  # seconds, or a timedelta when python-telegram-bot is set to give those
    seconds = length.total_seconds() if isinstance(length, dt.timedelta) else float(length or 0)
    heard = await transcriber.transcribe(audio, "voice.ogg", seconds, event_id=event_id)
    if not heard.text:
        raise TranscriptionRefused("I couldn't make out any words in that voice note. Try again, or type it.")
    caption = clean_text(message.caption or "").strip()
    return forwarded(origin, f"{heard.text}\n\n{caption}" if caption else heard.text)


async def download(message: Message, file_id: str, limit: int, *, size: int | None = None,
                   too_big: Callable[[int], AriaError] | None = None) -> bytes:
    """A file's bytes through the Bot API, refused past `limit` bytes (by the size reported before the download,
    by getFile, and by what arrives); `too_big(size)` makes the refusal."""
    refuse = too_big or (lambda n: AttachmentRefused(f"That file is {size_text(n)}, over the {size_text(limit)} I "
                                                     "can download."))
    if size is not None and size > limit:
        raise refuse(size)
    try:
        file = await message.get_bot().get_file(file_id)
        if file.file_size is not None and file.file_size > limit:
            raise refuse(file.file_size)
        data = bytes(await file.download_as_bytearray())
    except TelegramError as exc:
        raise AttachmentRefused(f"I couldn't download that file from Telegram ({exc.message}). Please send it "
                                "again.") from None
    if len(data) > limit:
        raise refuse(len(data))
    return data


NOT_READ = (AttachmentRefused, DocumentRefused, TranscriptionRefused)  # each one's message is for the owner
