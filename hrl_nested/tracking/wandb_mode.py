"""Which W&B mode a run can use without prompting: API key lookup (env var or ``.netrc``) and fallback."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

WANDB_MODES = ("online", "offline", "disabled")


def has_wandb_api_key(environ: Mapping[str, str] | None = None, netrc_path: str | Path | None = None) -> bool:
    """Whether W&B would find an API key without prompting: ``WANDB_API_KEY`` or a netrc entry.

    The netrc entry is looked up for the host of ``WANDB_BASE_URL`` (default ``api.wandb.ai``), in
    ``netrc_path``, else ``$NETRC``, else ``~/.netrc``.
    """
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(netrc_path or environ.get("NETRC") or Path.home() / ".netrc")
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(
    requested: str, *, environ: Mapping[str, str] | None = None, netrc_path: str | Path | None = None
) -> tuple[str, str | None]:
    """Decide the W&B mode before ``wandb.init`` so that it never prompts for a key.

    ``$WANDB_MODE`` (``offline``/``dryrun`` or ``disabled``), W&B's own switch, can only lower the
    request, never raise it: ``WANDB_MODE=offline`` keeps a run offline even when it asks for online.

    Returns:
        ``(mode, notice)``: ``online`` without an API key becomes ``offline`` with a one-line notice
        to print; other requests pass through with no notice.
    """
    if requested not in WANDB_MODES:
        raise ValueError(f"wandb mode: expected one of {WANDB_MODES}, got {requested!r}")
    env_mode = (os.environ if environ is None else environ).get("WANDB_MODE", "").strip().lower()
    env_mode = {"dryrun": "offline"}.get(env_mode, env_mode)
    if env_mode in WANDB_MODES and WANDB_MODES.index(env_mode) > WANDB_MODES.index(requested):
        requested = env_mode
    if requested == "online" and not has_wandb_api_key(environ, netrc_path):
        return "offline", (
            "W&B: no API key (WANDB_API_KEY or `wandb login`), logging offline instead; "
            "upload later with `wandb sync`"
        )
    return requested, None
