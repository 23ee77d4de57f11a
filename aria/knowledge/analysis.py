"""Words as the index sees them: Unicode-folded tokens, Porter stems (the same algorithm as FTS5's `porter`
tokenizer), stop words dropped, and query words widened with ops synonyms and abbreviations.

The synonym groups are general ops vocabulary (what one team writes and another asks), not tuned to any corpus:
a question that says "reboot" finds a runbook that says "restart".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

_TOKEN = re.compile(r"[^\W_]+")

_STOP = """
a about above after again against all am an and any are aren as at be because been before being below between both
but by can cannot could did didn do does doesn doing don down during each few for from further had has have having he
her here hers herself him himself his how i if in into is isn it its itself just let me more most my myself no nor
not of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself yourselves
also again any anything ask asked exactly ever get gets got go goes going gone know knows let like look looking mean
need needs please remind right say says said see still sure tell thing things think use used using want wanted way ll
ve re d s t m supposed one find found via per etc hey hi okay ok anyone someone something else
do make makes made take takes took come comes came keep keeps kept happen happens happened work works seem seems feel
feels felt much many lot lots often long usually normally actually really anyway everything nothing whatever
"""
STOP_WORDS = frozenset(_STOP.split())
# Words that ask for the newest state of things rather than naming a subject: they raise recency, not relevance.
RECENCY_WORDS = frozenset({"last", "latest", "recent", "recently", "newest", "current", "currently", "now", "today",
                           "lately", "anymore", "still"})
# Capitalized by convention, yet dates rather than names of things.
_CALENDAR = frozenset({
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
    "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"})

# Groups of interchangeable ops words. Each word is stemmed at load; a query word in a group also matches the others.
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("restart", "reboot", "bounce", "cycle", "reload"),
    ("start", "launch", "boot"),
    ("stop", "halt", "shutdown", "kill"),
    ("database", "db", "postgres", "postgresql", "mysql", "sql"),
    ("password", "passphrase", "credential", "credentials", "creds", "secret", "login"),
    ("certificate", "cert", "tls", "ssl", "https"),
    ("expire", "expiry", "expiration", "expires", "renew", "renewal"),
    ("ip", "address", "addr"),
    ("dns", "domain", "hostname", "nameserver", "resolver"),
    ("server", "host", "machine", "box", "node"),
    ("vm", "virtual"),
    ("kubernetes", "k8s", "kubectl", "cluster"),
    ("container", "docker", "podman"),
    ("disk", "storage", "volume", "drive", "ssd", "hdd"),
    ("full", "space", "capacity", "usage"),
    ("memory", "ram", "oom"),
    ("cpu", "processor", "load"),
    ("backup", "backups", "snapshot", "snapshots", "archive"),
    ("restore", "recover", "recovery", "rollback"),
    ("deploy", "deployment", "release", "rollout", "ship"),
    ("outage", "down", "incident", "unreachable", "unavailable", "offline"),
    ("alert", "alarm", "page", "notification", "warning"),
    ("oncall", "rotation", "pager", "escalation"),
    ("log", "logs", "logging", "journal", "journalctl"),
    ("config", "configuration", "settings", "conf"),
    ("update", "upgrade", "patch"),
    ("delete", "remove", "purge", "wipe", "drop"),
    ("install", "setup", "provision"),
    ("firewall", "iptables", "nftables", "ufw", "port", "ports"),
    ("vpn", "wireguard", "openvpn", "tunnel"),
    ("ssh", "shell", "remote"),
    ("email", "mail", "smtp"),
    ("schedule", "cron", "timer", "nightly", "daily"),
    ("cost", "price", "bill", "billing", "invoice", "spend"),
    ("router", "gateway", "modem"),
    ("wifi", "wireless", "wlan"),
    ("printer", "print"),
    ("nas", "fileserver", "share", "smb", "nfs"),
    ("monitor", "monitoring", "metrics", "dashboard", "grafana", "prometheus"),
    ("key", "token", "apikey"),
    ("user", "account", "username"),
    ("phone", "mobile", "cell"),
    ("contact", "vendor", "supplier", "support"),
    ("slow", "latency", "lag", "performance"),
    ("error", "fail", "failure", "failing", "broken", "crash"),
    ("fix", "repair", "resolve", "troubleshoot", "workaround"),
    ("version", "release"),
    ("owner", "responsible", "maintainer"),
    ("location", "located", "where", "rack", "room"),
    ("time", "when", "hour", "window"),
)


def fold(text: str) -> str:
    """Case-folded, accents removed (as the index's `remove_diacritics 2`)."""
    if text.isascii():  # the common case, and ten times faster
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The tokens of `text` as FTS5's unicode61 tokenizer splits them (letters and digits; the rest separates)."""
    return _TOKEN.findall(fold(text))


@cache
def _stemmer() -> Any:
    import snowballstemmer  # loads every language's stemmer: only when the first word is stemmed, not at start-up

    return snowballstemmer.stemmer("porter")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Porter stem of a folded word."""
    return str(_stemmer().stemWord(word))


def stems(text: str) -> list[str]:
    """Every token of `text`, stemmed, in order."""
    return [stem(w) for w in words(text)]


@cache
def synonym_tables() -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """stem -> the stems it matches, and stem -> the words to ask the index for."""
    stems_of: dict[str, set[str]] = {}
    words_of: dict[str, set[str]] = {}
    for group in SYNONYM_GROUPS:
        stemmed = {stem(w) for w in group}
        for member in stemmed:
            stems_of.setdefault(member, set()).update(stemmed)
            words_of.setdefault(member, set()).update(group)
    return ({k: frozenset(v) for k, v in stems_of.items()}, {k: frozenset(v) for k, v in words_of.items()})



@dataclass(frozen=True)
class Concept:
    """One content word of a query: the word as asked, and every stem that counts as a match for it."""

    word: str
    stem: str
    matches: frozenset[str]  # stems
    asks: frozenset[str]  # words for the index query (it stems them itself)
    named: bool = False  # written like a name (Jenkins, AWS, PowerEdge, v1.30): a subject, not a turn of phrase


def concepts(query: str) -> list[Concept]:
    """The content words of a question, in order, without repeats, each widened with its synonyms."""
    synonyms, synonym_words = synonym_tables()
    seen: set[str] = set()
    found: list[Concept] = []
    for word, raw in _cased_words(query):
        if word in STOP_WORDS or word in RECENCY_WORDS or (len(word) == 1 and not word.isdigit()):
            continue
        stemmed = stem(word)
        if stemmed in seen:
            continue
        seen.add(stemmed)
        # The first word of a sentence comes lowercased; months and weekdays are capitalized dates, not names.
        named = word not in _CALENDAR and any(c.isdigit() or c.isupper() for c in raw)
        found.append(Concept(word, stemmed, synonyms.get(stemmed, frozenset()) | {stemmed},
                             synonym_words.get(stemmed, frozenset()) | {word}, named))
    return found


def asks_for_recent(query: str) -> bool:
    """Whether a question asks for the newest state ("last", "latest", "current", "now")."""
    return any(w in RECENCY_WORDS for w in words(query))


def _cased_words(text: str) -> list[tuple[str, str]]:
    """(folded, as written) for each token; the first word of each sentence is not taken for a name."""
    out: list[tuple[str, str]] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        for i, raw in enumerate(_TOKEN.findall(unicodedata.normalize("NFKD", sentence))):
            raw = "".join(c for c in raw if not unicodedata.combining(c))
            out.append((raw.casefold(), raw if i else raw.lower()))
    return out
