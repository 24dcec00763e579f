"""Getting sealed bundles out of the app: a bounded sealing worker, then a sink.

`FolderSink` writes each bundle to `FLUXRUN_DIR`; `HttpSink` ships them to the server named by
`FLUXRUN_DSN` from its own thread, with a bounded queue, retries and a spool on local disk.
"""

from fluxrun.shipping.base import BackgroundWorker, Sink
from fluxrun.shipping.folder import FolderSink
from fluxrun.shipping.http import HttpSink, ShipConfig, parse_dsn
from fluxrun.shipping.spool import Spool

__all__ = ["BackgroundWorker", "FolderSink", "HttpSink", "ShipConfig", "Sink", "Spool", "parse_dsn"]
