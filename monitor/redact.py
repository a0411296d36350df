"""Secret redaction: values that came from variables never leave the process.

A secret travels in more shapes than its own: the client sends `user:pass@` as
base64 Basic auth, percent-encodes it in a URL, a JSON body or Python's repr() escapes
it, and a detail cut to length keeps only its start. `Redactor` replaces all of them:

- every occurrence of a secret, and of each encoded form (percent-encoding, JSON and
  backslash escapes, HTML escapes, base64 at any of the three byte alignments, so
  the secret inside `base64("user:" + secret)` is found too);
- any run of 6 or more characters that starts like one of those forms, for as long
  as it agrees with it: `...Bearer sk-test-SUPERSEC` (a key cut by truncation) loses
  the whole run, so no 6-character prefix of a secret survives, whether the text was
  cut before or after redaction.

Secrets shorter than 4 characters are not redacted ("1", "on" would eat ordinary
words); those of 4 or 5 only where they appear whole.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit

MARK = "<redacted>"
MIN_SECRET = 4  # shorter values are never treated as secrets
HEAD = 6  # a run this long that starts a secret (or an encoded form) is redacted
_REGEX_UP_TO = 100  # distinct heads: a regex alternation is fastest up to about here


def encoded_forms(secret: str) -> set[str]:
    """The secret and the forms it takes on the wire and in our own output."""
    forms = {secret, secret.strip()}
    sub_delims = "/:@!$&'()*+,;="  # what a URL may leave unescaped in user info, path, query
    for text in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret, safe=sub_delims)):
        forms.add(text)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(repr(secret)[1:-1])
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    forms.add(html.escape(secret))
    forms.add(html.escape(secret, quote=False))
    forms.update(base64_cores(secret.encode()))
    return {f for f in forms if len(f) >= MIN_SECRET}


def base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend on `data` alone, whatever bytes come before or
    after it, at each of the three alignments, standard and URL-safe alphabets."""
    out = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data + b"\0\0")
        first = -(-8 * k // 6)  # the first character made only of data bits
        end = 8 * (k + len(data)) // 6  # characters before this one hold only data bits
        core = encoded[first:end].decode("ascii")
        out.add(core)
        out.add(core.replace("+", "-").replace("/", "_"))
    return {c for c in out if len(c) >= HEAD}


class _Table:
    """Lookup structures for one set of secrets (and of strings redacted only whole)."""

    def __init__(self, secrets: Iterable[str], whole: Iterable[str] = ()) -> None:
        # first HEAD characters -> (form, only whole?) for every form starting so
        self.long: dict[str, list[tuple[str, bool]]] = {}
        self.short: set[str] = set()  # forms of MIN_SECRET..HEAD-1 characters, matched whole
        for forms, only_whole in (((f for s in secrets for f in encoded_forms(s)), False),
                                  ((w for w in whole if len(w) >= MIN_SECRET), True)):
            for form in forms:
                if len(form) >= HEAD:
                    self.long.setdefault(form[:HEAD], []).append((form, only_whole))
                else:
                    self.short.add(form)
        heads = sorted({*self.long, *self.short}, key=len, reverse=True)
        self.regex = (re.compile("(?=(" + "|".join(map(re.escape, heads)) + "))")
                      if heads and len(heads) <= _REGEX_UP_TO else None)

    def __bool__(self) -> bool:
        return bool(self.long or self.short)

    def spans(self, text: str) -> list[tuple[int, int]]:
        if self.regex is not None:
            starts: Iterable[int] = (m.start() for m in self.regex.finditer(text))
        else:  # many secrets: a dictionary lookup at every position costs less
            starts = range(len(text) - MIN_SECRET + 1)
        found = []
        for i in starts:
            end = self._extent(text, i, text[i:i + HEAD]) if text[i:i + HEAD] in self.long else i
            if end == i:
                end = i + next((n for n in (5, 4) if text[i:i + n] in self.short), 0)
            if end > i:
                found.append((i, end))
        return found

    def _extent(self, text: str, start: int, head: str) -> int:
        """Where the redacted run that starts at `start` ends."""
        end = start
        for form, only_whole in self.long[head]:
            if only_whole:
                if text.startswith(form, start):
                    end = max(end, start + len(form))
                continue
            n = HEAD
            limit = min(len(form), len(text) - start)
            while n < limit and text[start + n] == form[n]:
                n += 1
            end = max(end, start + n)
        return end


class Redactor:
    """Replaces every secret value (expanded ${VAR}s), its encoded forms and any start
    of them of 6 or more characters by `<redacted>`."""

    def __init__(self, secrets: Iterable[str] = frozenset(), whole: Iterable[str] = ()) -> None:
        """`secrets` get every rule; `whole` strings (a webhook URL: its start is an
        ordinary `https://host`) are redacted only where they appear entire."""
        self.secrets = frozenset(s for s in secrets if len(s) >= MIN_SECRET)  # the probe client reads it
        # "Bearer sk-..." whose credential is a secret of its own: the scheme word is
        # no secret, so that form is redacted whole, not from its first 6 characters.
        schemed = {s for s in self.secrets if " " in s and s.split(" ", 1)[1] in self.secrets}
        table = _Table(self.secrets - schemed, {*whole, *schemed})
        self._tables: tuple[_Table, ...] = (table,) if table else ()

    def with_secrets(self, more: Iterable[str]) -> Redactor:
        """This redactor plus `more` secrets (e.g. tokens a flow extracted); cheap: the
        tables built for this one are shared."""
        extra = frozenset(s for s in more if len(s) >= MIN_SECRET) - self.secrets
        if not extra:
            return self
        child = Redactor.__new__(Redactor)
        child.secrets = self.secrets | extra
        child._tables = (*self._tables, _Table(extra))
        return child

    def __bool__(self) -> bool:
        return bool(self._tables)

    def __call__(self, text: str) -> str:
        if not self._tables or not text:
            return text
        spans = sorted(span for table in self._tables for span in table.spans(text))
        if not spans:
            return text
        out, pos = [], 0
        start, end = spans[0]
        for s, e in spans[1:]:
            if s <= end:  # overlapping or touching: one mark
                end = max(end, e)
                continue
            out += [text[pos:start], MARK]
            pos, (start, end) = end, (s, e)
        out += [text[pos:start], MARK, text[end:]]
        return "".join(out)


_TOKENISH = re.compile(r"(?=.*\d)|.{16,}")


def url_secrets(url: str) -> tuple[set[str], set[str]]:
    """What to keep out of logs for a notification URL (a webhook's, an Apprise
    target's), as (secrets, whole): secrets are its user info, query values, and path
    segments that look like tokens (a digit, or 16+ characters: Slack's T.../B.../
    secret, Discord's id/token), and for schemes other than http(s) the host too
    (tgram://BOTTOKEN/...); whole are the URL, all after `scheme://`, and its path
    and query, which start like ordinary text and so are redacted only entire."""
    url = url.strip()
    whole = {url}
    try:
        parts = urlsplit(url)
    except ValueError:
        return set(), whole
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    whole |= {url.split("://", 1)[-1], tail, unquote(tail)}
    secrets = {parts.query} if parts.query else set()
    if parts.scheme not in ("http", "https"):
        secrets |= {parts.netloc, unquote(parts.netloc)}
        secrets |= {p for p in re.split(r"[:@]", unquote(parts.netloc)) if _TOKENISH.match(p)}
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        secrets |= {userinfo, unquote(userinfo), *(unquote(p) for p in userinfo.split(":", 1))}
    secrets |= {unquote(p.partition("=")[2]) for p in parts.query.split("&")}
    secrets |= {p for p in map(unquote, parts.path.split("/")) if _TOKENISH.match(p)}
    return {s for s in secrets if len(s) >= HEAD}, {w for w in whole if len(w) >= HEAD}
