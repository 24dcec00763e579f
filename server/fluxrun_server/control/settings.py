"""Control-plane settings: `FLUXRUN_CONTROL_*` environment variables (SMTP, alert retries, limits, job periods)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ControlSettings"]


class ControlSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXRUN_CONTROL_", env_file=None, extra="ignore")

    usage_flush_interval_s: float = Field(1.0, gt=0, description="usage counters are written in batches this often")
    default_rate_per_second: float | None = Field(
        None, gt=0, description="per-project bundles per second for projects whose plan sets none (None: no limit)"
    )
    default_burst: int | None = Field(None, gt=0, description="token-bucket size; default twice the rate")
    alert_scan_interval_s: float = Field(2.0, gt=0)
    alert_retry_base_s: float = Field(2.0, gt=0, description="first retry after this; doubles each attempt")
    alert_retry_max_s: float = Field(600.0, gt=0)
    alert_max_attempts: int = Field(6, ge=1, description="after this many failures a delivery is a dead letter")
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_allow_private: bool = Field(
        False,
        description="allow webhook targets on loopback, private and link-local addresses (tests, on-premises "
        "receivers); off, such targets are refused when a rule is made and when an alert is sent (SSRF)",
    )
    smtp_host: str | None = Field(None, description="SMTP server for e-mail alerts; unset: e-mail rules dead-letter")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_from: str = "fluxrun@localhost"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    retention_interval_s: float = Field(3600.0, gt=0, description="how often the retention job runs")
    retention_batch: int = Field(1000, gt=0)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> ControlSettings:
        if bool(self.smtp_user) != bool(self.smtp_password):
            raise ValueError("set both FLUXRUN_CONTROL_SMTP_USER and FLUXRUN_CONTROL_SMTP_PASSWORD, or neither")
        if self.smtp_user and not self.smtp_starttls:
            raise ValueError("SMTP credentials need FLUXRUN_CONTROL_SMTP_STARTTLS=true (no passwords in clear text)")
        return self
