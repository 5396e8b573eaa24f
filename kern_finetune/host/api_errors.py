"""Errors the host answers to an API caller (``{"error_code", "detail"}``), raised by every part of its state."""

from __future__ import annotations

__all__ = ["ApiError", "GatewayError"]


class ApiError(Exception):
    """An error answered to the API caller as ``{"error_code": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, error_code: str, detail: str = "") -> None:
        super().__init__(f"{status} {error_code}: {detail}")
        self.status = status
        self.error_code = error_code
        self.detail = detail


class GatewayError(ApiError):
    """A failure inside the gateway behind refinery's proxy: the proxy answers it as ``200 null``."""

    def __init__(self, detail: str) -> None:
        super().__init__(500, "GATEWAY_ERROR", detail)
