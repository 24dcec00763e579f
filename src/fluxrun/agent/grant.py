"""The grant format moved to `fluxrun.grant`, shared by the server and the agent; kept importable here."""

from fluxrun.grant import *  # noqa: F403
from fluxrun.grant import __all__, iso, unverified_claims  # noqa: F401
