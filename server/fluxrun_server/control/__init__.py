"""The control plane: management GraphQL with roles and an audit log, usage counters, plans and quotas,
per-project rate limits, alerts (webhook and e-mail, with retries and a dead-letter list) and retention."""

from fluxrun_server.control import models as models  # registers the tables on SQLModel.metadata
