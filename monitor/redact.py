"""Secret redaction: values that came from variables never leave the process."""

from __future__ import annotations

from collections.abc import Iterable


class Redactor:
    """Replaces every secret value (expanded ${VAR}s) in a text by `<redacted>`."""

    def __init__(self, secrets: frozenset[str] = frozenset()) -> None:
        # Longest first, so a secret containing another is replaced whole. Very short
        # values ("1", "on") would redact ordinary words and are not secrets anyway.
        self._secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def with_secrets(self, more: Iterable[str]) -> Redactor:
        """This redactor plus `more` secrets (e.g. tokens a flow extracted)."""
        extra = frozenset(more)
        if not extra:
            return self
        return Redactor(frozenset(self._secrets) | extra)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "<redacted>")
        return text
