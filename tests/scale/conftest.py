"""The fixtures live in a uniquely named module, so test modules can import its helpers by that name."""

from scale_fixtures import *  # noqa: F403
