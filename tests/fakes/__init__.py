"""In-process fakes of the external services Aria talks to, plus a network tripwire."""

from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import Request as OpenAIRequest
from tests.fakes.server import ServerThread
from tests.fakes.telegram import Call, FakeTelegram, make_update_json
from tests.fakes.tripwire import NetworkTripwire, TripwireViolation

__all__ = [
    "Call",
    "FakeOpenAI",
    "FakeTelegram",
    "NetworkTripwire",
    "OpenAIRequest",
    "ServerThread",
    "TripwireViolation",
    "make_update_json",
]
