"""Every ``KVCONFORM_*`` environment variable, parsed and validated in one place before the first test.

``parse(environ)`` turns the environment into a frozen :class:`Settings` or
raises :class:`SettingsError` whose message names the variable, its value
and what to write instead (``KVCONFORM_CALL_TIMEOUT_S='abc': expected a
positive number of seconds``).  The ``kvconform`` CLI and the pytest plugin
call it before any test runs, so a bad value is one usage error, never a
run full of failures blamed on the implementation.  Harness code reads its
knobs from :func:`current`, never from ``os.environ``.

:func:`current` re-parses only when one of the variables changed (tests
lower deadlines with ``monkeypatch.setenv``); in a run the environment does
not change, so each value is parsed once.

Distributed mode's variables (``KVCONFORM_DIST_*``) are validated here too,
with ``harness.distributed.config``'s own rules, so a bad one fails before
the first test; that module still builds its configuration from them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.profiles import PROFILE_EXAMPLES

IMPL = "KVCONFORM_IMPL"
PROFILE = "KVCONFORM_PROFILE"
HYPOTHESIS_DB = "KVCONFORM_HYPOTHESIS_DB"
SHARED_DB = "KVCONFORM_SHARED_DB"
CONFORMANCE_DIR = "KVCONFORM_CONFORMANCE_DIR"
CALL_TIMEOUT = "KVCONFORM_CALL_TIMEOUT_S"
CALL_TIMEOUT_AFTER_HANG = "KVCONFORM_CALL_TIMEOUT_AFTER_HANG_S"
DIST_BACKEND = "KVCONFORM_DIST_BACKEND"
DIST_DEVICE = "KVCONFORM_DIST_DEVICE"
DIST_RANKS = "KVCONFORM_DIST_RANKS"
DIST_SHARE_GPUS = "KVCONFORM_DIST_SHARE_GPUS"
DIST_TIMEOUT = "KVCONFORM_DIST_TIMEOUT"
#: Read by bench/kv_copy_bandwidth.py only; known so it is not reported as a typo.
SGLANG_STAGING = "KVCONFORM_SGLANG_STAGING"

#: Variable -> what it sets (for --help, the README and the unknown-variable warning).
VARIABLES: dict[str, str] = {
    IMPL: "default for --impl",
    PROFILE: "default for --profile (" + ", ".join(PROFILE_EXAMPLES) + ")",
    HYPOTHESIS_DB: "Hypothesis example database directory (default ./.hypothesis/examples; "
                   "failing examples saved there are replayed first on the next run; the gate profile uses none)",
    SHARED_DB: "OWNER/REPO: the explore profile also reads (never writes) the example database the repository's "
               "nightly CI job uploads (Hypothesis's GitHubArtifactDatabase; needs GITHUB_TOKEN to download)",
    CONFORMANCE_DIR: "another conformance test directory (for testing the harness itself)",
    CALL_TIMEOUT: "seconds one call into the implementation may take (default 30)",
    CALL_TIMEOUT_AFTER_HANG: "deadline once the implementation has hung (default 0.05)",
    DIST_BACKEND: "distributed mode: gloo (default), nccl or off",
    DIST_DEVICE: "distributed mode: cpu or cuda",
    DIST_RANKS: "distributed mode: processes in the group",
    DIST_SHARE_GPUS: "distributed mode: 1 lets NCCL ranks share GPUs",
    DIST_TIMEOUT: "distributed mode: seconds per process-group operation",
    SGLANG_STAGING: "bench/kv_copy_bandwidth.py: SGLang staging source file",
}

DEFAULT_CALL_TIMEOUT_S = 30.0
DEFAULT_AFTER_HANG_TIMEOUT_S = 0.05


class SettingsError(ValueError):
    """A ``KVCONFORM_*`` variable has a value the harness cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    """The harness's knobs from the environment, validated; ``None`` means "not set, use the default"."""

    impl: str | None = None
    profile: str | None = None
    hypothesis_db: Path | None = None
    #: ``(owner, repo)`` whose CI artifact database the explore profile reads.
    shared_db: tuple[str, str] | None = None
    conformance_dir: Path | None = None
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    call_timeout_after_hang_s: float = DEFAULT_AFTER_HANG_TIMEOUT_S
    #: ``KVCONFORM_*`` names set in the environment that the harness does not know (likely typos).
    unknown: tuple[str, ...] = ()

    def unknown_variables_line(self) -> str | None:
        """One warning line naming unknown variables and the closest known name, or ``None``."""
        if not self.unknown:
            return None
        named = []
        for name in self.unknown:
            close = difflib.get_close_matches(name, VARIABLES, n=1)
            named.append(name + (f" (did you mean {close[0]}?)" if close else ""))
        return f"ignoring unknown environment variable(s) {', '.join(named)}; known: {', '.join(VARIABLES)}"


