"""Preflight checks for NDIF, each a one-line error raised before any work is sent."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mechscope.engine.errors import MechscopeError

# NDIF ends a job after an hour; refuse requests estimated to take longer than this share of it.
JOB_LIMIT_SECONDS = 3600.0
LIMIT_SHARE = 0.8
# A deliberately modest share of one hosted GPU, in floating-point operations per second.
ASSUMED_FLOPS = 5e13


class NdifError(MechscopeError):
    """NDIF cannot take this request (no key, version skew, model not hosted, too long)."""


def api_key() -> str | None:
    """The NDIF API key from the environment (NDIF_API_KEY) or nnsight's config, if any."""
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    from nnsight import CONFIG

    return CONFIG.API.APIKEY or None


def check_api_key() -> None:
    if not api_key():
        raise NdifError(
            "NDIF needs an API key: set NDIF_API_KEY, or save one with "
            "`python -c \"import nnsight; nnsight.login()\"` (keys at https://login.ndif.us)")


def _get(path: str) -> dict:
    """One GET against the NDIF API (nnsight's own client); NdifError when it cannot be reached."""
    from nnsight import CONFIG, ndif

    try:
        return ndif._get(path)
    except Exception as exc:  # network, TLS, HTTP status: all mean the same thing to the user
        raise NdifError(f"NDIF is unreachable at {CONFIG.API.HOST} ({type(exc).__name__}); "
                        "check the network or try again later") from None


def check_versions() -> None:
    """The local nnsight must match the server's: requests are serialised nnsight objects."""
    import nnsight

    remote = _get("/env").get("packages", {}).get("nnsight")
    if remote is None:
        raise NdifError("NDIF did not report its nnsight version; cannot check compatibility")
    if remote != nnsight.__version__:
        raise NdifError(f"nnsight version mismatch: this machine has {nnsight.__version__}, NDIF runs "
                        f"{remote}; install it with `pip install nnsight=={remote}`")


def check_hosted(repo_id: str) -> None:
    """The model must be deployed and running on NDIF now (models are hosted on a schedule)."""
    deployments = _get("/status").get("deployments", {})
    states = [d.get("application_state") for d in deployments.values()
              if d.get("repo_id") == repo_id and d.get("deployment_level") in ("HOT", "WARM")]
    if "RUNNING" in states:
        return
    if states:
        raise NdifError(f"{repo_id} is deployed on NDIF but not running yet ({states[0]}); try again soon")
    running = sorted({d.get("repo_id", "?") for d in deployments.values()
                      if d.get("application_state") == "RUNNING"})
    hint = f" (running now: {', '.join(running[:6])}{', ...' if len(running) > 6 else ''})" if running else ""
    raise NdifError(f"{repo_id} is not hosted on NDIF right now{hint}; see https://nnsight.net/status")


@dataclass(frozen=True)
class RequestSize:
    """What one request asks of the service: forward rows of `n_pos` tokens, with or without backward."""

    rows: int
    n_pos: int
    backward: bool = False

    def seconds(self, n_params: int, flops: float = ASSUMED_FLOPS) -> float:
        """Rough compute time: 2 FLOPs per parameter per token forward, 3x that with a backward pass."""
        factor = 6 if self.backward else 2
        return factor * n_params * self.rows * self.n_pos / flops


def check_time(size: RequestSize, n_params: int, limit: float = JOB_LIMIT_SECONDS) -> None:
    estimate = size.seconds(n_params)
    if estimate > limit * LIMIT_SHARE:
        raise NdifError(
            f"this request ({size.rows} rows x {size.n_pos} tokens on {n_params / 1e9:.1f}B parameters) "
            f"would take about {estimate / 60:.0f} min, over NDIF's {limit / 60:.0f} min job limit; "
            "use a shorter prompt or fewer layers")


class Preflight:
    """The checks for one engine: key and time on every request, versions and hosting once."""

    def __init__(self, repo_id: str, n_params: int) -> None:
        self.repo_id = repo_id
        self.n_params = n_params
        self._service_checked = False

    def __call__(self, size: RequestSize) -> None:
        check_api_key()
        check_time(size, self.n_params)
        if not self._service_checked:
            check_versions()
            check_hosted(self.repo_id)
            self._service_checked = True
