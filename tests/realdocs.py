"""Real vendor status-page documents (../shared/fixtures/real/statuspage/), read in
place: never copied into this repository. SOURCES.md there gives, for each file, the
repository, path and commit (or the vendor's docs URL) it was taken from; the test
that uses a file repeats its source in a comment."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: /work/wtNN, /work/main, a fresh clone
STATUSPAGE = ROOT.parent / "shared" / "fixtures" / "real" / "statuspage"


def real(name: str) -> bytes:
    path = STATUSPAGE / name
    assert path.is_file(), f"missing real document {path} (shared fixtures next to the checkout)"
    return path.read_bytes()