def parse(environ: Mapping[str, str]) -> Settings:
    """The settings ``environ`` asks for; raises :class:`SettingsError` on the first unusable value."""
    text = {name: environ.get(name, "").strip() for name in VARIABLES}
    profile = text[PROFILE] or None
    if profile is not None and profile not in PROFILE_EXAMPLES:
        raise SettingsError(f"{PROFILE}={profile!r}: expected one of {', '.join(PROFILE_EXAMPLES)}")
    conformance_dir = Path(text[CONFORMANCE_DIR]).expanduser().resolve() if text[CONFORMANCE_DIR] else None
    if conformance_dir is not None and not conformance_dir.is_dir():
        raise SettingsError(f"{CONFORMANCE_DIR}={text[CONFORMANCE_DIR]!r}: expected an existing directory of "
                            "conformance test modules; unset it to use harness/conformance")
    database = Path(text[HYPOTHESIS_DB]).expanduser().resolve() if text[HYPOTHESIS_DB] else None
    if database is not None and database.exists() and not database.is_dir():
        raise SettingsError(f"{HYPOTHESIS_DB}={text[HYPOTHESIS_DB]!r}: expected a directory (it is a file); "
                            "point it at a directory or unset it")
    shared_db = None
    if text[SHARED_DB]:
        owner, _, repo = text[SHARED_DB].partition("/")
        if not (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", owner) and re.fullmatch(r"[A-Za-z0-9._-]+", repo)):
            raise SettingsError(f"{SHARED_DB}={text[SHARED_DB]!r}: expected OWNER/REPO of a GitHub repository, "
                                f"e.g. {SHARED_DB}=acme/kvconform; unset it to use the local database only")
        shared_db = (owner, repo)
    call_timeout = _seconds(CALL_TIMEOUT, text[CALL_TIMEOUT], DEFAULT_CALL_TIMEOUT_S)
    after_hang = _seconds(CALL_TIMEOUT_AFTER_HANG, text[CALL_TIMEOUT_AFTER_HANG], DEFAULT_AFTER_HANG_TIMEOUT_S)
    _check_distributed(environ, text)
    unknown = tuple(sorted(n for n in environ if n.startswith("KVCONFORM_") and n not in VARIABLES))
    return Settings(
        impl=text[IMPL] or None,
        profile=profile,
        hypothesis_db=database,
        shared_db=shared_db,
        conformance_dir=conformance_dir,
        call_timeout_s=call_timeout,
        call_timeout_after_hang_s=min(after_hang, call_timeout),
        unknown=unknown,
    )


def current() -> Settings:
    """The settings of ``os.environ``, parsed again only when one of the known variables changed."""
    data = getattr(os.environ, "_data", None)  # POSIX: the raw bytes mapping, read without a decode per name
    key = tuple(map(data.get, _ENCODED)) if _ENCODED and isinstance(data, dict) else tuple(map(os.environ.get, VARIABLES))
    cached = _cache.get("settings")
    if cached is None or cached[0] != key:
        cached = (key, parse(os.environ))
        _cache["settings"] = cached
    return cached[1]


_cache: dict[str, tuple[tuple[str | bytes | None, ...], Settings]] = {}
_ENCODED = tuple(os.fsencode(name) for name in VARIABLES) if os.name == "posix" else ()


def _seconds(name: str, text: str, default: float) -> float:
    """A positive finite number of seconds, or ``default`` when unset."""
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise SettingsError(f"{name}={text!r}: expected a positive number of seconds, e.g. {name}={default:g}")
    return value


def _check_distributed(environ: Mapping[str, str], text: dict[str, str]) -> None:
    """Validate the ``KVCONFORM_DIST_*`` variables with distributed mode's own rules (GPU count not needed)."""
    from harness.distributed.config import config_from_env

    if text[DIST_RANKS]:
        try:
            ranks = int(text[DIST_RANKS])
        except ValueError:
            ranks = 0
        if ranks < 2:
            raise SettingsError(f"{DIST_RANKS}={text[DIST_RANKS]!r}: expected an integer >= 2 "
                                "(at least one prefill and one decode rank)")
    if text[DIST_TIMEOUT]:
        _seconds(DIST_TIMEOUT, text[DIST_TIMEOUT], 60.0)
    if text[DIST_BACKEND] and text[DIST_BACKEND].lower() not in ("gloo", "nccl", "off"):
        raise SettingsError(f"{DIST_BACKEND}={text[DIST_BACKEND]!r}: expected gloo, nccl or off")
    if text[DIST_DEVICE] and text[DIST_DEVICE].lower() not in ("cpu", "cuda"):
        raise SettingsError(f"{DIST_DEVICE}={text[DIST_DEVICE]!r}: expected cpu or cuda")
    try:  # combinations (e.g. nccl on cpu) by distributed mode's own rules
        config_from_env(dict(environ), gpu_count=2)
    except ValueError as exc:
        names = ", ".join(f"{n}={text[n]!r}" for n in (DIST_BACKEND, DIST_DEVICE, DIST_RANKS) if text[n])
        raise SettingsError(f"{names or DIST_BACKEND}: {exc}") from None
